/**
 * What each event of the connection machine is for real, and whether a model path can be executed
 * against the real agent deterministically. `planPath` turns a model path into an execution plan (the
 * agent's timing, what the listener on the server's port does at each dial, when records are written and
 * acknowledged) or says why it cannot be executed. The rules are the event → action mapping of
 * docs/model-based-tests.md.
 *
 * Three kinds of step:
 * - **passive**: the agent does it by itself once the environment is set (a dial's outcome, a timer,
 *   `done(authenticate)`, the drain deadline);
 * - **sync**: the test acts in the same turn of the event loop in which the agent enters the step's
 *   source state (from the inspection hook), so that no timer of that state can fire first: STOP
 *   (`agent.stop()`, SIGTERM's handler) outside `online`, RESUME (`agent.resume()`, SIGUSR2's);
 * - **awaited**: the test waits until the agent is in the source state (and the server holds its
 *   connection), prepares, then acts: everything the server does to an open link, STOP while online
 *   (end of input), SIGHUP, and the connect timeout (the listener behind the hanging dial is swapped).
 */
import type { EventObject } from 'xstate';
import { eventLabel } from '../../scripts/diagrams.js';
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
  | 'release'
  | 'configure'
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
  /** Null when `connecting` is left before the dial ends (STOP with nothing pending, the deadline). */
  mode: DialMode | null;
  /** How the server answers on the link this dial opens: `hold` when `online.draining` must not drain at once. */
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
  replyTimeoutMs: number;
  drainTimeoutMs: number;
}

export interface PathPlan {
  profile: Profile;
  steps: PlannedStep[];
  dials: Dial[];
  /** Records to write right after the agent starts (some sync STOP before any awaited step needs them). */
  prewrite: boolean;
  /** Whether the path ends with exit status 0 (everything delivered) or 1 (drain deadline). */
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
export const REPLY_TIMEOUT_MS = 250;
export const DRAIN_TIMEOUT_MS = 1_200;
/** The drain deadline is at least this much later than the estimated time from STOP to its source state. */
export const DEADLINE_MARGIN_MS = 700;
/** Events on an open link with `attempt` above zero must come this quickly when `stableLink` is short. */
const PROMPT_MS = 100;
/** Fixed cost of one path (agent and server start, teardown). */
export const PATH_OVERHEAD_MS = 150;

// ---------------------------------------------------------------------------------------------------------
// The mapping

/** Payloads for the events whose guards read them; the runtime's SIGHUP sends CONFIGURE with a policy. */
export const EVENT_PAYLOADS: Record<string, Record<string, unknown>[]> = {
  STOP: [{ pending: 0 }, { pending: 1 }],
  CONFIGURE: [{ policy: {} }],
};

/**
 * What the runtime can send in a state, as far as the machine's own context tells: STOP once, when the
 * input ends (end of file or SIGTERM); DEADLINE only after it (the drain timer starts with STOP, and a
 * STOP that does not close the connection marks it `stopping`).
 */
export const allowEvent = (snapshot: { context: unknown }, event: EventObject) => {
  const stopping = (snapshot.context as { stopping: boolean }).stopping;
  if (event.type === 'STOP') return !stopping;
  if (event.type === 'DEADLINE') return stopping;
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
};

/**
 * Why an event cannot be produced for real at all. These are reasons about the runtime, not about a
 * path; the transitions that only these events take are the ones listed as not executable.
 */
export const NEVER_EXECUTABLE: Record<string, string> = {
  CONNECT:
    'the agent starts the connection with `autoConnect: true` (src/agent/agent.ts), so `always [autoConnect]` leaves `disconnected` during initialisation and nothing ever sends CONNECT',
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
    case 'after(stableLink)':
      return p.stableLinkMs;
    case 'REPLY_TIMEOUT':
      return p.replyTimeoutMs + Math.max(10, Math.floor(p.replyTimeoutMs / 4)) + 20;
    case 'DEADLINE':
      return p.drainTimeoutMs;
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
    replyTimeoutMs: has('REPLY_TIMEOUT') ? REPLY_TIMEOUT_MS : 60_000,
    drainTimeoutMs: has('DEADLINE') ? DRAIN_TIMEOUT_MS : 60_000,
  };

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
    if (from.value === 'disconnected')
      return no(
        k,
        `${at}: the agent is never in \`disconnected\` when an event arrives (always [autoConnect])`,
      );
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
      case 'DEADLINE':
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
      case 'DRAINED':
        steps.push(planned('awaited', 'release'));
        break;
      case 'CONFIGURE':
        if (!isOnline(from.value))
          return no(k, `${at}: SIGHUP is only sent while the link is open (a stable state)`);
        steps.push(planned('awaited', 'configure'));
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
    if (entering) dials.push({ entry: k, exit: -1, mode: null, replies: 'ack', handshake: 'none' });
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
    const next = events[online + 1];
    if (online > 0 && model[online]!.toState.value === 'online.draining' && next && next !== 'DRAINED')
      dial.replies = 'hold';
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

