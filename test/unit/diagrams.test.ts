import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { type AnyStateMachine, setup } from 'xstate';
import { getStateNodes } from 'xstate/graph';
import { connectionMachine } from '../../machines/connection.js';
import { queueMachine } from '../../machines/queue.js';
import { findings, GOAL_STATE, reconnectTable } from '../../scripts/diagram-notes.js';
import { mermaidId } from '../../scripts/diagram-render.js';
import {
  checkDiagrams,
  DIAGRAMS_DIR,
  diagramSources,
  generateAll,
  repoRoot,
  runtimeSources,
} from '../../scripts/diagrams.js';
import {
  eventLabel,
  eventsNeverSent,
  extractGraph,
  guardLabel,
  reachableStates,
  statePath,
  stateSvgId,
} from '../../src/statechart/analysis.js';

/** The connection's event types (ConnectionEvent in machines/connection.ts). */
const CONNECTION_EVENTS = [
  'STOP',
  'RESUME',
  'CONFIGURE',
  'RELINK',
  'ESTABLISHED',
  'LINK_LOST',
  'REMOTE_ENDING',
  'REPLY_TIMEOUT',
  'PROTOCOL_ERROR',
  'DISK_FULL',
  'DISK_ERROR',
  'FAULT',
  'DRAINED',
];

/** FailureKind in machines/connection.ts. */
const FAILURE_KINDS = [
  'dial',
  'dial-timeout',
  'auth',
  'auth-timeout',
  'link-lost',
  'remote-ending',
  'reply-timeout',
  'protocol',
  'disk-full',
  'disk-error',
];

const decode = (s: string) =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, '&');

