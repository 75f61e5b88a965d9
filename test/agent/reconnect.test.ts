/**
 * Every loss of the link leads back to a working connection by itself (no new input needed), and
 * the records still unacknowledged are sent again. Real TCP on loopback against a scriptable server.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
import { gapsAndDuplicates, type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer;
let agent: RunningAgent | undefined;

async function setup(config: Parameters<typeof startAgent>[1] = {}) {
  server = new ScriptServer();
  const port = await server.start();
  agent = startAgent(port, config);
  return agent;
}

afterEach(async () => {
  if (agent) {
    agent.agent.stop('test end');
    agent.input.end();
    agent.done.catch(() => {});
  }
  await server?.stop();
  agent = undefined;
});

describe('reconnect without new input', () => {
  it('recovers from an RST while idle (upstream never does, reference §6.7) and delivers the next records', async () => {
    const a = await setup();
    a.write(records(1, 5));
    await server.waitForRecords(5);
    await a.waitForState('online.connected');
    // Idle now. The server resets the connection: upstream stays stuck until its queue overflows.
    server.current!.socket.resetAndDestroy();
    // No input is written: the agent must reconnect on its own.
    await server.waitForConnections(2);
    await a.waitForState('online.connected');
    a.write(records(6, 5));
    await server.waitForRecords(10);
    expect(seqs(server.lines())).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(server.conns[1]!.messages.length).toBeGreaterThanOrEqual(5);
    expect(await a.finish()).toBe(0);
  });

  it('recovers from a clean close (EOF) while idle', async () => {
    const a = await setup();
    a.write(records(1, 3));
    await server.waitForRecords(3);
    server.current!.socket.end();
    await server.waitForConnections(2);
    a.write(records(4, 3));
    await server.waitForRecords(6);
    expect(seqs(server.lines())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(await a.finish()).toBe(0);
  });

  it('reconnects after ENDING and resends what was not acknowledged', async () => {
    const a = await setup();
    // The first connection acknowledges 3 records, then announces shutdown instead of acking the 4th.
    server.reply = (_msg, conn) => {
      if (conn.id === 1 && conn.messages.filter((m) => m.type === MessageType.MESSAGE).length === 4) {
        conn.socket.write(Buffer.from([0xfe, 0, 0, 0xff, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0, 0, 0]));
        conn.socket.end();
        return 'none';
      }
      return 'ack';
    };
    a.write(records(1, 6));
    await server.waitForConnections(2);
    await pollUntil(() => new Set(seqs(server.lines())).size === 6, {
      timeoutMs: 10_000,
      what: 'all 6 records',
    });
    const { lost } = gapsAndDuplicates(seqs(server.lines()), 6);
    expect(lost).toEqual([]);
    await a.waitForLog(/ENDING/);
    expect(await a.finish()).toBe(0);
  });
});

describe('dead links are detected by the reply deadline', () => {
  it('declares the link dead when acks stop, reconnects and resends', async () => {
    const a = await setup({ maxTimePerRecord: 1 });
    // The first connection acknowledges its probe heartbeat and two records, then nothing.
    const records_ = (conn: { messages: { type: number }[] }) =>
      conn.messages.filter((m) => m.type === MessageType.MESSAGE).length;
    server.reply = (_m, conn) => (conn.id === 1 && records_(conn) > 2 ? 'none' : 'ack');
    a.write(records(1, 5));
    await server.waitForConnections(2, 10_000);
    await pollUntil(() => new Set(seqs(server.lines())).size === 5, {
      timeoutMs: 10_000,
      what: 'all records',
    });
    expect(a.agent.status().lastFailure).toMatch(/reply-timeout/);
    const { lost, duplicates } = gapsAndDuplicates(seqs(server.lines()), 5);
    expect(lost).toEqual([]);
    // Only the three unacknowledged records may be sent twice.
    expect(duplicates).toBeLessThanOrEqual(3);
    expect(await a.finish()).toBe(0);
  });

  it('treats a reply with bad magic as a broken link', async () => {
    const a = await setup();
    server.reply = (_m, conn) => {
      if (conn.id === 1 && conn.messages.length === 2) {
        conn.socket.write(Buffer.from('this is not a reply\n'));
        return 'none';
      }
      return 'ack';
    };
    a.write(records(1, 4));
    await server.waitForConnections(2);
    await pollUntil(() => new Set(seqs(server.lines())).size === 4, {
      timeoutMs: 10_000,
      what: 'all records',
    });
    expect(a.agent.status().lastFailure).toMatch(/protocol: .*bad magic/);
    expect(await a.finish()).toBe(0);
  });

  it('treats a reply with the wrong sequence number as a broken link', async () => {
    const a = await setup();
    server.reply = (m, conn) =>
      conn.id === 1 && conn.messages.length === 2 ? { type: MessageType.ACK, seq: m.sequence + 7 } : 'ack';
    a.write(records(1, 4));
    await server.waitForConnections(2);
    await pollUntil(() => new Set(seqs(server.lines())).size === 4, {
      timeoutMs: 10_000,
      what: 'all records',
    });
    expect(a.agent.status().lastFailure).toMatch(/does not match/);
    expect(await a.finish()).toBe(0);
  });

  it('keeps records through DISKFULL replies and delivers them once the server recovers', async () => {
    const a = await setup();
    let full = true;
    server.reply = () => (full ? { type: MessageType.DISKFULL, text: 'disk full' } : 'ack');
    a.write(records(1, 3));
    await a.waitForLog(/DISKFULL/);
    expect(a.agent.queue.depth).toBe(3);
    full = false;
    await pollUntil(() => a.agent.queue.depth === 0, { timeoutMs: 10_000, what: 'the queue to drain' });
    const delivered = server.lines().filter((_, i) => i >= server.records.length - 3);
    expect(seqs(delivered)).toEqual([1, 2, 3]);
    expect(await a.finish()).toBe(0);
  });

  it('probes a full server with the oldest record alone, on the same link, until it accepts', async () => {
    // Regression: the refusal rewound the queue before closing the window, and the rewind's 'readable' sent
    // every refused record again at once, so no probe was ever sent (it waits for nothing in flight).
    server = new ScriptServer();
    const port = await server.start();
    agent = startAgent(port, {}, (s) => {
      s.policy = { ...s.policy, diskFullProbeMs: 50 };
    });
    const a = agent;
    let full = true;
    server.reply = (m) =>
      m.type === MessageType.MESSAGE && full ? { type: MessageType.DISKFULL, text: 'disk full' } : 'ack';
    a.write(records(1, 3));
    // Records 1-3 (refused), then at least three probes.
    await server.waitForRecords(6);
    expect(seqs(server.lines().slice(3))).toEqual(
      server
        .lines()
        .slice(3)
        .map(() => 1),
    );
    expect(a.agent.queue.depth).toBe(3);
    full = false;
    await pollUntil(() => a.agent.queue.depth === 0, { timeoutMs: 10_000, what: 'the queue to drain' });
    // 1 2 3 (refused), 1 … 1 (the probes, the last one accepted), then 2 and 3, in order, once.
    const got = seqs(server.lines());
    expect(got.slice(0, 3)).toEqual([1, 2, 3]);
    expect(got.slice(-2)).toEqual([2, 3]);
    expect(got.slice(3, -2).every((n) => n === 1)).toBe(true);
    expect(server.conns).toHaveLength(1);
    expect(await a.finish()).toBe(0);
  });

  it('keeps retrying while the server is down and delivers everything when it returns', async () => {
    const a = await setup({ maxTriesPerRecord: 1 });
    a.write(records(1, 2));
    await server.waitForRecords(2);
    const port = server.port;
    await server.stop();
    a.write(records(3, 3));
    await a.waitForLog(/network_failure_action = stop/);
    server = new ScriptServer();
    await server.start(port);
    await server.waitForRecords(3);
    expect(seqs(server.lines())).toEqual([3, 4, 5]);
    expect(await a.finish()).toBe(0);
  });
});

describe('heartbeats and pipelining', () => {
  it('sends heartbeats on a timer even under steady traffic', async () => {
    const a = await setup({ heartbeatTimeout: 1 });
    let n = 1;
    const feeder = setInterval(() => {
      a.write(records(n, 1));
      n++;
    }, 50);
    try {
      await pollUntil(() => server.heartbeats >= 2, {
        timeoutMs: 10_000,
        what: 'two heartbeats during steady traffic',
      });
    } finally {
      clearInterval(feeder);
    }
    expect(server.records.length).toBeGreaterThan(10);
    expect(await a.finish()).toBe(0);
  });

  it('has several records in flight before the first ack', async () => {
    const a = await setup({ maxInFlight: 64 });
    const held: { seq: number; record: boolean }[] = [];
    server.reply = (m) => {
      held.push({ seq: m.sequence, record: m.type === MessageType.MESSAGE });
      return 'none';
    };
    const inFlight = () => held.filter((h) => h.record).length;
    a.write(records(1, 100));
    await pollUntil(() => inFlight() >= 64, {
      timeoutMs: 10_000,
      what: '64 unacknowledged records in flight',
    });
    expect(inFlight()).toBe(64);
    // The link's first message is the session's probe heartbeat; the window counts records only.
    expect(held[0]!.record).toBe(false);
    // Release them: ack in order; the rest follows.
    server.reply = () => 'ack';
    const sock = server.current!.socket;
    for (const h of held) sock.write(Buffer.from(ackFrame(h.seq)));
    await server.waitForRecords(100);
    expect(seqs(server.lines())).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(await a.finish()).toBe(0);
  });
});

describe('shutdown', () => {
  it('exits 1 when the drain deadline passes with records undelivered', async () => {
    const a = await setup({ drainTimeout: 1 });
    server.reply = () => 'none';
    a.write(records(1, 2));
    await server.waitForRecords(2);
    expect(await a.finish()).toBe(1);
    await a.waitForLog(/drain deadline/);
  });
});

function ackFrame(seq: number): Uint8Array {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(0xff0000fe, 0);
  b.writeUInt32LE(MessageType.ACK, 6);
  b.writeUInt32LE(seq, 12);
  return b;
}
