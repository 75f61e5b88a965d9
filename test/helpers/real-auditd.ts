/**
 * The real Debian auditd (3.0.9) as a network-only aggregator inside a NetnsSandbox.
 *
 * Runs `auditd -n -c DIR` (not -f: in foreground mode auditd forces write_logs off, see auditd.c) with a generated
 * DIR/auditd.conf. Findings that shape this helper (audit-userspace v3.0.9 sources + experiments, docs/testing.md):
 * - auditd always opens the kernel audit netlink socket (`audit_open()`), even with `local_events = no`, and exits
 *   with status 1 if the kernel has no audit support; with local_events = no it never sets the audit pid or the
 *   enabled flag, so the host's kernel audit state is untouched. It runs as root in the private namespaces.
 * - With -n it does not fork but still redirects stdio to /dev/null, setsid()s and reports everything via syslog
 *   (captured by the sandbox's /dev/log). It writes /var/run/auditd.pid (the sandbox's private /run).
 * - Records received over the network are written with `fprintf(log, "%s\n", text)`: verbatim, whatever
 *   log_format is, after the server removed exactly one trailing '\n' of the payload. 0x1D and non-ASCII bytes pass
 *   through untouched; a NUL byte would end the record. The log stream is line buffered, so a record is in the file
 *   before its ACK is sent.
 * - auditd's own records (DAEMON_START, DAEMON_ACCEPT, DAEMON_CLOSE, DAEMON_END, ...) are formatted by auditd and,
 *   with `name_format = user`, prefixed with `node=<name> `; network records never get a prefix. This helper uses a
 *   random per-instance name, which makes "is this auditd's own record?" an exact test (see splitAuditdLog).
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { NetnsSandbox } from './netns.js';
import { AUDIT42_RUN } from './peers.js';
import { findBinary } from './prereq.js';
import { type ExitInfo, hasExited, pollUntil, signalAndWait } from './wait.js';

/** Debian's auditd path (/sbin is /usr/sbin on merged-/usr systems). */
export const AUDITD_BIN = findBinary('auditd') ?? '/sbin/auditd';
/** Port used inside sandboxes unless told otherwise (audit's conventional port; the namespace is private). */
export const DEFAULT_AUDITD_PORT = 60;

export type AuditdConfValue = string | number | null;

export interface RealAuditdOptions {
  /** tcp_listen_port. Default DEFAULT_AUDITD_PORT. */
  port?: number;
  /** Directory for auditd.conf, audit.log and the empty plugin dir. Default: a fresh directory in sandbox.dir. */
  dir?: string;
  /** auditd.conf keys to add or override (`null` removes a default key). */
  extraConf?: Record<string, AuditdConfValue>;
  /** Deadline for auditd to listen. Default 15 s. */
  readyTimeoutMs?: number;
  /**
   * Run audit >= 4.2.1 (Debian sid, through `.cache/peers/audit/run`, test/helpers/peers.ts) instead of Debian's
   * 3.0.9. The wrapper execs the program, so the pid is auditd's. 4.2.1 listens dual-stack (peers show as
   * `::ffff:127.0.0.1`) and has the TLS transport (`transport = TLS`, tls_* keys).
   */
  audit42?: boolean;
}

export interface RealAuditd {
  readonly pid: number;
  readonly port: number;
  readonly dir: string;
  readonly confPath: string;
  readonly logPath: string;
  /** The `name` auditd prefixes to its own records (`node=<nodeName> type=...`). */
  readonly nodeName: string;
  readonly child: ChildProcess;
  /** Whole log file as bytes (empty buffer if not created yet). */
  readLog(): Buffer;
  /** Complete log lines that came from the network (byte-exact, without the '\n'), in log order. */
  receivedRecords(): Buffer[];
  /** Complete log lines auditd generated itself (DAEMON_*), in log order. */
  ownRecords(): string[];
  /** Waits until at least `n` network records are in the log; returns all received records. */
  waitForLines(n: number, deadlineMs?: number): Promise<Buffer[]>;
  /** Waits until one of auditd's own records matches `predicate`; returns it. */
  waitForOwnRecord(predicate: (line: string) => boolean, what: string, deadlineMs?: number): Promise<string>;
  /** Sends a signal by pid (e.g. SIGHUP to reconfigure, SIGUSR1 to rotate). */
  signal(sig: NodeJS.Signals): void;
  /** SIGTERM (auditd sends ENDING to its clients and logs DAEMON_END) and waits for exit. */
  stop(timeoutMs?: number): Promise<ExitInfo>;
  /** SIGKILL and wait for exit. */
  kill9(): Promise<ExitInfo>;
}

