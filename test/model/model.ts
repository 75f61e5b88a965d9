/**
 * The connection machine as a test model: the abstract state the path search compares, the candidate paths
 * (`xstate/graph`: simple paths and shortest paths; joined ones for the edges those miss) and the greedy
 * choice of the paths the model-based tests run against the real agent. Nothing here runs the agent; see
 * `plan.ts` (what can be executed for real, and how) and `executor.ts` (running a path).
 *
 * Everything about the machine itself (its transitions, their names, the events and their payloads, the
 * transitions a step takes) comes from src/statechart/analysis.ts, the module the diagrams use too.
 */
import type { AnyMachineSnapshot, AnyStateMachine, EventObject } from 'xstate';
import { getAdjacencyMap, getShortestPaths, getSimplePaths, type StatePath } from 'xstate/graph';
import {
  eventText,
  explorationEvents,
  guardParamValues,
  initialTransitions,
  machineTransitions,
  statePath,
  type TransitionInfo,
  transitionsTaken,
} from '../../src/statechart/analysis.js';

// ---------------------------------------------------------------------------------------------------------
// Abstract state

/**
 * What the path search tells states apart by: the state value, the `stopping` flag (read by the guards on the
 * way out), whether `attempt` is above zero, and, while draining, whether the server has answered on the link
 * (`confirmed`: the first reply is an event of its own, and a drain with nothing left ends at it).
 * `attempt` itself is clamped by the machine (MAX_COUNTED_ATTEMPTS), but every retry would still be a new
 * state; "above zero" is the coarsest view in which `after(stableLink) / resetAttempts` is an edge and not a
 * loop, so the search can cover it. `outage` and `connectedOnce` choose failure actions, not transitions.
 * `answered`: the server has answered the agent before (`lastSession` is set), which the guard
 * `refusedRightAfterAccept` reads when a link is lost before its first reply (the stale-session rule).
 */
export interface Abstract {
  value: string;
  stopping: boolean;
  attempted: boolean;
  confirmed: boolean;
  answered: boolean;
}

export function abstractOf(snapshot: { value: unknown; context: unknown }): Abstract {
  const ctx = snapshot.context as {
    stopping?: boolean;
    attempt?: number;
    confirmed?: boolean;
    lastSession?: unknown;
  };
  return {
    value: statePath(snapshot.value),
    stopping: ctx.stopping === true,
    attempted: (ctx.attempt ?? 0) > 0,
    confirmed: ctx.confirmed === true,
    answered: ctx.lastSession !== null && ctx.lastSession !== undefined,
  };
}

/**
 * `backoff`, `backoff (stopping)`, `online.connected (attempt>0)`, `online.draining (stopping, confirmed)`.
 * `confirmed` is shown (and compared) only while draining: elsewhere the state value says it. `answered` is not
 * compared (it would double the states before the first reply, and the simple paths with them): it changes which
 * LINK_LOST transition a link lost before its first reply takes, not where it goes, so every path is replayed
 * from its start (`replay`) to take the transitions its own history leads to.
 */
export function keyOf(a: Abstract): string {
  const flags = [
    a.stopping ? 'stopping' : null,
    a.attempted ? 'attempt>0' : null,
    a.value === 'online.draining' && a.confirmed ? 'confirmed' : null,
  ].filter(Boolean);
  return flags.length ? `${a.value} (${flags.join(', ')})` : a.value;
}

export const snapshotKey = (s: AnyMachineSnapshot) => keyOf(abstractOf(s));

export type { TransitionInfo };

// ---------------------------------------------------------------------------------------------------------
// Paths

export interface ModelStep {
  /** `xstate.init` for the first step. */
  event: EventObject;
  /** Label: `STOP(pending=1)`, `after(backoffDelay)`, `init`. */
  label: string;
  from: string | null;
  to: string;
  fromState: Abstract | null;
  toState: Abstract;
  /** Transitions taken, by `transitionKey`. */
  transitions: string[];
  /** The model's snapshot after the step (for inserting steps later). */
  snapshot: AnyMachineSnapshot;
}

export interface Policy {
  name: string;
  /** The failure kinds configured as `suspend`. */
  suspendOn: string[];
}

export interface ModelPath {
  policy: Policy;
  origin: 'simple' | 'shortest' | 'joined';
  steps: ModelStep[];
}

export function pathText(path: ModelPath): string {
  const [first, ...rest] = path.steps;
  return [first!.to, ...rest.map((s) => `—${s.label}→ ${s.to}`)].join(' ');
}

