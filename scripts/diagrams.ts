/**
 * `npm run diagrams`: draws the statecharts from their own definitions.
 *
 * For every machine (connection, reader, queue, and the supervisor built for the agent's three children) this
 * writes into `diagrams/`:
 *
 * - `<name>.mmd`: Mermaid `stateDiagram-v2` source (nested states as composite states, parallel regions
 *   separated by `--`);
 * - `<name>.svg`: the same chart laid out by Graphviz (`dot`), compiled to WebAssembly and run in-process
 *   (`@hpcc-js/wasm-graphviz`: no browser, no system binary). Every state has `id="state-<path>"` (clusters
 *   for compound states, too) and every edge `id="edge-<source>--<target>"`, for the status page;
 * - `<name>.json`: the states and transitions with their labels, as drawn;
 *
 * and `diagrams/README.md`, which embeds the SVGs and holds the table of every path from each failure of
 * the connection back to `online.connected`, computed with `xstate/graph`.
 *
 * `npm run diagrams -- --check` regenerates everything in memory and exits 1 when a file differs.
 *
 * The graph comes from `machine.toJSON()`, plus the `always` transitions, which `toJSON()` leaves out in
 * XState 5.33 and which are read from the state nodes instead. Nothing here is written by hand per machine:
 * the only connection-specific knowledge is the goal state (`online.connected`), the action that marks a
 * failure (`recordFailure`), the `stopping` flag in the context and the `STOP` payloads that drive the guards.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Graphviz } from '@hpcc-js/wasm-graphviz';
import type { AnyActorLogic, AnyMachineSnapshot, AnyStateMachine, EventObject } from 'xstate';
import { getAdjacencyMap, getSimplePaths } from 'xstate/graph';
import { connectionMachine } from '../machines/connection.js';
import { queueMachine } from '../machines/queue.js';
import { readerMachine } from '../machines/reader.js';
import { type ChildSpec, createSupervisor } from '../supervisors/supervisor.js';

// ---------------------------------------------------------------------------------------------------------
// The machines

export interface DiagramSource {
  /** File stem in `diagrams/` and the machine id. */
  name: string;
  machine: AnyStateMachine;
  /** Where the definition lives, relative to the repository root. */
  source: string;
  /** Invoked children, when they are known (the supervisor's), to tell whether they can ever finish. */
  children?: ChildSpec[];
}

/** The agent's children, in the order `src/agent/agent.ts` gives them; the logic is the inert default. */
export function agentChildren(): ChildSpec[] {
  return [
    { id: 'reader', logic: readerMachine },
    { id: 'queue', logic: queueMachine },
    { id: 'connection', logic: connectionMachine, input: { autoConnect: true } },
  ];
}

