import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise, SimulatedClock } from 'xstate';
import {
  backoffDelay,
  type ConnectionEvent,
  type ConnectionInput,
  connectionMachine,
  DEFAULT_POLICY,
  DISK_FULL_PROBE_MS,
  type DialInput,
  type DialOutput,
  type FailbackInput,
  type FailureActionRun,
  type FailureReport,
  MAX_COUNTED_ATTEMPTS,
  type SessionEvent,
} from '../../machines/connection.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';

/** The machine with scripted actors and no waiting. */
function harness(
  opts: {
    dialFails?: (input: DialInput) => boolean;
    input?: ConnectionInput;
    probe?: (input: FailbackInput) => Promise<DialOutput>;
    /** Time as the test moves it; the full server's probe then has its real interval (DISK_FULL_PROBE_MS). */
    clock?: SimulatedClock;
  } = {},
) {
  let send: ((e: SessionEvent) => void) | null = null;
  const commands: string[] = [];
  const failures: FailureReport[] = [];
  const actions: FailureActionRun[] = [];
  let connected = 0;
  let accepting = 0;
  let sessions = 0;
  let links = 0;
  const sessionLinks: number[] = [];
  const dials: DialInput[] = [];
  const machine = connectionMachine.provide({
    actors: {
      dial: fromPromise<DialOutput, DialInput>(async ({ input }) => {
        dials.push(input);
        if (opts.dialFails?.(input)) throw new Error('ECONNREFUSED');
        links++;
        // The local port the link was opened from: the reclaimed one when asked, else a fresh one.
        return { link: links, localPort: input.reclaimPort ?? 40000 + links };
      }),
      authenticate: fromPromise(async ({ input }) => input),
      ...(opts.probe
        ? { probePreferred: fromPromise<DialOutput, FailbackInput>(({ input }) => opts.probe!(input)) }
        : {}),
      session: fromCallback(({ sendBack, receive, input }) => {
        sessions++;
        sessionLinks.push((input as { link: number }).link);
        send = sendBack as (e: SessionEvent) => void;
        receive((e) => commands.push(e.type));
        return () => {
          send = null;
        };
      }),
    },
    delays: { backoffDelay: 1, suspendRetry: 1_000_000, ...(opts.clock ? {} : { diskFullProbe: 5 }) },
    actions: {
      reportFailure: (_, p) => failures.push(p),
      runFailureAction: (_, p) => actions.push(p),
      reportConnected: () => connected++,
      reportAccepting: () => accepting++,
    },
  });
  const actor = createActor(machine, {
    input: opts.input ?? { policy: { suspendOn: ['disk-full'], maxTriesPerRecord: 2 } },
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
  const state = () => JSON.stringify(actor.getSnapshot().value);
  const until = async (want: string) => {
    const end = Date.now() + 5000;
    while (state() !== JSON.stringify(want) && state() !== want) {
      if (Date.now() > end) throw new Error(`state ${state()}, wanted ${want}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  const ctx = () => actor.getSnapshot().context;
  return {
    actor,
    state,
    until,
    ctx,
    session: (e: SessionEvent) => send?.(e),
    send: (e: ConnectionEvent) => actor.send(e),
    /** Waits for the link, then the server's first reply. */
    online: async () => {
      await until('{"online":"confirming"}');
      send?.({ type: 'ESTABLISHED' });
      await until('{"online":"connected"}');
    },
    commands,
    failures,
    actions,
    connected: () => connected,
    accepting: () => accepting,
    sessions: () => sessions,
    sessionLinks,
    dials,
  };
}

describe('connection machine', () => {
  it('connects, says so at the first reply, and every way of losing the link leads back to online', async () => {
    const h = harness();
    h.actor.start();
    await h.until('{"online":"confirming"}');
    expect(h.connected()).toBe(0);
    h.session({ type: 'ESTABLISHED' });
    expect(h.state()).toBe('{"online":"connected"}');
    expect(h.connected()).toBe(1);
    const losses: SessionEvent[] = [
      { type: 'LINK_LOST', reason: 'ECONNRESET' },
      { type: 'REMOTE_ENDING' },
      { type: 'REPLY_TIMEOUT', reason: 'no reply' },
      { type: 'PROTOCOL_ERROR', reason: 'bad magic' },
    ];
    for (const loss of losses) {
      h.session(loss);
      await h.online();
    }
    expect(h.failures.map((f) => f.kind)).toEqual([
      'link-lost',
      'remote-ending',
      'reply-timeout',
      'protocol',
    ]);
    expect(h.sessions()).toBe(5);
    // The dial's link is the handshake's and the session's.
    expect(h.sessionLinks).toEqual([1, 2, 3, 4, 5]);
  });

  it('retries a failing dial with backoff until it succeeds', async () => {
    let n = 0;
    const h = harness({ dialFails: () => ++n <= 3 });
    h.actor.start();
    await h.online();
    expect(h.failures.map((f) => f.kind)).toEqual(['dial', 'dial', 'dial']);
  });

  it('reconnects from the local port of the last session after losing it without a word from the server', async () => {
    let fail = false;
    const h = harness({ dialFails: () => fail, input: {} });
    h.actor.start();
    await h.online();
    expect(h.dials.at(-1)!.reclaimPort).toBeNull();
    expect(h.ctx().lastSession).toEqual({ server: 0, port: 40001 });
    // A dead link (no reply within the deadline): the next dials, failed or not, come from port 40001.
    fail = true;
    h.session({ type: 'REPLY_TIMEOUT', reason: 'no reply' });
    expect(h.ctx().reclaim).toBe(true);
    await new Promise((r) => setTimeout(r, 20));
    fail = false;
    await h.online();
    const reclaimed = h.dials.slice(1).map((d) => d.reclaimPort);
    expect(reclaimed.length).toBeGreaterThan(1);
    expect(new Set(reclaimed)).toEqual(new Set([40001]));
    // The server answered on it: nothing to reclaim any more.
    expect(h.ctx()).toMatchObject({ reclaim: false, lastSession: { server: 0, port: 40001 } });
    h.send({ type: 'RELINK', reason: 'SIGHUP' });
    await h.online();
    expect(h.dials.at(-1)!.reclaimPort).toBeNull();
    // A link lost after the server answered on it (a reset, keepalive's ETIMEDOUT): the same.
    const port = h.ctx().lastSession!.port;
    h.session({ type: 'LINK_LOST', reason: 'ETIMEDOUT' });
    await h.online();
    expect(h.dials.at(-1)!.reclaimPort).toBe(port);
  });

  it('reclaims the port when a new link is closed before any reply by a server that answered before (op=dup)', async () => {
    const h = harness({ input: {} });
    h.actor.start();
    // The very first link closed before a reply: the server never answered us, nothing to reclaim.
    await h.until('{"online":"confirming"}');
    h.session({ type: 'LINK_LOST', reason: 'server closed the connection (EOF)' });
    expect(h.ctx().reclaim).toBe(false);
    await h.online();
    const port = h.ctx().lastSession!.port;
    // RELINK: a new link; the server closes it before answering (as auditd does with `op=dup`).
    h.send({ type: 'RELINK', reason: 'SIGHUP' });
    await h.until('{"online":"confirming"}');
    h.session({ type: 'LINK_LOST', reason: 'server closed the connection (EOF)' });
    expect(h.ctx().reclaim).toBe(true);
    await h.until('{"online":"confirming"}');
    expect(h.dials.at(-1)!.reclaimPort).toBe(port);
  });

  it('probes a full server on the open link, without counting it as a link failure, and resumes at its first acceptance', async () => {
    // disk_error_action = suspend: only while draining does a DISKERROR not suspend.
    const h = harness({ input: { policy: { maxTriesPerRecord: 0, suspendOn: ['disk-error'] } } });
    h.actor.start();
    await h.online();
    const attempt = h.ctx().attempt;
    h.session({ type: 'DISK_FULL', reason: 'server replied DISKFULL: disk full' });
    expect(h.state()).toBe('{"online":"serverFull"}');
    // Not a failure of the link: same link, same session, no backoff, no outage.
    expect(h.ctx()).toMatchObject({
      attempt,
      outage: 0,
      confirmed: true,
      lastFailure: { kind: 'disk-full' },
    });
    expect(h.sessions()).toBe(1);
    expect(h.failures.map((f) => [f.kind, f.outageStarts])).toEqual([['disk-full', false]]);
    expect(h.actions.map((a) => a.key)).toEqual(['disk_full_action']);
    // The probes: one PROBE per diskFullProbe, whatever the server answers meanwhile.
    await new Promise((r) => setTimeout(r, 40));
    h.session({ type: 'DISK_FULL', reason: 'server replied DISKFULL: still full' });
    h.session({ type: 'DISK_ERROR', reason: 'server replied DISKERROR: disk write error' });
    expect(h.state()).toBe('{"online":"serverFull"}');
    expect(h.commands.filter((c) => c === 'PROBE').length).toBeGreaterThanOrEqual(3);
    // Refusals of probes run no action again (once per episode) and are no failures either.
    expect(h.actions.map((a) => a.key)).toEqual(['disk_full_action']);
    expect(h.failures).toHaveLength(1);
    expect(h.ctx().lastFailure).toMatchObject({ kind: 'disk-error' });
    h.session({ type: 'ACCEPTING' });
    expect(h.state()).toBe('{"online":"connected"}');
    expect(h.accepting()).toBe(1);
    const probes = h.commands.filter((c) => c === 'PROBE').length;
    await new Promise((r) => setTimeout(r, 20));
    expect(h.commands.filter((c) => c === 'PROBE').length).toBe(probes);
    // Stopping while the server is full: the drain starts once it accepts again.
    h.session({ type: 'DISK_FULL', reason: 'server replied DISKFULL' });
    h.send({ type: 'STOP', pending: 5 });
    expect(h.state()).toBe('{"online":"serverFull"}');
    expect(h.ctx().stopping).toBe(true);
    h.session({ type: 'ACCEPTING' });
    expect(h.state()).toBe('{"online":"draining"}');
    // While draining, a refusal probes even when the action is `suspend`: the deadline is running.
    expect(h.commands.filter((c) => c === 'DRAIN')).toHaveLength(1);
    h.session({ type: 'DISK_ERROR', reason: 'server replied DISKERROR' });
    expect(h.state()).toBe('{"online":"serverFull"}');
  });

  it('resumes within one probe interval (1 s) of a full server accepting again, however long it stayed full', async () => {
    // Issue 16 item 3, in the machine's own time: the server may accept again at any moment; the next probe goes
    // out at most DISK_FULL_PROBE_MS later, and its acceptance is back to the full window at once. The real
    // collector on a full tmpfs (test/collector/space.test.ts) shows the same rhythm on a real link.
    expect(DISK_FULL_PROBE_MS).toBeLessThanOrEqual(1000);
    const clock = new SimulatedClock();
    const h = harness({ clock, input: { policy: { maxTriesPerRecord: 3, suspendOn: [] } } });
    h.actor.start();
    await h.online();
    h.session({ type: 'DISK_FULL', reason: 'server replied DISKFULL: disk full' });
    const probes = () => h.commands.filter((c) => c === 'PROBE').length;
    // Full for ten minutes: one probe a second, every one refused, never a backoff or a new link.
    for (let second = 1; second <= 600; second++) {
      clock.increment(DISK_FULL_PROBE_MS - 1);
      expect(probes()).toBe(second - 1);
      clock.increment(1);
      expect(probes()).toBe(second);
      h.session({ type: 'DISK_FULL', reason: 'server replied DISKFULL: still full' });
    }
    expect(h.state()).toBe('{"online":"serverFull"}');
    expect(h.ctx()).toMatchObject({ attempt: 0, outage: 0 });
    expect(h.sessions()).toBe(1);
    expect(h.dials).toHaveLength(1);
    expect(h.failures).toHaveLength(1);
    // The server accepts again 0.3 s after a refused probe: the next probe, 0.7 s later, is the one it accepts.
    clock.increment(300);
    expect(probes()).toBe(600);
    clock.increment(DISK_FULL_PROBE_MS - 300);
    expect(probes()).toBe(601);
    h.session({ type: 'ACCEPTING' });
    expect(h.state()).toBe('{"online":"connected"}');
    expect(h.accepting()).toBe(1);
    clock.increment(10 * DISK_FULL_PROBE_MS);
    expect(probes()).toBe(601);
  });

  it('suspends on a configured failure and leaves on RESUME', async () => {
    const h = harness();
    h.actor.start();
    await h.online();
    h.session({ type: 'DISK_FULL', reason: 'DISKFULL' });
    expect(h.state()).toBe('"suspended"');
    h.send({ type: 'RESUME' });
    await h.online();
  });

  it('drains on STOP and closes when the session reports DRAINED', async () => {
    const h = harness();
    h.actor.start();
    await h.online();
    h.send({ type: 'STOP', pending: 3 });
    expect(h.state()).toBe('{"online":"draining"}');
    expect(h.commands).toEqual(['DRAIN']);
    h.session({ type: 'DRAINED' });
    expect(h.actor.getSnapshot().status).toBe('done');
  });

  it('closes at once on STOP with nothing pending while offline; started stopping, it drains once online', async () => {
    let fail = true;
    const h = harness({ dialFails: () => fail });
    h.actor.start();
    await h.until('backoff');
    h.send({ type: 'STOP', pending: 2 });
    expect(h.ctx().stopping).toBe(true);
    fail = false;
    // Stopping and reconnected: it goes straight to draining, and the first reply still counts.
    await h.until('{"online":"draining"}');
    h.session({ type: 'ESTABLISHED' });
    expect(h.ctx().connectedOnce).toBe(true);
    expect(h.state()).toBe('{"online":"draining"}');

    const h2 = harness({ dialFails: () => true });
    h2.actor.start();
    await h2.until('backoff');
    h2.send({ type: 'STOP', pending: 0 });
    expect(h2.actor.getSnapshot().status).toBe('done');

    // A connection restarted during a stop starts stopping (the supervisor's input).
    const h3 = harness({ input: { stopping: true } });
    h3.actor.start();
    await h3.until('{"online":"draining"}');
  });

  it('runs startup_failure_action until the server first answers, then network_failure_action once per outage', async () => {
    let fail = true;
    const h = harness({ dialFails: () => fail });
    h.actor.start();
    await h.until('backoff');
    await new Promise((r) => setTimeout(r, 20));
    expect(h.actions.length).toBeGreaterThan(0);
    expect(new Set(h.actions.map((a) => a.key))).toEqual(new Set(['startup_failure_action']));
    fail = false;
    // TCP connects, but no reply yet: still a startup failure when the link is lost.
    await h.until('{"online":"confirming"}');
    const before = h.actions.length;
    h.session({ type: 'LINK_LOST', reason: 'ECONNRESET' });
    expect(h.actions.slice(before).map((a) => a.key)).toEqual(['startup_failure_action']);
    await h.online();
    expect(h.ctx()).toMatchObject({ connectedOnce: true, outage: 0 });
    h.actions.length = 0;
    h.failures.length = 0;
    // Now a server that accepts and resets: TCP connects every time, but no session works.
    for (let i = 0; i < 5; i++) {
      h.session({ type: 'LINK_LOST', reason: 'ECONNRESET' });
      await h.until('{"online":"confirming"}');
    }
    expect(h.failures.map((f) => f.outage)).toEqual([1, 2, 3, 4, 5]);
    expect(h.failures.map((f) => f.outageStarts)).toEqual([true, false, false, false, false]);
    // max_tries_per_record = 2: the third failed attempt in a row runs it, once.
    expect(h.actions).toEqual([
      { key: 'network_failure_action', message: expect.stringMatching(/after 3 attempts/) },
    ]);
    h.session({ type: 'ESTABLISHED' });
    expect(h.ctx().outage).toBe(0);
  });

  it('re-opens the link on RELINK without a failure or backoff, from every state that holds a link', async () => {
    const h = harness();
    h.actor.start();
    await h.online();
    h.send({ type: 'RELINK', reason: 'SIGHUP' });
    expect(h.state()).toBe('"connecting"');
    await h.online();
    expect(h.failures).toEqual([]);
    expect(h.ctx().attempt).toBe(0);
    expect(h.sessionLinks).toEqual([1, 2]);
  });

  it('hands a broken invariant of the session to the supervisor (the actor fails)', async () => {
    const h = harness();
    const errors: unknown[] = [];
    h.actor.subscribe({ error: (e) => errors.push(e) });
    h.actor.start();
    await h.online();
    h.session({ type: 'FAULT', reason: 'acknowledged record 3 is not the oldest in flight' });
    expect(h.actor.getSnapshot().status).toBe('error');
    expect(String(errors[0])).toMatch(/connection: acknowledged record 3/);
  });

  it('fails over to the next server at once while one is untried, then backs off and starts at the first', async () => {
    const down = new Set([0, 1]);
    const h = harness({ dialFails: (d) => down.has(d.server), input: { servers: 3 } });
    h.actor.start();
    await h.online();
    expect(h.dials.map((d) => d.server)).toEqual([0, 1, 2]);
    expect(h.ctx()).toMatchObject({ server: 2, servers: 3, tried: 1 });
    // The third server's link is lost: the first is tried at once (a new round), then the second, then the third.
    h.session({ type: 'LINK_LOST', reason: 'ECONNRESET' });
    await h.online();
    expect(h.dials.slice(3).map((d) => d.server)).toEqual([0, 1, 0, 1, 2]);
    // Every server down: rounds of 0, 1, 2 with the backoff between them.
    down.add(2);
    h.session({ type: 'LINK_LOST', reason: 'ECONNRESET' });
    await new Promise((r) => setTimeout(r, 30));
    down.clear();
    await h.online();
    const later = h.dials.slice(8).map((d) => d.server);
    // The round that began with the lost server 2 tries 0 and 1; then whole rounds 0, 1, 2 after each backoff.
    expect(later.slice(0, 2)).toEqual([0, 1]);
    expect(later.length).toBeGreaterThan(3);
    expect(later.slice(2).every((server, i) => server === i % 3)).toBe(true);
    expect(h.ctx().outage).toBe(0);
  });

  it('on a secondary, the failback probe’s link becomes the session’s on the first server; RELINK takes a new list', async () => {
    const probes: FailbackInput[] = [];
    let answer: ((o: DialOutput) => void) | null = null;
    let firstDown = true;
    const h = harness({
      dialFails: (d) => firstDown && d.server === 0,
      input: { servers: 2, policy: { failbackMs: 1000 } },
      probe: (input) => {
        probes.push(input);
        return input.everyMs > 0 ? new Promise((resolve) => (answer = resolve)) : new Promise(() => {});
      },
    });
    h.actor.start();
    await h.online();
    expect(h.ctx().server).toBe(1);
    expect(probes.at(-1)).toEqual({ server: 0, from: 1, everyMs: 1000 });
    answer!({ link: 99, localPort: 50099 });
    await h.until('{"online":"confirming"}');
    expect(h.ctx()).toMatchObject({ server: 0, link: 99, tried: 1 });
    expect(h.sessionLinks.at(-1)).toBe(99);
    expect(h.failures.map((f) => f.kind)).toEqual(['dial']);
    // On the first server the probe does nothing.
    h.session({ type: 'ESTABLISHED' });
    await h.until('{"online":"connected"}');
    expect(probes.at(-1)).toEqual({ server: 0, from: 0, everyMs: 0 });
    firstDown = false;
    h.send({ type: 'RELINK', reason: 'SIGHUP', servers: 1 });
    await h.until('{"online":"confirming"}');
    expect(h.ctx()).toMatchObject({ server: 0, servers: 1 });
  });

  it('clamps the attempt counter and computes full-jitter backoff within the cap', () => {
    const p = { ...DEFAULT_POLICY, backoffInitialMs: 100, backoffMaxMs: 5000, retryFloorMs: 0 };
    expect(backoffDelay(p, 0, () => 0.999)).toBe(99);
    expect(backoffDelay(p, 3, () => 0.5)).toBe(400);
    expect(backoffDelay(p, MAX_COUNTED_ATTEMPTS, () => 0.999)).toBe(4995);
    expect(backoffDelay(p, 5, () => 0)).toBe(0);
  });
});

describe('network_retry_time', () => {
  it('is the least delay between attempts from the third consecutive attempt on (capped by reconnect_max_ms)', () => {
    const s = settingsFromConfig({ ...defaultAgentConfig(), networkRetryTime: 2, reconnectMaxMs: 30_000 });
    expect(s.policy.retryFloorMs).toBe(2000);
    const p = { ...DEFAULT_POLICY, ...s.policy };
    expect(backoffDelay(p, 0, () => 0)).toBe(0);
    expect(backoffDelay(p, 1, () => 0)).toBe(0);
    expect(backoffDelay(p, 2, () => 0)).toBe(2000);
    expect(backoffDelay(p, 8, () => 0.999)).toBeGreaterThan(2000);
    expect(backoffDelay({ ...p, backoffMaxMs: 500 }, 5, () => 0)).toBe(500);
  });
});
