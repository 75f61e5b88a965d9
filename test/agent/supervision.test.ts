/**
 * The agent under its supervisor: a failing reader is restarted without losing what was read, and
 * a reader that keeps failing escalates to exit status 3.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ExitCodes } from '../../src/errors.js';
import { type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer;
let agent: RunningAgent | undefined;

afterEach(async () => {
  if (agent) {
    agent.input.end();
    agent.done.catch(() => {});
  }
  await server?.stop();
  agent = undefined;
});

/** Starts of the reader actor: its first start and every restart. */
const readerRestarts = (a: RunningAgent) =>
  a.agent.observer.transitions.filter((t) => t.actor === 'reader' && t.event === 'xstate.init').length;

describe('supervision', () => {
  it('restarts a reader whose input failed and keeps the partial line and the queue', async () => {
    server = new ScriptServer();
    agent = startAgent(await server.start(), {}, (s) => {
      s.supervisor = { maxRestarts: 3, windowMs: 60_000, restartDelayMs: 1 };
    });
    const a = agent;
    a.write(records(1, 3));
    a.input.write('type=USER_CMD msg=audit(1700000000.004:4): tag=T seq=4'); // no newline yet
    await server.waitForRecords(3);
    a.input.emit('error', Object.assign(new Error('read failed'), { code: 'EIO' }));
    await pollUntil(() => readerRestarts(a) >= 2, { timeoutMs: 5000, what: 'the reader to be restarted' });
    a.input.write('\n');
    a.write(records(5, 1));
    await server.waitForRecords(5);
    expect(seqs(server.lines())).toEqual([1, 2, 3, 4, 5]);
    expect(await a.finish()).toBe(0);
  });

  it('exits with status 3 when the reader fails more often than the restart intensity allows', async () => {
    server = new ScriptServer();
    agent = startAgent(await server.start(), {}, (s) => {
      s.supervisor = { maxRestarts: 2, windowMs: 60_000, restartDelayMs: 1 };
    });
    const a = agent;
    for (let i = 1; i <= 3; i++) {
      await pollUntil(() => readerRestarts(a) >= i, { timeoutMs: 5000, what: `reader start #${i}` });
      a.input.emit('error', Object.assign(new Error('read failed'), { code: 'EIO' }));
    }
    expect(await a.done).toBe(ExitCodes.ESCALATED);
    expect(a.logs.some((l) => /restart intensity/.test(l.msg))).toBe(true);
  });
});
