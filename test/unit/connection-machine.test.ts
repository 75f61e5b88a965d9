import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise } from 'xstate';
import {
  backoffDelay,
  type ConnectionEvent,
  connectionMachine,
  DEFAULT_POLICY,
  MAX_COUNTED_ATTEMPTS,
  type SessionEvent,
} from '../../machines/connection.js';

/** The machine with scripted actors and no waiting. */
function harness(opts: { dialFails?: () => boolean } = {}) {
  let send: ((e: SessionEvent) => void) | null = null;
  const commands: string[] = [];
  const failures: string[] = [];
  let sessions = 0;
  const machine = connectionMachine.provide({
    actors: {
      dial: fromPromise(async () => {
        if (opts.dialFails?.()) throw new Error('ECONNREFUSED');
      }),
      authenticate: fromPromise(async () => {}),
      session: fromCallback(({ sendBack, receive }) => {
        sessions++;
        send = sendBack as (e: SessionEvent) => void;
        receive((e) => commands.push(e.type));
        return () => {
          send = null;
        };
      }),
    },
    delays: { backoffDelay: 1, suspendRetry: 1_000_000 },
    actions: {
      reportFailure: ({ context }) => failures.push(context.lastFailure?.kind ?? '?'),
    },
  });
  const actor = createActor(machine, { input: { policy: { suspendOn: ['disk-full'] } } });
  const state = () => JSON.stringify(actor.getSnapshot().value);
  const until = async (want: string) => {
    const end = Date.now() + 5000;
    while (state() !== JSON.stringify(want) && state() !== want) {
      if (Date.now() > end) throw new Error(`state ${state()}, wanted ${want}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  return {
    actor,
    state,
    until,
    session: (e: SessionEvent) => send?.(e),
    send: (e: ConnectionEvent) => actor.send(e),
    commands,
    failures,
    sessions: () => sessions,
  };
}

describe('connection machine', () => {
  it('connects, and every way of losing the link leads back through backoff to online', async () => {
    const h = harness();
    h.actor.start();
    await h.until('{"online":"connected"}');
    const losses: SessionEvent[] = [
      { type: 'LINK_LOST', reason: 'ECONNRESET' },
      { type: 'REMOTE_ENDING' },
      { type: 'REPLY_TIMEOUT', reason: 'no reply' },
      { type: 'PROTOCOL_ERROR', reason: 'bad magic' },
      { type: 'DISK_ERROR', reason: 'DISKERROR' },
    ];
    for (const loss of losses) {
      h.session(loss);
      await h.until('{"online":"connected"}');
    }
    expect(h.failures).toEqual(['link-lost', 'remote-ending', 'reply-timeout', 'protocol', 'disk-error']);
    expect(h.sessions()).toBe(6);
  });

  it('retries a failing dial with backoff until it succeeds', async () => {
    let n = 0;
    const h = harness({ dialFails: () => ++n <= 3 });
    h.actor.start();
    await h.until('{"online":"connected"}');
    expect(h.failures).toEqual(['dial', 'dial', 'dial']);
  });

  it('suspends on a configured failure and leaves on RESUME', async () => {
    const h = harness();
    h.actor.start();
    await h.until('{"online":"connected"}');
    h.session({ type: 'DISK_FULL', reason: 'DISKFULL' });
    expect(h.state()).toBe('"suspended"');
    h.send({ type: 'RESUME' });
    await h.until('{"online":"connected"}');
  });

  it('drains on STOP and closes when the session reports DRAINED', async () => {
    const h = harness();
    h.actor.start();
    await h.until('{"online":"connected"}');
    h.send({ type: 'STOP', pending: 3 });
    expect(h.state()).toBe('{"online":"draining"}');
    expect(h.commands).toEqual(['DRAIN']);
    h.session({ type: 'DRAINED' });
    expect(h.actor.getSnapshot().status).toBe('done');
  });

  it('closes at once on STOP with nothing pending while disconnected, and on DEADLINE from anywhere', async () => {
    let fail = true;
    const h = harness({ dialFails: () => fail });
    h.actor.start();
    await h.until('backoff');
    h.send({ type: 'STOP', pending: 2 });
    expect(h.actor.getSnapshot().context.stopping).toBe(true);
    fail = false;
    // Stopping and reconnected: it goes straight to draining.
    await h.until('{"online":"draining"}');
    h.send({ type: 'DEADLINE' });
    expect(h.actor.getSnapshot().status).toBe('done');

    const h2 = harness({ dialFails: () => true });
    h2.actor.start();
    await h2.until('backoff');
    h2.send({ type: 'STOP', pending: 0 });
    expect(h2.actor.getSnapshot().status).toBe('done');
  });

  it('clamps the attempt counter and computes full-jitter backoff within the cap', () => {
    const p = { ...DEFAULT_POLICY, backoffInitialMs: 100, backoffMaxMs: 5000 };
    expect(backoffDelay(p, 0, () => 0.999)).toBe(99);
    expect(backoffDelay(p, 3, () => 0.5)).toBe(400);
    expect(backoffDelay(p, MAX_COUNTED_ATTEMPTS, () => 0.999)).toBe(4995);
    expect(backoffDelay(p, 5, () => 0)).toBe(0);
  });
});
