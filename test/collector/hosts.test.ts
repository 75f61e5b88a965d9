/**
 * Per-host accounting (docs/collector.md, "Hosts"): a host is its session's authenticated identity, else the node
 * name its records carry, else its address; for each, records, bytes, connections and last sign of life, in
 * /metrics, /status and the status page; a host silent for longer than host_silence_timeout is reported once per
 * silence (warning, metric, status) and again as sending when it comes back; a heartbeat-only reconnection of a
 * known host keeps it alive; the table is bounded (max_hosts, then `(other)` and a warning).
 */
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { HostTable, nodeNameOf, OTHER_HOST, safeHostName } from '../../src/collector/hosts.js';
import { collectorMetrics } from '../../src/status/metrics.js';
import { StatusServer } from '../../src/status/server.js';
import { pollUntil } from '../helpers/wait.js';
import { cleanup, memoryLogger, onCleanup, RecordClient, startCollector } from './harness.js';

afterEach(cleanup);

function get(port: number, pathname: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: pathname }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

describe('hosts', () => {
  it('records, bytes, connections and last seen per host (node name, else address); silence reported once per host and silence, in the log, /metrics, /status and the page', async () => {
    const c = await startCollector({ hostSilenceMs: 400 });
    const status = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'collector',
      status: () => {
        const { list, ...summary } = c.collector.hostsStatus(1000);
        return { ...c.collector.stats, hosts: summary, hostList: list };
      },
      registry: collectorMetrics(c.collector),
      log: memoryLogger([]),
    });
    const { port: statusPort } = await status.start();
    onCleanup(() => status.stop());

    const web1 = await RecordClient.connect(c.port, 'w', { node: 'web1', localAddress: '127.0.0.2' });
    const anon = await RecordClient.connect(c.port, 'x', { localAddress: '127.0.0.3' });
    await web1.send(10);
    await anon.send(4);
    const list = () => c.collector.hostsStatus().list;
    const bytes = (cl: RecordClient) => cl.written().reduce((n, l) => n + l.length + 1, 0);
    expect(list().map((h) => [h.host, h.kind, h.records, h.bytes, h.connected])).toEqual([
      ['127.0.0.3', 'address', 4, bytes(anon), true],
      ['web1', 'node', 10, bytes(web1), true],
    ]);
    // web1 goes away; anon keeps sending heartbeats (it is alive, only quiet).
    web1.wire.destroy();
    let hb = 100;
    const beat = setInterval(() => void anon.wire.sendHeartbeat(hb++), 100);
    onCleanup(() => clearInterval(beat));
    await pollUntil(() => c.collector.hostsStatus().silent === 1, { timeoutMs: 10_000, what: 'web1 silent' });
    const silentLine =
      /^host web1 has sent nothing \(no record, no heartbeat\) for \d+ s, longer than host_silence_timeout = 0\.4 s \(last seen .*, not connected\): is its agent running\?$/;
    expect(c.logs.filter((l) => silentLine.test(l.msg))).toHaveLength(1);
    // Reported once per silence, however many sweeps pass.
    for (let i = 0; i < 3; i++) c.collector.hosts.sweep();
    expect(c.logs.filter((l) => /^host web1 has sent nothing/.test(l.msg))).toHaveLength(1);
    expect(list()[0]).toMatchObject({ host: 'web1', connected: false, records: 10 });
    expect(list()[0]!.silentSeconds).not.toBeNull();

    const metrics = await get(statusPort, '/metrics');
    expect(metrics).toMatch(/^auditrelay_collector_host_silent\{host="web1",kind="node"\} 1$/m);
    expect(metrics).toMatch(/^auditrelay_collector_host_silent\{host="127\.0\.0\.3",kind="address"\} 0$/m);
    expect(metrics).toMatch(/^auditrelay_collector_host_records_total\{host="web1",kind="node"\} 10$/m);
    expect(metrics).toMatch(/^auditrelay_collector_host_connections\{host="web1",kind="node"\} 0$/m);
    expect(metrics).toMatch(/^auditrelay_collector_hosts_silent 1$/m);
    const st = JSON.parse(await get(statusPort, '/status')) as {
      hosts: { hosts: number; silent: number };
      hostList: { host: string; silentSeconds: number | null }[];
    };
    expect(st.hosts).toMatchObject({ hosts: 2, silent: 1 });
    expect(st.hostList[0]).toMatchObject({ host: 'web1' });
    expect(await get(statusPort, '/')).toContain('<table id="hosts">');

    // web1 back, from its address with heartbeats only at first: accounted as web1 (its address's last node).
    const again = await RecordClient.connect(c.port, 'w2', { node: 'web1', localAddress: '127.0.0.2' });
    await again.wire.sendHeartbeat(1);
    await pollUntil(() => c.collector.hostsStatus().silent === 0, { timeoutMs: 10_000, what: 'web1 back' });
    expect(
      c.logs.filter((l) => /^host web1 is sending again after \d+ s of silence$/.test(l.msg)),
    ).toHaveLength(1);
    await again.send(5);
    expect(list().map((h) => [h.host, h.records, h.connections])).toEqual([
      ['127.0.0.3', 4, 1],
      ['web1', 15, 1],
    ]);
  });

  it('the host table is bounded: beyond max_hosts, new hosts are counted as (other), with a warning', async () => {
    const c = await startCollector({ maxHosts: 2 });
    for (const [i, node] of ['a', 'b', 'c', 'd'].entries()) {
      const cl = await RecordClient.connect(c.port, node, { node, localAddress: `127.0.1.${i + 1}` });
      await cl.send(3);
    }
    expect(c.collector.hostsStatus().list.map((h) => [h.host, h.records])).toEqual([
      [OTHER_HOST, 6],
      ['a', 3],
      ['b', 3],
    ]);
    expect(c.collector.hostsStatus().overflowRecords).toBe(6);
    expect(c.logs.filter((l) => /^the host table is full \(max_hosts = 2\)/.test(l.msg))).toHaveLength(1);
  });

  it('host names: node= of the record, printable and bounded; an identity wins; krb5 and TLS identities are kinds of their own', () => {
    expect(nodeNameOf(Buffer.from('node=web1.example type=SYSCALL msg=audit(1.0:1): x'))).toBe(
      'web1.example',
    );
    expect(nodeNameOf(Buffer.from('type=SYSCALL msg=audit(1.0:1): node=evil'))).toBeNull();
    expect(nodeNameOf(Buffer.from('node= type=X'))).toBeNull();
    expect(nodeNameOf(Buffer.from('node=a\x1b[31mb%c type=X', 'latin1'))).toBe('a%1b[31mb%25c');
    expect(nodeNameOf(Buffer.from(`node=${'h'.repeat(300)} type=X`))).toHaveLength(255);
    expect(safeHostName('auditd/web1.example@EXAMPLE.COM')).toBe('auditd/web1.example@EXAMPLE.COM');
    const logs: { msg: string }[] = [];
    const t = new HostTable({
      maxHosts: 10,
      silenceMs: 0,
      log: { info: () => {}, warn: (_o, msg) => logs.push({ msg }) },
    });
    const h = t.attach('auditd/web1.example@EXAMPLE.COM', 'krb5');
    t.count(h, 2, 100);
    expect(t.list()).toMatchObject([{ host: 'auditd/web1.example@EXAMPLE.COM', kind: 'krb5', records: 2 }]);
    // An entry only created for a session whose first record named another host is dropped.
    const p = t.attach('10.0.0.9', 'address');
    t.move(p, 'db1', 'node', '10.0.0.9');
    expect(t.list().map((x) => x.host)).toEqual(['auditd/web1.example@EXAMPLE.COM', 'db1']);
    expect(t.provisionalName('10.0.0.9')).toEqual({ name: 'db1', kind: 'node' });
  });
});
