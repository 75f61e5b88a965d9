/**
 * Input from auditd's af_unix plugin: a client of the unix stream socket on which the plugin offers
 * every record in string format (`/etc/audit/plugins.d/af_unix.conf`: `active = yes`,
 * `args = 0640 /var/run/audispd_events`, `format = string`; upstream 4.x's external `audisp-af_unix`
 * takes `args = 0640 /var/run/audispd_events string`).
 *
 * A `Readable` of the concatenated bytes of every connection, for `InputPump` (which frames records):
 * - connects to the socket and reconnects with exponential backoff (no jitter: one local client) when the
 *   connection ends or cannot be made (auditd stopped, restarted, reloaded the plugin);
 * - watches the socket's directory, so a recreated socket is connected to at once rather than after the
 *   current backoff delay (the plugin buffers nothing for an absent client: see "Losses" below);
 * - logs the first failure of an outage as a warning that says what to check (path missing, nobody
 *   listening, permission), repeats it every `reminderMs` while the outage lasts (debug in between), and
 *   logs the reconnection with the outage's duration;
 * - never ends by itself: only `close()` ends it (or `destroy()`);
 * - backpressure: when the consumer stops reading (`push()` returns false, or `pause()`), the socket is
 *   paused, so the kernel buffer fills and the plugin's write blocks — as on a plugin's stdin.
 *
 * Torn records at a connection boundary. Each connection is framed on its own: when a connection ends
 * after bytes that are not terminated by '\n' (auditd died or the plugin dropped us in the middle of a
 * write), those bytes are completed with '\n' and forwarded as a record of their own, with a warning
 * (`tornRecords` counts them). They are never joined to the first bytes of the next connection, which
 * would forge one record out of two events. (Within one connection the plugin itself may cut a record
 * when its write is interrupted — 3.0.9 ignores short writes — which no reader can detect.)
 *
 * Losses outside our control, documented in docs/service.md: the plugin writes only to a connected
 * client and keeps nothing while none is connected (records of an auditd restart window are lost), and it
 * serves one client at a time (3.0.9 leaves a second client connected but silent; 4.x closes it at once).
 * The plugin's `binary` format is detected (first byte of a connection below 0x09) and refused.
 */
import { type FSWatcher, watch } from 'node:fs';
import net from 'node:net';
import { basename, dirname } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from '../log.js';

export const DEFAULT_AF_UNIX_PATH = '/var/run/audispd_events';

export interface AfUnixInputOptions {
  /** Path of the plugin's socket. Default `/var/run/audispd_events`. */
  path?: string;
  log: Logger;
  /** First reconnect delay. Default 100 ms. */
  initialDelayMs?: number;
  /** Reconnect delay cap. Default 2000 ms. */
  maxDelayMs?: number;
  /** Watch the socket's directory to reconnect as soon as the socket is created again. Default true. */
  watch?: boolean;
  /** While disconnected, repeat the warning this often (debug lines in between). Default 60 s. */
  reminderMs?: number;
  /** A connection counts as established (backoff reset) once it delivered data or lasted this long. Default 1000 ms. */
  stableMs?: number;
  /** Readable buffer size. Default 64 KiB. */
  highWaterMark?: number;
}

export interface AfUnixStats {
  connects: number;
  disconnects: number;
  failedAttempts: number;
  bytes: number;
  tornRecords: number;
}

interface Outage {
  since: number;
  attempts: number;
  code: string;
  lastWarnAt: number;
}

const NL = 0x0a;

/** What to tell the operator for a connect error. */
export function describeConnectError(path: string, code: string): string {
  switch (code) {
    case 'ENOENT':
      return `af_unix socket ${path} does not exist: auditd is not running or its af_unix plugin is not active (/etc/audit/plugins.d/af_unix.conf: active = yes, format = string); retrying`;
    case 'ECONNREFUSED':
      return `nobody accepts connections on ${path} (auditd stopped and left the socket file, or the path is not a socket); retrying`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied connecting to ${path}: the af_unix plugin creates it with the mode in its args (0640, owner root); run auditrelay as root or in the socket's group; retrying`;
    case 'ENOTDIR':
      return `a component of ${path} is not a directory; retrying`;
    default:
      return `cannot connect to af_unix socket ${path} (${code}); retrying`;
  }
}

