/**
 * The agent under its supervisor: a reader whose input stream really failed (`destroy(err)`, as Node does
 * on a read error) cannot read it again, so it fails at once on every restart and the supervisor escalates
 * (exit status 3, so auditd or systemd restart the agent); a transient failure of the reader is restarted
 * without losing the partial line or the queue.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ExitCodes } from '../../src/errors.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import { type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer;
let agent: RunningAgent | undefined;

afterEach(async () => {
  if (agent) {
    agent.agent.stop('test end');
    if (!agent.input.destroyed) agent.input.end();
    agent.done.catch(() => {});
  }
  await server?.stop();
  agent = undefined;
});

/** Starts of the reader actor: its first start and every restart. */
const readerStarts = (a: RunningAgent) =>
  a.agent.observer.transitions.filter((t) => t.actor === 'reader' && t.event === 'xstate.init').length;

/** A memory queue whose next `appendMany` throws (a fault of the queue, not of the input). */
class FaultyAppendQueue extends MemoryQueue {
  armed = false;
  override appendMany(payloads: readonly Buffer[]): number {
    if (this.armed) {
      this.armed = false;
      throw new Error('injected append failure');
    }
    return super.appendMany(payloads);
  }
}

describe('supervision', () => {
  it('escalates at once when the input stream really failed (destroy(err)): it cannot be read again', async () => {
    server = new ScriptServer();
    agent = startAgent(await server.start(), {}, (s) => {
      s.supervisor = { maxRestarts: 3, windowMs: 60_000, restartDelayMs: 1 };
    });
    const a = agent;
    a.write(records(1, 3));
    await server.waitForRecords(3);
    a.input.destroy(Object.assign(new Error('read failed'), { code: 'EIO' }));
    // Every restarted reader finds the stream destroyed and fails at once: the restarts run out quickly.
    const code = await Promise.race([
      a.done,
      pollUntil(() => false, {
        timeoutMs: 10_000,
        what: 'the agent to escalate',
        diagnostics: () => a.logs.map((l) => l.msg).join('\n'),
      }),
    ]);
    expect(code).toBe(ExitCodes.ESCALATED);
    expect(readerStarts(a)).toBe(4); // the first start plus three restarts
    expect(a.logs.some((l) => /restart intensity/.test(l.msg))).toBe(true);
    expect(a.logs.some((l) => /EIO/.test(String(l.error ?? '')))).toBe(true);
  });

  it('restarts a reader after a transient failure and keeps the partial line and the queue', async () => {
    server = new ScriptServer();
    const queue = new FaultyAppendQueue(2048);
    agent = startAgent(
      await server.start(),
      {},
      (s) => {
        s.supervisor = { maxRestarts: 3, windowMs: 60_000, restartDelayMs: 1 };
      },
      queue,
    );
    const a = agent;
    a.write(records(1, 3));
    a.input.write('type=USER_CMD msg=audit(1700000000.004:4): tag=T seq=4'); // no newline yet
    await server.waitForRecords(3);
    queue.armed = true;
    a.input.write(`\n${records(5, 1)[0]}\n`); // completes record 4; appending 4 and 5 fails once
    await pollUntil(() => readerStarts(a) >= 2, { timeoutMs: 5000, what: 'the reader to be restarted' });
    a.write(records(6, 1));
    await server.waitForRecords(6);
    expect(seqs(server.lines())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(await a.finish()).toBe(0);
  });
});
