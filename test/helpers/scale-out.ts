/**
 * Scale-out rigs for tests and the benchmark: collectors with output = jetstream, sinks and real agents
 * (`auditrelay agent`, fed on stdin) run as CLI processes (started and killed by pid); the benchmark's test agents
 * speaking the record-identity wire (rid-agent.mjs); and the checker that reads every record's tag in the sink's
 * output.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { PACKAGE_ROOT } from '../../src/paths.js';
import {
  decodeAck,
  RECORD_HEADER_SIZE,
  readId,
  SEGMENT_HEADER_SIZE,
} from '../../src/queue/segment-format.js';
import { freePorts } from './nats-cluster.js';
import { pollUntil } from './wait.js';

export const BIN = path.join(PACKAGE_ROOT, 'bin/auditrelay.js');
export const RID_AGENT = path.join(PACKAGE_ROOT, 'test/helpers/rid-agent.mjs');

export interface Proc {
  name: string;
  proc: ChildProcess;
  out: string[];
}

function track(name: string, proc: ChildProcess): Proc {
  const p: Proc = { name, proc, out: [] };
  const keep = (b: Buffer) => {
    p.out.push(...b.toString('utf8').split('\n').filter(Boolean));
    if (p.out.length > 300) p.out.splice(0, p.out.length - 300);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return p;
}

export function alive(p: Proc | null): boolean {
  return p !== null && p.proc.exitCode === null && p.proc.signalCode === null;
}

/** kill -9 by pid; resolves once it exited. */
export async function kill9(p: Proc | null): Promise<void> {
  if (!p || !alive(p)) return;
  const exited = new Promise((resolve) => p.proc.once('exit', resolve));
  process.kill(p.proc.pid!, 'SIGKILL');
  await exited;
}

/** SIGTERM by pid; resolves with the exit code. */
export async function stopProc(p: Proc | null, timeoutMs = 15_000): Promise<number | null> {
  if (!p || !alive(p)) return p?.proc.exitCode ?? null;
  const exited = new Promise<number | null>((resolve) => p.proc.once('exit', (code) => resolve(code)));
  process.kill(p.proc.pid!, 'SIGTERM');
  const t = setTimeout(() => alive(p) && process.kill(p.proc.pid!, 'SIGKILL'), timeoutMs);
  const code = await exited;
  clearTimeout(t);
  return code;
}

export interface CollectorRig {
  port: number;
  config: string;
  proc: Proc | null;
}

/** Writes a collector configuration with output = jetstream (port chosen now, kept across restarts). */
export async function collectorConfig(
  dir: string,
  name: string,
  servers: string[],
  stream: string,
  extra: string[] = [],
): Promise<CollectorRig> {
  const [port] = await freePorts(1);
  const config = path.join(dir, `${name}.conf`);
  writeFileSync(
    config,
    [
      `tcp_listen_address = 127.0.0.1`,
      `tcp_listen_port = ${port}`,
      `tcp_max_per_addr = 64`,
      `output = jetstream`,
      `jetstream_servers = ${servers.join(', ')}`,
      `jetstream_stream = ${stream}`,
      `evidence = no`,
      `host_silence_timeout = 0`,
      `log_level = info`,
      ...extra,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return { port: port!, config, proc: null };
}

/** Starts `auditrelay collector --config` and waits until it listens. */
export async function startCollector(rig: CollectorRig, name: string): Promise<Proc> {
  const p = track(
    name,
    spawn(process.execPath, [BIN, 'collector', '--config', rig.config], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, AUDITRELAY_LOG_TARGET: 'stderr' },
    }),
  );
  rig.proc = p;
  await pollUntil(() => p.out.some((l) => l.includes('collector listening')) || !alive(p), {
    timeoutMs: 20_000,
    what: `${name} to listen`,
    diagnostics: () => p.out.join('\n'),
  });
  if (!alive(p)) throw new Error(`${name} exited: ${p.out.join('\n')}`);
  return p;
}

export interface SinkRig {
  config: string;
  log: string;
  proc: Proc | null;
}