/** Settings used by startRealAuditd before `extraConf` is applied. */
export function defaultAuditdSettings(opts: {
  port: number;
  dir: string;
  nodeName: string;
}): Record<string, AuditdConfValue> {
  return {
    local_events: 'no', // aggregator only: no kernel events, never touches the kernel's audit settings
    write_logs: 'yes',
    log_file: path.join(opts.dir, 'audit.log'),
    log_format: 'RAW', // only affects auditd's own records; network records are always written verbatim
    log_group: 'root',
    flush: 'incremental_async', // Debian default; every record reaches the file (line-buffered) before its ACK
    freq: 50,
    num_logs: 0,
    max_log_file: 0,
    max_log_file_action: 'ignore',
    priority_boost: 0, // no nice() call
    name_format: 'user', // own records get `node=<name> `, network records never do
    name: opts.nodeName,
    space_left: 2, // MiB; must be larger than admin_space_left
    space_left_action: 'ignore',
    admin_space_left: 1,
    admin_space_left_action: 'ignore',
    disk_full_action: 'ignore',
    disk_error_action: 'syslog',
    use_libwrap: 'no', // no /etc/hosts.allow|deny lookups
    tcp_listen_port: opts.port,
    tcp_listen_queue: 64,
    tcp_max_per_addr: 1024, // maximum; reconnecting clients are never refused with op=dup
    tcp_client_max_idle: 0,
    transport: 'TCP',
    distribute_network: 'no',
    q_depth: 2000,
    overflow_action: 'syslog',
    max_restarts: 0,
    plugin_dir: path.join(opts.dir, 'plugins.d'), // empty: no host plugin (af_unix, syslog, au-remote) is started
    end_of_event_timeout: 2,
  };
}