export interface ModelOptions {
  /**
   * Events left out of the simple-path search (their edges still get shortest-path candidates): ones that
   * only multiply the ways around the graph (RELINK goes back to `connecting` from everywhere) or lead
   * nowhere (FAULT).
   */
  notOnSimplePaths?: string[];
  /** Which of the events may be sent in a state (e.g. the runtime sends STOP only once). */
  allow: (snapshot: AnyMachineSnapshot, event: EventObject) => boolean;
  /** The agent's input to the machine for a policy. */
  input: (policy: Policy) => unknown;
}

export interface ConnectionModel {
  machine: AnyStateMachine;
  transitions: TransitionInfo[];
  policies: Policy[];
  events: EventObject[];
  /** Candidates: every simple path to `closed`, and shortest paths through each edge, for each policy. */
  candidates: ModelPath[];
  /** Size of the explored graph per policy. */
  graphs: { policy: string; states: number; edges: number; simple: number; shortest: number }[];
  /** The model step for `event` in the state after `step` (for inserting a step into a path). */
  stepFrom(policy: Policy, step: ModelStep, event: EventObject): ModelStep;
  /** The path's events taken again from the start: each step from the snapshot its own history leads to. */
  replay(path: ModelPath): ModelPath;
}

const isClosed = (s: AnyMachineSnapshot) => s.status === 'done';

