/**
 * Scale-out (issue 14 items 1–5) against a real 3-node nats-server cluster (>= 2.10, .cache/peers) on 127.0.0.1,
 * every process real and started and killed by pid:
 *
 *   real agents → two collectors (output = jetstream) → an R3 stream → `auditrelay sink` → one log file
 *
 * The agents are `auditrelay agent --config FILE` as auditd runs a plugin: records on stdin in the plugin string
 * format (`node=HOST type=USER msg=audit(…): … tag=HOST:N …`, one a line), `mode = forward` with its durable queue
 * and state file in the test's directory, record identities (hello + RECORD_ID), and `remote_server` listing both
 * collectors (h1, h2 with c1 first, h3, h4 with c2 first; failback after 2 s). A feeder writes each host's records
 * at a steady pace (test/helpers/scale-out.ts, AgentRig). The crash test kills -9 a collector (its agents fail over
 * to the other and come back), the stream leader and the other collector at once, an agent (restarted on its
 * durable queue with the same agent id; the records written into the dead process's pipe that it never accepted
 * are fed again to the new one), and another agent and the sink at once; then stdin is closed and every agent
 * drains and exits 0. The other tests: a full stream (DISKFULL, then room again) and NATS unreachable at start and
 * frozen in the middle.
 *
 * The checker reads every record's tag in the sink's output: every record of every host exactly once, in each
 * host's order; the stream itself holds each record exactly once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DiscardPolicy, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { NatsCluster } from '../helpers/nats-cluster.js';
import { NATS_SERVER } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import {
  AgentRig,
  alive,
  checkSinkLog,
  collectorConfig,
  describeCheck,
  kill9,
  type Proc,
  sinkConfig,
  startCollector,
  startSink,
  stopProc,
} from '../helpers/scale-out.js';
import { pollUntil } from '../helpers/wait.js';

const available = requireOrSkip({ suite: 'scale-out (NATS JetStream)', files: [NATS_SERVER] });

/** Log lines of a process that contain `text`. */
const lines = (p: Proc | null, text: string) => (p ? p.out.filter((l) => l.includes(text)) : []);

