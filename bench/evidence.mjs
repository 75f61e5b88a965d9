#!/usr/bin/env node
/**
 * Benchmark of the evidence layer (docs/events.md, docs/evidence.md), on the built code (`npm run build` first):
 *
 *   node bench/evidence.mjs                 # 200,000 records, 3 repetitions, median (min–max)
 *   node bench/evidence.mjs --records 50000 --reps 1
 *
 * - events: the fixture corpus's records, renumbered so that every event stays distinct, through EventGrouper +
 *   JSON.stringify in-process (records/s, events/s), and `auditrelay events FILE > /dev/null` end to end.
 * - evidence: records appended to a log on the local disk the way a log writer does (one write of a batch of
 *   records, then EvidenceWriter.append with the same bytes), without evidence, with the chain only
 *   (checkpoints only at close), with a checkpoint every 10 s (the default) and every 1 s; then `verify` of the
 *   result (records/s).
 * Nothing here is asserted: the numbers go to BENCHMARKS.md by hand.
 */
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { EventGrouper } = await import(path.join(ROOT, 'dist/src/evidence/events.js'));
const { EvidenceWriter } = await import(path.join(ROOT, 'dist/src/evidence/writer.js'));
const { verifyPath } = await import(path.join(ROOT, 'dist/src/evidence/verify.js'));
const { parseVerifierKey } = await import(path.join(ROOT, 'dist/src/evidence/note.js'));

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '200000' },
    reps: { type: 'string', default: '3' },
    batch: { type: 'string', default: '64' },
  },
});
const N = Number(values.records);
const REPS = Number(values.reps);
const BATCH = Number(values.batch);

/** Corpus records (not EOE), renumbered: serial = a running counter per original event, time unchanged. */
function corpusRecords(n) {
  const dir = path.join(ROOT, 'test/fixtures/corpus');
  const lines = [];
  for (const f of readdirSync(dir)
    .filter((x) => x.endsWith('.log'))
    .sort()) {
    for (const l of readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      if (/^(node=\S+ )?type=(?!EOE)\S+ msg=audit\(\d+\.\d+:\d+\)/.test(l)) lines.push(l);
    }
  }
  const out = [];
  let serial = 1;
  while (out.length < n) {
    const map = new Map();
    for (const l of lines) {
      if (out.length >= n) break;
      out.push(
        l.replace(/msg=audit\((\d+\.\d+):(\d+)\)/, (_, t, s) => {
          let mapped = map.get(s);
          if (!mapped) {
            mapped = serial++;
            map.set(s, mapped);
          }
          return `msg=audit(${t}:${mapped})`;
        }),
      );
    }
  }
  return out;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const fmt = (x) => Math.round(x).toLocaleString('en-US');
const range = (xs) => `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`;

function loadAvg() {
  return os.loadavg()[0].toFixed(2);
}

const records = corpusRecords(N);
{
  const { hash } = await import('node:crypto');
  const sample = Buffer.from(records[0]);
  const M = 200_000;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < M; i++) hash('sha256', sample, 'buffer');
  console.log(
    `# one SHA-256 of a ${sample.length}-byte record: ${(Number(process.hrtime.bigint() - t0) / M / 1000).toFixed(2)} µs (crypto.hash)`,
  );
}
const bytes = records.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0);
console.log(
  `# ${N} records (${(bytes / 1e6).toFixed(1)} MB), batches of ${BATCH}, ${REPS} repetition(s); load average ${loadAvg()}`,
);

