/**
 * `npm run bench:scale-out`: records/s end to end through collectors with output = jetstream into an R3 stream on a
 * real 3-node nats-server cluster (127.0.0.1) and out through `auditrelay sink`, with one and with two collectors,
 * beside the same agents against one collector with output = file; acknowledgement latency at the agents (p50,
 * p99). The agents are the record-identity test agents (test/helpers/rid-agent.mjs, window 256, 300-byte records).
 * Prints a Markdown table for BENCHMARKS.md ("Scale-out").
 *
 * Options: --agents N (8), --records N per agent (25000), --smoke (2 agents × 3000).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { NatsCluster } from '../test/helpers/nats-cluster.js';
import { NATS_SERVER } from '../test/helpers/peers.js';
import {
  type AgentSpec,
  alive,
  checkSinkLog,
  collectorConfig,
  kill9,
  type Proc,
  sinkConfig,
  startCollector,
  startRidAgent,
  startSink,
  stopProc,
} from '../test/helpers/scale-out.js';
import { pollUntil } from '../test/helpers/wait.js';

const { values } = parseArgs({
  options: {
    agents: { type: 'string', default: '8' },
    records: { type: 'string', default: '25000' },
    smoke: { type: 'boolean', default: false },
  },
});
const AGENTS = values.smoke ? 2 : Number(values.agents);
const RECORDS = values.smoke ? 3000 : Number(values.records);

interface Row {
  setup: string;
  records: number;
  ackSeconds: number;
  sinkSeconds: number | null;
  p50: number;
  p99: number;
}

async function runAgents(
  dir: string,
  label: string,
  ports: number[],
): Promise<{ ms: number; p50: number; p99: number }> {
  const specs: AgentSpec[] = Array.from({ length: AGENTS }, (_, i) => ({
    host: `${label}-h${i + 1}`,
    agent: `${label}-a${i + 1}`,
    port: ports[i % ports.length]!,
    total: RECORDS,
    stateFile: path.join(dir, `${label}-h${i + 1}.state`),
    window: 256,
    bytes: 300,
  }));
  const t0 = performance.now();
  const agents: Proc[] = specs.map((s) => startRidAgent(s));
  await pollUntil(() => agents.every((a) => !alive(a)), {
    timeoutMs: 600_000,
    intervalMs: 50,
    what: `${label}: agents to finish`,
  });
  const ms = performance.now() - t0;
  const stats = agents.map((a) => {
    const line = a.out.find((l) => l.startsWith('done '));
    if (!line || a.proc.exitCode !== 0) throw new Error(`${label}: agent failed: ${a.out.join('\n')}`);
    const m = /p50=([0-9.]+) p99=([0-9.]+)/.exec(line)!;
    return { p50: Number(m[1]), p99: Number(m[2]) };
  });
  const p50 = stats.map((s) => s.p50).sort((a, b) => a - b)[Math.floor(stats.length / 2)]!;
  return { ms, p50, p99: Math.max(...stats.map((s) => s.p99)) };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-bench-scale-'));
  const rows: Row[] = [];
  let cluster: NatsCluster | null = null;
  const procs: Proc[] = [];
  try {
    // The file output, for comparison (the same agents, one collector, flush = incremental_async).
    {
      const c = await collectorConfig(dir, 'file', [], 'X', []);
      const log = path.join(dir, 'file-out', 'audit.log');
      mkdirSync(path.dirname(log), { mode: 0o750 });
      writeFileSync(
        c.config,
        `tcp_listen_port = ${c.port}\ntcp_max_per_addr = 64\nlog_file = ${log}\nevidence = no\nmax_log_file = 0\nspace_left = 0\nadmin_space_left = 0\nhost_silence_timeout = 0\n`,
        { mode: 0o600 },
      );
      const p = await startCollector(c, 'file');
      procs.push(p);
      const r = await runAgents(dir, 'file', [c.port]);
      rows.push({
        setup: 'one collector, output = file',
        records: AGENTS * RECORDS,
        ackSeconds: r.ms / 1000,
        sinkSeconds: null,
        p50: r.p50,
        p99: r.p99,
      });
      await stopProc(p);
    }
    cluster = await NatsCluster.start(path.join(dir, 'nats'));
    for (const n of [1, 2]) {
      const stream = `BENCH${n}`;
      const collectors = [];
      for (let i = 0; i < n; i++) {
        const c = await collectorConfig(dir, `js${n}-c${i}`, cluster.urls, stream);
        procs.push(await startCollector(c, `js${n}-c${i}`));
        collectors.push(c);
      }
      const sinkDir = path.join(dir, `sink${n}`);
      mkdirSync(sinkDir);
      const sink = sinkConfig(sinkDir, cluster.urls, stream);
      const t0 = performance.now();
      const sp = startSink(sink);
      procs.push(sp);
      const r = await runAgents(
        dir,
        `js${n}`,
        collectors.map((c) => c.port),
      );
      const expected = new Map(Array.from({ length: AGENTS }, (_, i) => [`js${n}-h${i + 1}`, RECORDS]));
      await pollUntil(() => checkSinkLog([sink.log], expected).missing.length === 0, {
        timeoutMs: 600_000,
        intervalMs: 200,
        what: 'the sink to catch up',
      });
      const sinkMs = performance.now() - t0;
      const check = checkSinkLog([sink.log], expected);
      if (check.duplicates.length > 0 || check.outOfOrder.length > 0)
        throw new Error('duplicates or disorder in the sink');
      rows.push({
        setup: `${n} collector(s), output = jetstream (R3) → sink`,
        records: AGENTS * RECORDS,
        ackSeconds: r.ms / 1000,
        sinkSeconds: sinkMs / 1000,
        p50: r.p50,
        p99: r.p99,
      });
      for (const c of collectors) await stopProc(c.proc);
      await stopProc(sp);
    }
  } finally {
    for (const p of procs) await kill9(p);
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const out = [
    `Scale-out: ${AGENTS} agents × ${RECORDS} records of 300 bytes, window 256, 3-node nats-server cluster on 127.0.0.1 (${path.basename(NATS_SERVER)}), ${os.cpus().length} cores`,
    '',
    "| setup | records | acknowledged to the agents (records/s) | in the sink's log (records/s, end to end) | ack latency p50 / p99 (ms) |",
    '|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.setup} | ${r.records} | ${Math.round(r.records / r.ackSeconds)} | ${r.sinkSeconds === null ? '–' : Math.round(r.records / r.sinkSeconds)} | ${r.p50.toFixed(1)} / ${r.p99.toFixed(1)} |`,
    ),
  ];
  console.log(out.join('\n'));
}

await main();