  // Pass 2: pending records. Awaited steps on an open link (not stopping) can arrange either; the
  // steps after them up to the next such step need what they need.
  const adjusts = (i: number) => {
    const s = steps[i]!;
    const from = s.model.fromState!;
    return s.mode === 'awaited' && isOnline(from.value) && !from.stopping;
  };
  const requirement = (i: number): Pending | null => {
    const s = steps[i]!;
    const from = s.model.fromState!;
    const next = steps[i + 1];
    if (s.action === 'stop-now') return (s.model.event as { pending?: number }).pending ? 'some' : 'none';
    if (s.event === 'DEADLINE') return 'some';
    if (s.mode === 'awaited' && from.value === 'online.draining' && s.event !== 'DRAINED') return 'some';
    if (s.event === 'done(authenticate)' && s.model.toState.value === 'online.draining' && next) {
      return next.event === 'DRAINED' ? null : 'some';
    }
    return null;
  };
  const lookahead = (from: number): Pending | null => {
    for (let j = from; j < steps.length; j++) {
      if (adjusts(j)) return null;
      const r = requirement(j);
      if (r) return r;
      if (steps[j]!.event === 'done(authenticate)' && steps[j]!.model.toState.value === 'online.connected')
        return null;
    }
    return null;
  };
  const prewrite = lookahead(1) === 'some';
  let pending: Pending = prewrite ? 'some' : 'none';
  let stopAt = -1;
  for (let k = 1; k < steps.length; k++) {
    const s = steps[k]!;
    const from = s.model.fromState!;
    const at = `${s.event} in ${s.model.from} (step ${k})`;
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
      if (s.prep) pending = s.prep;
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
    if (s.action === 'withhold' || s.action === 'disk-full' || s.action === 'disk-error') pending = 'some';
    if (s.event === 'done(authenticate)' && s.model.toState.value === 'online.connected') pending = 'none';
    if (s.event === 'STOP') stopAt = k;
    if (s.event === 'DEADLINE') {
      const src = from.value;
      if (src === 'online.draining' && has('REPLY_TIMEOUT'))
        return no(
          k,
          `${at}: the reply deadline (short in this path) would end the link before the drain deadline`,
        );
      if (src === 'suspended' && has('after(suspendRetry)'))
        return no(k, `${at}: the suspend retry (short in this path) would leave \`suspended\` first`);
      if (src === 'backoff' && has('after(backoffDelay)'))
        return no(
          k,
          `${at}: the backoff (short, jittered from 0, in this path) would leave \`backoff\` first`,
        );
      if (!['online.draining', 'suspended', 'backoff'].includes(src))
        return no(k, `${at}: the agent does not stay in \`${src}\` until the drain deadline`);
      const elapsed = steps.slice(stopAt + 1, k).reduce((t, x) => t + x.estimateMs, 0);
      profile.drainTimeoutMs = Math.max(DRAIN_TIMEOUT_MS, elapsed + DEADLINE_MARGIN_MS);
      s.estimateMs = profile.drainTimeoutMs - elapsed;
    }
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
  return { profile, steps, dials, prewrite, exitCode: events.at(-1) === 'DEADLINE' ? 1 : 0, estimateMs };
}
