/**
 * Benchmark: our agent vs the real audisp-remote (Debian 3.0.9), both sending to the real auditd 3.0.9 on
 * loopback, plus our agent → our collector, a max_in_flight sweep, a 1,000,000-record backlog, the durable
 * queue's append rate per fsync policy, and a minimal pipelined reference client that gives each server's
 * ceiling. Same machine, same records, one run. BENCHMARKS.md says what is measured and how.
 *
 *   npm run bench                                 # build, then node dist/bench/run.js (root: namespaces, auditd)
 *   npm run bench -- --smoke                      # every scenario once with a few records; report on stdout only
 *   npm run bench -- --quick                      # fewer records, one repetition
 *   npm run bench -- --only agent:auditd:1024     # one throughput case, --reps times
 *   npm run bench -- --only queue                 # the durable queue's append rates (no root needed)
 *   npm run bench -- --records 200000 --reps 5 --backlog 1000000 --out BENCHMARKS.md
 *
 * Everything runs inside a private network + mount namespace made by the tests' NetnsSandbox
 * (test/helpers/netns.ts): a private loopback (auditd on its usual port 60), a private /run, a private /dev whose
 * /dev/log the sandbox serves (the daemons' syslog stays out of the host's), audisp-remote's fixed config
 * bind-mounted over inside the namespace only. auditd and audisp-remote are started by the tests' helpers, the
 * records come from the tests' corpus helper, waits use the tests' pollUntil.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { expectedRecords, loadCorpus, REPO_ROOT } from '../test/helpers/corpus.js';
import { NetnsSandbox } from '../test/helpers/netns.js';
import { missingPrerequisites } from '../test/helpers/prereq.js';
import { AUDISP_REMOTE_BIN } from '../test/helpers/real-audisp-remote.js';
import { AUDITD_BIN } from '../test/helpers/real-auditd.js';
import { pollUntil, waitForExit } from '../test/helpers/wait.js';
import { cpuSeconds, foreignCores, foreignTicks, machine, memory, waitQuiet } from './host.js';
import { LogTail } from './log-tail.js';
import { AUDITD_PORT, type Client, Peers, type Server } from './peers.js';
import {
  type BacklogResult,
  fmtInt,
  fmtMB,
  type Kind,
  keyOf,
  type LatencyResult,
  PLAN,
  type QueueAppendResult,
  report,
  type ServerKind,
  type SweepResult,
  summarize,
  type ThroughputResult,
  writeReport,
} from './report.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const { values: opt } = parseArgs({
  options: {
    records: { type: 'string', default: '200000' },
    reps: { type: 'string', default: '5' },
    rate: { type: 'string', default: '5000' },
    'latency-seconds': { type: 'string', default: '4' },
    backlog: { type: 'string', default: '1000000' },
    windows: { type: 'string', default: '16,64,256,1024,4096' },
    out: { type: 'string' },
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
    smoke: { type: 'boolean', default: false },
    'cpu-prof': { type: 'string' },
    only: { type: 'string' },
  },
});
if (opt.quick) {
  opt.records = '50000';
  opt.reps = '1';
  opt.backlog = '200000';
  opt['latency-seconds'] = '2';
}
/** A smoke run: every scenario once, a few records, no waiting for a quiet machine, the report on stdout. */
const SMOKE = opt.smoke;
if (SMOKE) {
  opt.records = '2000';
  opt.reps = '1';
  opt.backlog = '5000';
  opt['latency-seconds'] = '0.5';
  opt.windows = '16,1024';
}
const OUT = opt.out ?? (SMOKE ? null : path.join(REPO_ROOT, 'BENCHMARKS.md'));
const N = Number(opt.records);
const REPS = Number(opt.reps);
const RATE = Number(opt.rate);

const log = (line: string) => console.log(line);

// ---------------------------------------------------------------------------------------------------------
// The durable queue's append rate: a separate Node process (fresh JIT), no namespace, no root.

