/**
 * What each event of the connection machine is for real, and whether a model path can be executed
 * against the real agent deterministically. `planPath` turns a model path into an execution plan (the
 * agent's timing, what the listener on the server's port does at each dial, how the server answers on each
 * link, when records are written and acknowledged) or says why it cannot be executed. The rules are the
 * event → action mapping of docs/model-based-tests.md.
 *
 * Three kinds of step:
 * - **passive**: the agent does it by itself once the environment is set (a dial's outcome, a timer,
 *   `done(authenticate)`, the first reply on a link whose server acknowledges at once);
 * - **sync**: the test acts in the same turn of the event loop in which the agent enters the step's
 *   source state (from the inspection hook), so that no timer of that state can fire first: STOP
 *   (`agent.stop()`, SIGTERM's handler) outside `online`, RESUME (`agent.resume()`, SIGUSR2's), RELINK
 *   (`agent.reconfigure()`, SIGHUP's) outside `online`;
 * - **awaited**: the test waits until the agent is in the source state (and the server holds its
 *   connection), prepares, then acts: everything the server does to an open link, STOP while online
 *   (end of input), SIGHUP while online, and the connect timeout (the listener behind the hanging dial is
 *   swapped).
 *
 * Every link starts with a heartbeat (the session's probe, src/agent/session.ts): its answer is the first
 * reply, `ESTABLISHED`. A link whose server acknowledges at once goes to `online.connected` by itself;
 * on a link whose server holds its replies, the probe waits until the test answers it.
 */
import type { EventObject } from 'xstate';
import { eventLabel } from '../../src/statechart/analysis.js';
import type { Handshake } from './environment.js';
import type { ModelPath, ModelStep, Rejected } from './model.js';

export type Mode = 'passive' | 'sync' | 'awaited';
/** What the listener on the server's port does when the agent dials. */
export type DialMode = 'accept' | 'refuse' | 'hang';
/** Records not yet acknowledged: none, or some. */
export type Pending = 'none' | 'some';

export type Action =
  | 'none'
  | 'stop-now'
  | 'end-input'
  | 'resume'
  | 'reset'
  | 'ending'
  | 'garbage'
  | 'disk-full'
  | 'disk-error'
  | 'withhold'
  | 'answer'
  | 'accept'
  | 'release'
  | 'configure'
  | 'relink'
  | 'swap-listener';

export interface PlannedStep {
  model: ModelStep;
  /** `init`, `STOP`, `after(backoffDelay)`, … */
  event: string;
  mode: Mode;
  action: Action;
  /** For awaited steps on an open link: the pending records to arrange before acting (null: leave as is). */
  prep: Pending | null;
  /** Pending records the step needs when it happens (checked by the executor). */
  needs: Pending | null;
  estimateMs: number;
}

export interface Dial {
  /** Index of the step that enters `connecting` (0 for the initial state). */
  entry: number;
  /** Index of the step that resolves it (its outcome, or leaving `connecting` otherwise). */
  exit: number;
  /** Null when `connecting` is left before the dial ends (STOP with nothing pending, RELINK). */
  mode: DialMode | null;
  /**
   * How the server answers on the link this dial opens: `ack` when the path's next step on it is its first
   * reply (`ESTABLISHED`, passive), `hold` when something must happen on the link before any reply.
   */
  replies: 'ack' | 'hold';
  /** What the server does with the agent's handshake on that link (transport = krb5). */
  handshake: Handshake;
}

export interface Profile {
  /** `krb5` for the paths whose handshake must fail or time out (tcp has no handshake). */
  transport: 'tcp' | 'krb5';
  suspendOn: string[];
  backoffInitialMs: number;
  backoffMaxMs: number;
  connectTimeoutMs: number;
  authTimeoutMs: number;
  stableLinkMs: number;
  suspendRetryMs: number;
  diskFullProbeMs: number;
  replyTimeoutMs: number;
  drainTimeoutMs: number;
}

export interface PathPlan {
  profile: Profile;
  steps: PlannedStep[];
  dials: Dial[];
  /** Records to write right after the agent starts (some sync STOP before any awaited step needs them). */
  prewrite: boolean;
  /** Every path ends in `closed`, with everything delivered: exit status 0. */
  exitCode: number;
  estimateMs: number;
}

// ---------------------------------------------------------------------------------------------------------
// Timing

