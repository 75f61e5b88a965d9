/**
 * Scale-out (issue 14 items 3–5) against a real 3-node nats-server cluster (>= 2.10, .cache/peers) on 127.0.0.1:
 * agents → two collectors with output = jetstream → an R3 stream → `auditrelay sink`, every process real and
 * killed by pid. The agents are test agents speaking the record-identity wire (test/helpers/rid-agent.mjs) until
 * the real agent sends record identities (wip/failover); each points at one collector.
 *
 * The checker reads every record's tag (`tag=HOST:N`) in the sink's output: every record of every host exactly
 * once, in each host's order; the stream itself holds each record exactly once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { DiscardPolicy, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { NatsCluster } from '../helpers/nats-cluster.js';
import { NATS_SERVER } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import {
  type AgentSpec,
  ackedOf,
  alive,
  checkSinkLog,
  collectorConfig,
  describeCheck,
  kill9,
  type Proc,
  sinkConfig,
  startCollector,
  startRidAgent,
  startSink,
  stopProc,
} from '../helpers/scale-out.js';
import { pollUntil } from '../helpers/wait.js';

const available = requireOrSkip({ suite: 'scale-out (NATS JetStream)', files: [NATS_SERVER] });

async function streamMessages(nc: NatsConnection, stream: string): Promise<number> {
  const jsm = await jetstreamManager(nc, { timeout: 5000 });
  return (await jsm.streams.info(stream)).state.messages;
}

describe.skipIf(!available)('collector output = jetstream and the sink, real 3-node NATS cluster', () => {
  let dir: string;
  let cluster: NatsCluster;
  let nc: NatsConnection;
  const procs: Proc[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-js-'));
    cluster = await NatsCluster.start(path.join(dir, 'nats'));
    nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  });

  afterAll(async () => {
    for (const p of procs) await kill9(p);
    await nc?.close();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const track = (p: Proc) => {
    procs.push(p);
    return p;
  };

  test('agents → two collectors → R3 stream → sink under load, with kill -9 of a collector, the stream leader, an agent and the sink, alone and overlapping: every record exactly once, in each host order', async () => {
    const stream = 'CHAOS';
    const c1 = await collectorConfig(dir, 'c1', cluster.urls, stream);
    const c2 = await collectorConfig(dir, 'c2', cluster.urls, stream);
    track(await startCollector(c1, 'c1'));
    track(await startCollector(c2, 'c2'));
    const sink = sinkConfig(dir, cluster.urls, stream);
    track(startSink(sink));
    const total = 5000;
    const specs: AgentSpec[] = ['h1', 'h2', 'h3', 'h4'].map((host, i) => ({
      host,
      agent: `agent-${host}`,
      port: i < 2 ? c1.port : c2.port,
      total,
      stateFile: path.join(dir, `${host}.state`),
      rate: 500,
    }));
    const agents = new Map<string, Proc>(specs.map((s) => [s.host, track(startRidAgent(s))]));
    const acked = () => specs.reduce((n, s) => n + ackedOf(s), 0);
    const diagnostics = () =>
      [
        `acked: ${specs.map((s) => `${s.host}=${ackedOf(s)}`).join(' ')}`,
        ...[c1.proc, c2.proc, sink.proc].flatMap((p) => (p ? [`--- ${p.name}`, ...p.out.slice(-15)] : [])),
        cluster.logs(),
      ].join('\n');
    const progress = (n: number) =>
      pollUntil(() => acked() >= n, { timeoutMs: 60_000, what: `${n} records acknowledged`, diagnostics });

    // 1. A collector alone.
    await progress(2000);
    await kill9(c1.proc);
    await delay(300); // the collector's outage
    track(await startCollector(c1, 'c1'));

    // 2. The stream leader and the other collector at once.
    await progress(6000);
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    const leaderName = (await jsm.streams.info(stream)).cluster?.leader;
    expect(leaderName).toBeTruthy();
    const leader = cluster.node(leaderName!);
    await Promise.all([kill9(c2.proc), cluster.kill(leader)]);
    await delay(300);
    track(await startCollector(c2, 'c2'));
    await progress(9000);
    cluster.startNode(leader);

    // 3. An agent alone, then an agent and the sink at once.
    await progress(11_000);
    await kill9(agents.get('h2')!);
    agents.set('h2', track(startRidAgent(specs[1]!)));
    await progress(14_000);
    await Promise.all([kill9(agents.get('h3')!), kill9(sink.proc)]);
    agents.set('h3', track(startRidAgent(specs[2]!)));
    track(startSink(sink));

    // Every record acknowledged to its agent, then in the sink's log.
    await progress(4 * total);
    for (const [host, p] of agents) {
      await pollUntil(() => !alive(p), { timeoutMs: 10_000, what: `agent ${host} to finish`, diagnostics });
      expect(p.proc.exitCode, `agent ${host}: ${p.out.join('\n')}`).toBe(0);
    }
    const expected = new Map(specs.map((s) => [s.host, total]));
    await pollUntil(() => checkSinkLog([sink.log], expected).missing.length === 0, {
      timeoutMs: 60_000,
      what: 'every record in the sink log',
      diagnostics: () => `${describeCheck(checkSinkLog([sink.log], expected))}\n${diagnostics()}`,
    });
    const r = checkSinkLog([sink.log], expected);
    expect(r.missing, describeCheck(r)).toEqual([]);
    expect(r.duplicates, describeCheck(r)).toEqual([]);
    expect(r.outOfOrder, describeCheck(r)).toEqual([]);
    expect(r.malformed).toBe(0);
    expect(r.seqProblems).toBe(0);
    expect(r.lines).toBe(4 * total);
    // Exactly once in the stream too: the resends (collector, agent kill -9) were dropped by message id.
    expect(await streamMessages(nc, stream)).toBe(4 * total);
    for (const c of [c1, c2]) expect(await stopProc(c.proc)).toBe(0);
    expect(await stopProc(sink.proc)).toBe(0);
  }, 240_000);

  test('a full stream: agents are refused (DISKFULL "stream full") and keep their records, the collector says why; room again: everything arrives once', async () => {
    const stream = 'FULL';
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    await jsm.streams.add({
      name: stream,
      subjects: [`${stream}.>`],
      storage: StorageType.File,
      num_replicas: 3,
      max_msgs: 300,
      discard: DiscardPolicy.New,
    });
    const c = await collectorConfig(dir, 'cfull', cluster.urls, stream);
    const collector = track(await startCollector(c, 'cfull'));
    const spec: AgentSpec = {
      host: 'full1',
      agent: 'agent-full1',
      port: c.port,
      total: 500,
      stateFile: path.join(dir, 'full1.state'),
    };
    const agent = track(startRidAgent(spec));
    const fullLines = () => collector.out.filter((l) => l.includes(`stream ${stream} is full`));
    await pollUntil(async () => fullLines().length > 0 && (await streamMessages(nc, stream)) === 300, {
      timeoutMs: 30_000,
      what: 'the stream to fill and the collector to say so',
      diagnostics: () => `${ackedOf(spec)}\n${collector.out.slice(-10).join('\n')}`,
    });
    expect(fullLines()[0]).toContain('DISKFULL');
    expect(fullLines()[0]).toContain('raise the stream');
    // Refused, not lost: the agent keeps what the stream could not take (a batch is answered as a whole).
    expect(alive(agent)).toBe(true);
    expect(ackedOf(spec)).toBeLessThanOrEqual(300);
    await jsm.streams.update(stream, { max_msgs: 1000 });
    await pollUntil(() => ackedOf(spec) === 500, { timeoutMs: 30_000, what: 'the rest to be acknowledged' });
    expect(await streamMessages(nc, stream)).toBe(500);
    expect(await stopProc(collector)).toBe(0);
  }, 90_000);
});

describe.skipIf(!available)('output = jetstream while NATS cannot be reached', () => {
  let dir: string;
  let cluster: NatsCluster;
  const procs: Proc[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-js-down-'));
    cluster = await NatsCluster.create(path.join(dir, 'nats'));
  });

  afterAll(async () => {
    for (const p of procs) await kill9(p);
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('unreachable at start and for a while in the middle: the collector starts anyway, agents are refused and keep their records, nothing is lost or doubled', async () => {
    const stream = 'DOWN';
    const c = await collectorConfig(dir, 'cdown', cluster.urls, stream);
    const collector = await startCollector(c, 'cdown');
    procs.push(collector);
    const sink = sinkConfig(dir, cluster.urls, stream);
    procs.push(startSink(sink));
    const spec: AgentSpec = {
      host: 'down1',
      agent: 'agent-down1',
      port: c.port,
      total: 2000,
      stateFile: path.join(dir, 'down1.state'),
      rate: 400,
    };
    procs.push(startRidAgent(spec));
    const unavailable = () => collector.out.filter((l) => l.includes('did not acknowledge')).length;
    // NATS down from the start: records are refused (DISKERROR "stream unavailable"), none acknowledged.
    await pollUntil(() => unavailable() >= 1, {
      timeoutMs: 30_000,
      what: 'the collector to refuse records while NATS is down',
      diagnostics: () => collector.out.slice(-10).join('\n'),
    });
    expect(ackedOf(spec)).toBe(0);
    await cluster.startAll();
    await pollUntil(() => ackedOf(spec) >= 800, { timeoutMs: 30_000, what: '800 records acknowledged' });
    // Unreachable in the middle: every server stops answering (SIGSTOP), then comes back.
    const before = unavailable();
    cluster.freeze(true);
    const frozenAt = ackedOf(spec);
    await pollUntil(() => unavailable() >= before + 1, {
      timeoutMs: 30_000,
      what: 'the collector to refuse records while NATS does not answer',
      diagnostics: () => collector.out.slice(-10).join('\n'),
    });
    expect(ackedOf(spec)).toBeLessThan(frozenAt + 1024);
    cluster.freeze(false);
    await pollUntil(() => ackedOf(spec) === spec.total, {
      timeoutMs: 60_000,
      what: 'every record acknowledged',
      diagnostics: () => `${ackedOf(spec)}\n${collector.out.slice(-10).join('\n')}\n${cluster.logs()}`,
    });
    const expected = new Map([[spec.host, spec.total]]);
    await pollUntil(() => checkSinkLog([sink.log], expected).missing.length === 0, {
      timeoutMs: 60_000,
      what: 'every record in the sink log',
      diagnostics: () => describeCheck(checkSinkLog([sink.log], expected)),
    });
    const r = checkSinkLog([sink.log], expected);
    expect(r.duplicates, describeCheck(r)).toEqual([]);
    expect(r.outOfOrder, describeCheck(r)).toEqual([]);
    expect(r.lines).toBe(spec.total);
    expect(await stopProc(collector)).toBe(0);
    expect(await stopProc(sink.proc)).toBe(0);
  }, 180_000);
});
