/**
 * At the queue's bound the agent pauses its input instead of dropping what it read, and runs
 * overflow_action; nothing is lost once the server acknowledges again.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
import { type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer | undefined;
let agent: RunningAgent | undefined;
afterEach(async () => {
  agent?.input.end();
  await agent?.done;
  await server?.stop();
  agent = server = undefined;
});

describe('queue bound', () => {
  it('pauses input at the bound, runs overflow_action, and loses nothing', async () => {
    server = new ScriptServer();
    // Every message held, in order: the link's probe heartbeat, then the records.
    const held: number[] = [];
    const heldRecords: number[] = [];
    server.reply = (m) => {
      held.push(m.sequence);
      if (m.type === MessageType.MESSAGE) heldRecords.push(m.sequence);
      return 'none';
    };
    agent = startAgent(await server.start(), {
      queueDepth: 5,
      maxInFlight: 5,
      overflowAction: { kind: 'syslog' },
    });
    const a = agent;
    a.write(records(1, 12));
    await a.waitForLog(/queue is full/);
    expect(a.logs.some((l) => l.action === 'overflow_action' && l.value === 'syslog')).toBe(true);
    await pollUntil(() => a.agent.observer.states.get('reader') === 'paused', {
      timeoutMs: 5000,
      what: 'reader paused',
    });
    expect(a.agent.queue.depth).toBe(5);
    expect(a.agent.status().held).toBeGreaterThan(0);
    await server.waitForRecords(5);
    expect(heldRecords).toHaveLength(5);
    // The server acknowledges again: everything read arrives, in order.
    server.reply = () => 'ack';
    const sock = server.current!.socket;
    for (const seq of held) {
      const ack = Buffer.alloc(16);
      ack.writeUInt32LE(0xff0000fe, 0);
      ack.writeUInt32LE(0x40000000, 6);
      ack.writeUInt32LE(seq, 12);
      sock.write(ack);
    }
    await server.waitForRecords(12);
    expect(seqs(server.lines())).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(await a.finish()).toBe(0);
  });

  it('logs one line when the queue fills and one when it is calm again, however often the input pauses', async () => {
    server = new ScriptServer();
    const held: number[] = [];
    server.reply = (m) => {
      held.push(m.sequence);
      return 'none';
    };
    agent = startAgent(await server.start(), {
      queueDepth: 5,
      maxInFlight: 5,
      overflowAction: { kind: 'syslog' },
    });
    const a = agent;
    a.write(records(1, 60));
    await a.waitForLog(/queue is full/);
    await server.waitForRecords(5);
    // The server acknowledges again: the queue refuses and accepts records many times while 55 go through.
    server.reply = () => 'ack';
    const sock = server.current!.socket;
    for (const seq of held) {
      const ack = Buffer.alloc(16);
      ack.writeUInt32LE(0xff0000fe, 0);
      ack.writeUInt32LE(0x40000000, 6);
      ack.writeUInt32LE(seq, 12);
      sock.write(ack);
    }
    await server.waitForRecords(60);
    const full = a.logs.filter((l) => /queue is full/.test(l.msg));
    expect(full).toHaveLength(1);
    const calm = await a.waitForLog(/queue is no longer full/);
    expect(full[0]).toMatchObject({ level: 40, action: 'overflow_action', depth: 5 });
    expect(calm.level).toBe(30);
    expect(calm.refusals as number).toBeGreaterThan(1);
    expect(a.logs.filter((l) => l.level >= 40)).toHaveLength(1);
    expect(seqs(server.lines())).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(await a.finish()).toBe(0);
  });
});