/** "Never" for a timer: far longer than any test, and below setTimeout's 2^31-1 ms limit. */
export const NEVER_MS = 1_000_000_000;
export const BACKOFF_SHORT = { initial: 20, max: 80 };
/** Shorter than the first SYN retransmission (1 s on Linux), so a dropped SYN is never retried in time. */
export const CONNECT_TIMEOUT_MS = 500;
/** Long enough for the agent to get its ticket and send its token first. */
export const AUTH_TIMEOUT_MS = 600;
export const STABLE_LINK_MS = 400;
export const SUSPEND_RETRY_MS = 150;
/** The probe interval of `online.serverFull` when a path takes after(diskFullProbe) (else never). */
export const DISK_FULL_PROBE_MS = 100;
export const REPLY_TIMEOUT_MS = 250;
/** The drain deadline (the supervisor's) never ends a model path: every path ends in `closed`. */
export const DRAIN_TIMEOUT_MS = 60_000;
/** Events on an open link with `attempt` above zero must come this quickly when `stableLink` is short. */
const PROMPT_MS = 100;
/** Fixed cost of one path (agent and server start, teardown). */
export const PATH_OVERHEAD_MS = 150;

// ---------------------------------------------------------------------------------------------------------
// The mapping

/**
 * What the runtime can send in a state, as far as the machine's own context tells: STOP once, when the
 * input ends (end of file or SIGTERM: a STOP that does not close the connection marks it `stopping`); the
 * session's first reply (`ESTABLISHED`) once per link (`confirmed`).
 */
export const allowEvent = (snapshot: { context: unknown }, event: EventObject) => {
  const ctx = snapshot.context as { stopping: boolean; confirmed: boolean };
  if (event.type === 'STOP') return !ctx.stopping;
  if (event.type === 'ESTABLISHED') return !ctx.confirmed;
  return true;
};

const ONLINE_FAILURES = new Set(['LINK_LOST', 'REMOTE_ENDING', 'PROTOCOL_ERROR']);
const NEEDS_IN_FLIGHT = new Set(['DISK_FULL', 'DISK_ERROR', 'REPLY_TIMEOUT']);
/** Events only a transport with a handshake (krb5) produces. */
const HANDSHAKE_FAILURES = new Set(['error(authenticate)', 'after(authTimeout)']);
const ACTION_OF: Record<string, Action> = {
  LINK_LOST: 'reset',
  REMOTE_ENDING: 'ending',
  PROTOCOL_ERROR: 'garbage',
  DISK_FULL: 'disk-full',
  DISK_ERROR: 'disk-error',
  REPLY_TIMEOUT: 'withhold',
  ACCEPTING: 'accept',
};

/**
 * Why an event cannot be produced for real at all. These are reasons about the runtime, not about a
 * path; the transitions that only these events take are the ones listed as not executable.
 */
export const NEVER_EXECUTABLE: Record<string, string> = {
  FAULT:
    'a broken invariant inside the session (an exception from the queue in a socket callback) cannot be produced against the real queue; test/agent/connection-facts.test.ts produces it with a faulty queue and checks that the supervisor restarts the connection actor',
};

const isOnline = (value: string) => value.startsWith('online');

function estimate(event: string, step: ModelStep, p: Profile): number {
  switch (event) {
    case 'after(connectTimeout)':
      return p.connectTimeoutMs;
    case 'after(authTimeout)':
      return p.authTimeoutMs;
    case 'after(backoffDelay)':
      return p.backoffMaxMs;
    case 'after(suspendRetry)':
      return p.suspendRetryMs;
    case 'after(diskFullProbe)':
      return p.diskFullProbeMs;
    case 'after(stableLink)':
      return p.stableLinkMs;
    case 'REPLY_TIMEOUT':
      return p.replyTimeoutMs + Math.max(10, Math.floor(p.replyTimeoutMs / 4)) + 20;
    case 'STOP':
      return isOnline(step.fromState?.value ?? '') ? 30 : 1;
    case 'RESUME':
    case 'done(authenticate)':
      return 1;
    case 'done(dial)':
    case 'error(dial)':
      return 5;
    default:
      return 30;
  }
}

const no = (step: number, rejected: string): Rejected => ({ rejected, step });

