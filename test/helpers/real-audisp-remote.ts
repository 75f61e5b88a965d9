/**
 * The real Debian audisp-remote (3.0.9) inside a NetnsSandbox, fed through a stdin we control.
 *
 * audisp-remote takes no options and always reads /etc/audit/audisp-remote.conf, so the generated config is
 * bind-mounted over that path inside the sandbox only (the host file is hidden, not modified). It must be root-owned
 * and not world-writable (written 0640 here); it is read once at start (never on SIGHUP).
 *
 * The process is started the way auditd's dispatcher starts plugins as far as it matters here: empty environment,
 * SIGPIPE ignored (see SandboxSpawnOptions.ignoreSigpipe), stdin one end of an AF_UNIX socketpair. Node's
 * `stdio: 'pipe'` is exactly that (libuv creates a socketpair, not a pipe), so the default `stdin: 'socketpair'`
 * matches production. Consequence (3.0.9 source, verified by the harness test): at EOF on stdin or on SIGTERM the
 * plugin leaves its loop and flushes its queue only when fd 0 is a FIFO (`is_pipe(0)` = S_ISFIFO), which is never
 * the case under auditd; records still queued are dropped. `stdin: 'fifo'` gives it a real FIFO (as in a shell
 * pipeline) and then end() flushes before exit. Also: a last line without '\n' is never delivered (the reader only
 * returns complete lines; at EOF the partial line is discarded).
 *
 * Never signal the plugin while it waits for an ACK: 3.0.9 waits with poll(), which any signal interrupts (EINTR);
 * that counts as a failed send, so it drops the connection, reconnects and sends the record again, and the server
 * logs it twice (verified with SIGUSR1). dumpState() and stop() therefore first wait until the plugin is blocked
 * in its main-loop select() (read from /proc/<pid>/syscall), i.e. idle.
 */
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, constants, openSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Writable } from 'node:stream';
import type { NetnsSandbox } from './netns.js';
import { AUDIT42_RUN } from './peers.js';
import { findBinary, requireBinary } from './prereq.js';
import { type ExitInfo, hasExited, pollUntil, signalAndWait, waitForExit } from './wait.js';

export const AUDISP_REMOTE_BIN = findBinary('audisp-remote') ?? '/sbin/audisp-remote';
/** Hard-coded in audisp-remote. */
export const AUDISP_REMOTE_CONF_PATH = '/etc/audit/audisp-remote.conf';

export type AudispRemoteConfValue = string | number | null;

/**
 * audisp-remote.conf text. Defaults are the values of Debian's shipped file except remote_server, port and
 * queue_depth (2048, the built-in default, instead of 10240). `extra` adds or overrides keys (`null` removes one).
 * Syntax rules of its parser: `key = value` with single spaces, lines up to 127 characters.
 */
export function audispRemoteConf(opts: {
  port: number;
  server?: string;
  extra?: Record<string, AudispRemoteConfValue>;
}): string {
  const settings: Record<string, AudispRemoteConfValue> = {
    remote_server: opts.server ?? '127.0.0.1',
    port: opts.port,
    transport: 'tcp',
    mode: 'immediate',
    queue_depth: 2048,
    format: 'managed',
    network_retry_time: 1,
    max_tries_per_record: 3,
    max_time_per_record: 5,
    heartbeat_timeout: 0,
    network_failure_action: 'stop',
    disk_low_action: 'ignore',
    disk_full_action: 'warn_once',
    disk_error_action: 'warn_once',
    remote_ending_action: 'reconnect',
    generic_error_action: 'syslog',
    generic_warning_action: 'syslog',
    queue_error_action: 'stop',
    overflow_action: 'syslog',
    startup_failure_action: 'warn_once_continue',
    ...opts.extra,
  };
  const lines: string[] = [];
  for (const [key, value] of Object.entries(settings)) {
    if (value === null) continue;
    const line = `${key} = ${value}`;
    if (line.length > 127) throw new Error(`audisp-remote.conf line too long (max 127): ${line}`);
    lines.push(line);
  }
  return `${lines.join('\n')}\n`;
}

export interface RealAudispRemoteOptions {
  /** Full text of audisp-remote.conf (see audispRemoteConf). */
  confText: string;
  /** What fd 0 is. Default 'socketpair' (like under auditd). */
  stdin?: 'socketpair' | 'fifo';
  /** Default true (like under auditd). */
  ignoreSigpipe?: boolean;
  /** Deadline for the "Audisp-remote started" syslog line. Default 15 s. */
  startTimeoutMs?: number;
  /**
   * Run audisp-remote >= 4.2.1 (Debian sid, through `.cache/peers/audit/run`) instead of Debian's 3.0.9: it has
   * `transport = tls`, rejects `network_retry_time = 0`, exits with status 1 when a TLS handshake fails, and writes
   * its SIGUSR1 state to /run/audit/remote.state (the sandbox's private /run) instead of syslog.
   */
  audit42?: boolean;
}

