/**
 * Reading the statecharts: one module for the diagrams (scripts/diagrams.ts), the model-based tests
 * (test/model/) and the runtime's state observer. Everything is read from the machine definitions:
 *
 * - the graph (`extractGraph`): states and labelled transitions from `machine.toJSON()`, plus the `always`
 *   transitions, which `toJSON()` leaves out in XState 5.33 and which are read from the state nodes;
 * - the transition inventory (`machineTransitions`, `transitionKey`): every transition with a stable name,
 *   the same for the machine and for `machine.provide(...)`, and the transitions a step takes
 *   (`transitionsTaken`, from the `@xstate.microstep` inspection events the real actors emit too);
 * - the labels (`eventLabel`, `guardLabel`, `actionLabel`), one state-path function (`statePath`);
 * - the events to explore (`explorationEvents`: every event type a machine handles, with the payload
 *   variants its guards read, `EVENT_PAYLOADS`);
 * - what can be reached (`reachableStates`), and the events a machine handles that no code sends
 *   (`eventsNeverSent`).
 */
import {
  type AnyActorScope,
  type AnyMachineSnapshot,
  type AnyStateMachine,
  type AnyTransitionDefinition,
  createEmptyActor,
  type EventObject,
  type InspectionEvent,
} from 'xstate';
import { getStateNodes } from 'xstate/graph';

// ---------------------------------------------------------------------------------------------------------
// State paths and labels

/**
 * `{ online: 'connected' }` → `online.connected`; the regions of a parallel state are joined with `, `
 * (`supervising.reader.running, supervising.queue.running`).
 */
export function statePath(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>)
      .map(([k, v]) => {
        const rest = statePath(v);
        return rest
          ? rest
              .split(', ')
              .map((r) => `${k}.${r}`)
              .join(', ')
          : k;
      })
      .join(', ');
  }
  return '';
}

