/**
 * `npm run diagrams`: draws the statecharts from their own definitions. A thin command over
 * src/statechart/analysis.ts (the graph), scripts/diagram-render.ts (Mermaid, SVG, JSON) and
 * scripts/diagram-notes.ts (the reconnect paths and the notes of diagrams/README.md).
 *
 * For every machine (connection, reader, queue, and the supervisor built for the agent's children from
 * src/agent/children.ts, as the agent builds it) this writes into `diagrams/` `<name>.mmd`, `<name>.svg`
 * and `<name>.json`, and `diagrams/README.md`.
 *
 * `npm run diagrams -- --check` regenerates everything in memory and exits 1 when a file differs.
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
import { connectionMachine } from '../machines/connection.js';
import { queueMachine } from '../machines/queue.js';
import { readerMachine } from '../machines/reader.js';
import { agentChildren } from '../src/agent/children.js';
import { extractGraph } from '../src/statechart/analysis.js';
import { createSupervisor } from '../supervisors/supervisor.js';
import { type DiagramSource, reconnectTable, renderReadme } from './diagram-notes.js';
import { graphJson, renderSvg, toDot, toMermaid } from './diagram-render.js';

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

/**
 * The text of the code that sends events to the machines: the runtime (src/, the analysis module aside),
 * and the `raise(…)` / `sendTo(…)` calls of the machines and the supervisor (their type declarations name
 * every event too, so only those calls count).
 */
export function runtimeSources(root: string = repoRoot()): string {
  const files = (dir: string): string[] =>
    readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory()
        ? files(join(dir, e.name))
        : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')
          ? [join(dir, e.name)]
          : [],
    );
  const runtime = files('src')
    .filter((f) => !f.startsWith(join('src', 'statechart')))
    .map((f) => readFileSync(join(root, f), 'utf8'));
  const sends = [...files('machines'), ...files('supervisors')].flatMap((f) =>
    [...readFileSync(join(root, f), 'utf8').matchAll(/\b(?:raise|sendTo)\([^{]*\{[^}]*\}/g)].map((m) => m[0]),
  );
  return [...runtime, ...sends].join('\n');
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
  files.set('README.md', renderReadme(sources, graphs, reconnectTable(), runtimeSources()));
  return files;
}

export const DIAGRAMS_DIR = 'diagrams';

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