/** Renders auditd.conf text (`key = value` lines; auditd skips lines longer than 160 characters, so we throw). */
export function auditdConfText(settings: Record<string, AuditdConfValue>): string {
  const lines: string[] = [];
  for (const [key, value] of Object.entries(settings)) {
    if (value === null) continue;
    const line = `${key} = ${value}`;
    if (line.length >= 160) throw new Error(`auditd.conf line too long (auditd would skip it): ${line}`);
    lines.push(line);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Splits an auditd log into auditd's own records and records received from the network. Exact rule: with
 * `name_format = user` every record auditd formats itself starts with `node=<nodeName> `; network records are written
 * verbatim and never get a prefix. Only complete ('\n'-terminated) lines are returned.
 */
export function splitAuditdLog(log: Buffer, nodeName: string): { own: string[]; received: Buffer[] } {
  const ownPrefix = Buffer.from(`node=${nodeName} `);
  const own: string[] = [];
  const received: Buffer[] = [];
  let start = 0;
  for (let nl = log.indexOf(0x0a, start); nl >= 0; nl = log.indexOf(0x0a, start)) {
    const line = log.subarray(start, nl);
    start = nl + 1;
    if (line.subarray(0, ownPrefix.length).equals(ownPrefix)) own.push(line.toString('utf8'));
    else received.push(Buffer.from(line));
  }
  return { own, received };
}

const EXIT_HINTS: Record<number, string> = {
  1: 'initialisation failed (netlink audit socket, pid file, log file, dispatcher, listener...)',
  2: 'invalid command line',
  4: 'insufficient privilege',
  6: 'configuration error',
};

let instanceCounter = 0;

export async function startRealAuditd(
  sandbox: NetnsSandbox,
  opts: RealAuditdOptions = {},
): Promise<RealAuditd> {
  const port = opts.port ?? DEFAULT_AUDITD_PORT;
  instanceCounter += 1;
  const dir = opts.dir ?? path.join(sandbox.dir, `auditd-${port}-${instanceCounter}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const pluginDir = path.join(dir, 'plugins.d');
  mkdirSync(pluginDir, { recursive: true, mode: 0o750 });
  const nodeName = `auditrelay-own-${randomBytes(6).toString('hex')}`;
  const settings = { ...defaultAuditdSettings({ port, dir, nodeName }), ...opts.extraConf };
  if (settings.name_format !== 'user' || settings.name !== nodeName) {
    throw new Error(
      'startRealAuditd: name_format/name must stay as generated (they identify auditd own records)',
    );
  }
  const logPath = String(settings.log_file);
  const confPath = path.join(dir, 'auditd.conf');
  // auditd refuses a config that is not root-owned or is world-writable.
  writeFileSync(confPath, auditdConfText(settings), { mode: 0o640 });
  chmodSync(confPath, 0o640);

  const child = opts.audit42
    ? sandbox.spawn(AUDIT42_RUN, ['auditd', '-n', '-c', dir], { stdio: ['ignore', 'pipe', 'pipe'] })
    : sandbox.spawn(AUDITD_BIN, ['-n', '-c', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => {
    stderr += c;
  });
  child.stdout?.resume();
  const spawnError: { err?: Error } = {};
  child.once('error', (err) => {
    spawnError.err = err;
  });
  const syslogFrom = sandbox.syslogCount;
  const diagnostics = (): string => {
    const exit = hasExited(child)
      ? `auditd exited: code ${child.exitCode} (${EXIT_HINTS[child.exitCode ?? -1] ?? '?'}), signal ${child.signalCode}\n`
      : '';
    const sys = sandbox
      .syslog()
      .slice(syslogFrom)
      .map((e) => e.raw)
      .join('\n');
    return `${exit}stderr: ${stderr.trim()}\nsyslog:\n${sys}\nconfig ${confPath}:\n${readFileSync(confPath, 'utf8')}`;
  };

  await pollUntil(
    async () => {
      if (spawnError.err) throw spawnError.err;
      if (hasExited(child))
        throw new Error(`auditd exited before listening on port ${port}\n${diagnostics()}`);
      const listeners = await sandbox.tcpListeners(port);
      if (listeners.some((l) => l.users.some((u) => u.pid === child.pid))) return true;
      // auditd stays up silently when its port is taken: make that loud.
      const other = listeners.find((l) => l.users.length > 0);
      if (other) {
        throw new Error(`port ${port} in the sandbox is held by ${JSON.stringify(other.users)}, not auditd`);
      }
      return undefined;
    },
    { timeoutMs: opts.readyTimeoutMs ?? 15_000, what: `auditd to listen on port ${port}`, diagnostics },
  );
  const pid = child.pid!;

  const readLog = (): Buffer => (existsSync(logPath) ? readFileSync(logPath) : Buffer.alloc(0));
  const split = (): { own: string[]; received: Buffer[] } => splitAuditdLog(readLog(), nodeName);

  const auditd: RealAuditd = {
    pid,
    port,
    dir,
    confPath,
    logPath,
    nodeName,
    child,
    readLog,
    receivedRecords: () => split().received,
    ownRecords: () => split().own,
    async waitForLines(n: number, deadlineMs = 20_000): Promise<Buffer[]> {
      return pollUntil(
        () => {
          const { received } = split();
          if (received.length >= n) return received;
          if (hasExited(child)) {
            throw new Error(`auditd exited with ${received.length}/${n} records logged\n${diagnostics()}`);
          }
          return undefined;
        },
        {
          timeoutMs: deadlineMs,
          what: `${n} received records in ${logPath}`,
          diagnostics: () => {
            const { own, received } = split();
            const tail = received
              .slice(-5)
              .map((b) => `  ${b.toString('utf8').slice(0, 200)}`)
              .join('\n');
            return `have ${received.length}; last received:\n${tail}\nown records:\n${own.join('\n')}\n${diagnostics()}`;
          },
        },
      );
    },
    async waitForOwnRecord(predicate, what, deadlineMs = 20_000): Promise<string> {
      return pollUntil(() => split().own.find(predicate), {
        timeoutMs: deadlineMs,
        what: `auditd own record: ${what}`,
        diagnostics: () => `own records:\n${split().own.join('\n')}\n${diagnostics()}`,
      });
    },
    signal(sig: NodeJS.Signals): void {
      if (!hasExited(child)) process.kill(pid, sig);
    },
    async stop(timeoutMs = 10_000): Promise<ExitInfo> {
      try {
        return await signalAndWait(child, 'SIGTERM', timeoutMs);
      } catch (err) {
        await signalAndWait(child, 'SIGKILL', 10_000);
        throw new Error(`auditd ignored SIGTERM (killed with SIGKILL): ${(err as Error).message}`);
      }
    },
    kill9: () => signalAndWait(child, 'SIGKILL', 10_000),
  };
  return auditd;
}
