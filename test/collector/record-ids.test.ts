/**
 * Record identities at the collector (docs/protocol.md "Record identities"), over real loopback sockets: the hello
 * and its capability ACK, ` rid=` in the log, a record written already acknowledged and not written again (in one
 * session, across sessions, across a collector restart), the limits on what a client can claim, and the HostTable
 * hook.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeMessage } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { encodeHello, writeRecordNumber } from '../../src/protocol/record-id.js';
import { WireClient } from '../helpers/wire-client.js';
import { cleanup, record, startCollector, tempDir } from './harness.js';

afterEach(cleanup);

function ridFrame(wireSeq: number, rid: number, text: string): Buffer {
  const body = Buffer.from(`${text}\n`);
  const payload = Buffer.alloc(8 + body.length);
  writeRecordNumber(payload, 0, rid);
  body.copy(payload, 8);
  return encodeMessage(MessageType.RECORD_ID, wireSeq, payload);
}

/** A client that says hello as `agent` and sends records numbered `from..to` (tags `tag n`). */
async function agentSession(port: number, agent: string, boot = 1) {
  const wire = await WireClient.connect({ host: '127.0.0.1', port });
  let seq = 1;
  await wire.write(encodeMessage(MessageType.HEARTBEAT, ++seq, encodeHello({ agent, boot })));
  await wire.waitUntil(() => wire.replies.length >= 1, 5000, 'the reply to the hello');
  const hello = wire.replies[0]!;
  return {
    wire,
    hello,
    async send(tag: string, from: number, to: number) {
      const frames: Buffer[] = [];
      for (let n = from; n <= to; n++) frames.push(ridFrame(++seq, n, record(tag, n)));
      const want = wire.replies.length + frames.length;
      await wire.write(Buffer.concat(frames));
      await wire.waitUntil(() => wire.replies.length >= want, 10_000, `replies up to record ${to}`);
      return wire.replies.slice(want - frames.length, want);
    },
  };
}

const lines = (file: string) => readFileSync(file, 'latin1').split('\n').slice(0, -1);

