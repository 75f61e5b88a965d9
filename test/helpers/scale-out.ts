/**
 * Scale-out rigs for tests and the benchmark: collectors with output = jetstream and sinks run as real CLI
 * processes (started and killed by pid), test agents speaking the record-identity wire (rid-agent.mjs), and the
 * checker that reads every record's tag in the sink's output.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';
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

/** The highest record an agent has seen acknowledged in order (its state file). */
export function ackedOf(spec: AgentSpec): number {
  if (!existsSync(spec.stateFile)) return 0;
  return Number(readFileSync(spec.stateFile, 'utf8').trim() || 0);
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