export class AfUnixInput extends Readable {
  readonly path: string;
  readonly stats: AfUnixStats = { connects: 0, disconnects: 0, failedAttempts: 0, bytes: 0, tornRecords: 0 };
  readonly #log: Logger;
  readonly #initialDelay: number;
  readonly #maxDelay: number;
  readonly #reminderMs: number;
  readonly #stableMs: number;
  readonly #useWatch: boolean;
  #sock: net.Socket | null = null;
  #connected = false;
  #connectedAt = 0;
  /** Bytes received on the current connection, and whether the last one was '\n'. */
  #connBytes = 0;
  #lastWasNl = true;
  #refused = false;
  #delay: number;
  #timer: NodeJS.Timeout | null = null;
  #watcher: FSWatcher | null = null;
  #outage: Outage | null = null;
  /** Consecutive connections that ended without delivering anything. */
  #emptyConnections = 0;
  #wantData = true;
  #closed = false;
  #started = false;

  constructor(options: AfUnixInputOptions) {
    super({ highWaterMark: options.highWaterMark ?? 64 * 1024 });
    this.path = options.path ?? DEFAULT_AF_UNIX_PATH;
    this.#log = options.log;
    this.#initialDelay = options.initialDelayMs ?? 100;
    this.#maxDelay = Math.max(this.#initialDelay, options.maxDelayMs ?? 2000);
    this.#reminderMs = options.reminderMs ?? 60_000;
    this.#stableMs = options.stableMs ?? 1000;
    this.#useWatch = options.watch ?? true;
    this.#delay = this.#initialDelay;
  }

  /** True while a connection to the plugin is open. */
  get connected(): boolean {
    return this.#connected;
  }

