/**
 * The WAN benchmark: records/s over a path with a round-trip delay and loss, for our agent, the real
 * audisp-remote 3.0.9 and the reference client, all sending to the real auditd 3.0.9. This kernel has no netem,
 * so the path is built here: three network namespaces (client – router – server, test/helpers/net-lab.ts) with
 * a VXLAN overlay between the ends whose UDP underlay goes through a relay in the router that delays each
 * datagram by half the RTT and drops a given fraction at random. Each path is checked against its RTT with a
 * TCP ping-pong before it is used.
 *
 *   npm run bench:wan                                  # every path, every client; report into BENCHMARKS.md
 *   npm run bench:wan -- --smoke                       # a few records on each path: checks it all runs
 *   npm run bench:wan -- --only agent:100              # one client on one path (RTT ms[:loss %]), --reps times
 *   npm run bench:wan -- --only agent:20:1 --window 4096   # with max_in_flight = 4096
 *   npm run bench:wan -- --records 200000 --reps 3 --out /tmp/wan.md
 *
 * Records: `--records` distinct lines of 353 bytes (with their newline), as in issue 16's goals. records/s =
 * records ÷ the time from the first write (our agent: once it is connected) to the last record in auditd's log.
 * audisp-remote is stop-and-wait (one record per round trip): it is measured over `--audisp-seconds` (from its
 * first record in the log) instead of over every record.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_ROOT } from '../test/helpers/corpus.js';
import { NetLab, type PathShape, WAN_SERVER } from '../test/helpers/net-lab.js';
import { missingPrerequisites } from '../test/helpers/prereq.js';
import { AUDISP_REMOTE_BIN } from '../test/helpers/real-audisp-remote.js';
import { AUDITD_BIN } from '../test/helpers/real-auditd.js';
import { pollUntil, terminate, waitForExit } from '../test/helpers/wait.js';
import { machine } from './host.js';
import { LogTail } from './log-tail.js';
import { type Client, Peers, type Server } from './peers.js';
import { fmtInt, replaceBetween } from './report.js';

const { values: opt } = parseArgs({
  options: {
    records: { type: 'string', default: '100000' },
    reps: { type: 'string', default: '3' },
    'audisp-seconds': { type: 'string', default: '10' },
    window: { type: 'string' },
    only: { type: 'string' },
    out: { type: 'string' },
    smoke: { type: 'boolean', default: false },
  },
});
const SMOKE = opt.smoke;
if (SMOKE) {
  opt.records = '3000';
  opt.reps = '1';
  opt['audisp-seconds'] = '2';
}
const N = Number(opt.records);
const REPS = Number(opt.reps);
const AUDISP_SECONDS = Number(opt['audisp-seconds']);
const OUT = opt.out ?? (SMOKE || opt.only ? null : path.join(REPO_ROOT, 'BENCHMARKS.md'));
const RECORD_BYTES = 353;
const log = (line: string) => console.log(line);

type WanKind = 'reference' | 'agent' | 'audisp-remote';
const KINDS: WanKind[] = ['reference', 'agent', 'audisp-remote'];
const SHAPES: PathShape[] = [
  { rttMs: 0 },
  { rttMs: 2 },
  { rttMs: 20 },
  { rttMs: 100 },
  { rttMs: 20, loss: 0.01, seed: 16 },
];
const shapeName = (s: PathShape) => `${s.rttMs} ms${s.loss ? `, ${s.loss * 100} % loss` : ''}`;

const missing = missingPrerequisites({
  suite: 'bench:wan',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN, AUDISP_REMOTE_BIN],
});
if (missing.length > 0) {
  console.error(`bench:wan: cannot run here:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------------------
// Records: N distinct lines of RECORD_BYTES bytes, numbered (so duplicates can be counted).

function record(i: number): string {
  const head = `type=USER_CMD msg=audit(1700000000.${String(i % 1000).padStart(3, '0')}:${i}): pid=4242 uid=0 auid=1000 ses=7 msg='cwd="/root" cmd="wan-bench" terminal=pts/0 res=success' seq=${i} pad=`;
  return head.padEnd(RECORD_BYTES - 1, 'x');
}
const tmp = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-wan-'));
const RECORDS = Buffer.from(Array.from({ length: N }, (_, i) => `${record(i + 1)}\n`).join(''), 'latin1');
if (RECORDS.length !== N * RECORD_BYTES) throw new Error('record size');

/** seq= values in auditd's log: how many records, how many distinct. */
function counted(server: Server): { lines: number; distinct: number } {
  const seen = new Set<number>();
  let lines = 0;
  for (const m of readLog(server).matchAll(/ seq=(\d+) pad=/g)) {
    lines++;
    seen.add(Number(m[1]));
  }
  return { lines, distinct: seen.size };
}
const readLog = (s: Server) => readFileSync(s.logPath, 'latin1');

