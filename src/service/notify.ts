/**
 * sd_notify for Node: tells systemd that the service is ready (`READY=1`), what it is doing (`STATUS=…`),
 * that it is alive (`WATCHDOG=1`), reloading (`RELOADING=1`) or stopping (`STOPPING=1`), through the
 * datagram socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
 *
 * Transport (docs/service.md, "Readiness and watchdog"):
 * - default: one datagram sent by this process itself through the `auditrelay_unix` binding
 *   (native/unix.cc, src/service/unix-dgram.ts), non-blocking, as sd_notify(3) does. The main pid sends, so
 *   the units say `NotifyAccess=main`: no other process of the service can speak in its name.
 * - fallback, when the binding is not built (an npm install without a C++ compiler): `systemd-notify
 *   VAR=value…`, one short child process per message, which waits for systemd's barrier. Without
 *   CAP_SYS_ADMIN it sends under its own pid, which `NotifyAccess=main` rejects: such an installation needs
 *   `NotifyAccess=all` in a drop-in, and the notifier says so in the log.
 *
 * Messages are sent one at a time, in order. Failures never reject: they are logged (once per kind) and
 * counted, because a notification problem must not stop the forwarding of audit records.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import type { Logger } from '../log.js';
import { loadUnixDgram, type UnixDgram } from './unix-dgram.js';

/** Sends one notification message (newline-separated assignments) to the socket. */
export interface NotifyTransport {
  readonly name: string;
  send(socket: string, message: string): Promise<void>;
}

/** A native datagram sender: `sendto(socket(AF_UNIX, SOCK_DGRAM), message, path)`; '@' = abstract. */
export type DatagramSender = (socketPath: string, message: Buffer) => void;

export function datagramTransport(send: DatagramSender): NotifyTransport {
  return {
    name: 'datagram',
    send: async (socket, message) => {
      checkAddress(socket);
      send(socket, Buffer.from(message, 'utf8'));
    },
  };
}

/** The default transport: the `auditrelay_unix` binding. */
export function nativeTransport(unix: UnixDgram): NotifyTransport {
  return datagramTransport((socket, message) => unix.sendTo(socket, message));
}

/** systemd ≥ 254 may also name an AF_VSOCK address (`vsock:CID:PORT`), for virtual machines; not for us. */
function checkAddress(socket: string): void {
  if (!socket.startsWith('/') && !socket.startsWith('@')) {
    throw new NotifyError(
      `NOTIFY_SOCKET=${socket} is neither a path nor an abstract socket (@name); only AF_UNIX is supported`,
    );
  }
}

const SYSTEMD_NOTIFY_CANDIDATES = [
  '/usr/bin/systemd-notify',
  '/bin/systemd-notify',
  '/usr/local/bin/systemd-notify',
];