export function sinkConfig(dir: string, servers: string[], stream: string, extra: string[] = []): SinkRig {
  const config = path.join(dir, 'sink.conf');
  const log = path.join(dir, 'sink', 'audit.log');
  mkdirSync(path.dirname(log), { recursive: true, mode: 0o750 });
  writeFileSync(
    config,
    [
      `jetstream_servers = ${servers.join(', ')}`,
      `jetstream_stream = ${stream}`,
      `log_file = ${log}`,
      `evidence = no`,
      `max_log_file = 0`,
      `space_left = 0`,
      `admin_space_left = 0`,
      ...extra,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return { config, log, proc: null };
}

export function startSink(rig: SinkRig): Proc {
  const p = track(
    'sink',
    spawn(process.execPath, [BIN, 'sink', '--config', rig.config], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, AUDITRELAY_LOG_TARGET: 'stderr' },
    }),
  );
  rig.proc = p;
  return p;
}

export interface AgentSpec {
  host: string;
  agent: string;
  port: number;
  total: number;
  stateFile: string;
  window?: number;
  bytes?: number;
  rate?: number;
}

export function startRidAgent(spec: AgentSpec): Proc {
  return track(
    spec.host,
    spawn(process.execPath, [RID_AGENT, JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'pipe'] }),
  );
}

// ---------------------------------------------------------------------------------------------------------
// The real agent, fed on stdin

/**
 * Record `n` of host `host` in the plugin string format (one line, about 300 bytes, no newline): its tag
 * `tag=HOST:N` is what the checker reads, `node=HOST` what the collector accounts the host by.
 */
export function hostRecord(host: string, n: number): string {
  const head = `node=${host} type=USER msg=audit(1764600000.${String(n % 1000).padStart(3, '0')}:${n}): pid=${n} uid=0 auid=0 msg='op=test tag=${host}:${n} pad=`;
  const tail = ` end=${n}'`;
  return head + 'x'.repeat(Math.max(0, 300 - head.length - tail.length)) + tail;
}

export interface AgentRigOptions {
  host: string;
  /** The test's directory: the agent's configuration, queue_dir and state_file go in `dir/HOST/`. */
  dir: string;
  /** remote_server: these ports on 127.0.0.1, in this order. */
  ports: number[];
  /** Records 1..total are fed. */
  total: number;
  /** Records fed per second (default 500). */
  rate?: number;
  /**
   * At most this many records fed beyond the agent's acknowledged ones (default 1500): a stall (a stream leader's
   * election) pauses the feeding, so that every kill of the test happens while records are still being fed.
   */
  maxAhead?: number;
  /** More configuration lines. */
  extra?: string[];
}

/**
 * `auditrelay agent --config FILE` as auditd runs it (records on stdin, `mode = forward`, its durable queue and
 * state file in the test's directory), fed records 1..total of its host at a steady pace by a feeder that respects
 * the pipe's back-pressure. After a kill -9 the feeder goes on from the last record the killed process had
 * accepted (in its durable queue): records written into the dead process's pipe and never read were not
 * accepted, and are fed again to the next instance, which keeps the agent id (queue_dir/agent-id).
 */
export class AgentRig {
  readonly host: string;
  readonly config: string;
  readonly queueDir: string;
  readonly stateFile: string;
  readonly total: number;
  readonly #rate: number;
  readonly #maxAhead: number;
  proc: Proc | null = null;
  /** The next record to feed. */
  next = 1;
  /** Records are fed up to this one (raise it to feed more). */
  feedLimit: number;
  /** Processes started. */
  starts = 0;
  #feeding: Promise<void> | null = null;
  #stop = false;
  #wake: (() => void) | null = null;

  constructor(o: AgentRigOptions) {
    this.host = o.host;
    this.total = o.total;
    this.feedLimit = o.total;
    this.#rate = o.rate ?? 500;
    this.#maxAhead = o.maxAhead ?? 1500;
    const home = path.join(o.dir, o.host);
    mkdirSync(home, { recursive: true, mode: 0o700 });
    this.config = path.join(home, 'agent.conf');
    this.queueDir = path.join(home, 'queue');
    this.stateFile = path.join(home, 'agent.state');
    writeFileSync(
      this.config,
      [
        `remote_server = ${o.ports.map((p) => `127.0.0.1:${p}`).join(', ')}`,
        'mode = forward',
        `queue_dir = ${this.queueDir}`,
        `state_file = ${this.stateFile}`,
        'reconnect_initial_ms = 100',
        'reconnect_max_ms = 1000',
        'network_failure_action = syslog',
        'disk_full_action = syslog',
        'disk_error_action = syslog',
        'drain_timeout = 10',
        'log_level = info',
        ...(o.extra ?? []),
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
  }

  /** Starts a process and feeds it from `next` on. */
  start(): Proc {
    if (alive(this.proc)) throw new Error(`agent ${this.host} is running`);
    const p = track(
      this.host,
      spawn(process.execPath, [BIN, 'agent', '--config', this.config], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, AUDITRELAY_LOG_TARGET: 'stderr' },
      }),
    );
    this.proc = p;
    this.starts++;
    this.#stop = false;
    this.#feeding = this.#feed(p.proc.stdin!);
    return p;
  }