  /** Starts connecting (also done by the first read). */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#startWatch();
    this.#connect();
  }

  /** Stops reconnecting, closes the connection (a torn record is still forwarded) and ends the stream. */
  close(): void {
    if (this.#closed) return;
    this.#shutdown();
    this.push(null);
  }

  override _read(): void {
    this.#wantData = true;
    if (!this.#started) this.start();
    else if (this.#sock?.isPaused()) this.#sock.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#shutdown();
    callback(err);
  }

  #shutdown(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#watcher?.close();
    this.#watcher = null;
    const sock = this.#sock;
    if (sock) {
      this.#sock = null;
      sock.destroy();
      this.#endConnection('closed by auditrelay');
    }
  }

  #startWatch(): void {
    if (!this.#useWatch || this.#watcher || this.#closed) return;
    const name = basename(this.path);
    try {
      this.#watcher = watch(dirname(this.path), { persistent: true }, (_event, file) => {
        // The socket was (re)created: connect now instead of waiting for the backoff timer.
        if (file === name && !this.#sock && this.#timer) {
          clearTimeout(this.#timer);
          this.#timer = null;
          this.#delay = this.#initialDelay;
          this.#connect();
        }
      });
      this.#watcher.on('error', () => {
        this.#watcher?.close();
        this.#watcher = null;
      });
    } catch {
      // The directory does not exist (yet): the backoff timer retries; the watch is retried with it.
      this.#watcher = null;
    }
  }

  #connect(): void {
    if (this.#closed || this.#sock) return;
    this.#timer = null;
    this.#startWatch();
    const sock = net.createConnection({ path: this.path });
    this.#sock = sock;
    this.#connected = false;
    this.#connBytes = 0;
    this.#lastWasNl = true;
    this.#refused = false;
    let error: NodeJS.ErrnoException | null = null;
    sock.once('connect', () => {
      if (this.#sock !== sock) return;
      this.#connected = true;
      this.#connectedAt = Date.now();
      this.stats.connects++;
      const outage = this.#outage;
      this.#outage = null;
      if (outage) {
        this.#log.info(
          { input: 'af_unix', path: this.path, attempts: outage.attempts, downMs: Date.now() - outage.since },
          `connected to af_unix socket ${this.path} after ${outage.attempts} failed attempt(s)`,
        );
      } else {
        this.#log.info({ input: 'af_unix', path: this.path }, `connected to af_unix socket ${this.path}`);
      }
      this.emit('connected');
      if (!this.#wantData) sock.pause();
    });
    sock.on('data', (chunk: Buffer) => this.#onData(sock, chunk));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      error = err;
    });
    sock.once('close', () => {
      if (this.#sock !== sock) return;
      this.#sock = null;
      if (this.#connected) {
        this.#endConnection(error ? (error.code ?? error.message) : 'closed by the plugin');
      } else {
        this.#connectFailed(error?.code ?? error?.message ?? 'closed');
      }
      this.#schedule();
    });
  }

  #onData(sock: net.Socket, chunk: Buffer): void {
    if (this.#sock !== sock || this.#refused) return;
    if (this.#connBytes === 0 && chunk.length > 0 && chunk[0]! < 0x09) {
      // Binary format: a 16-byte header whose first field (version 0..2) starts with a small byte.
      this.#refused = true;
      this.#log.error(
        { input: 'af_unix', path: this.path },
        `af_unix socket ${this.path} delivers auditd's binary format; auditrelay reads the string format: set format = string in /etc/audit/plugins.d/af_unix.conf (or the "string" argument of audisp-af_unix). Reconnecting in ${this.#maxDelay} ms`,
      );
      this.#delay = this.#maxDelay;
      sock.destroy();
      return;
    }
    this.#connBytes += chunk.length;
    this.stats.bytes += chunk.length;
    if (chunk.length > 0) this.#lastWasNl = chunk[chunk.length - 1] === NL;
    if (!this.push(chunk)) {
      this.#wantData = false;
      sock.pause();
    }
  }

  /** A connection that was established has ended (by the plugin, an error, or close()). */
  #endConnection(reason: string): void {
    if (!this.#connected) return;
    this.#connected = false;
    this.stats.disconnects++;
    const lasted = Date.now() - this.#connectedAt;
    if (!this.#lastWasNl && this.#connBytes > 0 && !this.#refused) {
      this.stats.tornRecords++;
      this.#log.warn(
        { input: 'af_unix', path: this.path, reason },
        'af_unix connection ended inside a record: its bytes so far are forwarded as a record of their own (completed with a newline), never joined to the next connection',
      );
      this.push(Buffer.from('\n'));
    }
    this.#lastWasNl = true;
    if (this.#closed) return;
    if (this.#connBytes > 0 || lasted >= this.#stableMs) {
      this.#delay = this.#initialDelay;
      this.#emptyConnections = 0;
    } else {
      this.#emptyConnections++;
    }
    const hint =
      this.#emptyConnections >= 3
        ? ': it keeps closing new connections at once; the plugin serves one client at a time, is another reader connected?'
        : ' (auditd stopped or restarted?)';
    this.#log.warn(
      { input: 'af_unix', path: this.path, reason, bytes: this.#connBytes, lastedMs: lasted },
      `af_unix connection to ${this.path} ended${hint}; reconnecting (the plugin keeps no records for an absent client)`,
    );
    this.emit('disconnected', reason);
  }

  #connectFailed(code: string): void {
    this.stats.failedAttempts++;
    const now = Date.now();
    const o = this.#outage;
    const fields = { input: 'af_unix', path: this.path, code };
    if (!o || o.code !== code) {
      this.#outage = { since: o?.since ?? now, attempts: (o?.attempts ?? 0) + 1, code, lastWarnAt: now };
      this.#log.warn(fields, describeConnectError(this.path, code));
    } else {
      o.attempts++;
      if (now - o.lastWarnAt >= this.#reminderMs) {
        o.lastWarnAt = now;
        this.#log.warn(
          { ...fields, attempts: o.attempts, downMs: now - o.since },
          `still cannot connect to ${this.path} (${code}) after ${o.attempts} attempts: ${describeConnectError(this.path, code)}`,
        );
      } else {
        this.#log.debug({ ...fields, attempts: o.attempts }, 'af_unix connect attempt failed');
      }
    }
    this.emit('connectFailed', code);
  }

  #schedule(): void {
    if (this.#closed || this.#timer) return;
    const delay = this.#delay;
    this.#delay = Math.min(this.#maxDelay, this.#delay * 2);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }
}