async function feedAll(stream: Client['input'], buf: Buffer): Promise<void> {
  const SLICE = 256 * 1024;
  for (let off = 0; off < buf.length; off += SLICE) {
    if (!stream.write(buf.subarray(off, Math.min(buf.length, off + SLICE)))) {
      await new Promise<void>((resolve) => stream.once('drain', () => resolve()));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Runs

export interface WanResult {
  kind: WanKind;
  shape: PathShape;
  recordsPerSecond: number;
  records: number;
  seconds: number;
  duplicates: number;
  /** Links the agent lost during the run, and how many of them for a reply out of sequence. */
  linkLosses: number;
  sequenceErrors: number;
  /** The agent's window at the end of the run (records), when it says. */
  window: number | null;
  /** The reference client never got all its acknowledgements: auditd dropped some (every record is in its log). */
  repliesMissing?: boolean;
}

const lab = await NetLab.create();
const serverPeers = new Peers(lab.server);
const clientPeers = new Peers(lab.client);
const RECORDS_FILE = path.join(lab.client.dir, 'records.txt');
writeFileSync(RECORDS_FILE, RECORDS);
let exiting = false;
const cleanup = async (code: number) => {
  if (exiting) return;
  exiting = true;
  await lab.destroy().catch((err: Error) => console.error(`bench:wan: ${err.message}`));
  rmSync(tmp, { recursive: true, force: true });
  process.exit(code);
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void cleanup(130));

async function runOnce(kind: WanKind, shape: PathShape): Promise<WanResult> {
  const server = await serverPeers.auditd();
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const result = (r: Partial<WanResult> & { records: number; seconds: number }): WanResult => ({
    kind,
    shape,
    recordsPerSecond: r.records / r.seconds,
    duplicates: Math.max(0, counted(server).lines - counted(server).distinct),
    linkLosses: 0,
    sequenceErrors: 0,
    window: null,
    ...r,
  });
  try {
    if (kind === 'reference') {
      // Timed by auditd's log, from the client's connect: over a long path auditd drops acknowledgements it cannot
      // write at once (reference §3.6), and this client, which has no sequence check and no retry, then waits for
      // ever for the last ones (every record is in the log all the same).
      const child = clientPeers.reference(server.port, RECORDS_FILE, WAN_SERVER, ['--announce']);
      let out = '';
      let err = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
      });
      const tEnd = await tail.waitFor(N, 900_000, () => err);
      const exit = await waitForExit(child, 10_000).catch(async () => {
        await terminate(child, 'SIGKILL', 5000);
        return null;
      });
      if (exit !== null && exit.code !== 0) throw new Error(`reference client failed: ${err}`);
      const connectedAt = (JSON.parse(out.split('\n')[0]!) as { connectedAt: number }).connectedAt;
      return result({
        records: N,
        seconds: (performance.timeOrigin + tEnd - connectedAt) / 1000,
        ...(exit === null ? { repliesMissing: true } : {}),
      });
    }
    if (kind === 'audisp-remote') {
      const client = await clientPeers.audispRemote(server.port, WAN_SERVER);
      const fed = feedAll(client.input, RECORDS).catch(() => {});
      const t0 = await tail.waitFor(1, 60_000, client.stderrText);
      const c0 = tail.count;
      await pollUntil(() => performance.now() - t0 >= AUDISP_SECONDS * 1000 || tail.count >= N, {
        timeoutMs: AUDISP_SECONDS * 1000 + 60_000,
        intervalMs: 50,
        what: 'the measuring period',
      });
      const seconds = (performance.now() - t0) / 1000;
      const records = tail.count - c0;
      client.child.kill('SIGKILL');
      await waitForExit(client.child, 10_000).catch(() => {});
      await client.finish().catch(() => {});
      void fed;
      return result({ records, seconds });
    }
    const statusPort = 62;
    const agent = clientPeers.agent(server.port, {
      host: WAN_SERVER,
      window: opt.window ? Number(opt.window) : undefined,
      queueDepth: N + 1000,
      extra: [`status_listen = 127.0.0.1:${statusPort}`],
    });
    const status = await clientPeers.statusReader(statusPort);
    await serverPeers.waitConnected(server);
    let window: number | null = null;
    const sampler = setInterval(() => {
      void status().then((s) => {
        if (s && typeof s.window === 'number') window = Math.max(window ?? 0, s.window);
      });
    }, 200);
    const t0 = performance.now();
    const fed = feedAll(agent.input, RECORDS);
    const tEnd = await tail.waitFor(N, 900_000, agent.stderrText);
    clearInterval(sampler);
    await fed;
    const seconds = (tEnd - t0) / 1000;
    const final = await status();
    if (final && typeof final.window === 'number') window = Math.max(window ?? 0, final.window);
    await agent.finish();
    const stderr = agent.stderrText();
    return result({
      records: N,
      seconds,
      linkLosses: (stderr.match(/link to the server lost/g) ?? []).length,
      sequenceErrors: (stderr.match(/does not match/g) ?? []).length,
      window,
    });
  } finally {
    tail.stop();
    await server.stop();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

interface ShapeResult {
  shape: PathShape;
  rtt: number[];
  relay: { forwarded: number; dropped: number; rcvbufErrors: number };
  runs: Map<WanKind, WanResult[]>;
}

async function measureShape(shape: PathShape, kinds: WanKind[]): Promise<ShapeResult> {
  await lab.wan(shape);
  const rtt = await lab.measureRtt(20);
  log(
    `path ${shapeName(shape)}: measured RTT median ${median(rtt).toFixed(1)} ms (min ${rtt[0]!.toFixed(1)})`,
  );
  await lab.shape(shape); // fresh counters
  const runs = new Map<WanKind, WanResult[]>();
  for (let rep = 1; rep <= REPS; rep++) {
    for (const kind of kinds) {
      const r = await runOnce(kind, shape);
      runs.set(kind, [...(runs.get(kind) ?? []), r]);
      log(
        `  [${rep}/${REPS}] ${kind}: ${fmtInt(r.recordsPerSecond)} records/s (${fmtInt(r.records)} in ${r.seconds.toFixed(1)} s)${r.repliesMissing ? ', acknowledgements missing' : ''}${r.duplicates ? `, ${r.duplicates} duplicates` : ''}${r.linkLosses ? `, ${r.linkLosses} link losses (${r.sequenceErrors} out of sequence)` : ''}${r.window !== null ? `, window ${r.window}` : ''}`,
      );
    }
  }
  const relay = await lab.relayStats();
  return { shape, rtt, relay, runs };
}

function render(results: ShapeResult[], startedAt: string): string {
  const m = machine(lab.client.dir);
  const lines: string[] = [];
  lines.push(
    `Run of ${startedAt}: \`npm run bench:wan${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}\` — ${fmtInt(N)} records of ${RECORD_BYTES} bytes, median of ${REPS} run(s) (min–max), runs interleaved; ${m.nproc} CPUs, ${m.cpu}, ${m.kernel}, node ${m.node}, auditd ${m.auditd}.`,
    '',
    '| path (RTT added) | RTT measured (median) | reference client | auditrelay agent | audisp-remote 3.0.9 | agent ÷ audisp-remote | agent: window reached, link losses, duplicates |',
    '|---|---|---|---|---|---|---|',
  );
  for (const r of results) {
    const cell = (k: WanKind) => {
      const runs = r.runs.get(k) ?? [];
      if (runs.length === 0) return '–';
      const v = runs.map((x) => x.recordsPerSecond);
      return `${fmtInt(median(v))} (${fmtInt(Math.min(...v))}–${fmtInt(Math.max(...v))})`;
    };
    const a = r.runs.get('agent') ?? [];
    const ar = r.runs.get('audisp-remote') ?? [];
    const ratio =
      a.length && ar.length
        ? `${(median(a.map((x) => x.recordsPerSecond)) / median(ar.map((x) => x.recordsPerSecond))).toFixed(0)} ×`
        : '–';
    const agentNotes = a.length
      ? `${Math.max(...a.map((x) => x.window ?? 0)) || '–'}; ${a.reduce((n, x) => n + x.linkLosses, 0)} (${a.reduce((n, x) => n + x.sequenceErrors, 0)} out of sequence); ${a.reduce((n, x) => n + x.duplicates, 0)}`
      : '–';
    lines.push(
      `| ${shapeName(r.shape)} | ${median(r.rtt).toFixed(1)} ms | ${cell('reference')}${(r.runs.get('reference') ?? []).some((x) => x.repliesMissing) ? ' ¹' : ''} | ${cell('agent')} | ${cell('audisp-remote')} | ${ratio} | ${agentNotes} |`,
    );
  }
  const dropped = results.map(
    (r) => `${shapeName(r.shape)}: ${r.relay.dropped} of ${r.relay.dropped + r.relay.forwarded}`,
  );
  const overflow = results.reduce((n, r) => n + r.relay.rcvbufErrors, 0);
  if (results.some((r) => (r.runs.get('reference') ?? []).some((x) => x.repliesMissing))) {
    lines.push(
      '',
      "¹ auditd dropped acknowledgements it could not write at once (reference §3.6): the reference client (window 8192, no sequence check, no retry) never got them and was stopped once every record was in auditd's log; its time runs from its connect to the last record in the log.",
    );
  }
  lines.push(
    '',
    `Datagrams the relay dropped on purpose: ${dropped.join('; ')}. Datagrams lost in the relay's socket buffer (loss not asked for): ${overflow}.`,
  );
  return lines.join('\n');
}

async function main(): Promise<void> {
  if (opt.only) {
    const [kind, rtt, loss] = opt.only.split(':') as [WanKind, string, string | undefined];
    const shape: PathShape = { rttMs: Number(rtt), ...(loss ? { loss: Number(loss) / 100, seed: 16 } : {}) };
    await measureShape(shape, [kind]);
    return;
  }
  const startedAt = new Date().toISOString();
  const results: ShapeResult[] = [];
  for (const shape of SHAPES) results.push(await measureShape(shape, KINDS));
  const block = render(results, startedAt);
  log(`\n${block}`);
  if (OUT) {
    replaceBetween(OUT, 'wan-bench', block);
    log(`written to ${OUT}`);
  }
}

try {
  await main();
  await cleanup(0);
} catch (err) {
  console.error(err);
  await cleanup(1);
}
