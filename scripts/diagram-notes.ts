/**
 * What `diagrams/README.md` says besides the pictures: every path from each failure of the connection
 * back to `online.connected` (computed with `xstate/graph`), and the notes read off the machines (states
 * that cannot be entered, dead ends, children that never finish, events a machine handles that nothing
 * sends). Nothing here is written by hand per machine: the only connection-specific knowledge is the goal
 * state, the action that marks a failure (`recordFailure`) and the `stopping` flag in the context.
 */
import type { AnyActorLogic, AnyMachineSnapshot, AnyStateMachine, EventObject } from 'xstate';
import { getAdjacencyMap, getSimplePaths } from 'xstate/graph';
import { connectionMachine } from '../machines/connection.js';
import {
  eventLabel,
  eventsNeverSent,
  explorationEvents,
  extractGraph,
  guardParamValues,
  type MachineGraph,
  pathOf,
  reachableStates,
  statePath,
  transitionsTaken,
} from '../src/statechart/analysis.js';
import type { ChildSpec } from '../supervisors/supervisor.js';

/** A machine to draw. */
export interface DiagramSource {
  /** File stem in `diagrams/` and the machine id. */
  name: string;
  machine: AnyStateMachine;
  /** Where the definition lives, relative to the repository root. */
  source: string;
  /** Invoked children, when they are known (the supervisor's), to tell whether they can ever finish. */
  children?: ChildSpec[];
}

// ---------------------------------------------------------------------------------------------------------
// Reconnect paths (xstate/graph)

/** Where the connection is when it is usable. */
export const GOAL_STATE = 'online.connected';
/** The action every failure transition of the connection runs (its `kind` parameter names the failure). */
export const FAILURE_ACTION = 'recordFailure';

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
  /** States no exploration reached with the agent's input, any policy. */
  unreached: string[];
  /** Kinds `suspendOn` is consulted for. */
  suspendable: string[];
}

/**
 * The paths back are compared by state value and the `stopping` flag (the only context a guard on the way back
 * reads); `attempt`, `outage` and `lastFailure` only feed the backoff delay, the failure actions and the
 * reports: keeping them would make every retry a new state.
 */
const serializeConnection = (s: AnyMachineSnapshot) =>
  JSON.stringify({ value: s.value, stopping: (s.context as { stopping?: boolean }).stopping ?? false });

/**
 * Where failures can happen is explored finer: also by the context the failure transitions' guards read,
 * `confirmed` (the server has answered on the link) and whether it has answered before (`lastSession`, the
 * stale-session rule).
 */
const serializeOrigin = (s: AnyMachineSnapshot) => {
  const ctx = s.context as { stopping?: boolean; confirmed?: boolean; lastSession?: unknown };
  return JSON.stringify({
    value: s.value,
    stopping: ctx.stopping ?? false,
    confirmed: ctx.confirmed ?? false,
    answeredBefore: (ctx.lastSession ?? null) !== null,
  });
};

const snapshotPath = (s: AnyMachineSnapshot) => statePath(s.value);

/** The name `transitionsTaken` gives a transition of the graph (`online: LINK_LOST [linkConfirmed] → backoff`). */
function transitionKey(
  root: string,
  t: { source: string; event: string; guard: string | null; targets: string[] },
) {
  const at = (id: string) => pathOf(root, id) || '(any state)';
  return `${at(t.source)}: ${[t.event, t.guard].filter(Boolean).join(' ')} → ${t.targets.map(at).join(', ')}`;
}

export function reconnectTable(machine: AnyStateMachine = connectionMachine): ReconnectTable {
  const graph = extractGraph({ name: machine.id, machine, source: '' });
  const root = graph.root;
  const labels = new Map(graph.transitions.map((t) => [t.eventType, t.event]));
  const events = explorationEvents(machine);
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
    // What src/agent/children.ts gives the connection at its first start.
    const input = { policy: { suspendOn }, stopping: false };
    const adjacency = getAdjacencyMap(machine, { input, events, serializeState: serializeOrigin });
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
        // This very transition (its guard held), not a sibling with the same event and target.
        const taken = transitionsTaken(machine, origin, step!.event).transitions;
        if (!taken.includes(transitionKey(root, t))) continue;
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

  return {
    failures,
    failureStates: [...failureStates.values()],
    neverTaken,
    unreached: graph.states
      .filter((s) => s.id !== root && !reached.has(s.id))
      .map((s) => s.path)
      .sort(),
    suspendable: guardParamValues(machine, 'suspendsOn', 'kind'),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Findings read off the graphs

export interface Finding {
  machine: string;
  text: string;
}

/**
 * The notes: states that cannot be entered, leaves that act on entry and wait for an ancestor, dead ends,
 * children that never finish, connection states the agent never reaches, failures that never suspend, and
 * events a machine handles that nothing sends (`runtimeSources`: the text of the code that sends events).
 */
export function findings(
  sources: DiagramSource[],
  graphs: MachineGraph[],
  table: ReconnectTable,
  runtimeSources: string,
): Finding[] {
  const out: Finding[] = [];
  for (const graph of graphs) {
    const byId = new Map(graph.states.map((s) => [s.id, s]));
    const reachable = reachableStates(graph);
    for (const s of graph.states) {
      if (!reachable.has(s.id))
        out.push({ machine: graph.machine, text: `\`${s.path}\` cannot be entered.` });
    }
    // Non-final leaves without a transition of their own. Those whose machine handles every event at the
    // top are ordinary; those that act on entry and wait for an ancestor's event are noted, and leaves
    // that nothing leaves at all are dead ends. An ancestor's `done` does not count: a region waiting in a
    // non-final state is not done.
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
    const unsent = eventsNeverSent(graph, runtimeSources);
    if (unsent.length) {
      out.push({
        machine: graph.machine,
        text: `handles ${unsent.map((e) => `\`${e}\``).join(', ')}, which nothing sends: the transitions on ${unsent.length === 1 ? 'it' : 'them'} never happen.`,
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
          `\`${pathOf(graph.root, t.source)}\` is never done, so \`${t.targets.map((x) => pathOf(graph.root, x)).join(', ')}\` is never entered that way`,
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
      text: `\`${s}\` is not reached with the agent's input, whatever \`suspendOn\` holds.`,
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
// README

function formatPath(start: string, steps: PathStep[]): string {
  return [`\`${start}\``, ...steps.map((s) => `—${s.event}→ \`${s.state}\``)].join(' ');
}

export function renderReadme(
  sources: DiagramSource[],
  graphs: MachineGraph[],
  table: ReconnectTable,
  runtimeSources: string,
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
  const notes = findings(sources, graphs, table, runtimeSources);
  if (notes.length === 0) out.push('None.');
  for (const n of notes) out.push(`- **${n.machine}**: ${n.text}`);
  return `${out.join('\n')}\n`;
}
