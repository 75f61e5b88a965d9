/**
 * Building blocks of the fault matrix: sequence-numbered records, a receiver that tails the server's log
 * and reports gaps and duplicates, a paced feeder, our agent and collector as real processes, and the
 * results table.
 *
 * A record is `type=USER_CMD msg=audit(…:N): … seq=N pad=… end=N'`: the checker accepts a line only if it
 * is byte-for-byte the record the feeder wrote for N, so a cut or mangled record is reported as corrupt,
 * never counted as delivered.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary } from '../helpers/prereq.js';
import { type ExitInfo, hasExited, pollUntil, signalAndWait, waitForExit } from '../helpers/wait.js';

export const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
export const ARTIFACTS_DIR = path.join(REPO_ROOT, 'test-artifacts');

// ---------------------------------------------------------------------------------------------------------
// Records

/** The record with sequence number `seq` (no newline). Its length varies with `seq` (about 170–230 bytes). */
export function faultRecord(seq: number, tag: string): string {
  const ms = String(seq % 1000).padStart(3, '0');
  const pad = 'x'.repeat(20 + (seq % 61));
  return `type=USER_CMD msg=audit(1700000000.${ms}:${seq}): pid=4242 uid=0 auid=1000 ses=7 msg='op=fault scenario=${tag} seq=${seq} pad=${pad} end=${seq}'`;
}

/** Records from..from+n-1 as plugin input (one per line). */
export function recordLines(from: number, n: number, tag: string): Buffer {
  let s = '';
  for (let i = 0; i < n; i++) s += `${faultRecord(from + i, tag)}\n`;
  return Buffer.from(s, 'latin1');
}

const SEQ_RE = / seq=(\d+) /;

// ---------------------------------------------------------------------------------------------------------
// Receiver: tails the server's log file(s)

/**
 * Reads the server's log files incrementally (a real auditd's own `node=…` records are skipped) and keeps
 * every received line in arrival order. `contiguous` is the largest n with 1..n all received: the progress
 * measure the cycles wait for.
 */