export function findSystemdNotify(): string | null {
  for (const p of SYSTEMD_NOTIFY_CANDIDATES) {
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

export class NotifyError extends Error {}

/** Runs `systemd-notify VAR=value…` with only NOTIFY_SOCKET in its environment; kills it after timeoutMs. */
export function systemdNotifyTransport(path: string, timeoutMs = 10_000): NotifyTransport {
  return {
    name: 'systemd-notify',
    send: (socket, message) =>
      new Promise<void>((resolve, reject) => {
        const child = spawn(path, message.split('\n'), {
          env: { NOTIFY_SOCKET: socket },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr?.setEncoding('utf8');
        child.stderr?.on('data', (s: string) => {
          if (stderr.length < 2000) stderr += s;
        });
        const timer = setTimeout(() => {
          if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
            try {
              process.kill(child.pid, 'SIGKILL');
            } catch {
              // gone
            }
          }
        }, timeoutMs);
        child.once('error', (err) => {
          clearTimeout(timer);
          reject(
            new NotifyError(`cannot run ${path}: ${(err as NodeJS.ErrnoException).code ?? err.message}`),
          );
        });
        child.once('close', (code, signal) => {
          clearTimeout(timer);
          if (code === 0) resolve();
          else
            reject(
              new NotifyError(
                `${path} failed (${signal ? `killed by ${signal} after ${timeoutMs} ms` : `exit status ${code}`})${stderr.trim() ? `: ${stderr.trim()}` : ''}`,
              ),
            );
        });
      }),
  };
}

export interface SdNotifierOptions {
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read. Default process.env. */
  env?: NodeJS.ProcessEnv;
  log?: Logger;
  /**
   * Default: the native datagram sender (`auditrelay_unix`); without it, systemd-notify (found in /usr/bin, /bin,
   * /usr/local/bin, or `systemdNotifyPath`).
   */
  transport?: NotifyTransport;
  /** The native binding, or why it is unavailable. Default: loadUnixDgram(). */
  unix?: UnixDgram | string;
  systemdNotifyPath?: string;
  /** Per-message deadline of the systemd-notify transport. Default 10 s. */
  timeoutMs?: number;
  /** Remove NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from `env` (children do not inherit them). Default false. */
  unsetEnvironment?: boolean;
  /** Our pid, compared with WATCHDOG_PID. Default process.pid. */
  pid?: number;
}

export interface NotifyStats {
  sent: number;
  failed: number;
  watchdogPings: number;
  watchdogSkipped: number;
}

type Fields = Record<string, string | number>;

/** Values may not contain newlines (one assignment per line). */
function clean(value: string | number): string {
  return String(value).replace(/[\r\n]+/g, ' ');
}

export class SdNotifier {
  /** NOTIFY_SOCKET, or null: not started by systemd with Type=notify (every call is then a no-op). */
  readonly socket: string | null;
  /** Watchdog period requested by systemd (WatchdogSec), when it is meant for this process. */
  readonly watchdogMs: number | null;
  readonly stats: NotifyStats = { sent: 0, failed: 0, watchdogPings: 0, watchdogSkipped: 0 };
  readonly #transport: NotifyTransport | null;
  readonly #log: Logger | undefined;
  #chain: Promise<void> = Promise.resolve();
  #watchdogQueued = false;
  #watchdogTimer: NodeJS.Timeout | null = null;
  #unhealthySince = 0;
  readonly #reported = new Set<string>();
  #closed = false;

  constructor(options: SdNotifierOptions = {}) {
    const env = options.env ?? process.env;
    this.#log = options.log;
    const socket = env.NOTIFY_SOCKET?.trim();
    this.socket = socket ? socket : null;
    const usec = Number(env.WATCHDOG_USEC);
    const wpid = env.WATCHDOG_PID === undefined ? null : Number(env.WATCHDOG_PID);
    const pid = options.pid ?? process.pid;
    this.watchdogMs =
      this.socket && Number.isFinite(usec) && usec > 0 && (wpid === null || wpid === pid)
        ? Math.max(1, Math.floor(usec / 1000))
        : null;
    if (options.unsetEnvironment) {
      delete env.NOTIFY_SOCKET;
      delete env.WATCHDOG_USEC;
      delete env.WATCHDOG_PID;
    }
    if (!this.socket) {
      this.#transport = null;
      return;
    }
    if (options.transport) {
      this.#transport = options.transport;
      return;
    }
    const unix = options.unix ?? loadUnixDgram();
    if (typeof unix !== 'string') {
      this.#transport = nativeTransport(unix);
      return;
    }
    const path = options.systemdNotifyPath ?? findSystemdNotify();
    if (!path) {
      this.#transport = null;
      this.#log?.error(
        { notifySocket: this.socket },
        `NOTIFY_SOCKET is set but neither the native binding nor systemd-notify is there (${unix}): readiness and watchdog notifications cannot be sent; systemd will time the start out (Type=notify)`,
      );
      return;
    }
    this.#log?.warn(
      { notifySocket: this.socket, systemdNotify: path },
      `sd_notify through ${path} (${unix}): it sends under its own pid, so the unit needs NotifyAccess=all (a drop-in); the shipped units say NotifyAccess=main`,
    );
    this.#transport = systemdNotifyTransport(path, options.timeoutMs ?? 10_000);
  }

  /** True when notifications go somewhere. */
  get enabled(): boolean {
    return this.#transport !== null && !this.#closed;
  }

  ready(status?: string): Promise<void> {
    return this.send(status === undefined ? { READY: 1 } : { READY: 1, STATUS: status });
  }

  /** Before re-reading the configuration (SIGHUP); call ready() when done. */
  reloading(status?: string): Promise<void> {
    return this.send(status === undefined ? { RELOADING: 1 } : { RELOADING: 1, STATUS: status });
  }

  stopping(status?: string): Promise<void> {
    return this.send(status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: status });
  }

  status(text: string): Promise<void> {
    return this.send({ STATUS: text });
  }

  /** One keep-alive ping; skipped when one is already waiting to be sent. */
  watchdog(): Promise<void> {
    if (this.#watchdogQueued) {
      this.stats.watchdogSkipped++;
      return this.#chain;
    }
    this.#watchdogQueued = true;
    this.stats.watchdogPings++;
    return this.send({ WATCHDOG: 1 }, () => {
      this.#watchdogQueued = false;
    });
  }

  /** Asks systemd to act as if the watchdog had expired (restart, per the unit's settings). */
  watchdogTrigger(): Promise<void> {
    return this.send({ WATCHDOG: 'trigger' });
  }

  /**
   * Pings every watchdogMs / 2 while `healthy()` returns true. An unhealthy process stops pinging, so systemd
   * restarts it after WatchdogSec; the event loop being stuck has the same effect. No-op without a watchdog.
   */
  startWatchdog(healthy: () => boolean = () => true): void {
    if (this.#watchdogTimer || !this.watchdogMs || !this.enabled) return;
    const period = Math.max(1, Math.floor(this.watchdogMs / 2));
    this.#watchdogTimer = setInterval(() => {
      if (healthy()) {
        if (this.#unhealthySince) {
          this.#log?.info('healthy again: watchdog pings resumed');
          this.#unhealthySince = 0;
        }
        void this.watchdog();
      } else if (!this.#unhealthySince) {
        this.#unhealthySince = Date.now();
        this.#log?.error(
          { watchdogMs: this.watchdogMs },
          `unhealthy: watchdog pings stopped; systemd restarts the service after ${this.watchdogMs} ms unless it recovers`,
        );
      }
    }, period);
  }

  stopWatchdog(): void {
    if (this.#watchdogTimer) clearInterval(this.#watchdogTimer);
    this.#watchdogTimer = null;
  }

  /** Sends `VAR=value` assignments as one message, after every message sent before. Never rejects. */
  send(fields: Fields, after?: () => void): Promise<void> {
    const transport = this.#transport;
    if (!transport || this.#closed || !this.socket) {
      after?.();
      return Promise.resolve();
    }
    const socket = this.socket;
    const message = Object.entries(fields)
      .map(([k, v]) => `${k}=${clean(v)}`)
      .join('\n');
    const run = async (): Promise<void> => {
      try {
        after?.();
        await transport.send(socket, message);
        this.stats.sent++;
      } catch (err) {
        this.stats.failed++;
        const text = (err as Error).message;
        const kind = Object.keys(fields).join(',');
        if (!this.#reported.has(text)) {
          this.#reported.add(text);
          this.#log?.error(
            { notifySocket: socket, transport: transport.name, message: kind },
            `systemd notification ${kind} failed: ${text}`,
          );
        } else {
          this.#log?.debug({ message: kind }, `systemd notification failed again: ${text}`);
        }
      }
    };
    this.#chain = this.#chain.then(run);
    return this.#chain;
  }

  /** Stops the watchdog and waits for messages already queued. */
  async close(): Promise<void> {
    this.stopWatchdog();
    const pending = this.#chain;
    this.#closed = true;
    await pending;
  }
}