describe('record identities at the collector', () => {
  it('answers a hello with the rid capability, appends rid= and writes a resend once', async () => {
    const c = await startCollector();
    const a = await agentSession(c.port, 'agent-a');
    expect(a.hello.type).toBe(MessageType.ACK);
    expect(a.hello.payload.toString()).toBe('auditrelay 1 rid');
    const r1 = await a.send('t', 1, 5);
    expect(r1.map((r) => r.type)).toEqual(Array(5).fill(MessageType.ACK));
    // The same numbers again (a resend after a lost ACK), then new ones: ACKed, written once.
    const r2 = await a.send('t', 3, 8);
    expect(r2.map((r) => r.type)).toEqual(Array(6).fill(MessageType.ACK));
    const log = lines(c.logFile);
    expect(log).toHaveLength(8);
    expect(log).toEqual(log.map((_, i) => `${record('t', i + 1)} rid=agent-a:${i + 1}`));
    expect(c.collector.stats.duplicates).toBe(3);
    expect(c.collector.stats.records).toBe(8);
  });

  it('a new session of the same agent (an agent restarted after kill -9) resends without duplicates', async () => {
    const c = await startCollector();
    const a = await agentSession(c.port, 'agent-b', 1);
    await a.send('t', 1, 100);
    a.wire.destroy();
    const b = await agentSession(c.port, 'agent-b', 2);
    await b.send('t', 60, 150);
    const log = lines(c.logFile);
    expect(log).toHaveLength(150);
    expect(new Set(log).size).toBe(150);
    expect(c.collector.stats.duplicates).toBe(41);
  });

  it('survives a collector restart: the numbers are read back from the end of the log', async () => {
    const dir = tempDir();
    const c1 = await startCollector({}, dir);
    const a = await agentSession(c1.port, 'agent-c');
    await a.send('t', 1, 50);
    a.wire.destroy();
    await c1.stop();
    const c2 = await startCollector({}, dir);
    expect(c2.logs.some((l) => /highest record number of 1 agent/.test(l.msg))).toBe(true);
    const b = await agentSession(c2.port, 'agent-c', 2);
    await b.send('t', 41, 60);
    const log = lines(c2.logFile);
    expect(log.filter((l) => l.includes(' rid=agent-c:'))).toHaveLength(60);
    expect(c2.collector.stats.duplicates).toBe(10);
  });

  it('another address claiming the same agent id cannot make its records be dropped', async () => {
    const c = await startCollector();
    const a = await agentSession(c.port, 'agent-d');
    await a.send('real', 1, 3);
    // A pretender from another address claims a huge number for agent-d.
    const wire = await WireClient.connect({ host: '127.0.0.1', port: c.port, localAddress: '127.0.0.2' });
    await wire.write(
      Buffer.concat([
        encodeMessage(MessageType.HEARTBEAT, 2, encodeHello({ agent: 'agent-d', boot: 9 })),
        ridFrame(3, 2 ** 40, record('fake', 1)),
      ]),
    );
    await wire.waitUntil(() => wire.replies.length >= 2, 5000, 'replies');
    const more = await a.send('real', 4, 6);
    expect(more.map((r) => r.type)).toEqual(Array(3).fill(MessageType.ACK));
    const log = lines(c.logFile);
    for (let n = 1; n <= 6; n++) expect(log).toContain(`${record('real', n)} rid=agent-d:${n}`);
  });

  it('refuses RECORD_ID without a hello, a malformed hello, and neutralises a planted rid field', async () => {
    const c = await startCollector();
    const w1 = await WireClient.connect({ host: '127.0.0.1', port: c.port });
    await w1.write(ridFrame(2, 1, record('x', 1)));
    await w1.waitUntil(() => w1.closed, 5000, 'the close');
    const w2 = await WireClient.connect({ host: '127.0.0.1', port: c.port });
    await w2.write(
      encodeMessage(MessageType.HEARTBEAT, 2, Buffer.from('auditrelay-hello 1 agent=a/b boot=1')),
    );
    await w2.waitUntil(() => w2.closed, 5000, 'the close');
    expect(c.logs.filter((l) => /RECORD_ID message before a hello|malformed hello/.test(l.msg))).toHaveLength(
      2,
    );
    // A plain record (audisp-remote) that ends like a rid field: marked so that a restart does not believe it.
    const w3 = await WireClient.connect({ host: '127.0.0.1', port: c.port });
    await w3.sendRecords([{ seq: 2, payload: 'type=USER msg=audit(1.0:1): x rid=agent-e:999999\n' }]);
    await w3.waitUntil(() => w3.replies.length >= 1, 5000, 'the ACK');
    expect(lines(c.logFile)).toEqual(['type=USER msg=audit(1.0:1): x rid=agent-e:999999 rid=-']);
    // A plain heartbeat still gets an empty ACK; record_ids = no answers a hello without the capability.
    await w3.sendHeartbeat(3);
    await w3.waitUntil(() => w3.replies.length >= 2, 5000, 'the heartbeat ACK');
    expect(w3.replies[1]!.payload.length).toBe(0);
    const off = await startCollector({ recordIds: false });
    const a = await agentSession(off.port, 'agent-f');
    expect(a.hello.type).toBe(MessageType.ACK);
    expect(a.hello.payload.length).toBe(0);
  });

  it('tells the HostTable every session’s agent and boot and every record’s number', async () => {
    const c = await startCollector();
    const seen: string[] = [];
    c.collector.hosts.agentSession = (h, agent, boot) => void seen.push(`session ${h.name} ${agent} ${boot}`);
    c.collector.hosts.recordIds = (h, agent, seqs, dup) =>
      void seen.push(`${dup ? 'dup' : 'written'} ${h.name} ${agent} ${seqs.join(',')}`);
    const a = await agentSession(c.port, 'agent-g', 77);
    await a.send('t', 1, 3);
    await a.send('t', 2, 4);
    expect(seen).toEqual([
      'session 127.0.0.1 agent-g 77',
      'written 127.0.0.1 agent-g 1,2,3',
      'written 127.0.0.1 agent-g 4',
      'dup 127.0.0.1 agent-g 2,3',
    ]);
  });
});
