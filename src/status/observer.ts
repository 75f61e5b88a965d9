/**
 * Watches the actor system through XState's inspection API: the current state of every named
 * actor, the recent transitions and the recent errors. Feeds the status page, `/status`, the
 * SIGUSR1 report and the debug log. Never sees record payloads (the machines carry none).
 */
import { EventEmitter } from 'node:events';
import type { AnyActorRef, InspectionEvent } from 'xstate';
import { statePath } from '../statechart/analysis.js';

export { statePath };

export interface Transition {
  time: string;
  actor: string;
  from: string | null;
  to: string;
  event: string;
  /**
   * A flip back and forth between two states of one actor (the queue's `empty` ⇄ `holding` at every record, the
   * connection's `backoff` ⇄ `connecting` through an outage) is kept as one entry: `count` flips since `since`,
   * the last one at `time` (from, to, event are the last one's). Absent for a single transition.
   */
  count?: number;
  since?: string;
}

export interface ErrorEntry {
  time: string;
  source: string;
  message: string;
  /** The same error again and again in a row (e.g. every attempt of an outage) is one entry: how often, since when. */
  count?: number;
  since?: string;
}

const KEEP_TRANSITIONS = 50;
const KEEP_ERRORS = 20;
/** Actors whose states are shown (the supervisor's children). */
const WATCHED = new Set(['connection', 'reader', 'queue']);

/**
 * `transition` is emitted for every state change; its second argument is true when the change was folded into
 * the previous entry of `foldedTransitions` (a flip back: see Transition.count), so that a listener can skip those.
 */
export class StateObserver extends EventEmitter<{
  transition: [Transition, boolean];
  failure: [ErrorEntry];
}> {
  /** Current state per watched actor, as a dotted path (`online.connected`). */
  readonly states = new Map<string, string>();
  /** Every transition and every error, one entry each (the last KEEP_TRANSITIONS / KEEP_ERRORS). */
  readonly transitions: Transition[] = [];
  readonly errors: ErrorEntry[] = [];
  /**
   * The same, for people (the page, /status, the SIGUSR1 report): a flip back and forth is one entry, the same
   * error in a row is one entry (with `count` and `since`), each list bounded on its own, so that a queue flipping
   * at every record does not push the connection's transitions out.
   */
  readonly foldedTransitions: Transition[] = [];
  readonly foldedErrors: ErrorEntry[] = [];
  /** Per watched actor: the session (an actor restarted by the supervisor is a new one) and its state. */
  readonly #last = new Map<string, { session: string; state: string }>();

  /** How many actors are tracked: one per watched actor id, however often they are restarted. */
  get tracked(): number {
    return this.#last.size;
  }

  inspect = (ev: InspectionEvent): void => {
    if (ev.type !== '@xstate.snapshot') return;
    const ref = ev.actorRef as AnyActorRef;
    if (!WATCHED.has(ref.id)) return;
    const snap = ev.snapshot as { value?: unknown; status?: string };
    const to = statePath(snap.value);
    const last = this.#last.get(ref.id);
    if (last?.session === ref.sessionId && last.state === to) return;
    this.#last.set(ref.id, { session: ref.sessionId, state: to });
    const t: Transition = {
      time: new Date().toISOString(),
      actor: ref.id,
      from: this.states.get(ref.id) ?? null,
      to,
      event: ev.event.type,
    };
    this.states.set(ref.id, to);
    push(this.transitions, t, KEEP_TRANSITIONS);
    const prev = this.foldedTransitions.at(-1);
    const flipBack =
      prev !== undefined &&
      prev.actor === t.actor &&
      prev.from === t.to &&
      prev.to === t.from &&
      prev.from !== null &&
      t.from !== t.to; // a restart (a new session in the same state) is never folded
    if (flipBack) {
      prev.since ??= prev.time;
      prev.count = (prev.count ?? 1) + 1;
      Object.assign(prev, { time: t.time, from: t.from, to: t.to, event: t.event });
    } else push(this.foldedTransitions, { ...t }, KEEP_TRANSITIONS);
    this.emit('transition', t, flipBack);
  };

  recordError(source: string, message: string): void {
    const e: ErrorEntry = { time: new Date().toISOString(), source, message };
    push(this.errors, e, KEEP_ERRORS);
    const prev = this.foldedErrors.at(-1);
    if (prev && prev.source === source && prev.message === message) {
      prev.since ??= prev.time;
      prev.count = (prev.count ?? 1) + 1;
      prev.time = e.time;
    } else push(this.foldedErrors, { ...e }, KEEP_ERRORS);
    this.emit('failure', e);
  }
}

function push<T>(list: T[], item: T, keep: number): void {
  list.push(item);
  if (list.length > keep) list.splice(0, list.length - keep);
}