  /** The last record acknowledged (the durable queue's ack cursor; a queue id is the record's number here). */
  acked(): number {
    try {
      const d = decodeAck(readFileSync(path.join(this.queueDir, 'ack')));
      return 'acked' in d ? d.acked : 0;
    } catch {
      return 0;
    }
  }

  /**
   * The last record the agent accepted: the highest in its durable queue's segments (intact, checksummed records;
   * `append()` writes a record with one write before it counts as accepted, so a killed agent leaves exactly what
   * it accepted), or the last acknowledged one when the segments holding it are gone. Checks on the way that each
   * record's queue id is its number (the identity the collector and the stream de-duplicate by).
   */
  accepted(): number {
    let max = 0;
    if (existsSync(this.queueDir)) {
      for (const name of readdirSync(this.queueDir)) {
        if (!/^seg-\d+\.log$/.test(name)) continue;
        const b = readFileSync(path.join(this.queueDir, name));
        for (let pos = SEGMENT_HEADER_SIZE; pos + RECORD_HEADER_SIZE <= b.length; ) {
          const len = b.readUInt32LE(pos + 4);
          const end = pos + RECORD_HEADER_SIZE + len;
          if (end > b.length || crc32(b.subarray(pos + 4, end)) !== b.readUInt32LE(pos)) break;
          const id = readId(b, pos + 8);
          const m = / tag=([^ :]+):([0-9]+) /.exec(
            b.subarray(pos + RECORD_HEADER_SIZE, end).toString('latin1'),
          );
          if (!m || m[1] !== this.host || Number(m[2]) !== id)
            throw new Error(
              `${name} of ${this.host}: record id ${id} holds ${m ? `${m[1]}:${m[2]}` : 'no tag'}`,
            );
          max = Math.max(max, id);
          pos = end;
        }
      }
    }
    return Math.max(max, this.acked());
  }

  /**
   * kill -9; the feeder stops and goes back to the record after the last one accepted. With `burst`, that many more
   * records are written into the pipe just before the signal: records the process never reads (auditd had written
   * them; the kill took them), fed again to the next process.
   */
  async kill9(burst = 0): Promise<{ accepted: number; fed: number }> {
    const p = this.proc;
    if (burst > 0 && alive(p) && p!.proc.stdin!.writable) {
      let text = '';
      for (const end = Math.min(this.total, this.next + burst - 1); this.next <= end; this.next++)
        text += `${hostRecord(this.host, this.next)}\n`;
      p!.proc.stdin!.write(text);
    }
    await kill9(p);
    await this.#stopFeeding();
    const fed = this.next - 1;
    const accepted = this.accepted();
    this.next = accepted + 1;
    return { accepted, fed };
  }

  /**
   * Once every record is fed and acknowledged: closes stdin (auditd stopping the plugin) and resolves with the
   * exit code once the agent has drained and exited.
   */
  async finish(timeoutMs: number, diagnostics?: () => string): Promise<number | null> {
    const p = this.proc;
    if (!p) throw new Error(`agent ${this.host} never started`);
    await pollUntil(() => !alive(p) || (this.next > this.total && this.acked() >= this.total), {
      timeoutMs,
      what: `agent ${this.host}: records 1..${this.total} fed and acknowledged`,
      diagnostics: () =>
        `fed ${this.next - 1}, acked ${this.acked()}\n${p.out.slice(-20).join('\n')}\n${diagnostics?.() ?? ''}`,
    });
    await this.#stopFeeding();
    const exited = new Promise<number | null>((resolve) =>
      alive(p) ? p.proc.once('exit', (code) => resolve(code)) : resolve(p.proc.exitCode),
    );
    p.proc.stdin!.end();
    const t = setTimeout(() => alive(p) && process.kill(p.proc.pid!, 'SIGKILL'), 20_000);
    const code = await exited;
    clearTimeout(t);
    return code;
  }