async function queueAppend(): Promise<QueueAppendResult> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-bench-queue-'));
  try {
    const child = spawn(
      process.execPath,
      [path.join(HERE, 'queue-append.js'), dir, '--scale', SMOKE ? '0.01' : '1'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const exit = await waitForExit(child, 600_000);
    if (exit.code !== 0) throw new Error(`queue-append exited ${JSON.stringify(exit)}`);
    return JSON.parse(out) as QueueAppendResult;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function logQueueAppend(q: QueueAppendResult): void {
  log(
    `  durable queue appends/s, 300-byte records: ${Object.entries(q)
      .map(([k, v]) => `${k} ${fmtInt(v)}`)
      .join(', ')}`,
  );
}

if (opt.only === 'queue') {
  logQueueAppend(await queueAppend());
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------------------
// The namespace.

const missing = missingPrerequisites({
  suite: 'bench',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', 'umount', 'findmnt', AUDITD_BIN, AUDISP_REMOTE_BIN],
});
if (missing.length > 0) {
  console.error(`bench: cannot run here:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  console.error('(`npm run bench -- --only queue` measures the durable queue alone, without root)');
  process.exit(2);
}

const sandbox = await NetnsSandbox.create();
const peers = new Peers(sandbox);
let exiting = false;
const cleanup = async (code: number) => {
  if (exiting) return;
  exiting = true;
  await sandbox.destroy().catch((err: Error) => console.error(`bench: ${err.message}`));
  process.exit(code);
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void cleanup(130));

/** Our processes: this one, the sandbox's holder and everything started in it. */
function ourPids(): Set<number> {
  return new Set([process.pid, sandbox.holderPid, ...sandbox.runningProcesses.map((c) => c.pid!)]);
}

async function quiet(): Promise<void> {
  if (!SMOKE) await waitQuiet(ourPids, log);
}

// ---------------------------------------------------------------------------------------------------------
// Records: the corpus, as every client forwards it, repeated to N.

/**
 * The corpus records every client forwards unchanged and auditd logs whole: the delivery contract's records
 * (test/helpers/corpus.ts: not blank, not EOE), with a space (audisp-remote drops lines without one), at most
 * 8953 bytes (auditd's limit).
 */
function corpusRecords(): Buffer[] {
  return (
    loadCorpus({ includeShared: false })
      // Complete lines only: a file's last line without '\n' would be glued to the next file's first.
      .flatMap((f) => expectedRecords(f.bytes.subarray(0, f.bytes.lastIndexOf(0x0a) + 1)))
      .filter((line) => line.includes(0x20) && line.length <= 8953)
  );
}

const CORPUS = corpusRecords();
const NEWLINE = Buffer.from('\n');

/** `n` records cycling through the corpus, each with its '\n'. */
function recordsBuffer(n: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) parts.push(CORPUS[i % CORPUS.length]!, NEWLINE);
  return Buffer.concat(parts);
}

const RECORDS = recordsBuffer(N);
const RECORDS_FILE = path.join(sandbox.dir, 'records.txt');
writeFileSync(RECORDS_FILE, RECORDS);

/** Writes `buf` to `stream` as fast as it is read. */
async function feedAll(stream: Client['input'], buf: Buffer): Promise<void> {
  const SLICE = 256 * 1024;
  for (let off = 0; off < buf.length; off += SLICE) {
    if (!stream.write(buf.subarray(off, Math.min(buf.length, off + SLICE)))) {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          stream.off('drain', done);
          stream.off('error', done);
          if (err) reject(err);
          else resolve();
        };
        stream.on('drain', done);
        stream.on('error', done);
      });
    }
  }
}

/** Writes records at `rate` per second; `sentAt[i]` = time record i was written. */
async function feedPaced(stream: Client['input'], records: Buffer[], rate: number, sentAt: Float64Array) {
  const t0 = performance.now();
  let i = 0;
  while (i < records.length) {
    const due = Math.min(records.length, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    if (due > i) {
      const now = performance.now();
      const parts: Buffer[] = [];
      for (; i < due; i++) {
        parts.push(records[i]!, NEWLINE);
        sentAt[i] = now;
      }
      if (!stream.write(Buffer.concat(parts)))
        await new Promise<void>((resolve) => stream.once('drain', () => resolve()));
    }
    await delay(1);
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const startServer = (kind: ServerKind): Promise<Server> =>
  kind === 'auditd' ? peers.auditd() : peers.collector();

// ---------------------------------------------------------------------------------------------------------
// Runs

interface ThroughputOptions {
  window?: number | undefined;
  cpuProf?: string | undefined;
}

/**
 * One throughput run: N records, as fast as the client takes them, on a quiet machine. A run during which
 * other processes on the host used more than 0.25 of a core is repeated (at most twice more); the result
 * says how much foreign load there was.
 */
async function throughput(kind: Kind, serverKind: ServerKind, o: ThroughputOptions = {}) {
  let best: ThroughputResult | null = null;
  for (let attempt = 1; attempt <= (SMOKE ? 1 : 3); attempt++) {
    await quiet();
    const r = await throughputOnce(kind, serverKind, o);
    if (!best || r.foreignCores < best.foreignCores) best = r;
    if (r.foreignCores <= 0.25 || SMOKE) break;
    log(
      `  (${kind} → ${serverKind}: other processes used ${r.foreignCores.toFixed(2)} cores (${r.foreignNames.join(', ')}); measuring again)`,
    );
  }
  return best!;
}

async function throughputOnce(
  kind: Kind,
  serverKind: ServerKind,
  o: ThroughputOptions,
): Promise<ThroughputResult> {
  const server = await startServer(serverKind);
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const serverCpu0 = cpuSeconds(server.child.pid!);
  try {
    if (kind === 'reference') {
      const foreign0 = foreignTicks(ourPids());
      const w0 = performance.now();
      const child = peers.reference(server.port, RECORDS_FILE);
      let out = '';
      let err = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
      });
      const exit = await waitForExit(child, 300_000);
      if (exit.code !== 0) throw new Error(`reference client failed: ${err}`);
      await tail.waitFor(N, 60_000);
      const foreign = foreignCores(foreign0, foreignTicks(ourPids()), (performance.now() - w0) / 1000);
      const r = JSON.parse(out) as {
        recordsPerSecond: number;
        seconds: number;
        cpuSeconds: number;
        peakRssBytes: number;
      };
      return {
        kind,
        server: server.name,
        window: 8192,
        recordsPerSecond: r.recordsPerSecond,
        seconds: r.seconds,
        cpuSeconds: r.cpuSeconds,
        peakRss: r.peakRssBytes,
        serverCpuSeconds: cpuSeconds(server.child.pid!) - serverCpu0,
        foreignCores: foreign.cores,
        foreignNames: foreign.names,
        reconnects: 0,
      };
    }
    const client =
      kind === 'audisp-remote'
        ? await peers.audispRemote(server.port)
        : peers.agent(server.port, {
            window: o.window,
            jitless: kind === 'jitless',
            mode: kind === 'agent-immediate' ? 'immediate' : 'forward',
            queueDepth: kind === 'agent-immediate' ? 1_000_000 : 2048,
            cpuProf: o.cpuProf,
          });
    if (kind !== 'audisp-remote') await peers.waitConnected(server);
    const foreign0 = foreignTicks(ourPids());
    const t0 = performance.now();
    const fed = feedAll(client.input, RECORDS);
    const tEnd = await tail.waitFor(
      N,
      600_000,
      () => `${client.stderrText()}\n${sandbox.syslogText().split('\n').slice(-10).join('\n')}`,
    );
    await fed;
    const seconds = (tEnd - t0) / 1000;
    const foreign = foreignCores(foreign0, foreignTicks(ourPids()), seconds);
    const cpu = cpuSeconds(client.child.pid!);
    const mem = memory(client.child.pid!);
    const serverCpu = cpuSeconds(server.child.pid!) - serverCpu0;
    await client.finish();
    if (tail.count !== N) throw new Error(`${kind}: ${tail.count} records arrived, expected ${N}`);
    // A sound run has no reconnect (auditd drops acks it cannot write: a too large window would show here).
    const reconnects = (client.stderrText().match(/link to the server lost/g) ?? []).length;
    if (reconnects > 0)
      log(`  (${kind} → ${serverKind}: the agent lost its link ${reconnects} time(s) during the run)`);
    return {
      reconnects,
      kind,
      server: server.name,
      window: kind === 'audisp-remote' ? 1 : (o.window ?? 1024),
      recordsPerSecond: N / seconds,
      seconds,
      cpuSeconds: cpu,
      peakRss: mem.hwm,
      serverCpuSeconds: serverCpu,
      foreignCores: foreign.cores,
      foreignNames: foreign.names,
    };
  } finally {
    tail.stop();
    await server.stop();
  }
}

/** End-to-end latency at a fixed offered load: write to the client's stdin → line in the server's log. */
async function latency(
  kind: Kind,
  serverKind: ServerKind,
  o: { window?: number } = {},
): Promise<LatencyResult> {
  await quiet();
  const count = Math.round(RATE * Number(opt['latency-seconds']));
  const records = Array.from({ length: count }, (_, i) => CORPUS[i % CORPUS.length]!);
  const server = await startServer(serverKind);
  const arrivals = new Float64Array(count);
  const sentAt = new Float64Array(count);
  const tail = new LogTail(server.logPath, server.skipPrefix, arrivals);
  tail.start(true);
  try {
    const client =
      kind === 'audisp-remote'
        ? await peers.audispRemote(server.port)
        : peers.agent(server.port, { window: o.window, jitless: kind === 'jitless' });
    if (kind !== 'audisp-remote') await peers.waitConnected(server);
    await feedPaced(client.input, records, RATE, sentAt);
    await tail.waitFor(count, 120_000);
    await client.finish();
    // The first 10% warm up (JIT, connection); the rest is measured.
    const lat: number[] = [];
    for (let i = Math.floor(count / 10); i < count; i++) lat.push(arrivals[i]! - sentAt[i]!);
    lat.sort((a, b) => a - b);
    return {
      kind,
      server: server.name,
      rate: RATE,
      records: count,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: lat.at(-1)!,
    };
  } finally {
    tail.stop();
    await server.stop();
  }
}

/** Peak RSS of the agent while `--backlog` records pile up in the durable queue (server down), then drain. */
async function backlog(): Promise<BacklogResult> {
  await quiet();
  const n = Number(opt.backlog);
  const statusPort = 62;
  const agent = peers.agent(AUDITD_PORT, { extra: [`status_listen = 127.0.0.1:${statusPort}`] });
  const status = await peers.statusReader(statusPort);
  await pollUntil(status, { timeoutMs: 15_000, what: 'the agent status listener' });
  const buf = recordsBuffer(n);
  const t0 = performance.now();
  await feedAll(agent.input, buf);
  let peakDuring = 0;
  await pollUntil(
    async () => {
      peakDuring = Math.max(peakDuring, memory(agent.child.pid!).rss);
      const s = await status();
      return s !== null && (s.queueDepth as number) >= n && s.held === 0;
    },
    { timeoutMs: 300_000, what: `${n} records queued`, intervalMs: 50, diagnostics: agent.stderrText },
  );
  const appendSeconds = (performance.now() - t0) / 1000;
  const queued = memory(agent.child.pid!);
  const queueDir = path.join(agent.dir!, 'queue');
  const diskBytes = readdirSync(queueDir)
    .filter((f) => f.startsWith('seg-'))
    .reduce((sum, f) => sum + statSync(path.join(queueDir, f)).size, 0);
  // The server comes up: the backlog drains from disk.
  const server = await peers.auditd();
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const t1 = performance.now();
  let peakDrain = 0;
  const sampler = setInterval(() => {
    try {
      peakDrain = Math.max(peakDrain, memory(agent.child.pid!).rss);
    } catch {
      // exited
    }
  }, 20);
  const tEnd = await tail.waitFor(n, 600_000, agent.stderrText);
  clearInterval(sampler);
  const final = memory(agent.child.pid!);
  await agent.finish();
  tail.stop();
  await server.stop();
  return {
    records: n,
    diskBytes,
    appendSeconds,
    rssQueued: queued.rss,
    hwmQueued: queued.hwm,
    peakRss: Math.max(final.hwm, peakDrain, peakDuring),
    drainSeconds: (tEnd - t1) / 1000,
    drainPerSecond: n / ((tEnd - t1) / 1000),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Main

/** `--only kind:server[:window]`: one throughput run (repeated --reps times), printed; no report. */
async function only(spec: string): Promise<void> {
  const [kind, server, window] = spec.split(':') as [Kind, ServerKind, string | undefined];
  for (let rep = 1; rep <= REPS; rep++) {
    const r = await throughput(kind, server, {
      ...(window ? { window: Number(window) } : {}),
      ...(opt['cpu-prof'] ? { cpuProf: opt['cpu-prof'] } : {}),
    });
    log(
      `${kind} → ${server}: ${fmtInt(r.recordsPerSecond)} records/s in ${r.seconds.toFixed(2)} s, cpu ${r.cpuSeconds.toFixed(2)} s, server cpu ${r.serverCpuSeconds.toFixed(2)} s, peak RSS ${fmtMB(r.peakRss)}, foreign load ${r.foreignCores.toFixed(2)} cores`,
    );
  }
}

async function main(): Promise<void> {
  if (opt.only) {
    await only(opt.only);
    return;
  }
  const m = machine(sandbox.dir);
  const startedAt = new Date().toISOString();
  log(
    `bench: ${N} records (${(RECORDS.length / 1e6).toFixed(1)} MB, ${CORPUS.length} distinct corpus records), ${REPS} repetition(s)${SMOKE ? ' — smoke run, not a measurement' : ''}`,
  );
  log(`machine: ${JSON.stringify(m)}`);
  const raw = new Map<string, ThroughputResult[]>();
  // Round-robin over the repetitions so that drift on a shared machine hits every client alike.
  for (let rep = 1; rep <= REPS; rep++) {
    for (const [kind, server, window] of PLAN) {
      const r = await throughput(kind, server, window ? { window } : {});
      log(
        `  [${rep}/${REPS}] ${kind}${window ? ` (max_in_flight ${window})` : ''} → ${server}: ${fmtInt(r.recordsPerSecond)} records/s, cpu ${r.cpuSeconds.toFixed(2)} s, peak RSS ${fmtMB(r.peakRss)}`,
      );
      const key = keyOf(kind, server, window);
      raw.set(key, [...(raw.get(key) ?? []), r]);
    }
  }
  const tput = new Map([...raw].map(([k, runs]) => [k, summarize(runs)]));

  const sweep: SweepResult[] = [];
  for (const w of opt.windows.split(',').map(Number)) {
    const runs: ThroughputResult[] = [];
    for (let rep = 1; rep <= REPS; rep++) runs.push(await throughput('agent', 'auditd', { window: w }));
    const s = summarize(runs);
    const lat = await latency('agent', 'auditd', { window: w });
    sweep.push({ ...s, window: w, p50: lat.p50, p99: lat.p99 });
    log(
      `  max_in_flight ${w}: ${fmtInt(s.recordsPerSecond)} records/s; latency p50 ${lat.p50.toFixed(2)} ms p99 ${lat.p99.toFixed(2)} ms`,
    );
  }

  const lat = new Map<string, LatencyResult>();
  for (const [kind, server] of [
    ['agent', 'auditd'],
    ['jitless', 'auditd'],
    ['audisp-remote', 'auditd'],
    ['agent', 'collector'],
  ] as const) {
    const r = await latency(kind, server);
    lat.set(keyOf(kind, server), r);
    log(`  latency ${kind} → ${server}: p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms`);
  }

  const bl = await backlog();
  log(
    `  backlog ${fmtInt(bl.records)}: RSS ${fmtMB(bl.rssQueued)} queued, peak ${fmtMB(bl.peakRss)}; drained at ${fmtInt(bl.drainPerSecond)} records/s`,
  );

  await quiet();
  const queue = await queueAppend();
  logQueueAppend(queue);

  if (opt['cpu-prof']) {
    mkdirSync(opt['cpu-prof'], { recursive: true });
    await throughput('agent', 'auditd', { cpuProf: opt['cpu-prof'] });
    log(`  CPU profile of agent → auditd written to ${opt['cpu-prof']}`);
  }

  const args = process.argv.slice(2).join(' ');
  const result = {
    startedAt,
    command: `npm run bench${args ? ` -- ${args}` : ''}`,
    smoke: SMOKE,
    machine: m,
    records: N,
    reps: REPS,
    rate: RATE,
    throughput: Object.fromEntries(tput),
    sweep,
    latency: Object.fromEntries(lat),
    backlog: bl,
    queue,
  };
  if (opt.json) writeFileSync(opt.json, `${JSON.stringify(result, null, 2)}\n`);
  const block = report(result);
  log(`\n${block}`);
  if (OUT) {
    writeReport(OUT, block);
    log(`written to ${OUT}`);
  } else log('(smoke run: nothing written; --out FILE writes the report)');
}

try {
  await main();
  await cleanup(0);
} catch (err) {
  console.error(err);
  await cleanup(1);
}