export function buildModel(machine: AnyStateMachine, options: ModelOptions): ConnectionModel {
  const transitions = machineTransitions(machine);
  const events = explorationEvents(machine);
  const kinds = guardParamValues(machine, 'suspendsOn', 'kind');
  const policies: Policy[] = [
    { name: 'suspendOn: []', suspendOn: [] },
    { name: `suspendOn: [${kinds.join(', ')}]`, suspendOn: kinds },
  ];
  // xstate/graph serialises the same snapshots over and over while it enumerates paths.
  const keys = new WeakMap<AnyMachineSnapshot, string>();
  const serializeState = (s: AnyMachineSnapshot) => {
    let key = keys.get(s);
    if (key === undefined) {
      key = snapshotKey(s);
      keys.set(s, key);
    }
    return key;
  };
  const eventsFor = (s: AnyMachineSnapshot) => events.filter((e) => options.allow(s, e));
  const simpleEvents = (s: AnyMachineSnapshot) =>
    eventsFor(s).filter((e) => !options.notOnSimplePaths?.includes(e.type));

  const memo = new Map<string, { next: AnyMachineSnapshot; transitions: string[] }>();
  const step = (policy: Policy, from: AnyMachineSnapshot, event: EventObject): ModelStep => {
    const memoKey = `${policy.name}|${snapshotKey(from)}|${abstractOf(from).answered}|${JSON.stringify(event)}`;
    let taken = memo.get(memoKey);
    if (!taken) {
      taken = transitionsTaken(machine, from, event);
      memo.set(memoKey, taken);
    }
    return {
      event,
      label: eventText(event),
      from: snapshotKey(from),
      to: snapshotKey(taken.next),
      fromState: abstractOf(from),
      toState: abstractOf(taken.next),
      transitions: taken.transitions,
      snapshot: taken.next,
    };
  };
  const convert = (policy: Policy, init: ModelStep, path: StatePath<AnyMachineSnapshot, EventObject>) => {
    const steps: ModelStep[] = [init];
    for (let k = 1; k < path.steps.length; k++) {
      const prev = path.steps[k - 1]!.state;
      steps.push(step(policy, prev, path.steps[k]!.event));
    }
    return steps;
  };

  const candidates: ModelPath[] = [];
  const graphs: ConnectionModel['graphs'] = [];
  const inits = new Map<Policy, ModelStep>();
  const replay = (path: ModelPath): ModelPath => {
    const steps: ModelStep[] = [inits.get(path.policy)!];
    for (let k = 1; k < path.steps.length; k++)
      steps.push(step(path.policy, steps[k - 1]!.snapshot, path.steps[k]!.event));
    return { ...path, steps };
  };
  for (const policy of policies) {
    const input = options.input(policy);
    const { initial, transitions: initTransitions } = initialTransitions(machine, input);
    const init: ModelStep = {
      event: { type: 'xstate.init' },
      label: 'init',
      from: null,
      to: snapshotKey(initial),
      fromState: null,
      toState: abstractOf(initial),
      transitions: initTransitions,
      snapshot: initial,
    };
    inits.set(policy, init);
    const traversal = { input, events: eventsFor, serializeState } as const;

    const simple = getSimplePaths(machine, { ...traversal, events: simpleEvents, toState: isClosed });
    for (const p of simple)
      candidates.push(replay({ policy, origin: 'simple', steps: convert(policy, init, p) }));

    // Shortest paths: to the source of each edge, the edge, then the shortest way from its target to `closed`.
    const adjacency = getAdjacencyMap(machine, traversal);
    const toEach = new Map<string, ModelStep[]>();
    for (const p of getShortestPaths(machine, traversal))
      toEach.set(snapshotKey(p.state), convert(policy, init, p));
    const toClosed = new Map<string, ModelStep[] | null>();
    const tailFrom = (from: AnyMachineSnapshot, first: ModelStep): ModelStep[] | null => {
      const key = snapshotKey(from);
      if (!toClosed.has(key)) {
        const ends = getShortestPaths(machine, { ...traversal, fromState: from })
          .filter((p) => isClosed(p.state))
          .sort((a, b) => a.steps.length - b.steps.length);
        toClosed.set(key, ends[0] ? convert(policy, first, ends[0]).slice(1) : null);
      }
      return toClosed.get(key) ?? null;
    };
    let edges = 0;
    let shortest = 0;
    for (const [fromKey, { state, transitions: moves }] of Object.entries(adjacency)) {
      const head = toEach.get(fromKey);
      for (const { event } of Object.values(moves) as { event: EventObject }[]) {
        const edge = step(policy, state, event);
        if (edge.to === fromKey && edge.transitions.length === 0) continue;
        edges++;
        if (!head || edge.to === fromKey) continue;
        const tail = isClosed(edge.snapshot) ? [] : tailFrom(edge.snapshot, edge);
        if (!tail) continue;
        candidates.push(replay({ policy, origin: 'shortest', steps: [...head, edge, ...tail] }));
        shortest++;
      }
    }
    graphs.push({
      policy: policy.name,
      states: Object.keys(adjacency).length,
      edges,
      simple: simple.length,
      shortest,
    });
  }
  return {
    machine,
    transitions,
    policies,
    events,
    candidates,
    graphs,
    stepFrom: (policy, at, event) => step(policy, at.snapshot, event),
    replay,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Choosing paths

/** Why a path cannot be executed for real, and the step at which that shows. */
export interface Rejected {
  rejected: string;
  step: number;
}

export const isRejected = (x: unknown): x is Rejected =>
  typeof x === 'object' && x !== null && typeof (x as Rejected).rejected === 'string';

export interface Choice<P> {
  path: ModelPath;
  plan: P;
}

/** The transitions a path takes, by name. */
export const transitionsOf = (path: ModelPath) => path.steps.flatMap((s) => s.transitions);

/**
 * The edges of the abstract graph a path takes: source state, transitions, target state
 * (`online.draining (stopping) —[online: LINK_LOST → backoff]→ backoff (stopping, attempt>0)`).
 */
export const edgesOf = (path: ModelPath) =>
  path.steps.slice(1).map((s) => `${s.from} —[${s.transitions.join(' + ')}]→ ${s.to}`);

/**
 * Greedy set cover: starting from `start`, repeatedly takes the executable candidate that adds the most
 * items (`keysOf`) not yet covered (ties: the cheaper one, then the one whose text sorts first, so the
 * choice is deterministic).
 */
export function chooseCovering<P>(
  candidates: ModelPath[],
  planOf: (path: ModelPath) => P | Rejected,
  costOf: (plan: P) => number,
  keysOf: (path: ModelPath) => string[] = transitionsOf,
  start: Choice<P>[] = [],
): { chosen: Choice<P>[]; covered: Set<string>; reachable: Set<string> } {
  const feasible: (Choice<P> & { cost: number; text: string; keys: Set<string> })[] = [];
  const seen = new Set<string>();
  for (const path of candidates) {
    const text = `${path.policy.name}: ${pathText(path)}`;
    if (seen.has(text)) continue;
    seen.add(text);
    const plan = planOf(path);
    if (isRejected(plan)) continue;
    feasible.push({ path, plan, cost: costOf(plan), text, keys: new Set(keysOf(path)) });
  }
  const covered = new Set(start.flatMap((c) => keysOf(c.path)));
  const chosen: Choice<P>[] = [...start];
  for (;;) {
    let best: (typeof feasible)[number] | null = null;
    let bestGain = 0;
    for (const c of feasible) {
      let gain = 0;
      for (const k of c.keys) if (!covered.has(k)) gain++;
      if (
        gain > bestGain ||
        (gain === bestGain &&
          gain > 0 &&
          best &&
          (c.cost < best.cost || (c.cost === best.cost && c.text < best.text)))
      ) {
        best = c;
        bestGain = gain;
      }
    }
    if (!best) break;
    chosen.push({ path: best.path, plan: best.plan });
    for (const k of best.keys) covered.add(k);
  }
  return { chosen, covered, reachable: new Set(feasible.flatMap((c) => [...c.keys])) };
}

/**
 * Transitions that do not change the abstract state (targetless ones such as `CONFIGURE / applyPolicy`, and
 * re-entries such as `connecting: RELINK → connecting`) are never on a simple or shortest path. Each one
 * still uncovered is inserted, as a step that stays where it is, into the first chosen path with a state
 * where it applies and where the plan accepts it.
 */
export function insertLoops<P>(
  model: ConnectionModel,
  chosen: Choice<P>[],
  uncovered: string[],
  planOf: (path: ModelPath) => P | Rejected,
): { inserted: string[]; chosen: Choice<P>[] } {
  const out = [...chosen];
  const inserted: string[] = [];
  for (const key of uncovered) {
    const info = model.transitions.find((t) => t.key === key);
    if (!info) continue;
    const candidates = model.events.filter((e) => e.type === info.eventType);
    let done = false;
    for (let c = 0; c < out.length && !done; c++) {
      const { path } = out[c]!;
      for (let p = 0; p < path.steps.length - 1 && !done; p++) {
        const at = path.steps[p]!;
        for (const event of candidates) {
          const loop = model.stepFrom(path.policy, at, event);
          if (loop.to !== at.to || !loop.transitions.includes(key)) continue;
          const next = path.steps[p + 1]!;
          // The step after the loop starts from the loop's snapshot (same abstract state).
          const steps = [...path.steps.slice(0, p + 1), loop, { ...next }, ...path.steps.slice(p + 2)];
          const longer = model.replay({ ...path, steps });
          const plan = planOf(longer);
          if (isRejected(plan)) continue;
          out[c] = { path: longer, plan };
          inserted.push(key);
          done = true;
          break;
        }
      }
    }
  }
  return { inserted, chosen: out };
}

/**
 * More candidates for edges no candidate covers executably: a prefix of some candidate that ends in the
 * edge's source state, the edge, and a suffix of some candidate that starts in its target state (paths
 * joined as `joinPaths` does, but from any candidate, so the parts can come from different paths). Tried
 * shortest first, at most `limit` combinations per edge; the first executable one is kept.
 */
export function joinedCandidates<P>(
  model: ConnectionModel,
  covered: Set<string>,
  planOf: (path: ModelPath) => P | Rejected,
  limit = 2_000,
): ModelPath[] {
  const out: ModelPath[] = [];
  for (const policy of model.policies) {
    const paths = model.candidates.filter((p) => p.policy === policy);
    const heads = new Map<string, Map<string, ModelStep[]>>();
    const tails = new Map<string, Map<string, ModelStep[]>>();
    const edges = new Map<string, ModelStep>();
    const add = (m: Map<string, Map<string, ModelStep[]>>, state: string, steps: ModelStep[]) => {
      const text = steps.map((s) => `${s.label}>${s.to}`).join(' ');
      const byText = m.get(state) ?? new Map<string, ModelStep[]>();
      if (!byText.has(text)) byText.set(text, steps);
      m.set(state, byText);
    };
    for (const p of paths) {
      const edgeKeys = edgesOf(p);
      p.steps.forEach((s, i) => {
        add(heads, s.to, p.steps.slice(0, i + 1));
        if (i > 0) {
          add(tails, s.from!, p.steps.slice(i));
          const key = edgeKeys[i - 1]!;
          if (!covered.has(key) && !edges.has(key)) edges.set(key, s);
        }
      });
    }
    const byLength = (m: Map<string, ModelStep[]> | undefined) =>
      [...(m?.values() ?? [])].sort((a, b) => a.length - b.length);
    for (const [, edge] of edges) {
      const hs = byLength(heads.get(edge.from!));
      const ts = edge.toState.value === 'closed' ? [[]] : byLength(tails.get(edge.to));
      const combos: [ModelStep[], ModelStep[]][] = [];
      for (const h of hs) for (const t of ts) combos.push([h, t]);
      combos.sort((a, b) => a[0].length + a[1].length - (b[0].length + b[1].length));
      for (const [h, t] of combos.slice(0, limit)) {
        const path = model.replay({ policy, origin: 'joined', steps: [...h, edge, ...t] });
        if (isRejected(planOf(path))) continue;
        out.push(path);
        break;
      }
    }
  }
  return out;
}