  async #stopFeeding(): Promise<void> {
    this.#stop = true;
    this.#wake?.();
    await this.#feeding;
    this.#feeding = null;
  }

  async #feed(stdin: Writable): Promise<void> {
    stdin.on('error', () => {});
    const t0 = performance.now();
    const from = this.next;
    while (!this.#stop && this.next <= this.total && stdin.writable && !stdin.destroyed) {
      const paced = from - 1 + Math.floor(((performance.now() - t0) / 1000) * this.#rate);
      const upTo = Math.min(this.total, this.feedLimit, paced, this.acked() + this.#maxAhead);
      let text = '';
      for (; this.next <= upTo; this.next++) text += `${hostRecord(this.host, this.next)}\n`;
      const ok = text === '' || stdin.write(text);
      // 20 ms, or until the pipe drains (back-pressure), goes away, or the feeder is stopped.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          stdin.off('drain', done);
          stdin.off('close', done);
          stdin.off('error', done);
          this.#wake = null;
          resolve();
        };
        const timer = ok ? setTimeout(done, 20) : undefined;
        if (!ok) stdin.on('drain', done);
        stdin.on('close', done);
        stdin.on('error', done);
        this.#wake = done;
      });
    }
  }
}

export interface CheckResult {
  lines: number;
  /** host → records seen */
  perHost: Map<string, number>;
  duplicates: string[];
  outOfOrder: string[];
  missing: string[];
  malformed: number;
  /** js_seq values not strictly increasing */
  seqProblems: number;
}

/**
 * Reads every line of the sink's log (and its rotated files) and checks each record's tag `tag=HOST:N`: every
 * N of 1..expected[HOST] exactly once, in increasing order per host; js_seq strictly increasing.
 */
export function checkSinkLog(files: string[], expected: Map<string, number>): CheckResult {
  const r: CheckResult = {
    lines: 0,
    perHost: new Map(),
    duplicates: [],
    outOfOrder: [],
    missing: [],
    malformed: 0,
    seqProblems: 0,
  };
  const seen = new Map<string, Set<number>>();
  const last = new Map<string, number>();
  let lastSeq = 0;
  for (const f of files) {
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, 'latin1').split('\n')) {
      if (line === '') continue;
      r.lines++;
      const m = / tag=([^ :]+):([0-9]+) /.exec(line);
      const js = / js_seq=([0-9]+)$/.exec(line);
      if (!m || !js) {
        r.malformed++;
        continue;
      }
      const seq = Number(js[1]);
      if (seq <= lastSeq) r.seqProblems++;
      lastSeq = seq;
      const host = m[1]!;
      const n = Number(m[2]);
      let s = seen.get(host);
      if (!s) {
        s = new Set();
        seen.set(host, s);
      }
      if (s.has(n)) r.duplicates.push(`${host}:${n}`);
      s.add(n);
      if (n <= (last.get(host) ?? 0)) r.outOfOrder.push(`${host}:${n} after ${last.get(host)}`);
      last.set(host, Math.max(n, last.get(host) ?? 0));
      r.perHost.set(host, (r.perHost.get(host) ?? 0) + 1);
    }
  }
  for (const [host, total] of expected) {
    const s = seen.get(host) ?? new Set<number>();
    for (let n = 1; n <= total; n++) if (!s.has(n)) r.missing.push(`${host}:${n}`);
  }
  return r;
}

/** A short summary of a check for assertion messages. */
export function describeCheck(r: CheckResult): string {
  return JSON.stringify({
    lines: r.lines,
    perHost: Object.fromEntries(r.perHost),
    duplicates: r.duplicates.slice(0, 10),
    duplicateCount: r.duplicates.length,
    outOfOrder: r.outOfOrder.slice(0, 10),
    outOfOrderCount: r.outOfOrder.length,
    missing: r.missing.slice(0, 10),
    missingCount: r.missing.length,
    malformed: r.malformed,
    seqProblems: r.seqProblems,
  });
}