export function diagramSources(): DiagramSource[] {
  const children = agentChildren();
  return [
    { name: 'connection', machine: connectionMachine, source: 'machines/connection.ts' },
    { name: 'reader', machine: readerMachine, source: 'machines/reader.ts' },
    { name: 'queue', machine: queueMachine, source: 'machines/queue.ts' },
    {
      name: 'supervisor',
      machine: createSupervisor(children),
      source: 'supervisors/supervisor.ts',
      children,
    },
  ];
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
interface JsonAction {
  type?: string;
  params?: unknown;
}
interface JsonTransition {
  target?: string[];
  source: string;
  actions?: readonly (string | JsonAction | ((...args: never[]) => unknown))[];
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

function pathOf(root: string, id: string): string {
  return id === root ? '' : id.startsWith(`${root}.`) ? id.slice(root.length + 1) : id;
}

function formatParams(params: unknown): string {
  if (params === undefined || params === null) return '';
  if (typeof params !== 'object') return `(${String(params)})`;
  const entries = Object.entries(params as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
  return `(${entries.map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ')})`;
}

/** Action names as drawn; XState's own scheduling actions (`after`) are left out. */
export function actionLabel(action: unknown): string | null {
  if (typeof action === 'string') return action;
  if (typeof action === 'function') return 'inline';
  if (action && typeof action === 'object' && 'type' in action) {
    const { type, params } = action as JsonAction;
    if (type === 'xstate.raise' || type === 'xstate.cancel') return null;
    return `${type ?? 'inline'}${formatParams(params)}`;
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

export const stateSvgId = (id: string) => `state-${id}`;

export function extractGraph(src: Pick<DiagramSource, 'name' | 'machine' | 'source'>): MachineGraph {
  const { machine } = src;
  // Through JSON, as a consumer of toJSON() would see it (some parts are objects with their own toJSON).
  const json = JSON.parse(JSON.stringify(machine.toJSON())) as JsonStateNode;
  const root = json.id;
  const states: GraphState[] = [];
  const raw: Omit<GraphTransition, 'svgEdgeId'>[] = [];

  const visit = (node: JsonStateNode, parent: string | null) => {
    const children = Object.values(node.states);
    const initialTarget = node.initial?.target?.[0];
    states.push({
      id: node.id,
      path: pathOf(root, node.id),
      key: node.key,
      type: node.type,
      parent,
      initial: node.type === 'compound' && initialTarget ? stripHash(initialTarget) : null,
      children: children.map((c) => c.id),
      invoke: node.invoke.map((i) => i.id),
      entry: node.entry.map(actionLabel).filter((a): a is string => a !== null),
      exit: node.exit.map(actionLabel).filter((a): a is string => a !== null),
      svgId: stateSvgId(node.id),
    });
    // toJSON() leaves `always` out (XState 5.33): read those from the state node itself.
    const always = (machine.getStateNodeById(node.id).always ?? []).map(
      (t) => JSON.parse(JSON.stringify(t.toJSON())) as JsonTransition,
    );
    for (const t of [...node.transitions, ...always]) {
      const actions = (t.actions ?? []).map(actionLabel).filter((a): a is string => a !== null);
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

  const transitions = raw.map((t) => ({ ...t, svgEdgeId: edgeId(t.source, t.targets[0] ?? null) }));
  return { machine: src.name, source: src.source, root, states, transitions };
}

const edgeId = (source: string, target: string | null) =>
  target === null ? `edge-${source}--self` : `edge-${source}--${target}`;

// ---------------------------------------------------------------------------------------------------------
// Mermaid

export const mermaidId = (stateId: string) => stateId.replace(/\./g, '__').replace(/[^A-Za-z0-9_]/g, '_');

function mermaidLabel(text: string): string {
  // `:` starts a description and `;` ends a statement in Mermaid's grammar.
  return text.replace(/[:;]/g, ',').replace(/#/g, 'no.');
}

/** The id of the deepest state containing both (the document a Mermaid edge must be written in). */
function commonAncestor(graph: MachineGraph, a: string, b: string): string {
  const byId = new Map(graph.states.map((s) => [s.id, s]));
  const chain = (id: string) => {
    const out: string[] = [];
    for (let s = byId.get(id); s; s = s.parent ? byId.get(s.parent) : undefined) out.push(s.id);
    return out;
  };
  const up = new Set(chain(a));
  return chain(b).find((id) => up.has(id)) ?? graph.root;
}

export function toMermaid(graph: MachineGraph): string {
  const byId = new Map(graph.states.map((s) => [s.id, s]));
  const rootState = byId.get(graph.root)!;
  const anyId = mermaidId(`${graph.root}.any`);
  const edgesIn = new Map<string, string[]>();
  let usesAny = false;
  const addEdge = (scope: string, line: string) => {
    const list = edgesIn.get(scope) ?? [];
    list.push(line);
    edgesIn.set(scope, list);
  };
  for (const t of graph.transitions) {
    const label = mermaidLabel(t.label);
    if (t.source === graph.root) {
      // Transitions of the machine itself apply in every state.
      usesAny = true;
      for (const target of t.targets.length ? t.targets : [graph.root]) {
        addEdge(graph.root, `${anyId} --> ${mermaidId(target)} : ${label}`);
      }
      continue;
    }
    const targets = t.targets.length ? t.targets : [t.source];
    for (const target of targets) {
      const scope = byId.get(commonAncestor(graph, t.source, target))!;
      // A transition between a state and its own descendant belongs to the state's parent document.
      const doc = scope.id === t.source || scope.id === target ? (scope.parent ?? graph.root) : scope.id;
      addEdge(doc, `${mermaidId(t.source)} --> ${mermaidId(target)} : ${label}`);
    }
  }

  const lines: string[] = [
    '---',
    `title: ${graph.machine}`,
    '---',
    'stateDiagram-v2',
    `  %% Generated by \`npm run diagrams\` from ${graph.source}; do not edit.`,
  ];
  const document = (state: typeof rootState, indent: string) => {
    if (state.initial) lines.push(`${indent}[*] --> ${mermaidId(state.initial)}`);
    const children = state.children.map((c) => byId.get(c)!);
    children.forEach((child, i) => {
      if (state.type === 'parallel' && i > 0) lines.push(`${indent}--`);
      const name = `state "${child.key}" as ${mermaidId(child.id)}`;
      if (child.children.length) {
        lines.push(`${indent}${name} {`);
        document(child, `${indent}  `);
        lines.push(`${indent}}`);
      } else {
        lines.push(`${indent}${name}`);
        const notes = [...child.invoke.map((i) => `invoke ${i}`), ...child.entry.map((a) => `entry ${a}`)];
        for (const note of notes) lines.push(`${indent}${mermaidId(child.id)} : ${mermaidLabel(note)}`);
        if (child.type === 'final') lines.push(`${indent}${mermaidId(child.id)} --> [*]`);
      }
    });
    for (const edge of edgesIn.get(state.id) ?? []) lines.push(`${indent}${edge}`);
  };
  if (usesAny) {
    lines.push(`  state "any state" as ${anyId}`);
    lines.push('  classDef anyState fill:none,stroke-dasharray:4 4');
    lines.push(`  class ${anyId} anyState`);
  }
  document(rootState, '  ');
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------------------
// Graphviz

const dotString = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
const html = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function dotAttrs(attrs: Record<string, string | number | undefined>): string {
  const parts = Object.entries(attrs)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) =>
      k === 'label' && String(v).startsWith('<') ? `${k}=${v}` : `${k}=${dotString(String(v))}`,
    );
  return `[${parts.join(' ')}]`;
}

function stateLabel(state: GraphState, bold: boolean): string {
  const extra = [...state.invoke.map((i) => `invoke ${i}`), ...state.entry.map((a) => `entry ${a}`)];
  const name = state.type === 'parallel' ? `${state.key} (parallel)` : state.key;
  const head = bold ? `<B>${html(name)}</B>` : html(name);
  const tail = extra.map((e) => `<BR/><FONT POINT-SIZE="8" COLOR="#6b7280">${html(e)}</FONT>`).join('');
  return `<${head}${tail}>`;
}

/** Graphviz edges need nodes: a compound state is represented by its first atomic descendant. */
function representative(graph: MachineGraph, id: string): string {
  const byId = new Map(graph.states.map((s) => [s.id, s]));
  let s = byId.get(id)!;
  while (s.children.length) s = byId.get(s.initial ?? s.children[0]!)!;
  return s.id;
}

const clusterName = (id: string) => `cluster_${id}`;

export function toDot(graph: MachineGraph): string {
  const byId = new Map(graph.states.map((s) => [s.id, s]));
  const root = byId.get(graph.root)!;
  const anyNode = `any-${graph.root}`;
  const lines: string[] = [
    `// Generated by \`npm run diagrams\` from ${graph.source}; do not edit.`,
    `digraph ${dotString(graph.machine)} {`,
    `  graph ${dotAttrs({
      id: root.svgId,
      class: 'machine',
      compound: 'true',
      rankdir: 'LR',
      fontname: 'Helvetica,Arial,sans-serif',
      fontsize: 12,
      nodesep: 0.35,
      ranksep: 0.45,
      pad: 0.2,
      labelloc: 't',
      label: `<<B>${html(graph.machine)}</B>>`,
    })};`,
    `  node ${dotAttrs({
      shape: 'box',
      style: 'rounded,filled',
      fillcolor: '#f8fafc',
      color: '#475569',
      fontname: 'Helvetica,Arial,sans-serif',
      fontsize: 11,
      height: 0.35,
      margin: '0.12,0.05',
    })};`,
    `  edge ${dotAttrs({
      fontname: 'Helvetica,Arial,sans-serif',
      fontsize: 9,
      color: '#475569',
      fontcolor: '#1e293b',
      arrowsize: 0.7,
    })};`,
  ];

  const initialNode = (state: GraphState, indent: string) => {
    if (!state.initial) return;
    const name = `initial-${state.id}`;
    lines.push(
      `${indent}${dotString(name)} ${dotAttrs({ id: name, class: 'initial', shape: 'circle', style: 'filled', fillcolor: '#1e293b', color: '#1e293b', width: 0.12, height: 0.12, fixedsize: 'true', label: '', tooltip: `initial state of ${state.path || state.id}` })};`,
    );
    const target = byId.get(state.initial)!;
    const lhead = target.children.length ? clusterName(target.id) : undefined;
    lines.push(
      `${indent}${dotString(name)} -> ${dotString(stateSvgId(representative(graph, target.id)))} ${dotAttrs({ id: `edge-${name}`, lhead, class: 'initial' })};`,
    );
  };

  const emitState = (state: GraphState, indent: string) => {
    const tooltip = [
      state.path || state.id,
      ...state.invoke.map((i) => `invoke ${i}`),
      ...state.entry.map((a) => `entry ${a}`),
      ...state.exit.map((a) => `exit ${a}`),
    ].join('\n');
    if (state.children.length) {
      lines.push(`${indent}subgraph ${dotString(clusterName(state.id))} {`);
      lines.push(
        `${indent}  graph ${dotAttrs({
          id: state.svgId,
          class: `state ${state.type}`,
          label: stateLabel(state, true),
          labeljust: 'l',
          style: state.type === 'parallel' ? 'rounded,dashed' : 'rounded',
          color: '#64748b',
          fontsize: 11,
          margin: 12,
          tooltip,
        })};`,
      );
      initialNode(state, `${indent}  `);
      for (const child of state.children) emitState(byId.get(child)!, `${indent}  `);
      lines.push(`${indent}}`);
      return;
    }
    lines.push(
      `${indent}${dotString(state.svgId)} ${dotAttrs({
        id: state.svgId,
        class: `state ${state.type}`,
        label: stateLabel(state, false),
        peripheries: state.type === 'final' ? 2 : undefined,
        tooltip,
      })};`,
    );
  };

  initialNode(root, '  ');
  for (const child of root.children) emitState(byId.get(child)!, '  ');

  const finals = root.children.filter((c) => byId.get(c)!.type === 'final');
  if (finals.length) lines.push(`  { rank=max; ${finals.map((f) => dotString(stateSvgId(f))).join('; ')}; }`);
  if (graph.transitions.some((t) => t.source === graph.root)) {
    lines.push(
      `  ${dotString(anyNode)} ${dotAttrs({ id: anyNode, class: 'any', label: 'any state', shape: 'box', style: 'rounded,dashed', fillcolor: 'none', fontcolor: '#475569', tooltip: `transitions of ${graph.root} itself: taken in every state` })};`,
    );
  }

  // One edge per (source, target): parallel transitions share it and stack their labels.
  const edges = new Map<string, { source: string; target: string | null; transitions: GraphTransition[] }>();
  for (const t of graph.transitions) {
    for (const target of t.targets.length ? t.targets : [null]) {
      const key = edgeId(t.source, target);
      const edge = edges.get(key) ?? { source: t.source, target, transitions: [] };
      edge.transitions.push(t);
      edges.set(key, edge);
    }
  }
  for (const [id, edge] of edges) {
    const source = byId.get(edge.source)!;
    const target = edge.target === null ? null : byId.get(edge.target)!;
    const fromRoot = source.id === graph.root;
    const tail = fromRoot ? anyNode : stateSvgId(representative(graph, source.id));
    const head = target ? stateSvgId(representative(graph, target.id)) : tail;
    const label = edge.transitions.map((t) => t.label).join('\n');
    const tooltip = edge.transitions
      .map(
        (t) =>
          `${t.event}${t.guard ? ` ${t.guard}` : ''}${t.actions.length ? ` / ${t.actions.join(', ')}` : ''}`,
      )
      .join('\n');
    const selfLoop = target === null || target.id === source.id;
    // Edges into final states (shutdown) do not shape the layout, and are drawn lighter.
    const toFinal = target?.type === 'final' && target.parent === graph.root;
    lines.push(
      `  ${dotString(tail)} -> ${dotString(head)} ${dotAttrs({
        id,
        class: `transition${selfLoop ? ' internal' : ''}`,
        label,
        tooltip,
        labeltooltip: tooltip,
        style: target === null ? 'dashed' : undefined,
        color: toFinal ? '#94a3b8' : undefined,
        fontcolor: toFinal ? '#64748b' : undefined,
        ltail: !fromRoot && source.children.length && !selfLoop ? clusterName(source.id) : undefined,
        lhead: target?.children.length && !selfLoop ? clusterName(target.id) : undefined,
      })};`,
    );
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

let graphviz: Promise<Graphviz> | null = null;

/** Renders DOT to SVG with Graphviz compiled to WebAssembly (deterministic: same DOT, same bytes). */
export async function renderSvg(dot: string): Promise<string> {
  graphviz ??= Graphviz.load();
  const svg = (await graphviz).dot(dot, 'svg');
  // Graphviz writes `-` as `&#45;` so that names can go into XML comments. Without the per-element
  // comments the ids can be plain, and `id="state-connection.online.connected"` is greppable.
  const start = svg.indexOf('<svg');
  const body = svg
    .slice(start)
    .split('\n')
    .filter((line) => !/^<!--.*-->$/.test(line))
    .join('\n')
    .replace(/&#45;/g, '-');
  const out = svg.slice(0, start) + body;
  return out.endsWith('\n') ? out : `${out}\n`;
}

// ---------------------------------------------------------------------------------------------------------
// Reconnect paths (xstate/graph)

/** Where the connection is when it is usable. */
export const GOAL_STATE = 'online.connected';
/** The action every failure transition of the connection runs (its `kind` parameter names the failure). */
export const FAILURE_ACTION = 'recordFailure';

/**
 * Payloads for the events whose guards read them (`nothingPending` reads `STOP.pending`); every other
 * event, including the synthetic `xstate.after.*`, `xstate.done.actor.*` and `xstate.error.actor.*` ones,
 * is sent as `{ type }`.
 */
const EVENT_PAYLOADS: Record<string, Record<string, unknown>[]> = {
  STOP: [{ pending: 0 }, { pending: 1 }],
};

export interface PathStep {
  /** Event label, e.g. `after(backoffDelay)`. */
  event: string;
  /** State reached, e.g. `connecting`. */
  state: string;
}

export interface ReconnectRow {
  /** The failure kind the transition records (`recordFailure` params). */
  kind: string;
  /** State the transition is defined on (`online`, `connecting`, …). */
  source: string;
  /** The state the connection was in when it failed (`online.connected`, …). */
  from: string;
  /** Event and guard, e.g. `DISK_FULL [suspendsOn(kind=disk-full)]`. */
  trigger: string;
  /** Where the failure leads (`backoff`, `suspended`). */
  failureState: string;
  /** `suspendOn` of the policy under which this transition is the one taken. */
  suspendOn: string[];
  /** Every simple path from the failure state to `online.connected`, shortest first. */
  paths: PathStep[][];
}

export interface FailureStateRow {
  state: string;
  paths: PathStep[][];
}

export interface ReconnectTable {
  failures: ReconnectRow[];
  failureStates: FailureStateRow[];
  /** Failure transitions that no policy makes the machine take (should be empty). */
  neverTaken: string[];
  /** States no exploration reached with the agent's input (`autoConnect: true`), any policy. */
  unreached: string[];
  /** Kinds `suspendOn` is consulted for. */
  suspendable: string[];
}

function snapshotPath(snapshot: AnyMachineSnapshot): string {
  const walk = (value: unknown): string[] =>
    typeof value === 'string'
      ? [value]
      : Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => walk(v).map((p) => `${k}.${p}`));
  return walk(snapshot.value).join(', ');
}

/**
 * States are compared by their value and the `stopping` flag: the only context a guard on the way back reads.
 * `attempt` and `lastFailure` only feed the backoff delay and the reports; keeping them would make every
 * retry a new state.
 */
const serializeConnection = (s: AnyMachineSnapshot) =>
  JSON.stringify({ value: s.value, stopping: (s.context as { stopping?: boolean }).stopping ?? false });

export function reconnectTable(machine: AnyStateMachine = connectionMachine): ReconnectTable {
  const graph = extractGraph({ name: machine.id, machine, source: '' });
  const root = graph.root;
  const labels = new Map(graph.transitions.map((t) => [t.eventType, t.event]));
  const eventTypes = [...new Set(graph.transitions.map((t) => t.eventType).filter((t) => t !== ''))].sort();
  const events: EventObject[] = eventTypes.flatMap((type) =>
    (EVENT_PAYLOADS[type] ?? [{}]).map((payload) => ({ type, ...payload })),
  );
  const failureTransitions = graph.transitions.flatMap((t) => {
    const kinds = t.actions.filter((a) => a.startsWith(`${FAILURE_ACTION}(`));
    const kind = kinds[0]?.match(/kind=([^,)]+)/)?.[1];
    return kind && t.targets.length ? [{ t, kind }] : [];
  });
  const allKinds = [...new Set(failureTransitions.map((f) => f.kind))].sort();
  const policies = [[], allKinds];
  const isGoal = (s: AnyMachineSnapshot) => snapshotPath(s) === GOAL_STATE;

  const toSteps = (path: { steps: { state: AnyMachineSnapshot; event: EventObject }[] }): PathStep[] =>
    path.steps.slice(1).map((step) => ({
      event: labels.get(step.event.type) ?? eventLabel(step.event.type),
      state: snapshotPath(step.state),
    }));
  const pathsFrom = (input: unknown, from: AnyMachineSnapshot) => {
    const found = getSimplePaths(machine, {
      input,
      events,
      fromState: from,
      serializeState: serializeConnection,
      toState: isGoal,
    }).map(toSteps);
    const text = (p: PathStep[]) => p.map((s) => `${s.event}>${s.state}`).join(' ');
    return found.sort((a, b) => a.length - b.length || (text(a) < text(b) ? -1 : text(a) > text(b) ? 1 : 0));
  };

  const reached = new Set<string>();
  const adjacencies = policies.map((suspendOn) => {
    const input = { policy: { suspendOn }, autoConnect: true };
    const adjacency = getAdjacencyMap(machine, { input, events, serializeState: serializeConnection });
    for (const { state } of Object.values(adjacency)) {
      for (const node of (state as AnyMachineSnapshot)._nodes) reached.add(node.id);
    }
    return { suspendOn, input, adjacency };
  });

  const failures: ReconnectRow[] = [];
  const neverTaken: string[] = [];
  const failureStates = new Map<string, FailureStateRow>();
  for (const { t, kind } of failureTransitions) {
    const target = t.targets[0]!;
    let row: ReconnectRow | null = null;
    for (const { suspendOn, input, adjacency } of adjacencies) {
      if (row) break;
      for (const value of Object.values(adjacency)) {
        const origin = value.state as AnyMachineSnapshot;
        const ctx = origin.context as { stopping?: boolean };
        // Normal operation only: a connection that is being stopped never returns to `connected`.
        if (ctx.stopping || !origin._nodes.some((n) => n.id === t.source)) continue;
        const moves = Object.values(
          value.transitions as Record<string, { event: EventObject; state: unknown }>,
        );
        const step = moves.find((x) => x.event.type === t.eventType);
        const next = step?.state as AnyMachineSnapshot | undefined;
        const last = (next?.context as { lastFailure?: { kind: string } | null } | undefined)?.lastFailure;
        if (!next?._nodes.some((n) => n.id === target) || last?.kind !== kind) continue;
        row = {
          kind,
          source: pathOf(root, t.source),
          from: snapshotPath(origin),
          trigger: [t.event, t.guard].filter(Boolean).join(' '),
          failureState: snapshotPath(next),
          suspendOn,
          paths: pathsFrom(input, next),
        };
        if (!failureStates.has(row.failureState)) {
          failureStates.set(row.failureState, { state: row.failureState, paths: row.paths });
        }
        break;
      }
    }
    if (row) failures.push(row);
    else neverTaken.push(`${pathOf(root, t.source)}: ${t.label} → ${pathOf(root, target)}`);
  }

  const suspendable = [
    ...new Set(graph.transitions.flatMap((t) => (t.guard?.startsWith('[suspendsOn(') ? [t.guard] : []))),
  ].flatMap((g) => g.match(/kind=([^,)]+)/)?.[1] ?? []);
  return {
    failures,
    failureStates: [...failureStates.values()],
    neverTaken,
    unreached: graph.states
      .filter((s) => s.id !== root && !reached.has(s.id))
      .map((s) => s.path)
      .sort(),
    suspendable: suspendable.sort(),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Findings read off the graphs

export interface Finding {
  machine: string;
  text: string;
}

/** States reachable from the initial state when every guard may hold (entering a state enters its initial). */
function reachableStates(graph: MachineGraph): Set<string> {
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

export function findings(sources: DiagramSource[], graphs: MachineGraph[], table: ReconnectTable): Finding[] {
  const out: Finding[] = [];
  for (const graph of graphs) {
    const byId = new Map(graph.states.map((s) => [s.id, s]));
    const reachable = reachableStates(graph);
    for (const s of graph.states) {
      if (!reachable.has(s.id))
        out.push({ machine: graph.machine, text: `\`${s.path}\` cannot be entered.` });
    }
    // Non-final leaves without a transition of their own. Those whose machine handles every event at the
    // top (the queue) are ordinary; those that act on entry and wait for an ancestor's event are noted, and
    // leaves that nothing leaves at all are dead ends. An ancestor's `done` does not count: a region
    // waiting in a non-final state is not done.
    for (const s of graph.states) {
      if (s.type !== 'atomic' || graph.transitions.some((t) => t.source === s.id && t.targets.length)) {
        continue;
      }
      const exits: string[] = [];
      for (
        let a = s.parent ? byId.get(s.parent) : undefined;
        a;
        a = a.parent ? byId.get(a.parent) : undefined
      ) {
        for (const t of graph.transitions) {
          if (t.source !== a.id || !t.targets.length || t.eventType.startsWith('xstate.done.state.'))
            continue;
          exits.push(`${t.event} (on \`${a.path || graph.root}\`)`);
        }
      }
      if (exits.length && s.entry.length === 0) continue;
      const entry = s.entry.length ? `its entry runs ${s.entry.map((e) => `\`${e}\``).join(', ')}; ` : '';
      out.push({
        machine: graph.machine,
        text: exits.length
          ? `\`${s.path}\` has no transition of its own: ${entry}it is left only by ${[...new Set(exits)].join(', ')}.`
          : `\`${s.path}\` is a dead end: no transition leaves it${entry ? ` (${entry.slice(0, -2)})` : ''}.`,
      });
    }
  }
  for (const src of sources) {
    const graph = graphs.find((g) => g.machine === src.name);
    for (const child of src.children ?? []) {
      const logic = child.logic as AnyActorLogic & Partial<Pick<AnyStateMachine, 'toJSON'>>;
      if (!graph || typeof logic.toJSON !== 'function') continue;
      const childGraph = extractGraph({ name: child.id, machine: logic as AnyStateMachine, source: '' });
      if (childGraph.states.some((s) => s.type === 'final')) continue;
      // Which compound states wait for this child's region to finish, and where they would go.
      const invoking = graph.states.filter((s) => s.invoke.includes(child.id));
      const waiting = graph.transitions.filter((t) => {
        if (!t.eventType.startsWith('xstate.done.state.')) return false;
        const done = t.eventType.slice('xstate.done.state.'.length);
        return invoking.some((s) => s.id.startsWith(`${done}.`));
      });
      const blocked = waiting.map(
        (t) =>
          `\`${pathOf(graph.root, t.source)}\` is never done, so \`${t.targets.map((x) => pathOf(graph.root, x)).join(', ')}\` is never entered`,
      );
      out.push({
        machine: src.name,
        text: `\`done(${child.id})\` never happens: the \`${child.id}\` machine has no final state${blocked.length ? `; ${blocked.join('; ')}` : ''}.`,
      });
    }
  }
  for (const s of table.unreached) {
    out.push({
      machine: 'connection',
      text: `\`${s}\` is not reached with the agent's input (\`autoConnect: true\`), whatever \`suspendOn\` holds.`,
    });
  }
  for (const t of table.neverTaken) {
    out.push({ machine: 'connection', text: `The failure transition ${t} is never taken.` });
  }
  const kinds = [...new Set(table.failures.map((f) => f.kind))];
  const never = kinds.filter((k) => !table.suspendable.includes(k));
  if (never.length) {
    out.push({
      machine: 'connection',
      text: `\`suspendOn\` is consulted only for ${table.suspendable.map((k) => `\`${k}\``).join(', ')}; ${never.map((k) => `\`${k}\``).join(', ')} always go to \`backoff\`.`,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// README and the file set

export const DIAGRAMS_DIR = 'diagrams';

function formatPath(start: string, steps: PathStep[]): string {
  return [`\`${start}\``, ...steps.map((s) => `—${s.event}→ \`${s.state}\``)].join(' ');
}

export function renderReadme(
  sources: DiagramSource[],
  graphs: MachineGraph[],
  table: ReconnectTable,
): string {
  const out: string[] = [
    '# State diagrams',
    '',
    '<!-- Generated by `npm run diagrams` (scripts/diagrams.ts); do not edit. -->',
    '',
    'Drawn from the machine definitions themselves (`machine.toJSON()`; the paths below with `xstate/graph`),',
    'so they cannot drift from the code: `npm run diagrams -- --check` fails when a file here is stale, and',
    '`test/unit/diagrams.test.ts` runs the same check in CI. How to read them: [docs/diagrams.md](../docs/diagrams.md).',
    '',
    '| Machine | Defined in | States | Transitions | Files |',
    '|---|---|---|---|---|',
  ];
  graphs.forEach((g, i) => {
    const src = sources[i]!;
    out.push(
      `| [${g.machine}](#${g.machine}) | [${src.source}](../${src.source}) | ${g.states.length - 1} | ${g.transitions.length} | [svg](${g.machine}.svg) · [mermaid](${g.machine}.mmd) · [json](${g.machine}.json) |`,
    );
  });
  for (const g of graphs) {
    out.push('', `## ${g.machine}`, '', `![${g.machine} statechart](${g.machine}.svg)`);
  }

  out.push(
    '',
    '## Reconnect paths',
    '',
    `Every path from a failure of the connection back to \`${GOAL_STATE}\`, computed with \`xstate/graph\``,
    '(`getAdjacencyMap`, `getSimplePaths`) on the connection machine with its inert actors. Explored events: all',
    'event types of the machine, including the synthetic ones XState uses for timers and invoked actors',
    '(`after(…)`, `done(…)`, `error(…)`); states are told apart by their value and the `stopping` flag. A path is',
    'simple: it visits no state twice, so the retry loops (`connecting` —error→ `backoff` → `connecting` …) are',
    `left out. Failures are the transitions that run \`${FAILURE_ACTION}\`; the ones guarded by \`suspendsOn\` are taken`,
    'when the failure action is configured as `suspend`.',
    '',
    '### From each failure state',
    '',
    `| Failure state | Paths back to \`${GOAL_STATE}\` |`,
    '|---|---|',
  );
  for (const row of table.failureStates) {
    out.push(`| \`${row.state}\` | ${row.paths.map((p) => formatPath(row.state, p)).join('<br>')} |`);
  }
  out.push(
    '',
    '### From each failure',
    '',
    `| Failure | In state | Trigger | Goes to | Paths back to \`${GOAL_STATE}\` | Events |`,
    '|---|---|---|---|---|---|',
  );
  for (const row of table.failures) {
    const paths = row.paths.map((p) => formatPath(row.failureState, p)).join('<br>');
    const lengths = row.paths.map((p) => p.length + 1).join(', ');
    out.push(
      `| \`${row.kind}\` | \`${row.from}\` | ${row.trigger} | \`${row.failureState}\` | ${paths} | ${lengths} |`,
    );
  }
  out.push(
    '',
    '"Events" counts the failure itself plus the steps of each path.',
    '',
    '## Notes read off the machines',
    '',
  );
  const notes = findings(sources, graphs, table);
  if (notes.length === 0) out.push('None.');
  for (const n of notes) out.push(`- **${n.machine}**: ${n.text}`);
  return `${out.join('\n')}\n`;
}

function graphJson(graph: MachineGraph): string {
  const data = {
    generatedBy: 'npm run diagrams',
    machine: graph.machine,
    source: graph.source,
    svg: `${graph.machine}.svg`,
    states: graph.states.map((s) => ({
      id: s.id,
      path: s.path,
      type: s.type,
      parent: s.parent,
      initial: s.initial,
      invoke: s.invoke,
      entry: s.entry,
      exit: s.exit,
      svgId: s.svgId,
    })),
    transitions: graph.transitions.map((t) => ({
      source: t.source,
      targets: t.targets,
      event: t.event,
      eventType: t.eventType,
      guard: t.guard,
      delay: t.delay,
      actions: t.actions,
      label: t.label,
      svgEdgeId: t.svgEdgeId,
    })),
  };
  return `${JSON.stringify(data, null, 2)}\n`;
}

/** Every generated file, by path relative to `diagrams/`, in a stable order. */
export async function generateAll(sources: DiagramSource[] = diagramSources()): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const graphs = sources.map(extractGraph);
  for (const graph of graphs) {
    files.set(`${graph.machine}.mmd`, toMermaid(graph));
    files.set(`${graph.machine}.svg`, await renderSvg(toDot(graph)));
    files.set(`${graph.machine}.json`, graphJson(graph));
  }
  files.set('README.md', renderReadme(sources, graphs, reconnectTable()));
  return files;
}

const GENERATED_EXTENSIONS = ['.mmd', '.svg', '.json', '.md'];

export interface CheckResult {
  /** Files that differ from what would be generated, or are missing. */
  stale: string[];
  /** Files in `diagrams/` that would not be generated any more. */
  extra: string[];
}

export async function checkDiagrams(dir: string, files?: Map<string, string>): Promise<CheckResult> {
  const expected = files ?? (await generateAll());
  const stale: string[] = [];
  for (const [name, content] of expected) {
    const path = join(dir, name);
    if (!existsSync(path) || readFileSync(path, 'utf8') !== content) stale.push(name);
  }
  const extra = existsSync(dir)
    ? readdirSync(dir)
        .filter((f) => GENERATED_EXTENSIONS.some((e) => f.endsWith(e)) && !expected.has(f))
        .sort()
    : [];
  return { stale, extra };
}

export interface WriteResult {
  written: string[];
  removed: string[];
}

/** Writes the stale files and removes the ones no longer generated; fresh files are not touched. */
export async function writeDiagrams(dir: string, files?: Map<string, string>): Promise<WriteResult> {
  const expected = files ?? (await generateAll());
  const { stale, extra } = await checkDiagrams(dir, expected);
  for (const name of stale) writeFileSync(join(dir, name), expected.get(name)!);
  for (const name of extra) rmSync(join(dir, name));
  return { written: stale, removed: extra };
}

/** The repository root: the nearest directory above this file with a package.json (works from dist/ too). */
export function repoRoot(from: string = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const check = argv.includes('--check');
  const dir = join(repoRoot(), DIAGRAMS_DIR);
  const shown = relative(process.cwd(), dir) || '.';
  if (check) {
    const { stale, extra } = await checkDiagrams(dir);
    if (stale.length === 0 && extra.length === 0) {
      console.log(`diagrams: ${shown}/ is up to date`);
      return 0;
    }
    for (const f of stale) console.error(`diagrams: ${join(shown, f)} is stale`);
    for (const f of extra) console.error(`diagrams: ${join(shown, f)} is no longer generated`);
    console.error('diagrams: run `npm run diagrams` and commit the result');
    return 1;
  }
  mkdirSync(dir, { recursive: true });
  const { written, removed } = await writeDiagrams(dir);
  for (const f of written) console.log(`diagrams: wrote ${join(shown, f)}`);
  for (const f of removed) console.log(`diagrams: removed ${join(shown, f)}`);
  if (written.length + removed.length === 0) console.log(`diagrams: ${shown}/ is up to date`);
  return 0;
}

const invokedDirectly = (() => {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return (
      pathToFileURL(realpathSync(resolve(entry))).href ===
      pathToFileURL(realpathSync(fileURLToPath(import.meta.url))).href
    );
  } catch {
    return false;
  }
})();

if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 2;
    },
  );
}