// --- events ---------------------------------------------------------------------------------------------------
{
  const rates = [];
  const evRates = [];
  let events = 0;
  let outBytes = 0;
  for (let r = 0; r < REPS; r++) {
    outBytes = 0;
    events = 0;
    const g = new EventGrouper({
      emit: (e) => {
        outBytes += JSON.stringify(e).length + 1;
        events++;
      },
    });
    const t0 = process.hrtime.bigint();
    for (const l of records) g.push(l);
    g.flush();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    rates.push(N / s);
    evRates.push(events / s);
  }
  console.log(
    `events (in-process, grouper + JSON): ${range(rates)} records/s, ${range(evRates)} events/s (${events} events, ${(outBytes / 1e6).toFixed(1)} MB of JSON for ${(bytes / 1e6).toFixed(1)} MB of log)`,
  );
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-events-'));
  const file = path.join(dir, 'audit.log');
  writeFileSync(file, records.map((l) => `${l}\n`).join(''));
  const cliRates = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = process.hrtime.bigint();
    const res = spawnSync(process.execPath, [path.join(ROOT, 'bin/auditrelay.js'), 'events', file], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (res.status !== 0) throw new Error(`events exited ${res.status}`);
    cliRates.push(N / s);
  }
  console.log(`events (CLI, file → /dev/null, start-up included): ${range(cliRates)} records/s`);
  rmSync(dir, { recursive: true, force: true });
}

// --- evidence -------------------------------------------------------------------------------------------------
const batches = [];
for (let i = 0; i < N; i += BATCH)
  batches.push(
    Buffer.from(
      records
        .slice(i, i + BATCH)
        .map((l) => `${l}\n`)
        .join(''),
    ),
  );
const hosts = ['web1', 'web2', 'db1', 'mail', 'build'];

function run(mode) {
  const dir = mkdtempSync(path.join(ROOT, '.bench-evidence-'));
  chmodSync(dir, 0o700);
  const log = path.join(dir, 'audit.log');
  const fd = openSync(log, 'a', 0o600);
  const w =
    mode === 'none'
      ? null
      : EvidenceWriter.open({
          logFile: log,
          keyFile: path.join(dir, 'keys/signing.key'),
          checkpointIntervalMs: mode === 'chain' ? 0 : mode === 'ckpt10' ? 10_000 : 1000,
        });
  const t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  let k = 0;
  let i = 0;
  // Yield to the event loop every 64 batches, as a server does, so that the checkpoint timer can run.
  return new Promise((resolve) => {
    const step = () => {
      const end = Math.min(i + 64, batches.length);
      for (; i < end; i++) {
        writeSync(fd, batches[i]);
        w?.append(hosts[k++ % hosts.length], batches[i]);
      }
      if (i < batches.length) return setImmediate(step);
      w?.close();
      closeSync(fd);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      resolve({ dir, log, rate: N / s, cpuUs: (cpu.user + cpu.system) / N, vkey: w?.verifierKey });
    };
    step();
  });
}

const modes = [
  ['none', 'log only (no evidence)'],
  ['chain', 'log + chain (checkpoint at close only)'],
  ['ckpt10', 'log + chain + checkpoint every 10 s (default)'],
  ['ckpt1', 'log + chain + checkpoint every 1 s'],
];
const rates = Object.fromEntries(modes.map(([m]) => [m, []]));
const cpus = Object.fromEntries(modes.map(([m]) => [m, []]));
const verifyRates = [];
for (let r = 0; r < REPS; r++) {
  for (const [m] of modes) {
    const res = await run(m);
    rates[m].push(res.rate);
    cpus[m].push(res.cpuUs);
    if (m === 'ckpt1') {
      const key = parseVerifierKey(res.vkey);
      const t0 = process.hrtime.bigint();
      const rep = verifyPath(res.log, { keys: [key] });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (rep.problems.length > 0) throw new Error(`verify found problems: ${rep.problems[0].message}`);
      verifyRates.push(N / s);
    }
    rmSync(res.dir, { recursive: true, force: true });
  }
}
const baseCpu = median(cpus.none);
for (const [m, label] of modes) {
  const c = median(cpus[m]);
  console.log(
    `${label}: ${range(rates[m])} records/s, CPU ${c.toFixed(2)} µs/record (+${(c - baseCpu).toFixed(2)} µs for evidence)`,
  );
}
console.log(`verify (log + evidence, one file): ${range(verifyRates)} records/s`);
console.log(`# load average after: ${loadAvg()}`);