/** The agent id a process logged at start ("record identities on"). */
function agentIdOf(p: Proc): string | undefined {
  for (const l of lines(p, 'record identities on')) {
    const m = /"agent":"([^"]+)"/.exec(l);
    if (m) return m[1];
  }
  return undefined;
}

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

  test('real agents listing both collectors → two collectors → R3 stream → sink under load, with kill -9 of a collector (failover), the stream leader, an agent (restarted on its durable queue) and the sink, alone and overlapping: every record exactly once, in each host order', async () => {
    const stream = 'CHAOS';
    const c1 = await collectorConfig(dir, 'c1', cluster.urls, stream);
    const c2 = await collectorConfig(dir, 'c2', cluster.urls, stream);
    track(await startCollector(c1, 'c1'));
    track(await startCollector(c2, 'c2'));
    const sink = sinkConfig(dir, cluster.urls, stream);
    track(startSink(sink));
    const total = 5000;
    const name = (port: number) => `127.0.0.1:${port}`;
    // h1, h2 prefer c1; h3, h4 prefer c2. A short failback interval: back on the preferred collector within
    // seconds of its return.
    const agents = ['h1', 'h2', 'h3', 'h4'].map(
      (host, i) =>
        new AgentRig({
          host,
          dir: path.join(dir, 'agents'),
          ports: i < 2 ? [c1.port, c2.port] : [c2.port, c1.port],
          total,
          maxAhead: 1000,
          extra: ['failback_interval = 2'],
        }),
    );
    const [h1, h2, h3, h4] = agents as [AgentRig, AgentRig, AgentRig, AgentRig];
    for (const a of agents) track(a.start());
    const acked = () => agents.reduce((n, a) => n + a.acked(), 0);
    const diagnostics = () =>
      [
        `acked: ${agents.map((a) => `${a.host}=${a.acked()} (fed ${a.next - 1})`).join(' ')}`,
        ...[...agents.map((a) => a.proc), c1.proc, c2.proc, sink.proc].flatMap((p) =>
          p ? [`--- ${p.name}`, ...p.out.slice(-15)] : [],
        ),
        cluster.logs(),
      ].join('\n');
    const t0 = Date.now();
    /** What happened when, with each agent's acknowledged/fed records (printed at the end). */
    const timeline: string[] = [];
    const mark = (what: string) =>
      timeline.push(
        `${Date.now() - t0} ms ${what} (${agents.map((a) => `${a.host} ${a.acked()}/${a.next - 1}`).join(', ')})`,
      );
    const progress = async (n: number) => {
      await pollUntil(() => acked() >= n, {
        timeoutMs: 60_000,
        what: `${n} records acknowledged`,
        diagnostics,
      });
      mark(`${n} acknowledged`);
    };
    const logged = (who: AgentRig[], text: string, what: string) =>
      pollUntil(() => who.every((a) => lines(a.proc, text).length > 0), {
        timeoutMs: 30_000,
        what,
        diagnostics,
      });

    // 1. A collector alone: its agents fail over to the other at once, and go back once it answers again.
    await progress(2000);
    const back = `going back to it from ${name(c2.port)}`;
    const before = [h1, h2].map((a) => lines(a.proc, back).length);
    await kill9(c1.proc);
    await logged(
      [h1, h2],
      `failing over from ${name(c1.port)} to ${name(c2.port)}`,
      'h1 and h2 to fail over to c2',
    );
    track(await startCollector(c1, 'c1'));
    await pollUntil(() => [h1, h2].every((a, i) => lines(a.proc, back).length > before[i]!), {
      timeoutMs: 30_000,
      what: 'h1 and h2 to go back to c1',
      diagnostics,
    });

    // 2. The stream leader and the other collector at once: h3 and h4 fail over to c1.
    await progress(5000);
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    const leaderName = (await jsm.streams.info(stream)).cluster?.leader;
    expect(leaderName).toBeTruthy();
    const leader = cluster.node(leaderName!);
    await Promise.all([kill9(c2.proc), cluster.kill(leader)]);
    await logged(
      [h3, h4],
      `failing over from ${name(c2.port)} to ${name(c1.port)}`,
      'h3 and h4 to fail over to c1',
    );
    track(await startCollector(c2, 'c2'));
    await progress(7000);
    cluster.startNode(leader);

    // 3. An agent alone, then another agent and the sink at once: each time the agent with the most records left
    // (mid-stream: records of its own unacknowledged, and usually still being fed: it is fed at most maxAhead
    // records beyond its acknowledged ones), with up to 200 more records just written into its pipe; restarted on
    // its durable queue, same agent id; what it had not read is fed to the new process.
    const kills: { host: string; ackedAtKill: number; accepted: number; fed: number }[] = [];
    const restart = async (a: AgentRig) => {
      const old = a.proc!;
      const ackedAtKill = a.acked();
      const r = await a.kill9(200);
      expect(r.accepted).toBeGreaterThanOrEqual(ackedAtKill);
      expect(ackedAtKill, `${a.host} killed mid-stream`).toBeLessThan(total);
      kills.push({ host: a.host, ackedAtKill, ...r });
      const p = track(a.start());
      await pollUntil(() => agentIdOf(p), { timeoutMs: 20_000, what: `${a.host} restarted`, diagnostics });
      expect(agentIdOf(p)).toBe(agentIdOf(old));
    };
    const leastAdvanced = (but: AgentRig[] = []) =>
      agents.filter((a) => !but.includes(a)).reduce((x, y) => (y.acked() < x.acked() ? y : x));
    const first = leastAdvanced();
    await restart(first);
    await progress(9000);
    await Promise.all([restart(leastAdvanced([first])), kill9(sink.proc)]);
    track(startSink(sink));

    // Every record fed and acknowledged; stdin closed: each agent drains and exits 0.
    for (const a of agents) {
      expect(await a.finish(90_000, diagnostics), a.proc!.out.join('\n')).toBe(0);
      mark(`${a.host} exited`);
    }
    const expected = new Map(agents.map((a) => [a.host, total]));
    await pollUntil(() => checkSinkLog([sink.log], expected).missing.length === 0, {
      timeoutMs: 60_000,
      what: 'every record in the sink log',
      diagnostics: () => `${describeCheck(checkSinkLog([sink.log], expected))}\n${diagnostics()}`,
    });
    mark('sink done');
    const r = checkSinkLog([sink.log], expected);
    expect(r.missing, describeCheck(r)).toEqual([]);
    expect(r.duplicates, describeCheck(r)).toEqual([]);
    expect(r.outOfOrder, describeCheck(r)).toEqual([]);
    expect(r.malformed).toBe(0);
    expect(r.seqProblems).toBe(0);
    expect(r.lines).toBe(4 * total);
    // Exactly once in the stream too: the resends (collector kill -9, failover, failback, agent kill -9) were
    // dropped by message id.
    expect(await streamMessages(nc, stream)).toBe(4 * total);
    // The sink reads with one filter subject, never the multi-filter form (src/sink/sink.ts: nats-server delivered
    // a few hundred messages a second to it after these kills, and the sink's catch-up took most of a minute).
    const sinkConsumers = [];
    for await (const ci of jsm.consumers.list(stream))
      if (ci.name.startsWith('auditrelay-sink')) sinkConsumers.push(ci);
    expect(sinkConsumers.length).toBeGreaterThan(0);
    for (const ci of sinkConsumers) {
      expect(ci.config.filter_subject).toBe(`${stream}.>`);
      expect(ci.config.filter_subjects ?? []).toEqual([]);
    }
    console.log(`${timeline.join('\n')}\nagent kills: ${JSON.stringify(kills)}`);
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
    const agent = new AgentRig({ host: 'full1', dir: path.join(dir, 'agents'), ports: [c.port], total: 500 });
    track(agent.start());
    const fullLines = () => collector.out.filter((l) => l.includes(`stream ${stream} is full`));
    await pollUntil(async () => fullLines().length > 0 && (await streamMessages(nc, stream)) === 300, {
      timeoutMs: 30_000,
      what: 'the stream to fill and the collector to say so',
      diagnostics: () => `${agent.acked()}\n${collector.out.slice(-10).join('\n')}`,
    });
    expect(fullLines()[0]).toContain('DISKFULL');
    expect(fullLines()[0]).toContain('raise the stream');
    // Refused, not lost: the agent keeps what the stream could not take (a batch is answered as a whole).
    expect(alive(agent.proc)).toBe(true);
    expect(agent.acked()).toBeLessThanOrEqual(300);
    await jsm.streams.update(stream, { max_msgs: 1000 });
    await pollUntil(() => agent.acked() === 500, {
      timeoutMs: 30_000,
      what: 'the rest to be acknowledged',
      diagnostics: async () =>
        `acked ${agent.acked()}, stream ${await streamMessages(nc, stream)}\n--- agent\n${agent.proc!.out.slice(-40).join('\n')}\n--- collector\n${collector.out.slice(-30).join('\n')}`,
    });
    expect(await streamMessages(nc, stream)).toBe(500);
    // In order too: no later record was stored ahead of one the stream had refused.
    expect(collector.out.filter((l) => l.includes('order broken'))).toEqual([]);
    expect(await agent.finish(30_000), agent.proc!.out.join('\n')).toBe(0);
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
    const agent = new AgentRig({
      host: 'down1',
      dir: path.join(dir, 'agents'),
      ports: [c.port],
      total: 2000,
      rate: 400,
    });
    // Half the records now, the other half while NATS does not answer (below).
    agent.feedLimit = 1000;
    procs.push(agent.start());
    const unavailable = () => collector.out.filter((l) => l.includes('did not acknowledge')).length;
    // NATS down from the start: records are refused (DISKERROR "stream unavailable"), none acknowledged.
    await pollUntil(() => unavailable() >= 1, {
      timeoutMs: 30_000,
      what: 'the collector to refuse records while NATS is down',
      diagnostics: () => collector.out.slice(-10).join('\n'),
    });
    expect(agent.acked()).toBe(0);
    await cluster.startAll();
    const tail = () =>
      [
        `acked ${agent.acked()}, fed ${agent.next - 1}`,
        '--- agent',
        ...agent.proc!.out.slice(-15),
        '--- collector',
        ...collector.out.slice(-15),
        cluster.logs(),
      ].join('\n');
    await pollUntil(() => agent.acked() >= 800, {
      timeoutMs: 30_000,
      what: '800 records acknowledged',
      diagnostics: tail,
    });
    // Unreachable in the middle: every server stops answering (SIGSTOP), then comes back.
    const before = unavailable();
    cluster.freeze(true);
    const frozenAt = agent.acked();
    agent.feedLimit = agent.total;
    await pollUntil(() => unavailable() >= before + 1, {
      timeoutMs: 30_000,
      what: 'the collector to refuse records while NATS does not answer',
      diagnostics: () => collector.out.slice(-10).join('\n'),
    });
    expect(agent.acked()).toBeLessThan(frozenAt + 1024);
    cluster.freeze(false);
    await pollUntil(() => agent.acked() === agent.total, {
      timeoutMs: 60_000,
      what: 'every record acknowledged',
      diagnostics: () => `${agent.acked()}\n${collector.out.slice(-10).join('\n')}\n${cluster.logs()}`,
    });
    const expected = new Map([[agent.host, agent.total]]);
    await pollUntil(() => checkSinkLog([sink.log], expected).missing.length === 0, {
      timeoutMs: 60_000,
      what: 'every record in the sink log',
      diagnostics: () => describeCheck(checkSinkLog([sink.log], expected)),
    });
    const r = checkSinkLog([sink.log], expected);
    expect(r.duplicates, describeCheck(r)).toEqual([]);
    expect(r.outOfOrder, describeCheck(r)).toEqual([]);
    expect(r.lines).toBe(agent.total);
    expect(await agent.finish(30_000), agent.proc!.out.join('\n')).toBe(0);
    expect(await stopProc(collector)).toBe(0);
    expect(await stopProc(sink.proc)).toBe(0);
  }, 180_000);
});