/** State reported by SIGUSR1 (3.0.9 logs it to syslog). */
export interface AudispRemoteState {
  suspend: boolean;
  remoteEnded: boolean;
  transportOk: boolean;
  queuedItems: number;
  queueDepth: number;
}

export interface RealAudispRemote {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Host path of the generated config (bind-mounted over AUDISP_REMOTE_CONF_PATH in the sandbox). */
  readonly confPath: string;
  readonly stdinKind: 'socketpair' | 'fifo';
  /** Writes each record followed by exactly one '\n' (records must not contain '\n'). Resolves once written. */
  write(records: Iterable<string | Buffer>): Promise<void>;
  /** Writes bytes as they are. */
  writeRaw(data: string | Buffer): Promise<void>;
  /** Closes stdin (EOF makes audisp-remote stop; see the module comment about flushing). */
  end(): Promise<void>;
  /** Waits until the plugin is blocked in its main-loop select() (not waiting for an ACK, not busy). */
  waitForIdle(timeoutMs?: number): Promise<void>;
  /** waitForIdle, SIGUSR1, then waits for and parses the state line it logs. */
  dumpState(timeoutMs?: number): Promise<AudispRemoteState>;
  /** Repeats dumpState until `predicate` holds. */
  waitForState(
    predicate: (s: AudispRemoteState) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<AudispRemoteState>;
  /** Sends a signal right away (see the module comment about signals during an ACK wait). */
  signal(sig: NodeJS.Signals): void;
  waitForExit(timeoutMs?: number): Promise<ExitInfo>;
  /**
   * Waits (up to timeoutMs) for the plugin to be idle, then SIGTERM and waits for exit (SIGKILL after timeoutMs,
   * then throws). Exit status 0 = nothing left in its queue, 1 = records were still queued (and are lost).
   */
  stop(timeoutMs?: number): Promise<ExitInfo>;
  /** Its exit, stderr, syslog lines since its start and config: for a wait that times out. */
  diagnostics(): string;
}

/**
 * Syscall numbers of select/pselect6, the main loop's wait. The ACK wait is poll/ppoll, a blocking connect() is
 * connect. /proc/<pid>/syscall shows the number while the process is blocked in a syscall, `running` otherwise.
 */
const SELECT_SYSCALLS: Partial<Record<string, readonly number[]>> = {
  x64: [23, 270],
  arm64: [72],
};

/** Number of the syscall `pid` is blocked in, 'running', or undefined if the process is gone. */
export function blockedSyscall(pid: number): number | 'running' | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0]?.trim();
    return first === 'running' || first === undefined ? 'running' : Number(first);
  } catch {
    return undefined;
  }
}

const STATE_RE =
  /^suspend=(yes|no), remote_ended=(yes|no), transport_ok=(yes|no), queued_items=(\d+), queue_depth=(\d+)$/;