export class Receiver {
  readonly lines: string[] = [];
  /**
   * The files tailed, each as `tail -F` does: through an open descriptor (which follows the file when it is
   * renamed), and when the name points to another file (the server rotated its log: the collector's default
   * `max_log_file = 100` with `keep_logs` rotates during the long scenarios) the rest of the old file is read,
   * then the new one from its start.
   */
  readonly #files: {
    path: string;
    fd: number | null;
    ino: number;
    offset: number;
    partial: string;
    /** Files of this log read to their end (their inodes): a rotated one is never read twice. */
    done: Set<number>;
  }[] = [];
  #seen = new Uint8Array(1 << 16);
  contiguous = 0;
  /** Rotations followed (for diagnostics). */
  rotations = 0;
  readonly #skipPrefix: string | null;

  constructor(opts: { skipPrefix?: string } = {}) {
    this.#skipPrefix = opts.skipPrefix ?? null;
  }

  /** Tails `file` too (e.g. the log of a restarted auditd); lines are appended after those of earlier files. */
  addFile(file: string): void {
    this.#files.push({ path: file, fd: null, ino: -1, offset: 0, partial: '', done: new Set() });
  }

  poll(): void {
    for (const f of this.#files) {
      if (f.fd === null) {
        if (!existsSync(f.path)) continue;
        try {
          f.fd = openSync(f.path, 'r');
        } catch {
          continue; // renamed or removed between the check and the open: next poll
        }
        f.ino = fstatSync(f.fd).ino;
        f.offset = 0;
      }
      this.#readToEnd(f);
      let current: number | null = null;
      try {
        current = statSync(f.path).ino;
      } catch {
        // renamed, its successor not created yet: keep reading the old one
      }
      if (current !== null && current !== f.ino) {
        // Rotated: what was written to the old file before the rename, then the new file from its start.
        this.#readToEnd(f);
        if (f.partial !== '') this.#add(f.partial);
        f.partial = '';
        closeSync(f.fd);
        f.fd = null;
        f.done.add(f.ino);
        this.rotations++;
        // Several rotations between two polls: the files in between (now LOG.1, LOG.2, …) were never opened.
        this.#readRotatedBetween(f, current);
        try {
          f.fd = openSync(f.path, 'r');
          f.ino = fstatSync(f.fd).ino;
          f.offset = 0;
          this.#readToEnd(f);
        } catch {
          // gone again: next poll
        }
      }
    }
  }

  /** Reads, oldest first, every rotated file of `f`'s log not read yet (not the current one, inode `current`). */
  #readRotatedBetween(f: { path: string; done: Set<number> }, current: number): void {
    const unread: string[] = [];
    for (let k = 1; existsSync(`${f.path}.${k}`); k++) {
      const ino = statSync(`${f.path}.${k}`).ino;
      if (ino !== current && !f.done.has(ino)) unread.push(`${f.path}.${k}`);
    }
    for (const name of unread.reverse()) {
      const g = { fd: openSync(name, 'r') as number | null, offset: 0, partial: '' };
      const ino = fstatSync(g.fd!).ino;
      this.#readToEnd(g);
      if (g.partial !== '') this.#add(g.partial);
      closeSync(g.fd!);
      f.done.add(ino);
      this.rotations++;
    }
  }

  #readToEnd(f: { fd: number | null; offset: number; partial: string }): void {
    if (f.fd === null) return;
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = readSync(f.fd, buf, 0, buf.length, f.offset);
      if (n <= 0) return;
      f.offset += n;
      const text = f.partial + buf.subarray(0, n).toString('latin1');
      const parts = text.split('\n');
      f.partial = parts.pop() ?? '';
      for (const line of parts) this.#add(line);
    }
  }

  /** Closes the descriptors of the tailed files. */
  close(): void {
    for (const f of this.#files) {
      if (f.fd !== null) closeSync(f.fd);
      f.fd = null;
    }
  }

  #add(line: string): void {
    if (this.#skipPrefix !== null && line.startsWith(this.#skipPrefix)) return;
    this.lines.push(line);
    const m = SEQ_RE.exec(line);
    if (!m) return;
    const seq = Number(m[1]);
    if (seq >= this.#seen.length) {
      const bigger = new Uint8Array(Math.max(seq + 1, this.#seen.length * 2));
      bigger.set(this.#seen);
      this.#seen = bigger;
    }
    this.#seen[seq] = 1;
    while (this.#seen[this.contiguous + 1] === 1) this.contiguous++;
  }

  /** Waits until every record 1..n was received; fails at once if `agent` exits meanwhile. */
  async waitContiguous(
    n: number,
    timeoutMs: number,
    agent?: { exited: boolean; tail(): string },
  ): Promise<void> {
    await pollUntil(
      () => {
        this.poll();
        if (this.contiguous >= n) return true;
        if (agent?.exited)
          throw new Error(
            `the agent exited with 1..${this.contiguous} of 1..${n} delivered\n${agent.tail()}`,
          );
        return false;
      },
      {
        timeoutMs,
        intervalMs: 10,
        what: `records 1..${n} at the server`,
        diagnostics: () =>
          `have 1..${this.contiguous} (${this.lines.length} lines, ${this.rotations} log rotation(s) followed)\n${agent?.tail() ?? ''}`,
      },
    );
  }
}

export interface DeliveryReport {
  /** Records the agent accepted (1..total). */
  records: number;
  /** Lines received. */
  received: number;
  lost: number[];
  duplicates: number;
  /**
   * Resends seen at the server: runs of consecutive duplicates in arrival order, a new one starting
   * whenever the sequence goes back (the same window sent a third time).
   */
  episodes: number;
  /** Longest such run: bounded by the in-flight window. */
  maxEpisode: number;
  /** Lines that are not exactly a record the feeder wrote (cut, mangled or foreign). */
  corrupt: string[];
}

/** Gap and duplicate check of the received lines against records 1..total of `tag`. */
export function checkDelivery(lines: readonly string[], total: number, tag: string): DeliveryReport {
  const corrupt: string[] = [];
  const seqs: number[] = [];
  for (const raw of lines) {
    // Our collector appends the record's identity (record identities, docs/protocol.md): the record before it is
    // compared byte for byte.
    const line = raw.replace(/ rid=[A-Za-z0-9._-]{1,64}:[1-9]\d*$/, '');
    const m = SEQ_RE.exec(line);
    const seq = m ? Number(m[1]) : Number.NaN;
    if (!(seq >= 1 && seq <= total) || line !== faultRecord(seq, tag)) {
      corrupt.push(line.length > 300 ? `${line.slice(0, 300)}…` : line);
      continue;
    }
    seqs.push(seq);
  }
  const seen = new Uint8Array(total + 1);
  for (const seq of seqs) seen[seq] = 1;
  const lost: number[] = [];
  for (let i = 1; i <= total; i++) if (seen[i] === 0) lost.push(i);
  return { records: total, received: lines.length, lost, corrupt, ...duplicateRuns(seqs) };
}

/**
 * Duplicates in arrival order, grouped into resends: a run of consecutive duplicates, a new one starting
 * whenever the sequence goes back (the same window sent once more).
 */
export function duplicateRuns(seqs: readonly number[]): {
  duplicates: number;
  episodes: number;
  maxEpisode: number;
} {
  const seen = new Set<number>();
  let duplicates = 0;
  let episodes = 0;
  let run = 0;
  let maxEpisode = 0;
  let prev = 0;
  for (const seq of seqs) {
    if (seen.has(seq)) {
      duplicates++;
      if (run === 0 || seq <= prev) {
        episodes++;
        run = 0;
      }
      run++;
      maxEpisode = Math.max(maxEpisode, run);
    } else {
      run = 0;
      seen.add(seq);
    }
    prev = seq;
  }
  return { duplicates, episodes, maxEpisode };
}

// ---------------------------------------------------------------------------------------------------------
// Feeder

/**
 * Writes records to an agent's stdin at a steady pace (`batch` records every `everyMs`), respecting
 * backpressure. `written` is the last sequence number handed to the stream; `next` can be moved back
 * after an agent died with records unread in its pipe.
 */
export class Feeder {
  next = 1;
  #loop: Promise<void> | null = null;
  #stop = false;
  #wake: (() => void) | null = null;

  constructor(
    readonly tag: string,
    readonly batch = 40,
    readonly everyMs = 10,
  ) {}

  get written(): number {
    return this.next - 1;
  }

  /** Starts feeding `stream` (the stdin of a new agent process). */
  start(stream: Writable): void {
    if (this.#loop) throw new Error('feeder already running');
    this.#stop = false;
    stream.on('error', () => {});
    this.#loop = this.#run(stream);
  }

  /** Stops feeding (also while waiting for the stream to drain); resolves when the loop has ended. */
  async stop(): Promise<void> {
    this.#stop = true;
    this.#wake?.();
    await this.#loop;
    this.#loop = null;
  }

  async #run(stream: Writable): Promise<void> {
    while (!this.#stop && stream.writable && !stream.destroyed) {
      const data = recordLines(this.next, this.batch, this.tag);
      this.next += this.batch;
      const ok = stream.write(data);
      // Paced, or until the stream drains (backpressure), the stream goes away, or stop().
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          stream.off('drain', onDrain);
          stream.off('close', done);
          stream.off('error', done);
          this.#wake = null;
          resolve();
        };
        const onDrain = () => done();
        const timer = ok ? setTimeout(done, this.everyMs) : undefined;
        if (!ok) stream.on('drain', onDrain);
        stream.on('close', done);
        stream.on('error', done);
        this.#wake = done;
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Processes

export interface LogEntry {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export type Spawner = (cmd: string, args: string[], stdin: 'pipe' | 'ignore') => ChildProcess;

/** Spawns on the host (the default) with JSON logs. */
export const hostSpawner: Spawner = (cmd, args, stdin) =>
  spawn(cmd, args, {
    stdio: [stdin, 'ignore', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', AUDITRELAY_LOG_FORMAT: 'json' },
  });

/**
 * Wraps a command so that it runs in a private mount namespace with a tmpfs of `size` mounted on `dir`:
 * the mount exists only for that process and disappears with it (nothing to unmount, even after a crash).
 * Its files are reachable from outside through /proc/<pid>/root/<dir>.
 */
export function inPrivateTmpfs(dir: string, size: string, cmd: string, args: string[]): [string, string[]] {
  const unshare = findBinary('unshare');
  const sh = findBinary('sh');
  if (!unshare || !sh) throw new Error('unshare and sh are needed for a private tmpfs');
  return [
    unshare,
    [
      '--mount',
      '--propagation',
      'private',
      '--',
      sh,
      '-c',
      'mount -t tmpfs -o "size=$1,mode=0700" auditrelay-fault "$2" && shift 2 && exec "$@"',
      'sh',
      size,
      dir,
      cmd,
      ...args,
    ],
  ];
}

/** A child process of ours with its JSON log lines (stderr) parsed as they come. */
export class Proc {
  readonly logs: LogEntry[] = [];
  readonly stderr: string[] = [];
  #partial = '';

  constructor(readonly child: ChildProcess) {
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      const text = this.#partial + chunk;
      const parts = text.split('\n');
      this.#partial = parts.pop() ?? '';
      for (const line of parts) {
        if (line.length === 0) continue;
        try {
          this.logs.push(JSON.parse(line) as LogEntry);
        } catch {
          this.stderr.push(line);
        }
      }
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get exited(): boolean {
    return hasExited(this.child);
  }

  count(match: RegExp): number {
    return this.logs.filter((l) => match.test(l.msg)).length;
  }

  waitForLogCount(match: RegExp, n: number, timeoutMs = 10_000): Promise<void> {
    return pollUntil(() => this.count(match) >= n, {
      timeoutMs,
      intervalMs: 5,
      what: `${n} log line(s) matching ${match} from pid ${this.child.pid}`,
      diagnostics: () => this.tail(),
    }).then(() => {});
  }

  /** Failures the agent reported (the `kind` of each: link-lost, reply-timeout, protocol, disk-full, ...). */
  failures(): string[] {
    return this.logs
      .filter((l) => typeof l.kind === 'string' && 'backlog' in l && 'attempt' in l)
      .map((l) => l.kind as string);
  }

  waitForFailures(n: number, timeoutMs = 10_000): Promise<void> {
    return pollUntil(() => this.failures().length >= n, {
      timeoutMs,
      intervalMs: 5,
      what: `${n} failure(s) reported by the agent`,
      diagnostics: () => this.tail(),
    }).then(() => {});
  }

  waitForExit(timeoutMs: number): Promise<ExitInfo> {
    return waitForExit(this.child, timeoutMs);
  }

  async kill9(): Promise<ExitInfo> {
    return signalAndWait(this.child, 'SIGKILL', 10_000);
  }

  /** The last log lines, for failure messages. */
  tail(n = 40): string {
    const interesting = this.logs.filter((l) => !(l.msg === 'transition' && l.actor === 'queue'));
    return [
      ...interesting.slice(-n).map((l) => {
        const { level, msg, time, pid, hostname, name, ...rest } = l;
        return `${level} ${msg} ${JSON.stringify(rest)}`;
      }),
      ...this.stderr.slice(-10),
    ].join('\n');
  }
}

export interface AgentConfOptions {
  port: number;
  queueDir: string;
  maxInFlight?: number;
  heartbeat?: number;
  extra?: string[];
}

/** The agent configuration used by the matrix: forward mode (durable queue), fast backoff, short deadlines. */
export function agentConf(file: string, o: AgentConfOptions): string {
  writeFileSync(
    file,
    [
      'remote_server = 127.0.0.1',
      `port = ${o.port}`,
      'mode = forward',
      `queue_dir = ${o.queueDir}`,
      `max_in_flight = ${o.maxInFlight ?? 64}`,
      'max_time_per_record = 1',
      `heartbeat_timeout = ${o.heartbeat ?? 0}`,
      'reconnect_initial_ms = 10',
      'reconnect_max_ms = 100',
      'drain_timeout = 10',
      'disk_full_action = syslog',
      'disk_error_action = syslog',
      'remote_ending_action = reconnect',
      'network_failure_action = syslog',
      'log_level = debug',
      ...(o.extra ?? []),
      '',
    ].join('\n'),
  );
  return file;
}

export function startAgent(
  conf: string,
  spawner: Spawner = hostSpawner,
  wrap?: { dir: string; size: string },
) {
  const args = [BIN, 'agent', '--config', conf];
  const [cmd, argv] = wrap
    ? inPrivateTmpfs(wrap.dir, wrap.size, process.execPath, args)
    : [process.execPath, args];
  return new Proc(spawner(cmd, argv, 'pipe'));
}

/** Our collector as a process; resolves once it listens (its port is read from its log). */
export async function startCollector(
  logFile: string,
  port = 0,
  wrap?: { dir: string; size: string },
): Promise<{ proc: Proc; port: number }> {
  // max_log_file as Debian's auditd.conf ships it (8 MiB): a restart resumes the evidence chain of the current
  // file by replaying it (docs/evidence.md), which at the scenarios' pace and the default 100 MiB takes longer than
  // these scenarios give a restart on a loaded 2-core machine.
  // Beside the log, or beside the private tmpfs (mounted over the log's directory, it would hide the file).
  const conf = path.join(path.dirname(wrap ? wrap.dir : logFile), 'collector.conf');
  writeFileSync(conf, 'max_log_file = 8\nmax_log_file_action = keep_logs\n', { mode: 0o600 });
  const args = [
    BIN,
    'collector',
    '--config',
    conf,
    '--listen',
    `127.0.0.1:${port}`,
    '--log',
    logFile,
    '--evidence-key-file',
    path.join(path.dirname(logFile), 'keys', 'signing.key'),
  ];
  const [cmd, argv] = wrap
    ? inPrivateTmpfs(wrap.dir, wrap.size, process.execPath, args)
    : [process.execPath, args];
  const proc = new Proc(hostSpawner(cmd, argv, 'ignore'));
  const entry = await pollUntil(
    () => {
      if (proc.exited) throw new Error(`collector exited during start-up\n${proc.tail()}`);
      return proc.logs.find((l) => l.msg === 'collector listening');
    },
    { timeoutMs: 15_000, intervalMs: 5, what: 'the collector to listen', diagnostics: () => proc.tail() },
  );
  return { proc, port: Number(entry.port) };
}

/**
 * The highest sequence number the agent accepted, read from its durable queue: every complete record in
 * the segment files (`append()` writes a record with one pwrite before it counts as accepted, so a killed
 * agent leaves exactly what it accepted). `root` prefixes the path (/proc/<pid>/root for a private mount).
 */
export function acceptedInQueue(queueDir: string, tag: string): number {
  if (!existsSync(queueDir)) return 0;
  let max = 0;
  const re = new RegExp(` scenario=${tag} seq=(\\d+) pad=x+ end=(\\d+)'\\n`, 'g');
  for (const name of readdirSync(queueDir)) {
    if (!/^seg-\d+\.log$/.test(name)) continue;
    const text = readFileSync(path.join(queueDir, name)).toString('latin1');
    for (const m of text.matchAll(re)) if (m[1] === m[2]) max = Math.max(max, Number(m[1]));
  }
  return max;
}

// ---------------------------------------------------------------------------------------------------------
// Results

export interface ScenarioResult {
  scenario: string;
  server: string;
  cycles: number;
  records: number;
  lost: number;
  duplicates: number;
  /** Longest run of duplicates (one resend). */
  maxEpisode: number;
  /** The bound the duplicates of one fault must stay within. */
  bound: number;
  corrupt: number;
  /** Failures the agent reported, by kind. */
  detected: string;
  seconds: number;
}

export function formatTable(rows: readonly ScenarioResult[]): string {
  const head = [
    'scenario',
    'server',
    'cycles',
    'records',
    'lost',
    'duplicates',
    'max dup run',
    'dup bound',
    'corrupt',
    'agent saw',
    'seconds',
  ];
  const body = rows.map((r) => [
    r.scenario,
    r.server,
    String(r.cycles),
    String(r.records),
    String(r.lost),
    String(r.duplicates),
    String(r.maxEpisode),
    String(r.bound),
    String(r.corrupt),
    r.detected,
    r.seconds.toFixed(1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

export function writeArtifact(name: string, text: string): string {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const file = path.join(ARTIFACTS_DIR, name);
  writeFileSync(file, text);
  return file;
}

/** "link-lost×10, dial×3" */
export function summarizeKinds(kinds: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const k of kinds) counts.set(k, (counts.get(k) ?? 0) + 1);
  return [...counts.entries()].map(([k, n]) => `${k}×${n}`).join(', ') || '-';
}