/** The label lines of every edge in a Graphviz SVG. */
function svgEdgeLabels(svg: string): string[] {
  return svg
    .split(/<g id="(?!a_)/)
    .filter((chunk) => chunk.startsWith('edge-'))
    .flatMap((chunk) => [...chunk.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => decode(m[1]!)));
}

/** The label of every transition in a Mermaid state diagram. */
function mermaidEdgeLabels(mmd: string): string[] {
  return [...mmd.matchAll(/^\s*\S+ --> \S+ : (.*)$/gm)].map((m) => m[1]!);
}

/** Labels of every event the connection machine handles, synthetic ones (timers, actors, always) included. */
function connectionEventLabels(): string[] {
  const labels = new Set<string>();
  for (const node of [connectionMachine.root, ...getStateNodes(connectionMachine.root)]) {
    for (const [type, transitions] of node.transitions) {
      for (const t of transitions) labels.add(eventLabel(type, (t as { delay?: string | number }).delay));
    }
    if (node.always?.length) labels.add('always');
  }
  return [...labels].sort();
}

let files: Map<string, string>;

beforeAll(async () => {
  files = await generateAll();
});

describe('labels', () => {
  it('names XState internal events after their delay or actor', () => {
    expect(eventLabel('xstate.after.backoffDelay.connection.backoff', 'backoffDelay')).toBe(
      'after(backoffDelay)',
    );
    expect(eventLabel('xstate.after.backoffDelay.connection.backoff')).toBe('after(backoffDelay)');
    expect(eventLabel('xstate.after.1000.x.y', 1000)).toBe('after(1000ms)');
    expect(eventLabel('xstate.done.actor.dial')).toBe('done(dial)');
    expect(eventLabel('xstate.error.actor.dial')).toBe('error(dial)');
    expect(eventLabel('')).toBe('always');
    expect(eventLabel('xstate.done.state.supervisor.supervising', undefined, 'supervisor.supervising')).toBe(
      'done',
    );
    expect(eventLabel('LINK_LOST')).toBe('LINK_LOST');
  });

  it('shows guards with their parameters', () => {
    expect(guardLabel('nothingPending')).toBe('[nothingPending]');
    expect(guardLabel({ type: 'suspendsOn', params: { kind: 'disk-full' } })).toBe(
      '[suspendsOn(kind=disk-full)]',
    );
    expect(guardLabel(undefined)).toBeNull();
  });
});

describe('diagrams', () => {
  it('generates the four machines, each as Mermaid, SVG and JSON, and the README', () => {
    expect([...files.keys()].sort()).toEqual(
      ['connection', 'queue', 'reader', 'supervisor']
        .flatMap((m) => [`${m}.json`, `${m}.mmd`, `${m}.svg`])
        .concat('README.md')
        .sort(),
    );
  });

  for (const { name, machine } of diagramSources()) {
    it(`${name}: every state is in the Mermaid source and has an id in the SVG`, () => {
      const mmd = files.get(`${name}.mmd`)!;
      const svg = files.get(`${name}.svg`)!;
      const json = JSON.parse(files.get(`${name}.json`)!) as { states: { id: string; svgId: string }[] };
      expect(mmd.startsWith('---\n')).toBe(true);
      expect(mmd).toContain('stateDiagram-v2');
      expect(svg).toContain(`id="${stateSvgId(machine.id)}"`);
      const nodes = getStateNodes((machine as AnyStateMachine).root);
      expect(nodes.length).toBeGreaterThan(0);
      for (const node of nodes) {
        expect(mmd).toMatch(new RegExp(`^\\s*state "${node.key}" as ${mermaidId(node.id)}( \\{)?$`, 'm'));
        expect(svg).toContain(`id="${stateSvgId(node.id)}"`);
        expect(json.states.map((s) => s.id)).toContain(node.id);
        if (Object.keys(node.states).length > 0) {
          // Compound and parallel states are clusters in the SVG and composite states in Mermaid.
          expect(svg).toMatch(new RegExp(`<g id="${stateSvgId(node.id)}" class="cluster`));
          expect(mmd).toContain(`state "${node.key}" as ${mermaidId(node.id)} {`);
        }
      }
      expect(svgEdgeLabels(svg).join('\n')).not.toContain('xstate.');
      expect(mermaidEdgeLabels(mmd).join('\n')).not.toContain('xstate.');
    });
  }

  it('labels the connection edges with every event the machine handles', () => {
    const labels = connectionEventLabels();
    expect(labels).toEqual(expect.arrayContaining(CONNECTION_EVENTS));
    expect(labels).toEqual(
      expect.arrayContaining([
        'done(dial)',
        'error(dial)',
        'done(authenticate)',
        'error(authenticate)',
        'after(connectTimeout)',
        'after(authTimeout)',
        'after(backoffDelay)',
        'after(stableLink)',
        'after(suspendRetry)',
      ]),
    );
    const svgLabels = svgEdgeLabels(files.get('connection.svg')!);
    const mmdLabels = mermaidEdgeLabels(files.get('connection.mmd')!);
    const drawn = (all: string[], label: string) => all.some((l) => l === label || l.startsWith(`${label} `));
    for (const label of labels) {
      expect(drawn(svgLabels, label), `${label} in connection.svg`).toBe(true);
      expect(drawn(mmdLabels, label), `${label} in connection.mmd`).toBe(true);
    }
    expect(svgLabels).toContain('DISK_FULL [suspendsOn(kind=disk-full)]');
    expect(mmdLabels).toContain('done(authenticate) [stopping]');
  });
});

describe('reconnect paths', () => {
  const table = reconnectTable();

  it('has a row for every failure kind, and every path ends in online.connected', () => {
    expect([...new Set(table.failures.map((r) => r.kind))].sort()).toEqual([...FAILURE_KINDS].sort());
    for (const row of table.failures) {
      expect(row.paths.length, `${row.kind} via ${row.trigger}`).toBeGreaterThan(0);
      for (const path of row.paths) expect(path.at(-1)?.state).toBe(GOAL_STATE);
    }
    expect(table.neverTaken).toEqual([]);
  });

  it('covers both failure states, and suspension for the kinds that can suspend', () => {
    expect(table.failureStates.map((s) => s.state).sort()).toEqual(['backoff', 'suspended']);
    const suspending = table.failures.filter((r) => r.failureState === 'suspended').map((r) => r.kind);
    expect(suspending.sort()).toEqual(['disk-error', 'disk-full', 'remote-ending']);
    const steps = (state: string) =>
      table.failureStates
        .find((s) => s.state === state)!
        .paths.map((p) => p.map((s) => `${s.event}>${s.state}`));
    // "Connected" is the server's first reply (ESTABLISHED), not the end of the handshake.
    const back = [
      'done(dial)>authenticating',
      'done(authenticate)>online.confirming',
      'ESTABLISHED>online.connected',
    ];
    expect(steps('backoff')).toEqual([['after(backoffDelay)>connecting', ...back]]);
    expect(steps('suspended')).toEqual([
      ['RESUME>connecting', ...back],
      ['after(suspendRetry)>connecting', ...back],
    ]);
    for (const row of table.failures.filter((r) => ['connecting', 'authenticating'].includes(r.source))) {
      expect(row.failureState).toBe('backoff');
    }
  });

  it('is rendered in diagrams/README.md, one row per failure, each path ending in online.connected', () => {
    const readme = files.get('README.md')!;
    for (const kind of FAILURE_KINDS) {
      const rows = readme.split('\n').filter((l) => l.startsWith(`| \`${kind}\` |`));
      expect(rows.length, kind).toBeGreaterThan(0);
      for (const row of rows) {
        const cells = row.split(' | ');
        const paths = cells[4]!.split('<br>');
        for (const path of paths) expect(path.endsWith(`\`${GOAL_STATE}\``), path).toBe(true);
      }
    }
  });
});

describe('freshness', () => {
  it('generates byte-identical files twice', async () => {
    const again = await generateAll();
    for (const [name, content] of files) expect(again.get(name), name).toBe(content);
  });

  it('the committed diagrams are up to date (npm run diagrams -- --check)', async () => {
    const result = await checkDiagrams(join(repoRoot(), DIAGRAMS_DIR), files);
    expect(result, 'stale diagrams: run `npm run diagrams` and commit the result').toEqual({
      stale: [],
      extra: [],
    });
  });
});

describe('notes', () => {
  it('names the events a machine handles that nothing sends', () => {
    const machine = setup({}).createMachine({
      id: 'probe',
      initial: 'a',
      states: { a: { on: { SENT: 'b', NEVER_SENT: 'b' } }, b: {} },
    });
    const graph = extractGraph({ name: 'probe', machine, source: '' });
    expect(eventsNeverSent(graph, "actor.send({ type: 'SENT' })")).toEqual(['NEVER_SENT']);
    // A type declaration is not a send: only the runtime's code and the machines' raise/sendTo count.
    const notes = findings([], [graph], reconnectTable(), runtimeSources());
    expect(notes.map((n) => n.text)).toContainEqual(
      expect.stringMatching(/^handles `NEVER_SENT`, `SENT`, which nothing sends/),
    );
  });

  it("finds no event of the agent's machines that nothing sends", () => {
    const sources = runtimeSources();
    for (const { name, machine } of diagramSources()) {
      const graph = extractGraph({ name, machine, source: '' });
      expect(eventsNeverSent(graph, sources), name).toEqual([]);
    }
    // What the issue found drawn but never done is gone, or done.
    const queue = extractGraph({ name: 'queue', machine: queueMachine, source: '' });
    expect(queue.states.map((s) => s.path)).not.toContain('spilling');
    expect(queue.transitions.map((t) => t.eventType)).not.toContain('QUEUE_RECOVERED');
    const supervisor = diagramSources().find((d) => d.name === 'supervisor')!;
    const graph = extractGraph(supervisor);
    expect(reachableStates(graph)).toContain('supervisor.stopped');
    const into = graph.transitions.filter((t) => t.targets.includes('supervisor.stopped'));
    expect(into.map((t) => t.event).sort()).toEqual(['SHUTDOWN_TIMEOUT', 'done(connection)']);
  });

  it('has one state-path function for flat, nested and parallel values', () => {
    expect(statePath('backoff')).toBe('backoff');
    expect(statePath({ online: 'connected' })).toBe('online.connected');
    expect(statePath({ s: { a: 'x', b: { c: 'y' } } })).toBe('s.a.x, s.b.c.y');
  });
});
