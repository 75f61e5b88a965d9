/**
 * Runs one planned path (plan.ts) against the real agent (test/helpers/agent-harness.ts) and a
 * `ModelServer` on loopback, and checks, step by step, that the agent takes exactly the transitions of
 * the path and that each one had its real effect.
 *
 * The agent's connection actor is watched through the runtime's inspection hook (`settings.inspect`,
 * what `--inspect` uses): every microstep's transitions and every snapshot are recorded synchronously,
 * so fast transitions are never missed, and the sync steps of the plan act from there, in the same
 * turn of the event loop in which the agent enters their source state.
 */
import { expect } from 'vitest';
import type { AnyActorRef, EventObject, InspectionEvent } from 'xstate';
import { MAX_COUNTED_ATTEMPTS } from '../../machines/connection.js';
import type { ReloadPlan } from '../../src/agent/reload-policy.js';
import type { AgentSettings } from '../../src/agent/settings.js';
import type { AgentConfig } from '../../src/config/agent-config.js';
import { MessageType } from '../../src/protocol/constants.js';
import { transitionKey } from '../../src/statechart/analysis.js';
import { type RunningAgent, records, startAgent } from '../helpers/agent-harness.js';
import { pollUntil } from '../helpers/wait.js';
import { Blackhole, type ModelConn, ModelServer, synSentTo } from './environment.js';
import { abstractOf, keyOf } from './model.js';
import type { DialMode, PathPlan, PlannedStep } from './plan.js';

/** One macrostep of the real connection actor. */
export interface TraceEntry {
  event: string;
  pending?: number;
  transitions: string[];
  to: string;
  attempt: number;
  /** Matched step of the plan, or null for a timer that did not change the abstract state. */
  step: number | null;
}

/** What the test saw at the moment a step happened (taken synchronously in the inspection hook). */
interface Probe {
  depth: number;
  bytes: number;
  acked: number;
  appended: number;
  lastFailure: string | null;
  /** Times the agent said "connected" (the server's first reply on a link). */
  connects: number;
  /** Links the server had accepted. */
  accepted: number;
  attempt: number;
  policy: Record<string, unknown>;
}

export interface PathResult {
  exitCode: number;
  trace: TraceEntry[];
  /** Transitions the agent took as the path planned them. */
  transitions: Set<string>;
  ms: number;
  records: { written: number; received: number };
}

const ACTION_CONFIG: Record<string, keyof AgentConfig> = {
  'disk-full': 'diskFullAction',
  'disk-error': 'diskErrorAction',
  'remote-ending': 'remoteEndingAction',
};

const isOnline = (value: string) => value.startsWith('online');

/** For transport = krb5 paths: a realm in which the agent can get its ticket (test/helpers/kdc.ts). */
export interface Krb5Env {
  /** krb5_principal: the server as the agent names it (it exists in the realm; no server holds its key). */
  target: string;
  keyFile: string;
  clientPrincipal: string;
}

export class PathRun {
  readonly plan: PathPlan;
  readonly server = new ModelServer();
  #hole: Blackhole | null = null;
  #agent: RunningAgent | null = null;
  #settings: AgentSettings | null = null;
  #listener: DialMode = 'accept';
  readonly #written: Buffer[] = [];
  #nextRecord = 1;
  readonly trace: TraceEntry[] = [];
  #micro: string[] = [];
  #session: string | null = null;
  #lastContext: Record<string, unknown> = {};
  /** Steps of the plan the agent has taken. */
  #pos = 0;
  readonly #probes: (Probe | null)[] = [];
  #failure: Error | null = null;
  /** Dials entered so far, and successful ones. */
  #dials = 0;
  #connected = 0;
  /** Per link (accept order): the queue position of its first record. */
  readonly #linkStart: number[] = [];
  /** Per link: the queue positions at which refused records started again on it (the probes). */
  readonly #restarts = new Map<number, number[]>();

  readonly #krb5: Krb5Env | null;

  constructor(plan: PathPlan, env: { krb5?: Krb5Env } = {}) {
    this.plan = plan;
    this.#krb5 = env.krb5 ?? null;
  }