function writeAsync(stream: Writable, data: string | Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    stream.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

let instanceCounter = 0;

export async function startRealAudispRemote(
  sandbox: NetnsSandbox,
  opts: RealAudispRemoteOptions,
): Promise<RealAudispRemote> {
  if (/^mode = forward$/im.test(opts.confText)) {
    const queueFile = /^queue_file = (.+)$/im.exec(opts.confText)?.[1];
    if (queueFile === undefined || !queueFile.startsWith(`${sandbox.dir}/`)) {
      throw new Error(
        `mode = forward needs a queue_file inside ${sandbox.dir} (default is on the host's /var/spool)`,
      );
    }
  }
  instanceCounter += 1;
  const confPath = path.join(sandbox.dir, `audisp-remote-${instanceCounter}.conf`);
  writeFileSync(confPath, opts.confText, { mode: 0o640 });
  chmodSync(confPath, 0o640);
  await sandbox.bindFile(confPath, AUDISP_REMOTE_CONF_PATH);

  const stdinKind = opts.stdin ?? 'socketpair';
  let input: Writable;
  let child: ChildProcess;
  const syslogFrom = sandbox.syslogCount;
  const spawnOpts = { env: {}, ignoreSigpipe: opts.ignoreSigpipe ?? true } as const;
  // The 4.2 wrapper execs the program: the pid is audisp-remote's.
  const [program, args] = opts.audit42 ? [AUDIT42_RUN, ['audisp-remote']] : [AUDISP_REMOTE_BIN, []];
  if (stdinKind === 'fifo') {
    const fifo = path.join(sandbox.dir, `audisp-remote-${instanceCounter}.stdin`);
    const mk = spawnSync(requireBinary('mkfifo'), ['-m', '0600', fifo]);
    if (mk.status !== 0) throw new Error(`mkfifo ${fifo} failed: ${mk.stderr?.toString()}`);
    // Open the read end first (non-blocking, so it does not wait for a writer), then the write end.
    const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writeFd = openSync(fifo, constants.O_WRONLY);
    try {
      child = sandbox.spawn(program, args, { ...spawnOpts, stdio: [readFd, 'pipe', 'pipe'] });
    } finally {
      closeSync(readFd);
    }
    input = new net.Socket({ fd: writeFd, readable: false, writable: true });
  } else {
    child = sandbox.spawn(program, args, { ...spawnOpts, stdio: ['pipe', 'pipe', 'pipe'] });
    input = child.stdin!;
  }
  input.on('error', () => {}); // EPIPE after the plugin exited is reported through write()/end() callbacks
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => {
    stderr += c;
  });
  child.stdout?.resume();
  const diagnostics = (): string => {
    const exit = hasExited(child)
      ? `audisp-remote exited: code ${child.exitCode}, signal ${child.signalCode}\n`
      : '';
    const sys = sandbox
      .syslog()
      .slice(syslogFrom)
      .map((e) => e.raw)
      .join('\n');
    return `${exit}stderr: ${stderr.trim()}\nsyslog:\n${sys}\nconfig:\n${opts.confText}`;
  };

  // It logs "Audisp-remote started with queue_size: N" after parsing its config and opening its queue
  // (a config error exits with status 6 instead). It does not connect before the first record.
  await pollUntil(
    () => {
      if (hasExited(child)) throw new Error(`audisp-remote exited during start-up\n${diagnostics()}`);
      return sandbox
        .syslog()
        .slice(syslogFrom)
        .some((e) => e.tag === 'audisp-remote' && e.message.startsWith('Audisp-remote started'));
    },
    { timeoutMs: opts.startTimeoutMs ?? 15_000, what: 'audisp-remote start-up syslog line', diagnostics },
  );
  const pid = child.pid!;

  const waitForIdle = async (timeoutMs = 15_000): Promise<void> => {
    const selects = SELECT_SYSCALLS[process.arch];
    if (selects === undefined)
      throw new Error(`waitForIdle: select syscall numbers unknown on ${process.arch}`);
    let last: number | 'running' | undefined;
    await pollUntil(
      () => {
        if (hasExited(child)) throw new Error(`audisp-remote exited\n${diagnostics()}`);
        last = blockedSyscall(pid);
        return typeof last === 'number' && selects.includes(last);
      },
      {
        timeoutMs,
        intervalMs: 5,
        what: 'audisp-remote to be idle in select()',
        diagnostics: () => `last seen in syscall ${last}\n${diagnostics()}`,
      },
    );
  };

  const dumpState = async (timeoutMs = 10_000): Promise<AudispRemoteState> => {
    await waitForIdle(timeoutMs);
    const from = sandbox.syslogCount;
    process.kill(pid, 'SIGUSR1');
    const entry = await sandbox.waitForSyslog((e) => e.tag === 'audisp-remote' && STATE_RE.test(e.message), {
      timeoutMs,
      what: 'audisp-remote SIGUSR1 state line',
      fromIndex: from,
    });
    const m = STATE_RE.exec(entry.message)!;
    return {
      suspend: m[1] === 'yes',
      remoteEnded: m[2] === 'yes',
      transportOk: m[3] === 'yes',
      queuedItems: Number(m[4]),
      queueDepth: Number(m[5]),
    };
  };

  return {
    child,
    pid,
    confPath,
    stdinKind,
    diagnostics,
    async write(records: Iterable<string | Buffer>): Promise<void> {
      const parts: Buffer[] = [];
      for (const r of records) {
        const b = typeof r === 'string' ? Buffer.from(r, 'utf8') : r;
        if (b.includes(0x0a)) throw new Error(`record contains '\\n': ${b.toString('utf8').slice(0, 80)}`);
        parts.push(b, Buffer.from('\n'));
      }
      await writeAsync(input, Buffer.concat(parts));
    },
    writeRaw: (data: string | Buffer) => writeAsync(input, data),
    end: () => new Promise<void>((resolve) => input.end(() => resolve())),
    waitForIdle,
    dumpState,
    async waitForState(predicate, what, timeoutMs = 15_000): Promise<AudispRemoteState> {
      let last: AudispRemoteState | undefined;
      return pollUntil(
        async () => {
          last = await dumpState(timeoutMs);
          return predicate(last) ? last : undefined;
        },
        {
          timeoutMs,
          intervalMs: 50,
          what: `audisp-remote state: ${what}`,
          diagnostics: () => `last state: ${JSON.stringify(last)}\n${diagnostics()}`,
        },
      );
    },
    signal(sig: NodeJS.Signals): void {
      if (!hasExited(child)) process.kill(pid, sig);
    },
    waitForExit: (timeoutMs = 15_000) => waitForExit(child, timeoutMs),
    async stop(timeoutMs = 15_000): Promise<ExitInfo> {
      if (hasExited(child)) return { code: child.exitCode, signal: child.signalCode };
      await waitForIdle(timeoutMs).catch(() => {}); // a plugin stuck in a long ACK wait is stopped anyway
      try {
        return await signalAndWait(child, 'SIGTERM', timeoutMs);
      } catch (err) {
        await signalAndWait(child, 'SIGKILL', 10_000);
        throw new Error(`audisp-remote ignored SIGTERM (killed with SIGKILL): ${(err as Error).message}`);
      }
    },
  };
}
