/**
 * Loss per host at the collector (docs/loss.md): the hooks of HostTable the collector calls (noteSession,
 * noteRecord, count with the written lines) driven directly, without the wire — gaps, late records, agent
 * restarts, the kernel's and auditd's loss reports — in /metrics (Prometheus counters with a host label, only for
 * hosts with a record identity or a loss report), /status's host list and summary; bounded agents; and through a
 * real in-process collector on loopback: a kernel loss report and a DAEMON_ABORT sent by a client show up in the
 * metrics (the record-identity hooks need the failover work's wire and are driven directly here).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HostTable, MAX_LIVE_RANGES } from '../../src/collector/hosts.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { collectorMetrics } from '../../src/status/metrics.js';
import { renderPage } from '../../src/status/page.js';
import { WireClient } from '../helpers/wire-client.js';
import { cleanup, onCleanup, startCollector } from './harness.js';

afterEach(cleanup);

interface Log {
  level: 'info' | 'warn';
  msg: string;
}

function table(maxHosts = 100, logs: Log[] = []) {
  let now = Date.UTC(2026, 11, 1, 12);
  const t = new HostTable({
    maxHosts,
    silenceMs: 0,
    log: {
      info: (_obj, msg) => logs.push({ level: 'info', msg }),
      warn: (_obj, msg) => logs.push({ level: 'warn', msg }),
    },
    now: () => now,
  });
  return { t, logs, advance: (ms: number) => (now += ms) };
}

const KERNEL_LOST =
  'node=web1 type=CONFIG_CHANGE msg=audit(1764583200.000:77): op=set audit_lost=0 old=42 auid=0 ses=1 subj=unconfined res=1';
const ABORT =
  'node=web1 type=DAEMON_ABORT msg=audit(1764583201.000:7800): auditd error halt, auid=0 pid=1 res=failed';
const START =
  'node=web1 type=DAEMON_START msg=audit(1764583202.000:7801): op=start ver=3.0.9 format=enriched kernel=6.1.0 auid=4294967295 pid=251 uid=0 ses=4294967295 res=success';

async function metricsOf(t: HostTable): Promise<string> {
  // The collector's own counters are not what this test is about: all 0.
  const stats = new Proxy({}, { get: () => 0 }) as never;
  return collectorMetrics({ stats, hosts: t }).metrics();
}

describe('loss per host (HostTable hooks)', () => {
  it('gaps, late records, restarts and loss reports: counted, logged, in /metrics and /status', async () => {
    const { t, logs } = table();
    const web1 = t.attach('web1', 'node');
    const db1 = t.attach('db1', 'node');
    t.noteSession('A1', 1000);
    for (const seq of [1, 2, 3, 7, 8]) t.noteRecord(web1, { agent: 'A1', seq });
    expect(logs.filter((l) => l.level === 'warn').map((l) => l.msg)).toEqual([
      expect.stringMatching(/^host web1: records 4\.\.6 of agent A1 \(3\) never arrived before record 7/),
    ]);
    t.noteRecord(web1, { agent: 'A1', seq: 5 }); // late: after a reconnection, or from the other collector
    t.noteSession('A1', 2000); // the agent restarted
    t.noteSession('A1', 1500); // an older session, still open: not a restart
    t.count(web1, 3, 300, [
      Buffer.from(KERNEL_LOST),
      Buffer.from('\n'),
      Buffer.from(ABORT),
      Buffer.from(START),
    ]);
    for (const seq of [1, 2]) t.noteRecord(db1, { agent: 'B1', seq });
    t.noteRecord(db1, null); // audisp-remote: no identity, nothing to follow
    t.count(db1, 1, 100, [Buffer.from('node=db1 type=SYSCALL msg=audit(1.000:1): x=1')]);

    const [first, second] = t.list();
    expect(first).toMatchObject({
      host: 'web1', // hosts with loss first
      loss: {
        missing: 2,
        gaps: 1,
        lateRecords: 1,
        restarts: 1,
        kernelLost: 42,
        auditdAborts: 1,
        auditdErrors: 0,
        auditdStarts: 1,
      },
    });
    expect(second).toMatchObject({ host: 'db1', loss: { missing: 0, restarts: 0, kernelLost: 0 } });
    expect(t.summary()).toMatchObject({ hostsWithLoss: 1, missingRecords: 2, kernelLost: 42, agents: 2 });
    expect(logs.map((l) => l.msg)).toContainEqual(
      expect.stringMatching(/^host web1 reports that its kernel lost 42 audit event\(s\) \(CONFIG_CHANGE\)/),
    );
    expect(logs.map((l) => l.msg)).toContainEqual(expect.stringMatching(/^agent A1 of host web1 restarted/));

    const text = await metricsOf(t);
    const series = (name: string) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(`${name}{`))
        .sort();
    expect(series('auditrelay_collector_host_gap_records_total')).toEqual([
      'auditrelay_collector_host_gap_records_total{host="db1",kind="node"} 0',
      'auditrelay_collector_host_gap_records_total{host="web1",kind="node"} 3',
    ]);
    expect(series('auditrelay_collector_host_late_records_total')).toContain(
      'auditrelay_collector_host_late_records_total{host="web1",kind="node"} 1',
    );
    expect(series('auditrelay_collector_host_missing_records')).toContain(
      'auditrelay_collector_host_missing_records{host="web1",kind="node"} 2',
    );
    expect(series('auditrelay_collector_host_agent_restarts_total')).toContain(
      'auditrelay_collector_host_agent_restarts_total{host="web1",kind="node"} 1',
    );
    expect(series('auditrelay_collector_host_kernel_lost_total')).toContain(
      'auditrelay_collector_host_kernel_lost_total{host="web1",kind="node"} 42',
    );
    expect(series('auditrelay_collector_host_auditd_aborts_total')).toContain(
      'auditrelay_collector_host_auditd_aborts_total{host="web1",kind="node"} 1',
    );
    expect(text).toMatch(/^auditrelay_collector_hosts_with_loss 1$/m);
    // Counters only grow: a second scrape after more loss.
    t.noteRecord(web1, { agent: 'A1', seq: 20 });
    const again = (await metricsOf(t)).split('\n');
    expect(again).toContain('auditrelay_collector_host_gap_records_total{host="web1",kind="node"} 14');
  });

  it('the status page shows a card and a column for loss (its script parses)', () => {
    const html = renderPage('collector', {});
    expect(html).toContain('hosts with loss');
    expect(html).toContain('<th>loss</th>');
    const script = html.split('<script>')[1]!.split('</script>')[0]!;
    expect(() => new Function(script)).not.toThrow();
  });

  it('a host without record identities or loss reports has no loss series', async () => {
    const { t } = table();
    const h = t.attach('quiet', 'node');
    t.count(h, 1, 10, [Buffer.from('node=quiet type=USER_CMD msg=audit(1.000:1): x=1')]);
    expect(t.list()[0]!.loss).toBeNull();
    expect(await metricsOf(t)).not.toMatch(/host_gap_records_total\{/);
  });

  it('bounded: agents beyond max_hosts are not followed (counted); ranges per agent capped', () => {
    const { t } = table(2);
    const h = t.attach('h', 'node');
    for (const agent of ['a', 'b', 'c', 'd']) t.noteRecord(h, { agent, seq: 1 });
    expect(t.summary()).toMatchObject({ agents: 2, untrackedRecords: 2 });
    const { t: t2, logs } = table();
    const h2 = t2.attach('h', 'node');
    for (let i = 0; i < MAX_LIVE_RANGES * 4; i++) t2.noteRecord(h2, { agent: 'a', seq: i * 2 });
    expect(t2.list()[0]!.loss).toMatchObject({
      missing: MAX_LIVE_RANGES * 4 - 1,
      gaps: MAX_LIVE_RANGES * 4 - 1,
    });
    // One warning a minute per agent, however many gaps.
    expect(logs.filter((l) => l.level === 'warn').length).toBe(1);
  });

  it('a gap across a collector restart: seeded from the log', () => {
    const { t } = table();
    t.seedAgent('A1', 100);
    const h = t.attach('web1', 'node');
    t.noteRecord(h, { agent: 'A1', seq: 104 });
    expect(t.list()[0]!.loss).toMatchObject({ missing: 3 });
  });
});

describe('loss reports through a real collector', () => {
  it("a kernel loss report and auditd's abort sent by a client are counted for its host in /metrics", async () => {
    const c = await startCollector();
    const wire = await WireClient.connect({ host: '127.0.0.1', port: c.port });
    onCleanup(() => wire.destroy());
    const lines = [START, KERNEL_LOST, ABORT, 'node=web1 type=USER_CMD msg=audit(1764583203.000:78): x=1'];
    await wire.write(Buffer.concat(lines.map((l, i) => encodeEvent(i + 1, Buffer.from(`${l}\n`)))));
    await wire.waitUntil(
      () => wire.replies.filter((r) => r.type === MessageType.ACK).length === lines.length,
      20_000,
      'the acknowledgements',
    );
    const text = await collectorMetrics(c.collector).metrics();
    expect(text).toContain('auditrelay_collector_host_kernel_lost_total{host="web1",kind="node"} 42');
    expect(text).toContain('auditrelay_collector_host_auditd_aborts_total{host="web1",kind="node"} 1');
    expect(text).toContain('auditrelay_collector_host_auditd_starts_total{host="web1",kind="node"} 1');
    expect(c.collector.hostsStatus().list[0]).toMatchObject({ host: 'web1', loss: { kernelLost: 42 } });
    expect(c.logs.map((l) => l.msg)).toContainEqual(
      expect.stringMatching(/host web1 reports that its kernel lost 42/),
    );
  });
});
