/**
 * Benchmark: the collector as an operator runs it (issue 12) and what its evidence costs (issue 15).
 *
 *   npm run bench:ops                                   # both scenarios; report on stdout
 *   npm run bench:ops -- --only many-hosts --seconds 60 --clients 2000
 *   npm run bench:ops -- --only evidence --records 200000 --reps 3
 *   npm run bench:ops -- --out BENCHMARKS.md            # also replaces the section between the markers
 *
 * - many-hosts (root: a private network namespace, test/helpers/netns.ts): auditd 3.0.9 and our collector (the
 *   built CLI), each in turn on port 60 of the namespace's loopback with the same limits (tcp_max_per_addr = 1024,
 *   tcp_client_max_idle = 20, flush = incremental_async), get the same load (bench/many-hosts-load.ts): 2,000
 *   clients from 8 source addresses, each sending a record every 2 s and a heartbeat when idle for 5 s, 4
 *   well-behaved stop-and-wait probes, 200 connections that never send (reaped by the idle limit). Measured:
 *   clients connected, records/s acknowledged, ACK latency p50/p99/max (all clients; probes), the server's RSS and
 *   open descriptors every second (at the start of the steady phase, at its end, the peak), idle connections
 *   reaped, active ones closed by the server.
 * - evidence: the collector (bench/collector-runner.ts) with its evidence off, in its worker thread (the default)
 *   and inline on the event loop, takes the corpus records from the reference client (bench/reference-client.ts,
 *   window 8192) as fast as it can: records/s, the collector's CPU time per record, its peak RSS; median of --reps.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { expectedRecords, loadCorpus, REPO_ROOT } from '../test/helpers/corpus.js';
import { NetnsSandbox, SANDBOX_PATH } from '../test/helpers/netns.js';
import { missingPrerequisites } from '../test/helpers/prereq.js';
import { AUDITD_BIN, startRealAuditd } from '../test/helpers/real-auditd.js';
import { hasExited, pollUntil, terminate, waitForExit } from '../test/helpers/wait.js';
import { cpuSeconds, machine, memory } from './host.js';
import { replaceBetween } from './report.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');
const LOAD = path.join(HERE, 'many-hosts-load.js');
const RUNNER = path.join(HERE, 'collector-runner.js');
const REFERENCE = path.join(HERE, 'reference-client.js');

const { values: opt } = parseArgs({
  options: {
    only: { type: 'string' },
    seconds: { type: 'string', default: '60' },
    clients: { type: 'string', default: '2000' },
    rate: { type: 'string', default: '0.5' },
    records: { type: 'string', default: '200000' },
    reps: { type: 'string', default: '3' },
    out: { type: 'string' },
  },
});
const WORK = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-bench-ops-'));
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (!hasExited(c)) c.kill('SIGKILL');
  rmSync(WORK, { recursive: true, force: true });
});
process.on('SIGINT', () => process.exit(130));

const fmt = (n: number | null | undefined, digits = 0) =>
  n === null || n === undefined || Number.isNaN(n)
    ? '–'
    : n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const mib = (b: number) => `${fmt(b / 2 ** 20, 1)} MiB`;

// ---------------------------------------------------------------------------------------------------------
// many hosts

interface Sample {
  t: number;
  rss: number;
  fds: number;
}

function sample(pid: number, t0: number): Sample | null {
  try {
    return { t: (Date.now() - t0) / 1000, rss: memory(pid).rss, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return null;
  }
}

interface LoadResult {
  clients: number;
  connectFailures: number;
  connectSeconds: number;
  idle: number;
  seconds: number;
  acked: number;
  notAcked: number;
  otherReplies: number;
  recordsPerSecond: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  probeLatencyMs: { p50: number; p99: number; max: number };
  activeClosedByServer: number;
  idleClosedByServer: number;
  idleClosedAfterSeconds: { first: number; last: number } | null;
}

interface HostsRow {
  server: string;
  load: LoadResult;
  steadyStart: Sample;
  steadyEnd: Sample;
  peak: { rss: number; fds: number };
  before: Sample;
  logged: number;
}

async function manyHosts(): Promise<HostsRow[]> {
  const missing = missingPrerequisites({
    suite: 'many hosts',
    root: true,
    namespaces: true,
    binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', 'bash', AUDITD_BIN],
  });
  if (missing.length > 0) throw new Error(`many-hosts needs:\n${missing.join('\n')}`);
  const rows: HostsRow[] = [];
  for (const server of ['auditd 3.0.9', 'our collector'] as const) {
    const sandbox = await NetnsSandbox.create();
    try {
      let pid: number;
      let stop: () => Promise<void>;
      let logFile: string;
      if (server === 'auditd 3.0.9') {
        const a = await startRealAuditd(sandbox, {
          port: 60,
          extraConf: { tcp_listen_queue: 4096, tcp_max_per_addr: 1024, tcp_client_max_idle: 20 },
        });
        pid = a.pid;
        logFile = a.logPath;
        stop = async () => {
          await a.stop(15_000);
        };
      } else {
        const dir = path.join(sandbox.dir, 'collector');
        mkdirSync(dir, { mode: 0o700 });
        logFile = path.join(dir, 'audit.log');
        const conf = path.join(dir, 'collector.conf');
        writeFileSync(
          conf,
          [
            'tcp_listen_port = 60',
            'tcp_listen_queue = 4096',
            'tcp_max_per_addr = 1024',
            'tcp_client_max_idle = 20',
            `log_file = ${logFile}`,
            `evidence_key_file = ${path.join(dir, 'keys', 'signing.key')}`,
            'log_level = warn',
            '',
          ].join('\n'),
          { mode: 0o600 },
        );
        const child = sandbox.spawn(process.execPath, [BIN, 'collector', '--config', conf], {
          stdio: ['ignore', 'ignore', 'pipe'],
          env: { PATH: SANDBOX_PATH, AUDITRELAY_LOG_FORMAT: 'json' },
        });
        children.add(child);
        let err = '';
        child.stderr!.on('data', (d: Buffer) => {
          err = (err + d.toString()).slice(-20_000);
        });
        await pollUntil(
          async () => {
            if (hasExited(child)) throw new Error(`collector exited: ${err}`);
            return (await sandbox.tcpListeners(60)).some((l) => l.users.some((u) => u.pid === child.pid));
          },
          { timeoutMs: 20_000, what: 'the collector to listen', diagnostics: () => err },
        );
        pid = child.pid!;
        stop = async () => {
          await terminate(child, 'SIGTERM', 30_000);
        };
      }
      const t0 = Date.now();
      const before = sample(pid, t0)!;
      const samples: Sample[] = [];
      const timer = setInterval(() => {
        const s = sample(pid, t0);
        if (s) samples.push(s);
      }, 1000);
      const load = sandbox.spawn(
        process.execPath,
        [LOAD, '--port', '60', '--clients', opt.clients!, '--rate', opt.rate!, '--seconds', opt.seconds!],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: SANDBOX_PATH } },
      );
      children.add(load);
      let out = '';
      let err = '';
      load.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      load.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      const exit = await waitForExit(load, (Number(opt.seconds) + 300) * 1000);
      clearInterval(timer);
      if (exit.code !== 0) throw new Error(`load exited ${exit.code}: ${err}`);
      const result = JSON.parse(out.trim().split('\n').pop()!) as LoadResult;
      const steady = samples.filter(
        (s) => s.t >= result.connectSeconds + 2 && s.t <= result.connectSeconds + result.seconds,
      );
      await stop();
      const logged = readFileSync(logFile, 'latin1')
        .split('\n')
        .filter((l) => l.includes('type=USER_CMD')).length;
      rows.push({
        server,
        load: result,
        before,
        steadyStart: steady[0] ?? before,
        steadyEnd: steady[steady.length - 1] ?? before,
        peak: {
          rss: Math.max(...samples.map((s) => s.rss)),
          fds: Math.max(...samples.map((s) => s.fds)),
        },
        logged,
      });
      process.stderr.write(`many-hosts ${server}: ${JSON.stringify(result)}\n`);
    } finally {
      await sandbox.destroy();
    }
  }
  return rows;
}

function hostsTable(rows: HostsRow[]): string {
  const lines = [
    `| server | clients (+ idle, probes) | records/s acked | ACK p50 / p99 / max | probe ACK p50 / p99 / max | RSS: before load, steady start → end (peak) | descriptors: before, steady start → end (peak) | idle connections reaped (after) | active connections closed | records not acked |`,
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const l = r.load;
    lines.push(
      `| ${r.server} | ${fmt(l.clients)} (+ ${l.idle}, 4) | ${fmt(l.recordsPerSecond)} | ${fmt(l.latencyMs.p50, 1)} / ${fmt(l.latencyMs.p99, 1)} / ${fmt(l.latencyMs.max, 0)} ms | ${fmt(l.probeLatencyMs.p50, 1)} / ${fmt(l.probeLatencyMs.p99, 1)} / ${fmt(l.probeLatencyMs.max, 0)} ms | ${mib(r.before.rss)}; ${mib(r.steadyStart.rss)} → ${mib(r.steadyEnd.rss)} (${mib(r.peak.rss)}) | ${r.before.fds}; ${r.steadyStart.fds} → ${r.steadyEnd.fds} (${r.peak.fds}) | ${l.idleClosedByServer} of ${l.idle}${l.idleClosedAfterSeconds ? ` (${fmt(l.idleClosedAfterSeconds.first, 0)}–${fmt(l.idleClosedAfterSeconds.last, 0)} s)` : ''} | ${l.activeClosedByServer} | ${l.notAcked} |`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// evidence cost

interface EvidenceRow {
  mode: string;
  recordsPerSecond: number[];
  cpuPerRecordUs: number[];
  peakRss: number[];
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function evidenceCost(): Promise<EvidenceRow[]> {
  const corpus = loadCorpus({ includeShared: false }).flatMap((f) => expectedRecords(f.bytes));
  const n = Number(opt.records);
  const file = path.join(WORK, 'records.txt');
  const lines: Buffer[] = [];
  for (let i = 0; i < n; i++) lines.push(corpus[i % corpus.length]!, Buffer.from('\n'));
  writeFileSync(file, Buffer.concat(lines));
  const rows: EvidenceRow[] = ['off', 'worker', 'inline'].map((mode) => ({
    mode,
    recordsPerSecond: [],
    cpuPerRecordUs: [],
    peakRss: [],
  }));
  for (let rep = 0; rep < Number(opt.reps); rep++) {
    for (const row of rows) {
      const dir = path.join(WORK, `evidence-${row.mode}-${rep}`);
      mkdirSync(dir, { mode: 0o700 });
      const port = await freePort();
      const conf = path.join(dir, 'collector.conf');
      writeFileSync(
        conf,
        `tcp_listen_port = ${port}\nlog_file = ${dir}/audit.log\nevidence_key_file = ${dir}/keys/signing.key\n`,
        { mode: 0o600 },
      );
      const collector = spawn(process.execPath, [RUNNER, '--config', conf, '--evidence', row.mode], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      children.add(collector);
      let out = '';
      collector.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await pollUntil(() => out.includes('listening') || undefined, {
        timeoutMs: 20_000,
        what: 'the runner',
      });
      const cpu0 = cpuSeconds(collector.pid!);
      const client = spawn(process.execPath, [REFERENCE, '--port', String(port), '--file', file], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let res = '';
      client.stdout!.on('data', (d: Buffer) => (res += d.toString()));
      await waitForExit(client, 600_000);
      const r = JSON.parse(res) as { records: number; recordsPerSecond: number };
      const cpu = cpuSeconds(collector.pid!) - cpu0;
      const rss = memory(collector.pid!).hwm;
      collector.kill('SIGTERM');
      await waitForExit(collector, 60_000);
      row.recordsPerSecond.push(r.recordsPerSecond);
      row.cpuPerRecordUs.push((cpu / r.records) * 1e6);
      row.peakRss.push(rss);
      rmSync(dir, { recursive: true, force: true });
      process.stderr.write(`evidence ${row.mode} #${rep + 1}: ${fmt(r.recordsPerSecond)} records/s\n`);
    }
  }
  return rows;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

function evidenceTable(rows: EvidenceRow[]): string {
  const label: Record<string, string> = {
    off: 'evidence = no',
    worker: 'evidence = yes (default: chain in a worker thread)',
    inline: 'evidence = yes, chain on the event loop (for comparison)',
  };
  const lines = [
    `| collector | records/s (median of ${opt.reps}; min–max) | collector CPU per record | peak RSS |`,
    '|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${label[r.mode]} | ${fmt(median(r.recordsPerSecond))} (${fmt(Math.min(...r.recordsPerSecond))}–${fmt(Math.max(...r.recordsPerSecond))}) | ${fmt(median(r.cpuPerRecordUs), 2)} µs | ${mib(median(r.peakRss))} |`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------------------

const only = opt.only;
const parts: string[] = [];
const m = machine(WORK);
const load = os
  .loadavg()
  .map((x) => x.toFixed(1))
  .join(', ');
parts.push(
  `Run of ${new Date().toISOString()} (\`node dist/bench/collector-ops.js${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}\`), ${m.nproc} CPUs (${m.cpu}), ${m.disk}, node ${m.node}, auditd ${m.auditd}; load average at the start ${load}.`,
);
if (!only || only === 'many-hosts') {
  parts.push(
    `### Many hosts: ${fmt(Number(opt.clients))} agents, ${opt.seconds} s\n\n${hostsTable(await manyHosts())}`,
  );
}
if (!only || only === 'evidence') {
  parts.push(
    `### What the evidence costs: ${fmt(Number(opt.records))} records, reference client\n\n${evidenceTable(await evidenceCost())}`,
  );
}
parts.push(
  `Load average at the end: ${os
    .loadavg()
    .map((x) => x.toFixed(1))
    .join(', ')}.`,
);
const report = parts.join('\n\n');
process.stdout.write(`${report}\n`);
if (opt.out) {
  replaceBetween(opt.out, 'collector-ops', report);
}
process.exit(0);