/** Turns a model path into an execution plan, or says at which step and why it cannot be executed. */
export function planPath(path: ModelPath): PathPlan | Rejected {
  const model = path.steps;
  const events = model.map((s, i) => (i === 0 ? 'init' : eventLabel(s.event.type)));
  const has = (e: string) => events.includes(e);
  const long = (short: number, used: boolean) => (used ? short : NEVER_MS);
  const krb5 = events.some((e) => HANDSHAKE_FAILURES.has(e));
  const profile: Profile = {
    transport: krb5 ? 'krb5' : 'tcp',
    suspendOn: path.policy.suspendOn,
    backoffInitialMs: has('after(backoffDelay)') ? BACKOFF_SHORT.initial : NEVER_MS,
    backoffMaxMs: has('after(backoffDelay)') ? BACKOFF_SHORT.max : NEVER_MS,
    connectTimeoutMs: has('after(connectTimeout)') ? CONNECT_TIMEOUT_MS : 10_000,
    authTimeoutMs: has('after(authTimeout)') ? AUTH_TIMEOUT_MS : 10_000,
    stableLinkMs: long(STABLE_LINK_MS, has('after(stableLink)')),
    suspendRetryMs: long(SUSPEND_RETRY_MS, has('after(suspendRetry)')),
    // The session probes a full server by itself: short whenever the path meets one.
    diskFullProbeMs: long(
      DISK_FULL_PROBE_MS,
      model.some((s) => s.toState.value === 'online.serverFull'),
    ),
    replyTimeoutMs: has('REPLY_TIMEOUT') ? REPLY_TIMEOUT_MS : 60_000,
    drainTimeoutMs: DRAIN_TIMEOUT_MS,
  };
  /** The first reply on a link whose server acknowledges at once: right after the handshake. */
  const passiveEstablish = (k: number) =>
    events[k] === 'ESTABLISHED' &&
    events[k - 1] === 'done(authenticate)' &&
    model[k]!.fromState?.value === 'online.confirming';

  // Pass 1: how each step is executed.
  const steps: PlannedStep[] = [];
  for (let k = 0; k < model.length; k++) {
    const step = model[k]!;
    const event = events[k]!;
    const from = step.fromState;
    const at = `${event} in ${step.from}`;
    const planned = (mode: Mode, action: Action = 'none'): PlannedStep => ({
      model: step,
      event,
      mode,
      action,
      prep: null,
      needs: null,
      estimateMs: k === 0 ? 0 : estimate(event, step, profile),
    });
    if (k === 0) {
      steps.push(planned('passive'));
      continue;
    }
    if (!from) return no(k, `step ${k} has no source state`);
    const never = NEVER_EXECUTABLE[event];
    if (never) return no(k, `${at}: ${never}`);
    switch (event) {
      case 'done(authenticate)':
        if (krb5)
          return no(
            k,
            `${at}: with transport = krb5 (needed for this path's failed handshake) the model server would have to accept a GSS-API context and unwrap every message; it only fails handshakes`,
          );
        steps.push(planned('passive'));
        break;
      case 'error(authenticate)':
      case 'after(authTimeout)':
      case 'done(dial)':
      case 'error(dial)':
      case 'after(backoffDelay)':
      case 'after(suspendRetry)':
      case 'after(stableLink)':
      case 'after(diskFullProbe)':
        steps.push(planned('passive'));
        break;
      case 'after(connectTimeout)':
        steps.push(planned('awaited', 'swap-listener'));
        break;
      case 'STOP':
        steps.push(isOnline(from.value) ? planned('awaited', 'end-input') : planned('sync', 'stop-now'));
        break;
      case 'RESUME':
        steps.push(planned('sync', 'resume'));
        break;
      case 'ESTABLISHED':
        // The session reports the first reply once per link. A path joined from parts (replayed from its start)
        // can reach this step on a link its own history already confirmed (e.g. a refusal on it: the session
        // reports the first reply before the refusal): the runtime sends nothing then.
        if (from.confirmed)
          return no(
            k,
            `${at}: the server has already answered on this link (ESTABLISHED is sent once per link)`,
          );
        // The server answers the oldest unanswered message, the link's probe heartbeat.
        steps.push(passiveEstablish(k) ? planned('passive') : planned('awaited', 'answer'));
        break;
      case 'DRAINED':
        if (!from.confirmed)
          return no(
            k,
            `${at}: the server answers the link's first message (its probe heartbeat) before the drain can end, so ESTABLISHED comes first`,
          );
        steps.push(planned('awaited', 'release'));
        break;
      case 'CONFIGURE':
        if (!isOnline(from.value))
          return no(k, `${at}: SIGHUP is only sent while the link is open (a stable state)`);
        steps.push(planned('awaited', 'configure'));
        break;
      case 'RELINK':
        steps.push(isOnline(from.value) ? planned('awaited', 'relink') : planned('sync', 'relink'));
        break;
      default: {
        const action = ACTION_OF[event];
        if (!action) return no(k, `${at}: no executor for the event ${event}`);
        if (!isOnline(from.value)) return no(k, `${at}: the server can only do this on an open link`);
        steps.push(planned('awaited', action));
      }
    }
  }

  // Dials: which listener each entry into `connecting` needs, and how the server replies on its link.
  const dials: Dial[] = [];
  for (let k = 0; k < model.length; k++) {
    const s = model[k]!;
    const entering = s.toState.value === 'connecting' && s.fromState?.value !== 'connecting';
    if (entering) dials.push({ entry: k, exit: -1, mode: null, replies: 'hold', handshake: 'none' });
    const dial = dials.at(-1);
    if (k === 0 || s.fromState?.value !== 'connecting' || !dial || dial.exit >= 0) continue;
    const outcome: Record<string, DialMode> = {
      'done(dial)': 'accept',
      'error(dial)': 'refuse',
      'after(connectTimeout)': 'hang',
    };
    if (outcome[events[k]!]) {
      dial.mode = outcome[events[k]!]!;
      dial.exit = k;
    } else if (s.toState.value !== 'connecting') dial.exit = k;
  }
  for (const dial of dials) {
    if (dial.mode !== 'accept') continue;
    if (krb5) {
      // The handshake's outcome: reset when it must fail, silence when it must time out (or is abandoned).
      const end = model.findIndex(
        (s, i) =>
          i > dial.exit && s.fromState?.value === 'authenticating' && s.toState.value !== 'authenticating',
      );
      dial.handshake = events[end] === 'error(authenticate)' ? 'reset' : 'silent';
    }
    const online = model.findIndex((s, i) => i > dial.exit && isOnline(s.toState.value));
    if (online > 0 && passiveEstablish(online + 1)) dial.replies = 'ack';
  }
  for (let d = 1; d < dials.length; d++) {
    const prev = dials[d - 1]!;
    const cur = dials[d]!;
    if (cur.mode === null || cur.mode === prev.mode) continue;
    if (cur.mode === 'hang')
      return no(
        cur.exit,
        `dial ${d + 1} must hang after a dial that did not: a listener that never completes the handshake cannot be put in place within the backoff`,
      );
    if (prev.mode === 'accept' && cur.mode === 'refuse') {
      const awaited = steps.some(
        (s, i) =>
          i > prev.exit && i < cur.entry && s.mode === 'awaited' && isOnline(s.model.fromState!.value),
      );
      if (!awaited)
        return no(
          cur.exit,
          `dial ${d + 1} must be refused, but nothing waits for the server to accept dial ${d} first`,
        );
    }
  }
  const hangWithoutTimeout = dials.find(
    (d) => d.mode === 'hang' && events[d.exit] !== 'after(connectTimeout)',
  );
  if (hangWithoutTimeout)
    return no(hangWithoutTimeout.exit, 'a hanging dial must end with its connect timeout');

  // Pass 2: pending records. Awaited steps on an open link (not stopping) can arrange them: on a link the
  // server has answered, either way (held in flight, or all acknowledged); before its first reply only by
  // writing records (acknowledging them would be the first reply). The steps after an arranging step, up
  // to the next one, need what they need.
  const confirmedAt = (i: number) => {
    const from = steps[i]!.model.fromState!;
    return from.value === 'online.connected' || from.confirmed;
  };
  const adjusts = (i: number) => {
    const s = steps[i]!;
    const from = s.model.fromState!;
    // A full server (online.serverFull) takes no records but a probe: nothing can be arranged there.
    return (
      s.mode === 'awaited' &&
      isOnline(from.value) &&
      from.value !== 'online.serverFull' &&
      !from.stopping &&
      s.action !== 'answer'
    );
  };
  const requirement = (i: number): Pending | null => {
    const s = steps[i]!;
    const from = s.model.fromState!;
    if (s.action === 'stop-now') return (s.model.event as { pending?: number }).pending ? 'some' : 'none';
    // On a link the server has answered, a drain with nothing left ends at once.
    if (s.mode === 'awaited' && from.value === 'online.draining' && from.confirmed && s.event !== 'DRAINED')
      return 'some';
    return null;
  };
  const lookahead = (from: number): Pending | null => {
    for (let j = from; j < steps.length; j++) {
      if (adjusts(j)) return null;
      const r = requirement(j);
      if (r) return r;
      if (steps[j]!.mode === 'passive' && steps[j]!.event === 'ESTABLISHED') return null;
    }
    return null;
  };
  const prewrite = lookahead(1) === 'some';
  let pending: Pending = prewrite ? 'some' : 'none';
  /** Something on the open link waits for a reply (the reply deadline runs). */
  let held = false;
  for (let k = 1; k < steps.length; k++) {
    const s = steps[k]!;
    const from = s.model.fromState!;
    const at = `${s.event} in ${s.model.from} (step ${k})`;
    // In online.serverFull the session sends nothing but its probe (the oldest record, alone, every
    // diskFullProbeMs): the server's answer to it (ACCEPTING, DISK_FULL, DISK_ERROR; none: REPLY_TIMEOUT)
    // waits for it (the executor's #held).
    if (
      from.value === 'online.serverFull' &&
      s.event === 'STOP' &&
      !(s.model.event as { pending?: number }).pending
    )
      return no(k, `${at}: the records the full server refused are still queued`);
    if (adjusts(k)) {
      const ahead = lookahead(k + 1);
      if (s.action === 'end-input') {
        s.prep = (s.model.event as { pending?: number }).pending ? 'some' : 'none';
      } else if (NEEDS_IN_FLIGHT.has(s.event)) {
        if (ahead === 'none')
          return no(k, `${at}: the record it leaves queued conflicts with STOP(pending=0) later`);
        s.prep = 'some';
      } else if (ONLINE_FAILURES.has(s.event)) {
        s.prep = ahead ?? 'some';
      } else {
        s.prep = ahead;
      }
      if (s.prep === 'none' && pending === 'some' && !confirmedAt(k))
        return no(
          k,
          `${at}: nothing may be pending, but acknowledging the queued records would be the link's first reply`,
        );
      if (s.prep) pending = s.prep;
      if (s.prep === 'some') held = true;
      if (s.prep === 'none' && confirmedAt(k)) held = false;
    }
    const need = requirement(k);
    if (need) {
      s.needs = need;
      if (pending !== need) return no(k, `${at}: needs ${need} pending, has ${pending}`);
      if (k === 1 && need === 'some')
        return no(
          k,
          `${at}: records written after the agent starts are not read before its first state is left`,
        );
    }
    if (s.action === 'answer' && from.value === 'online.draining') {
      // The probe's answer: with nothing else in flight the drain ends with it.
      const next = steps[k + 1];
      if (pending === 'none' && next?.event !== 'DRAINED')
        return no(k, `${at}: with nothing pending the first reply ends the drain at once`);
      if (pending === 'some' && next?.event === 'DRAINED') {
        // released by the DRAINED step
      }
    }
    if ((s.action === 'disk-full' || s.action === 'disk-error') && isOnline(from.value) && !confirmedAt(k))
      return no(
        k,
        `${at}: the session reports the server's first reply (ESTABLISHED) before its refusal, so the link is confirmed first`,
      );
    if (
      (s.action === 'disk-full' || s.action === 'disk-error') &&
      from.value !== 'online.serverFull' &&
      pending === 'none'
    )
      return no(
        k,
        `${at}: nothing is queued for the server to refuse but the link's probe heartbeat, and a stopping agent with nothing to probe waits for the drain deadline`,
      );
    if (s.action === 'withhold' || s.action === 'disk-full' || s.action === 'disk-error') {
      pending = 'some';
      held = true;
    }
    // A full server: its probe is (soon) on the link, waiting for a reply.
    if (s.model.toState.value === 'online.serverFull') held = true;
    if (s.action === 'accept') {
      // The probe accepted: the session sends what is queued, which the server holds.
      pending = 'some';
      held = true;
    }
    if (s.mode === 'passive' && s.event === 'ESTABLISHED') {
      pending = 'none';
      held = false;
    }
    if (s.event === 'done(authenticate)') held = !passiveEstablish(k + 1);
    if (s.action === 'release') {
      pending = 'none';
      held = false;
    }
    if (!isOnline(s.model.toState.value)) held = false;
    if (
      s.event === 'after(stableLink)' &&
      has('REPLY_TIMEOUT') &&
      held &&
      profile.stableLinkMs > profile.replyTimeoutMs
    )
      return no(
        k,
        `${at}: a message waits for its reply while after(stableLink) (${profile.stableLinkMs} ms) runs, and the reply deadline is ${profile.replyTimeoutMs} ms in this path`,
      );
    if (
      profile.stableLinkMs === STABLE_LINK_MS &&
      from.value === 'online.connected' &&
      from.attempted &&
      s.event !== 'after(stableLink)' &&
      s.estimateMs > PROMPT_MS
    )
      return no(
        k,
        `${at}: takes ${s.estimateMs} ms, but after(stableLink) is ${STABLE_LINK_MS} ms in this path`,
      );
  }
  const last = model.at(-1)!;
  if (last.toState.value !== 'closed') return no(model.length - 1, 'the path does not end in `closed`');
  const estimateMs = PATH_OVERHEAD_MS + steps.reduce((t, s) => t + s.estimateMs, 0);
  return { profile, steps, dials, prewrite, exitCode: 0, estimateMs };
}