  async run(): Promise<PathResult> {
    const started = Date.now();
    try {
      await this.#start();
      const steps = this.plan.steps;
      for (let k = 1; k < steps.length; k++) {
        await this.#reach(k);
        const step = steps[k]!;
        if (step.mode === 'awaited') {
          if (this.#pos === k) await this.#act(k);
          else if (step.action !== 'release')
            throw new Error(`the agent took step ${k} (${step.event}) before the test could act`);
        }
        await this.#reach(k + 1);
        await this.#check(k);
      }
      const exitCode = await this.#finish();
      return {
        exitCode,
        trace: this.trace,
        transitions: new Set(steps.flatMap((s) => s.model.transitions)),
        ms: Date.now() - started,
        records: { written: this.#written.length, received: this.server.payloads.length },
      };
    } catch (err) {
      (err as Error).message += `\n${this.diagnostics()}`;
      throw err;
    } finally {
      await this.#teardown();
    }
  }

  diagnostics(): string {
    const steps = this.plan.steps
      .map(
        (s, i) => `  ${i < this.#pos ? '✓' : i === this.#pos ? '▶' : ' '} ${i}: ${s.event} → ${s.model.to}`,
      )
      .join('\n');
    const trace = this.trace
      .map(
        (t) => `  ${t.step ?? '-'}: ${t.event}${t.pending !== undefined ? `(${t.pending})` : ''} → ${t.to}`,
      )
      .join('\n');
    const logs = (this.#agent?.logs ?? [])
      .slice(-15)
      .map((l) => `  ${l.msg}`)
      .join('\n');
    return `plan:\n${steps}\nagent's transitions:\n${trace}\nlast log lines:\n${logs}`;
  }

  // -------------------------------------------------------------------------------------------------------
  // Setup and teardown

  async #start(): Promise<void> {
    const { profile, dials } = this.plan;
    const port = await this.server.open();
    const first = dials[0]?.mode ?? 'accept';
    this.server.replies = dials[0]?.replies ?? 'ack';
    this.server.handshake = dials[0]?.handshake ?? 'none';
    if (first !== 'accept') this.server.closeListener();
    if (first === 'hang') this.#hole = await Blackhole.open(port);
    this.#listener = first;

    const config: Partial<AgentConfig> = { heartbeatTimeout: 0 };
    const krb5 = this.#krb5;
    if (profile.transport === 'krb5') {
      if (!krb5) throw new Error('a transport = krb5 path needs a Kerberos realm');
      Object.assign(config, { transport: 'krb5', krb5Principal: krb5.target, krb5KeyFile: krb5.keyFile });
    }
    for (const kind of profile.suspendOn) {
      const key = ACTION_CONFIG[kind];
      if (!key) throw new Error(`no configuration key makes the agent suspend on ${kind}`);
      (config as Record<string, unknown>)[key] = { kind: 'suspend' };
    }
    this.#agent = startAgent(port, config, (s) => {
      s.policy = {
        ...s.policy,
        backoffInitialMs: profile.backoffInitialMs,
        backoffMaxMs: profile.backoffMaxMs,
        connectTimeoutMs: profile.connectTimeoutMs,
        authTimeoutMs: profile.authTimeoutMs,
        stableLinkMs: profile.stableLinkMs,
        suspendRetryMs: profile.suspendRetryMs,
        diskFullProbeMs: profile.diskFullProbeMs,
      };
      s.replyTimeoutMs = profile.replyTimeoutMs;
      s.drainTimeoutMs = profile.drainTimeoutMs;
      s.heartbeatMs = 0;
      if (s.krb5 && krb5) s.krb5.clientPrincipal = krb5.clientPrincipal;
      s.inspect = (ev) => this.#inspect(ev);
      this.#settings = s;
    });
    // The configuration file's `*_action = suspend` is what makes the machine suspend.
    expect([...(this.#settings!.policy.suspendOn ?? [])].sort()).toEqual([...profile.suspendOn].sort());
    if (this.plan.prewrite) this.#write(2);
  }

  async #teardown(): Promise<void> {
    const a = this.#agent;
    if (a) {
      a.agent.stop('model test teardown');
      a.input.end();
      a.done.catch(() => {});
    }
    await this.#hole?.close();
    await this.server.shutdown();
  }

  // -------------------------------------------------------------------------------------------------------
  // Watching the agent

  #inspect(ev: InspectionEvent): void {
    const ref = ev.actorRef as AnyActorRef;
    if (ref.id !== 'connection') return;
    if (this.#session === null) this.#session = ref.sessionId;
    if (ref.sessionId !== this.#session) {
      this.#fail(new Error('the connection actor was restarted by the supervisor'));
      return;
    }
    if (ev.type === '@xstate.microstep') {
      this.#micro.push(...ev._transitions.map(transitionKey));
      return;
    }
    if (ev.type !== '@xstate.snapshot') return;
    const transitions = this.#micro;
    this.#micro = [];
    // A macrostep that took no transition, except the start (the initial state has no `always`).
    if (transitions.length === 0 && ev.event.type !== 'xstate.init') return;
    const snapshot = ev.snapshot as unknown as { value: unknown; context: Record<string, unknown> };
    this.#lastContext = snapshot.context;
    const event = ev.event as EventObject & { pending?: number };
    const entry: TraceEntry = {
      event: event.type,
      transitions,
      to: keyOf(abstractOf(snapshot)),
      attempt: Number(snapshot.context.attempt ?? 0),
      step: null,
    };
    if (event.type === 'STOP') entry.pending = event.pending;
    this.trace.push(entry);
    if (this.#failure) return;
    const expected = this.plan.steps[this.#pos];
    if (expected && this.#matches(expected, entry)) {
      entry.step = this.#pos;
      this.#pos++;
      this.#probes[entry.step] = this.#probe();
      try {
        this.#entered(entry.step);
      } catch (err) {
        this.#fail(err as Error);
      }
      return;
    }
    const here = this.plan.steps[this.#pos - 1]?.model.to;
    // A timer that changed nothing the model tells apart (after(stableLink) with attempt already 0).
    if (event.type.startsWith('xstate.after.') && entry.to === here) return;
    this.#fail(
      new Error(
        `the agent left the path at step ${this.#pos}: expected ${expected ? `${expected.event} → ${expected.model.to} [${expected.model.transitions.join('; ')}]` : 'nothing more'}, got ${entry.event} → ${entry.to} [${transitions.join('; ')}]`,
      ),
    );
  }

  #matches(expected: PlannedStep, entry: TraceEntry): boolean {
    const e = expected.model.event as EventObject & { pending?: number };
    if (e.type !== entry.event || entry.to !== expected.model.to) return false;
    if (e.type === 'STOP' && (e.pending ?? 0) > 0 !== (entry.pending ?? 0) > 0) return false;
    return JSON.stringify(entry.transitions) === JSON.stringify(expected.model.transitions);
  }

  #probe(): Probe | null {
    const a = this.#agent?.agent;
    if (!a) return null;
    return {
      depth: a.queue.depth,
      bytes: a.queue.bytes,
      acked: a.queue.totalAcked,
      appended: a.queue.totalAppended,
      lastFailure: a.status().lastFailure,
      connects: a.stats.connects,
      accepted: this.server.conns.length,
      attempt: Number(this.#lastContext.attempt ?? 0),
      policy: { ...(this.#lastContext.policy as Record<string, unknown>) },
    };
  }

  #fail(err: Error): void {
    this.#failure ??= err;
  }

  /** Synchronously, as the agent enters the state after step `k`. */
  #entered(k: number): void {
    const { dials, steps } = this.plan;
    const step = steps[k]!;
    const dial = dials.findIndex((d) => d.entry === k);
    if (dial >= 0) {
      this.#dials = dial + 1;
      const need = dials[dial]!.mode;
      if (need && need !== this.#listener)
        throw new Error(`dial ${dial + 1} needs the listener to ${need}, it is set to ${this.#listener}`);
      this.server.replies = dials[dial]!.replies;
      this.server.handshake = dials[dial]!.handshake;
    }
    if (step.event === 'done(dial)') this.#connected++;
    if (step.event === 'done(authenticate)') this.#linkStart[this.#connected - 1] = this.#probes[k]!.acked;
    this.#switchListener(false);
    const next = steps[k + 1];
    if (next?.mode !== 'sync') return;
    const act = () => {
      try {
        this.#actNow(k + 1);
      } catch (err) {
        this.#fail(err as Error);
      }
    };
    // The initial state is entered inside startAgent(), before the test holds the agent; the dial has
    // not even been started by then (net.connect connects in a later tick), so the next tick is in time.
    if (this.#agent) act();
    else process.nextTick(act);
  }

  /** A sync step: STOP outside `online` (SIGTERM's handler), RESUME (SIGUSR2's). */
  #actNow(k: number): void {
    const step = this.plan.steps[k]!;
    const agent = this.#agent!.agent;
    if (this.#pos !== k) throw new Error(`sync step ${k} (${step.event}) found the agent elsewhere`);
    if (step.needs) {
      const has = agent.queue.depth > 0 ? 'some' : 'none';
      if (has !== step.needs)
        throw new Error(
          `step ${k} (${step.event}) needs ${step.needs} pending, the queue has ${agent.queue.depth}`,
        );
    }
    if (step.action === 'stop-now') agent.stop('model test: STOP');
    else if (step.action === 'resume') agent.resume();
    else if (step.action === 'relink') this.#relink();
    else throw new Error(`no sync action ${step.action}`);
  }

  /**
   * Sets the listener for the next dial, if that can be done now: listening again is always safe; closing
   * the listener only once the server has accepted every link the agent opened (closing a listener resets
   * the connections still in its accept queue). A blackhole is replaced only by `swap-listener`.
   */
  #switchListener(awaited: boolean): void {
    const { dials } = this.plan;
    const current = dials[this.#dials - 1];
    if (current && current.exit >= this.#pos) return;
    const need = dials[this.#dials]?.mode;
    if (!need || need === this.#listener || this.#listener === 'hang') return;
    if (need === 'hang') throw new Error('a blackhole cannot be put in place here (the plan should not ask)');
    if (need === 'accept') {
      this.server.listen().catch((err: Error) => this.#fail(err));
      this.#listener = 'accept';
      return;
    }
    if (this.server.conns.length < this.#connected) {
      if (awaited) throw new Error('the server has not accepted the link yet');
      return;
    }
    this.server.closeListener();
    this.#listener = 'refuse';
  }

  // -------------------------------------------------------------------------------------------------------
  // Awaited steps

  async #reach(k: number): Promise<void> {
    const est = this.plan.steps[k - 1]?.estimateMs ?? 0;
    await pollUntil(
      () => {
        if (this.#failure) throw this.#failure;
        return this.#pos >= k;
      },
      { timeoutMs: 5_000 + 2 * est, intervalMs: 5, what: `the agent to take step ${k - 1}` },
    );
  }

  /** The link the agent has open now, once the server has accepted it. */
  async #link(): Promise<ModelConn> {
    await pollUntil(() => this.server.conns.length >= this.#connected, {
      timeoutMs: 5_000,
      intervalMs: 5,
      what: `the server to accept link ${this.#connected}`,
    });
    return this.server.conns[this.#connected - 1]!;
  }

  #write(n: number): void {
    const lines = records(this.#nextRecord, n, 'M');
    this.#nextRecord += n;
    for (const l of lines) this.#written.push(Buffer.from(`${l}\n`, 'latin1'));
    this.#agent!.write(lines);
  }

  /**
   * Arranges unacknowledged records on the open link: some (in flight, held) or none (all acked). Before
   * the server's first reply on the link (`confirmed` false) nothing may be acknowledged: `none` is then
   * only checked (the plan guarantees it), `some` writes records the server holds like its probe.
   */
  async #arrange(want: 'some' | 'none', conn: ModelConn, confirmed: boolean): Promise<void> {
    const agent = this.#agent!.agent;
    if (!confirmed) {
      expect(this.server.replies).toBe('hold');
      if (want === 'none') {
        expect(agent.queue.depth).toBe(0);
        return;
      }
    }
    if (want === 'some') {
      this.server.replies = 'hold';
      const before = conn.messages.length;
      this.#write(2);
      await pollUntil(() => conn.messages.length >= before + 2 || conn.closed, {
        timeoutMs: 5_000,
        intervalMs: 5,
        what: 'the records to arrive unacknowledged',
      });
      expect(agent.queue.inFlight).toBeGreaterThanOrEqual(2);
    } else {
      this.server.release(conn);
      this.#write(2);
      await pollUntil(() => agent.queue.depth === 0 && agent.queue.totalAcked === this.#written.length, {
        timeoutMs: 5_000,
        intervalMs: 5,
        what: 'every record to be acknowledged',
        diagnostics: () =>
          `depth ${agent.queue.depth}, acked ${agent.queue.totalAcked}/${this.#written.length}`,
      });
    }
  }

  async #act(k: number): Promise<void> {
    const step = this.plan.steps[k]!;
    const from = step.model.fromState!;
    const agent = this.#agent!.agent;
    let conn: ModelConn | undefined;
    if (isOnline(from.value)) {
      conn = await this.#link();
      this.#switchListener(true);
      const confirmed = from.value === 'online.connected' || from.confirmed;
      if (step.prep) await this.#arrange(step.prep, conn, confirmed);
      if (step.needs === 'some') expect(agent.queue.depth).toBeGreaterThan(0);
      if (this.#pos !== k) throw new Error(`the agent left step ${k}'s state while the test prepared it`);
    }
    switch (step.action) {
      case 'end-input':
        this.#agent!.input.end();
        return;
      case 'reset':
        this.server.reset(conn!);
        return;
      case 'ending':
        this.server.ending(conn!);
        return;
      case 'garbage':
        this.server.garbage(conn!);
        return;
      case 'disk-full':
      case 'disk-error':
        // A full server refuses every message it holds (in online.serverFull: the probe).
        await this.#held(conn!);
        while (conn!.unreplied.length > 0)
          this.server.reply(
            conn!,
            step.action === 'disk-full' ? MessageType.DISKFULL : MessageType.DISKERROR,
            'model test',
          );
        return;
      case 'accept':
        // The server has room again: it acknowledges the probe, the oldest queued record, alone.
        // (What it still holds from before the refusal the agent no longer counts: it is answered first.)
        await pollUntil(
          () =>
            conn!.unreplied.at(-1)?.type === MessageType.MESSAGE &&
            conn!.unreplied.at(-1)!.payload.equals(this.#written[agent.queue.totalAcked]!),
          {
            timeoutMs: 5_000,
            intervalMs: 5,
            what: 'the probe record on the link',
            diagnostics: () =>
              `unanswered: ${conn!.unreplied.map((m) => (m.type === MessageType.MESSAGE ? JSON.stringify(m.payload.toString('latin1').slice(0, 60)) : `type ${m.type}`)).join(', ')}; the queue's head (acked ${agent.queue.totalAcked}): ${JSON.stringify(this.#written[agent.queue.totalAcked]?.toString('latin1').slice(0, 60))}`,
          },
        );
        while (conn!.unreplied.length > 0) this.server.reply(conn!, MessageType.ACK);
        return;
      case 'withhold':
        // Nothing is answered any more; the reply deadline does the rest.
        await this.#held(conn!);
        return;
      case 'answer':
        // The oldest unanswered message is the link's probe heartbeat: its ACK is the first reply.
        await this.#held(conn!);
        expect(conn!.unreplied[0]?.type).toBe(MessageType.HEARTBEAT);
        this.server.reply(conn!, MessageType.ACK);
        return;
      case 'release':
        this.server.release(conn);
        return;
      case 'configure':
        this.#configure(conn!);
        return;
      case 'relink':
        this.#relink();
        return;
      case 'swap-listener':
        await this.#swapBlackhole(k);
        return;
      default:
        throw new Error(`no awaited action ${step.action}`);
    }
  }

  async #held(conn: ModelConn): Promise<void> {
    await pollUntil(() => conn.unreplied.length > 0, {
      timeoutMs: 5_000,
      intervalMs: 5,
      what: 'an unanswered record on the link',
    });
  }

  /** SIGHUP with a new reconnect ceiling: applied to the machine, and the link stays as it is. */
  #configure(conn: ModelConn): void {
    const settings = this.#settings!;
    const backoffMaxMs = (settings.policy.backoffMaxMs ?? 0) + 1;
    const next: AgentSettings = { ...settings, policy: { ...settings.policy, backoffMaxMs } };
    const links = this.server.conns.length;
    const plan: ReloadPlan = { live: ['reconnect_max_ms'], relink: [], restart: [] };
    const changed = this.#agent!.agent.reconfigure(next, plan);
    expect(changed).toEqual(['reconnect_max_ms']);
    expect((this.#lastContext.policy as { backoffMaxMs: number }).backoffMaxMs).toBe(backoffMaxMs);
    expect(conn.socket.destroyed).toBe(false);
    expect(this.server.conns.length).toBe(links);
    this.#settings = next;
  }

  /** SIGHUP with a new window (max_in_flight): the link is re-opened, not failed. */
  #relink(): void {
    const settings = this.#settings!;
    const next: AgentSettings = { ...settings, maxInFlight: settings.maxInFlight === 64 ? 65 : 64 };
    const plan: ReloadPlan = { live: [], relink: ['max_in_flight'], restart: [] };
    expect(this.#agent!.agent.reconfigure(next, plan)).toEqual(['max_in_flight']);
    this.#settings = next;
  }

  /**
   * The dial hangs in SYN_SENT against the blackhole; once its SYN has been dropped, the blackhole makes
   * way for what the next dial needs, well before the connect timeout (and the SYN's retransmission).
   */
  async #swapBlackhole(k: number): Promise<void> {
    const port = this.server.port;
    await pollUntil(() => synSentTo(port) > 0, {
      timeoutMs: 5_000,
      intervalMs: 2,
      what: 'the agent’s SYN to the blackhole',
    });
    const next = this.plan.dials[this.#dials]?.mode;
    if (!next || next === 'hang') return;
    await this.#hole!.close();
    this.#hole = null;
    if (next === 'accept') await this.server.listen();
    this.#listener = next;
    if (this.#pos !== k) throw new Error('the connect timeout fired before the listener was swapped');
  }

  // -------------------------------------------------------------------------------------------------------
  // Effects

  /** The real effect of step `k`, from what was seen when it happened and what followed. */
  async #check(k: number): Promise<void> {
    const step = this.plan.steps[k]!;
    const probe = this.#probes[k]!;
    const before = this.#probes[k - 1];
    const failure: Record<string, RegExp> = {
      'error(dial)': /^dial: connect to 127\.0\.0\.1:\d+( from local port \d+)? failed: ECONNREFUSED$/,
      'after(connectTimeout)': /^dial-timeout: /,
      'error(authenticate)':
        /^auth: Kerberos handshake .* failed: the server closed the connection after receiving our ticket/,
      'after(authTimeout)': /^auth-timeout: /,
      LINK_LOST: /^link-lost: connection error: ECONNRESET$/,
      REMOTE_ENDING: /^remote-ending: /,
      REPLY_TIMEOUT: /^reply-timeout: no reply for \d+ ms with \d+ message\(s\) in flight/,
      PROTOCOL_ERROR: /^protocol: bad reply from the server: .*magic/,
      DISK_FULL: /^disk-full: server replied DISKFULL: model test$/,
      DISK_ERROR: /^disk-error: server replied DISKERROR: model test$/,
    };
    const pattern = failure[step.event];
    const toFull = step.model.toState.value === 'online.serverFull';
    if (pattern && (toFull || step.model.fromState!.value === 'online.serverFull')) {
      // Refused on this link: the next records on it start again at the queue's head (the probe).
      const link = this.#connectedAt(k) - 1;
      const restarts = this.#restarts.get(link) ?? [];
      restarts.push(probe.acked);
      this.#restarts.set(link, restarts);
    }
    if (pattern && toFull) {
      // DISKFULL/DISKERROR on a link the agent keeps (issue 16 item 3): reported, not a failure of the link:
      // no backoff, the link stays, every refused record is still queued.
      expect(probe.lastFailure, `lastFailure after ${step.event}`).toMatch(pattern);
      expect(probe.attempt).toBe(before?.attempt ?? 0);
      const conn = this.server.conns[this.#connectedAt(k) - 1]!;
      expect(conn.closed, 'the link to the full server is kept').toBe(false);
      this.#expectQueue(probe);
      expect(probe.depth).toBeGreaterThan(0);
    } else if (pattern) {
      expect(probe.lastFailure, `lastFailure after ${step.event}`).toMatch(pattern);
      expect(probe.attempt).toBe(Math.min((before?.attempt ?? 0) + 1, MAX_COUNTED_ATTEMPTS));
      if (isOnline(step.model.fromState!.value)) {
        // The agent dropped the link, and every record it had not seen acknowledged is still queued.
        const conn = this.server.conns[this.#connectedAt(k) - 1]!;
        await pollUntil(() => conn.closed, {
          timeoutMs: 5_000,
          intervalMs: 5,
          what: 'the link to be closed',
        });
      }
      this.#expectQueue(probe);
      // What the test arranged before the failure is what stays queued (a DISKFULL'd record, held ones).
      if (step.prep === 'some' || step.needs === 'some') expect(probe.depth).toBeGreaterThan(0);
      if (step.prep === 'none') expect(probe.depth).toBe(0);
    }
    switch (step.event) {
      case 'done(dial)': {
        const n = this.#connectedAt(k);
        await pollUntil(() => this.server.conns.length >= n, {
          timeoutMs: 5_000,
          intervalMs: 5,
          what: `the server to accept link ${n}`,
        });
        break;
      }
      case 'error(dial)':
      case 'after(connectTimeout)':
        // No connection reached the server.
        expect(probe.accepted).toBeLessThanOrEqual(this.#connectedAt(k));
        break;
      case 'done(authenticate)': {
        // The link carries the queue from its head: what was not acknowledged on the last link comes first.
        const n = this.#connectedAt(k);
        const conn = this.server.conns[n - 1]!;
        const expected = this.#written.slice(probe.acked, probe.appended);
        await pollUntil(() => messages(conn).length >= expected.length || conn.closed, {
          timeoutMs: 5_000,
          intervalMs: 5,
          what: `${expected.length} queued record(s) on link ${n}`,
        });
        expect(messages(conn).slice(0, expected.length)).toEqual(expected);
        break;
      }
      case 'STOP':
        expect(probe.depth > 0).toBe(((step.model.event as { pending?: number }).pending ?? 0) > 0);
        break;
      case 'RESUME':
      case 'after(suspendRetry)':
      case 'after(backoffDelay)':
        // Waiting kept every record.
        expect(probe.depth).toBe(before!.depth);
        this.#expectQueue(probe);
        break;
      case 'after(stableLink)':
        expect(probe.attempt).toBe(0);
        break;
      case 'after(diskFullProbe)': {
        // The probe: the oldest queued record, alone, on the same link.
        const conn = this.server.conns[this.#connectedAt(k) - 1]!;
        await pollUntil(() => conn.unreplied.length > 0 || conn.closed, {
          timeoutMs: 5_000,
          intervalMs: 5,
          what: 'the probe record on the link',
        });
        expect(conn.unreplied.map((m) => m.payload)).toEqual([this.#written[probe.acked]]);
        expect(probe.attempt).toBe(before!.attempt);
        break;
      }
      case 'ACCEPTING':
        // The probe was acknowledged: one record less; the link stays, no backoff.
        expect(probe.acked).toBe(before!.acked + 1);
        expect(probe.attempt).toBe(before!.attempt);
        this.#expectQueue(probe);
        break;
      case 'ESTABLISHED':
        // The agent says "connected" at the server's first reply on the link, once.
        expect(probe.connects).toBe((before?.connects ?? 0) + 1);
        break;
      case 'RELINK': {
        // Not a failure: nothing recorded, no backoff, every record kept; the link it held is closed.
        expect(probe.lastFailure).toBe(before?.lastFailure ?? null);
        expect(probe.attempt).toBe(before?.attempt ?? 0);
        this.#expectQueue(probe);
        const source = step.model.fromState!.value;
        if (source === 'authenticating' || isOnline(source)) {
          const conn = this.server.conns[this.#connectedAt(k) - 1]!;
          await pollUntil(() => conn.closed, {
            timeoutMs: 5_000,
            intervalMs: 5,
            what: 'the old link to close',
          });
        }
        break;
      }
      default:
        break;
    }
  }

  /** Successful dials up to and including step `k`. */
  #connectedAt(k: number): number {
    return this.plan.steps.slice(0, k + 1).filter((s) => s.event === 'done(dial)').length;
  }

  /** The queue holds exactly the records written and not acknowledged, byte for byte. */
  #expectQueue(p: Probe): void {
    const unacked = this.#written.slice(p.acked, p.appended);
    expect(p.depth).toBe(unacked.length);
    expect(p.bytes).toBe(unacked.reduce((n, b) => n + b.length, 0));
  }

  async #finish(): Promise<number> {
    const a = this.#agent!;
    const agent = a.agent;
    const code = await Promise.race([
      a.done,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the agent did not exit')), 5_000)),
    ]);
    expect(code, 'exit status').toBe(this.plan.exitCode);
    expect(agent.connectionState()).toBe('closed');
    // Every link the agent opened reached the server. A dial abandoned by STOP may have completed its
    // handshake in the kernel: such a link carries nothing and is closed.
    expect(this.server.conns.length).toBeGreaterThanOrEqual(this.#connected);
    for (const conn of this.server.conns.slice(this.#connected)) {
      expect(conn.messages).toEqual([]);
      await pollUntil(() => conn.closed, {
        timeoutMs: 5_000,
        intervalMs: 5,
        what: 'the abandoned link to close',
      });
    }
    // Each link carried records exactly as written, in order, starting at the queue's head; after a refusal
    // (DISKFULL/DISKERROR) on the link, again from the queue's head then (the probe), in order.
    this.server.conns.slice(0, this.#connected).forEach((conn, i) => {
      const got = messages(conn);
      const restarts = [...(this.#restarts.get(i) ?? [])];
      let next = this.#linkStart[i] ?? 0;
      got.forEach((m, j) => {
        if (!m.equals(this.#written[next] ?? Buffer.alloc(0)) && restarts.length > 0) {
          next = restarts.shift()!;
        }
        expect(m, `record ${j + 1} on link ${i + 1}`).toEqual(this.#written[next]);
        next++;
      });
    });
    expect(agent.queue.totalAppended).toBe(this.#written.length);
    if (code === 0) {
      expect(agent.queue.depth).toBe(0);
      expect(agent.queue.totalAcked).toBe(this.#written.length);
      const received = new Set(this.server.payloads.map((p) => p.toString('latin1')));
      for (const w of this.#written) expect(received.has(w.toString('latin1'))).toBe(true);
    } else {
      const left = this.#written.slice(agent.queue.totalAcked);
      expect(left.length).toBeGreaterThan(0);
      expect(agent.queue.depth).toBe(left.length);
      expect(agent.queue.bytes).toBe(left.reduce((n, b) => n + b.length, 0));
      expect(a.logs.some((l) => /drain deadline/.test(l.msg))).toBe(true);
    }
    return code;
  }
}

function messages(conn: ModelConn): Buffer[] {
  return conn.messages.filter((m) => m.type === MessageType.MESSAGE).map((m) => m.payload);
}