function formatParams(params: unknown): string {
  if (params === undefined || params === null) return '';
  if (typeof params !== 'object') return `(${String(params)})`;
  const entries = Object.entries(params as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
  return `(${entries.map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ')})`;
}

/** Action names as drawn; XState's own scheduling actions (`raise`, `cancel`) are left out. */
export function actionLabel(action: unknown): string | null {
  if (typeof action === 'string') return action;
  // XState's built-in actions (raise, assign, sendTo, …) are functions with a `type`.
  const typed = typeof (action as { type?: unknown } | null)?.type === 'string';
  if (typeof action === 'function' && !typed) return 'inline';
  if (action && typed) {
    const { type, params } = action as { type?: string; params?: unknown };
    if (type === 'xstate.raise' || type === 'xstate.cancel') return null;
    return `${type ?? 'inline'}${typeof params === 'function' ? '' : formatParams(params)}`;
  }
  return null;
}

export function guardLabel(guard: unknown): string | null {
  if (guard === undefined || guard === null) return null;
  if (typeof guard === 'string') return `[${guard}]`;
  if (typeof guard === 'function') return '[inline]';
  if (typeof guard === 'object' && 'type' in guard) {
    const { type, params } = guard as { type: string; params?: unknown };
    return `[${type}${formatParams(params)}]`;
  }
  return '[guard]';
}

/**
 * `xstate.after.backoffDelay.connection.backoff` → `after(backoffDelay)`; `xstate.done.actor.dial` →
 * `done(dial)`; `xstate.error.actor.dial` → `error(dial)`; `''` → `always`; `xstate.done.state.<source>` →
 * `done` (all regions or the final child of the source reached); anything else unchanged.
 */
export function eventLabel(eventType: string, delay?: string | number, source?: string): string {
  if (eventType === '') return 'always';
  if (eventType.startsWith('xstate.after.')) {
    if (typeof delay === 'number') return `after(${delay}ms)`;
    if (typeof delay === 'string') return `after(${delay})`;
    return `after(${eventType.slice('xstate.after.'.length).split('.')[0]})`;
  }
  for (const [prefix, name] of [
    ['xstate.done.actor.', 'done'],
    ['xstate.error.actor.', 'error'],
  ] as const) {
    if (eventType.startsWith(prefix)) return `${name}(${eventType.slice(prefix.length)})`;
  }
  if (eventType.startsWith('xstate.done.state.')) {
    const state = eventType.slice('xstate.done.state.'.length);
    return state === source ? 'done' : `done(${state})`;
  }
  return eventType;
}

/** Events XState makes itself (timers, actors, `always`, completion of states). */
export const isSyntheticEvent = (eventType: string) => eventType === '' || eventType.startsWith('xstate.');

/** An event with its payload: `STOP(pending=1)`, `after(backoffDelay)`, `init`. */
export function eventText(event: EventObject): string {
  const { type, ...rest } = event as EventObject & Record<string, unknown>;
  const label = type === 'xstate.init' ? 'init' : eventLabel(type);
  const args = Object.entries(rest)
    .filter(([, v]) => v === null || typeof v !== 'object')
    .map(([k, v]) => `${k}=${String(v)}`);
  return args.length ? `${label}(${args.join(', ')})` : label;
}

// ---------------------------------------------------------------------------------------------------------
// The graph, extracted from toJSON()

export type StateType = 'atomic' | 'compound' | 'parallel' | 'final' | 'history';

export interface GraphState {
  /** Full state node id, e.g. `connection.online.connected` (the root's is the machine id). */
  id: string;
  /** The id without the machine id, e.g. `online.connected` (empty for the root). */
  path: string;
  key: string;
  type: StateType;
  parent: string | null;
  /** The initial child's id, for compound states. */
  initial: string | null;
  children: string[];
  invoke: string[];
  entry: string[];
  exit: string[];
  /** `id` of the node (atomic) or cluster (compound, parallel) in the SVG. */
  svgId: string;
}

export interface GraphTransition {
  source: string;
  /** Empty for a targetless transition (actions only, no state change). */
  targets: string[];
  /** The event type as XState knows it (`''` for `always`). */
  eventType: string;
  /** `LINK_LOST`, `after(backoffDelay)`, `done(dial)`, `error(dial)`, `always`. */
  event: string;
  /** `[nothingPending]`, `[suspendsOn(kind=disk-full)]`, or null. */
  guard: string | null;
  delay: string | null;
  actions: string[];
  /** Event and guard, plus the actions when the transition has no target. */
  label: string;
  /** `id` of the (possibly shared) edge in the SVG. */
  svgEdgeId: string;
}

export interface MachineGraph {
  machine: string;
  source: string;
  root: string;
  states: GraphState[];
  transitions: GraphTransition[];
}

/** The parts of `StateNodeDefinition` (toJSON) read here. */
interface JsonTransition {
  target?: string[];
  source: string;
  actions?: readonly unknown[];
  guard?: unknown;
  eventType: string;
  delay?: string | number;
}
interface JsonStateNode {
  id: string;
  key: string;
  type: StateType;
  initial?: { target?: string[] } | undefined;
  states: Record<string, JsonStateNode>;
  transitions: JsonTransition[];
  entry: readonly unknown[];
  exit: readonly unknown[];
  invoke: readonly { id: string; src: unknown }[];
}

const stripHash = (ref: string) => (ref.startsWith('#') ? ref.slice(1) : ref);

/** The state id without the machine id (`''` for the root). */
export function pathOf(root: string, id: string): string {
  return id === root ? '' : id.startsWith(`${root}.`) ? id.slice(root.length + 1) : id;
}

export const stateSvgId = (id: string) => `state-${id}`;
export const edgeSvgId = (source: string, target: string | null) =>
  target === null ? `edge-${source}--self` : `edge-${source}--${target}`;

export function extractGraph(src: { name: string; machine: AnyStateMachine; source: string }): MachineGraph {
  const { machine } = src;
  // Through JSON, as a consumer of toJSON() would see it (some parts are objects with their own toJSON).
  const json = JSON.parse(JSON.stringify(machine.toJSON())) as JsonStateNode;
  const root = json.id;
  const states: GraphState[] = [];
  const raw: Omit<GraphTransition, 'svgEdgeId'>[] = [];
  const labels = (list: readonly unknown[]) => list.map(actionLabel).filter((a): a is string => a !== null);

  const visit = (node: JsonStateNode, parent: string | null) => {
    const children = Object.values(node.states);
    const initialTarget = node.initial?.target?.[0];
    // Entry and exit actions from the state node itself: JSON drops parameter functions.
    const live = machine.getStateNodeById(node.id);
    states.push({
      id: node.id,
      path: pathOf(root, node.id),
      key: node.key,
      type: node.type,
      parent,
      initial: node.type === 'compound' && initialTarget ? stripHash(initialTarget) : null,
      children: children.map((c) => c.id),
      invoke: node.invoke.map((i) => i.id),
      entry: labels(live.entry),
      exit: labels(live.exit),
      svgId: stateSvgId(node.id),
    });
    // toJSON() leaves `always` out (XState 5.33): read those from the state node itself.
    const always = (live.always ?? []).map((t) => JSON.parse(JSON.stringify(t.toJSON())) as JsonTransition);
    for (const t of [...node.transitions, ...always]) {
      const actions = labels(t.actions ?? []);
      const targets = (t.target ?? []).map(stripHash);
      const event = eventLabel(t.eventType, t.delay, node.id);
      const guard = guardLabel(t.guard);
      const label = [event, guard, targets.length === 0 && actions.length ? `/ ${actions.join(', ')}` : null]
        .filter(Boolean)
        .join(' ');
      raw.push({
        source: node.id,
        targets,
        eventType: t.eventType,
        event,
        guard,
        delay: t.delay === undefined ? null : String(t.delay),
        actions,
        label,
      });
    }
    for (const child of children) visit(child, node.id);
  };
  visit(json, null);

  const transitions = raw.map((t) => ({ ...t, svgEdgeId: edgeSvgId(t.source, t.targets[0] ?? null) }));
  return { machine: src.name, source: src.source, root, states, transitions };
}

/** States reachable from the initial state when every guard may hold (entering a state enters its initial). */
export function reachableStates(graph: MachineGraph): Set<string> {
  const byId = new Map(graph.states.map((s) => [s.id, s]));
  const seen = new Set<string>();
  const ancestors = (id: string) => {
    const out: string[] = [];
    for (let s = byId.get(id); s; s = s.parent ? byId.get(s.parent) : undefined) out.push(s.id);
    return out;
  };
  const enter = (id: string) => {
    for (const a of ancestors(id)) seen.add(a);
    const s = byId.get(id)!;
    if (s.type === 'parallel') for (const c of s.children) enter(c);
    else if (s.initial) enter(s.initial);
  };
  enter(graph.root);
  for (let grew = true; grew; ) {
    grew = false;
    for (const t of graph.transitions) {
      if (!seen.has(t.source)) continue;
      for (const target of t.targets) {
        const before = seen.size;
        if (!seen.has(target)) enter(target);
        if (seen.size !== before) grew = true;
      }
    }
  }
  return seen;
}

/**
 * The events a machine handles that nothing sends: no object literal `type: 'EVENT'` in `sources` (the
 * runtime's code and the machine's own definition, where `raise` and `sendTo` send). XState's synthetic
 * events are left out. A text search, so an event built from a variable would be reported; none is.
 */
export function eventsNeverSent(graph: MachineGraph, sources: string): string[] {
  const types = [...new Set(graph.transitions.map((t) => t.eventType))].filter((t) => !isSyntheticEvent(t));
  return types.filter((type) => !new RegExp(`type:\\s*['"\`]${type}['"\`]`).test(sources)).sort();
}

// ---------------------------------------------------------------------------------------------------------
// The transition inventory

const ANY_STATE = '(any state)';
const inventoryPath = (root: string, id: string) => pathOf(root, id) || ANY_STATE;

/**
 * A transition's stable name, the same for the machine and for `machine.provide(...)` (whose state nodes
 * are new objects): `backoff: STOP [nothingPending] → closed`, `online.connected: after(stableLink) →
 * (stays) / resetAttempts`, `(any state): CONFIGURE → (stays) / applyPolicy`.
 */
export function transitionKey(t: AnyTransitionDefinition): string {
  const root = t.source.machine.root.id;
  const source = inventoryPath(root, t.source.id);
  const event = eventLabel(t.eventType, undefined, t.source.id);
  const guard = guardLabel(t.guard);
  const targets = (t.target ?? []).map((n) => inventoryPath(root, n.id));
  const actions = (t.actions ?? []).map(actionLabel).filter((a): a is string => a !== null);
  const to = targets.length
    ? targets.join(', ')
    : `(stays)${actions.length ? ` / ${actions.join(', ')}` : ''}`;
  return `${source}: ${event}${guard ? ` ${guard}` : ''} → ${to}`;
}

export interface TransitionInfo {
  key: string;
  /** `STOP`, `after(backoffDelay)`, `done(dial)`, `always`. */
  event: string;
  eventType: string;
  source: string;
  targetless: boolean;
}

/** Every transition of the machine, in definition order (state by state, `always` last). */
export function machineTransitions(machine: AnyStateMachine): TransitionInfo[] {
  const out: TransitionInfo[] = [];
  for (const node of [machine.root, ...getStateNodes(machine.root)]) {
    for (const t of [...[...node.transitions.values()].flat(), ...(node.always ?? [])]) {
      out.push({
        key: transitionKey(t),
        event: eventLabel(t.eventType, undefined, t.source.id),
        eventType: t.eventType,
        source: inventoryPath(machine.root.id, node.id),
        targetless: !t.target?.length,
      });
    }
  }
  const keys = out.map((t) => t.key);
  const dup = keys.find((k, i) => keys.indexOf(k) !== i);
  if (dup) throw new Error(`two transitions have the same name: ${dup}`);
  return out;
}

/** The values of parameter `param` of every use of guard `guard` (e.g. the kinds `suspendsOn` is asked about). */
export function guardParamValues(machine: AnyStateMachine, guard: string, param: string): string[] {
  const values = new Set<string>();
  for (const node of [machine.root, ...getStateNodes(machine.root)]) {
    for (const t of [...node.transitions.values()].flat()) {
      const g = t.guard as { type?: string; params?: Record<string, unknown> } | undefined;
      const v = g && typeof g === 'object' && g.type === guard ? g.params?.[param] : undefined;
      if (typeof v === 'string') values.add(v);
    }
  }
  return [...values].sort();
}

/**
 * An actor scope like the one `xstate/graph` steps a machine with (inert: no actor is started, no action
 * runs), except that it reports which transitions each microstep took.
 */
function recordingScope(sink: AnyTransitionDefinition[][]): AnyActorScope {
  const empty = createEmptyActor();
  const system = Object.create(empty.system) as typeof empty.system;
  (system as unknown as { _sendInspectionEvent: (ev: InspectionEvent) => void })._sendInspectionEvent = (
    ev,
  ) => {
    if (ev.type === '@xstate.microstep') sink.push(ev._transitions);
  };
  return {
    self: empty,
    logger: () => {},
    id: '',
    sessionId: 'analysis',
    defer: () => {},
    system,
    stopChild: () => {},
    emit: () => {},
    actionExecutor: () => {},
  } as unknown as AnyActorScope;
}

/** The transitions the machine takes from `snapshot` on `event` (all microsteps), by name. */
export function transitionsTaken(machine: AnyStateMachine, snapshot: AnyMachineSnapshot, event: EventObject) {
  const sink: AnyTransitionDefinition[][] = [];
  const next = machine.transition(snapshot, event, recordingScope(sink)) as AnyMachineSnapshot;
  return { next, transitions: sink.flat().map(transitionKey) };
}

/** The initial snapshot for `input`, and the transitions taken to reach it (`always` ones, if any). */
export function initialTransitions(machine: AnyStateMachine, input: unknown) {
  const sink: AnyTransitionDefinition[][] = [];
  const initial = machine.getInitialSnapshot(recordingScope(sink), input) as AnyMachineSnapshot;
  return { initial, transitions: sink.flat().map(transitionKey) };
}

// ---------------------------------------------------------------------------------------------------------
// Events to explore

/**
 * The payload variants of the events whose guards read them (`nothingPending` reads `STOP.pending`), and
 * the payload the runtime sends with CONFIGURE (SIGHUP) and RELINK. Every other event, including the
 * synthetic `xstate.after.*`, `xstate.done.actor.*` and `xstate.error.actor.*` ones, is sent as `{ type }`.
 */
export const EVENT_PAYLOADS: Record<string, Record<string, unknown>[]> = {
  STOP: [{ pending: 0 }, { pending: 1 }],
  CONFIGURE: [{ policy: {} }],
  RELINK: [{ reason: 'SIGHUP' }],
};

/** Every event type the machine handles (`always` aside), each with its payload variants. */
export function explorationEvents(
  machine: AnyStateMachine,
  payloads: Record<string, Record<string, unknown>[]> = EVENT_PAYLOADS,
): EventObject[] {
  const types = [...new Set(machineTransitions(machine).map((t) => t.eventType))].filter((t) => t !== '');
  return types.sort().flatMap((type) => (payloads[type] ?? [{}]).map((payload) => ({ type, ...payload })));
}
