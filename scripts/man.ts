/**
 * `npm run man [-- --out DIR]`: the manual pages, generated from the docs (default DIR: dist/man):
 *
 * - `auditrelay(8)`: README.md (what it is, the commands, stopping, configuration, differences from
 *   audisp-remote), docs/logging.md, docs/plugin.md's "Install" and table, plus FILES and SEE ALSO;
 * - `auditrelay-agent.conf(5)`: docs/configuration.md's syntax, loading and agent keys;
 * - `auditrelay-collector.conf(5)`: the same, with the collector keys.
 *
 * Sections are taken from the Markdown by their headings (a missing heading is an error, so a renamed section
 * cannot silently vanish from a page) and assembled into one tree per page. Parsing: unified + remark-parse +
 * remark-gfm. Writing roff: the small writer below (`toRoff`), not remark-man: remark-man renders GFM tables as
 * single-line tbl rows ('@' as the separator, no text blocks), which for the docs' four- and five-column tables of
 * long sentences gives pages wider than any terminal; here a table becomes one `.TP` entry per row (the first
 * cell as the tag, the others as "Header: text" lines), the layout of auditd.conf(5). Links to other documents
 * become their installed paths under /usr/share/doc/auditrelay.
 *
 * The pages are not committed: the Debian package generates them at build time (scripts/package-deb.ts), and
 * test/package/man.test.ts renders them with groff (no warning allowed) and checks that every configuration key
 * is documented. Reproducible: the date is $SOURCE_DATE_EPOCH, else the last commit's.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Heading, Link, List, PhrasingContent, Root, RootContent, Table } from 'mdast';
import remarkGfm from 'remark-gfm';
import remarkParse from 'remark-parse';
import { unified } from 'unified';

/** Where the package installs README.md and docs/ (docs/packaging.md). */
export const DOC_DIR = '/usr/share/doc/auditrelay';

export interface ManPage {
  /** e.g. 'auditrelay' */
  name: string;
  /** e.g. 8 */
  section: number;
  /** e.g. 'auditrelay.8' */
  file: string;
  roff: string;
}

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'auditrelay') return dir;
    } catch {
      // not here
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('man: cannot find the auditrelay package root');
    dir = up;
  }
}

const parser = unified().use(remarkParse).use(remarkGfm);

function parse(root: string, file: string): Root {
  const text = readFileSync(path.join(root, file), 'utf8');
  const conflict = /^(<{7}|={7}|>{7})( |$)/m.exec(text);
  if (conflict)
    throw new Error(`man: ${file} contains a merge conflict marker (${conflict[1]}); resolve it first`);
  return rewriteLinks(parser.parse(text), path.dirname(file));
}

/** Relative links to documents become their installed paths; links to source files become plain text. */
function rewriteLinks(tree: Root, fromDir: string): Root {
  const visit = (node: { children?: unknown[] }) => {
    for (const child of (node.children ?? []) as { type: string; children?: unknown[] }[]) {
      if (child.type === 'link') {
        const link = child as unknown as Link;
        if (!/^[a-z]+:/i.test(link.url) && !link.url.startsWith('#')) {
          const original = link.url;
          const target = path.posix.normalize(path.posix.join(fromDir, original.split('#')[0] ?? ''));
          const installed = /\.(md|json)$/.test(target) ? `${DOC_DIR}/${target}` : '';
          const only = link.children.length === 1 ? link.children[0] : undefined;
          if (
            installed &&
            only &&
            (only.type === 'text' || only.type === 'inlineCode') &&
            only.value === original.split('#')[0]
          ) {
            // [docs/queue.md](docs/queue.md) (with or without an anchor): the installed path, once.
            only.value = installed;
            link.url = '';
          } else {
            link.url = installed;
          }
        } else if (link.url.startsWith('#')) {
          link.url = '';
        }
      }
      visit(child);
    }
  };
  visit(tree);
  return tree;
}

const headingText = (h: Heading): string =>
  h.children
    .map((c) => ('value' in c ? c.value : 'children' in c ? headingText(c as unknown as Heading) : ''))
    .join('');

/** The heading whose text is `title` (or matches it) and everything under it, up to the next heading as high. */
function section(tree: Root, title: string | RegExp, file: string): RootContent[] {
  const nodes = tree.children;
  const start = nodes.findIndex(
    (n) =>
      n.type === 'heading' &&
      (typeof title === 'string' ? headingText(n) === title : title.test(headingText(n))),
  );
  if (start < 0) throw new Error(`man: ${file} has no section "${title}" any more; update scripts/man.ts`);
  const depth = (nodes[start] as Heading).depth;
  let end = start + 1;
  while (end < nodes.length) {
    const n = nodes[end]!;
    if (n.type === 'heading' && n.depth <= depth) break;
    end++;
  }
  return structuredClone(nodes.slice(start, end));
}

/** Like section(), without its heading. */
function body(tree: Root, title: string | RegExp, file: string): RootContent[] {
  return section(tree, title, file).slice(1);
}

/** The nodes before the first heading among them (a section's lead paragraphs). */
function lead(nodes: RootContent[]): RootContent[] {
  const i = nodes.findIndex((n) => n.type === 'heading');
  return i < 0 ? nodes : nodes.slice(0, i);
}

/** `nodes` without the subsection titled `title` (and its content). */
function without(nodes: RootContent[], title: string): RootContent[] {
  const i = nodes.findIndex((n) => n.type === 'heading' && headingText(n) === title);
  if (i < 0) return nodes;
  const depth = (nodes[i] as Heading).depth;
  let end = i + 1;
  while (end < nodes.length && !(nodes[end]!.type === 'heading' && (nodes[end] as Heading).depth <= depth))
    end++;
  return [...nodes.slice(0, i), ...nodes.slice(end)];
}

/** The section with its headings moved so that the first one is at `depth`, and renamed when `rename` is given. */
function at(nodes: RootContent[], depth: number, rename?: string): RootContent[] {
  const first = nodes[0];
  if (first?.type !== 'heading') return nodes;
  const delta = depth - first.depth;
  for (const n of nodes)
    if (n.type === 'heading') n.depth = Math.min(6, Math.max(2, n.depth + delta)) as Heading['depth'];
  if (rename) first.children = [{ type: 'text', value: rename }];
  return nodes;
}

function md(text: string): RootContent[] {
  return parser.parse(text).children;
}

// ---------------------------------------------------------------------------------------------------------
// Markdown (mdast) to roff with the man macros

/** Text for roff: backslashes escaped, every non-ASCII character as \[uXXXX] (no preconv needed). */
function esc(text: string): string {
  let out = '';
  for (const ch of text.replace(/\\/g, '\\e')) {
    const cp = ch.codePointAt(0)!;
    out += cp > 0x7e ? `\\[u${cp.toString(16).toUpperCase().padStart(4, '0')}]` : ch;
  }
  return out;
}

/** Literal text (commands, options, keys): also '-' as \- so that it is a hyphen-minus when copied. */
const lit = (text: string): string => esc(text).replace(/-/g, '\\-');

/** A line of running text: a leading '.' or "'" would be a request. */
const safeLine = (line: string): string => (/^[.']/.test(line) ? `\\&${line}` : line);

function inline(nodes: readonly PhrasingContent[]): string {
  let out = '';
  for (const n of nodes) {
    switch (n.type) {
      case 'text':
        out += esc(n.value.replace(/\s*\n\s*/g, ' '));
        break;
      case 'inlineCode':
        out += `\\fB${lit(n.value)}\\fP`;
        break;
      case 'emphasis':
        out += `\\fI${inline(n.children)}\\fP`;
        break;
      case 'strong':
        out += `\\fB${inline(n.children)}\\fP`;
        break;
      case 'delete':
        out += inline(n.children);
        break;
      case 'link': {
        const text = inline(n.children);
        out += n.url && n.url !== textOf(n.children) ? `${text} (${esc(n.url)})` : text;
        break;
      }
      case 'break':
        out += '\n.br\n';
        break;
      default:
        // html, images, footnotes: not used in the pages' sources
        break;
    }
  }
  return out;
}

function textOf(nodes: readonly PhrasingContent[]): string {
  return nodes
    .map((n) => ('value' in n ? n.value : 'children' in n ? textOf(n.children as PhrasingContent[]) : ''))
    .join('');
}

function paragraph(text: string): string {
  return text
    .split('\n')
    .map((l) => safeLine(l.trim()))
    .filter((l) => l !== '')
    .join('\n');
}

function list(node: List, indent: number): string[] {
  const out: string[] = [];
  let number = node.start ?? 1;
  for (const item of node.children) {
    const tag = node.ordered ? `${number++}.` : '\\(bu';
    out.push(`.IP ${tag} ${node.ordered ? 4 : 2}`);
    let first = true;
    for (const child of item.children) {
      if (child.type === 'paragraph') {
        if (!first) out.push('.IP "" ' + (node.ordered ? 4 : 2));
        out.push(paragraph(inline(child.children)));
      } else if (child.type === 'list') {
        out.push('.RS', ...list(child, indent + 1), '.RE');
      } else {
        out.push(...block(child as RootContent, indent + 1));
      }
      first = false;
    }
  }
  return out;
}

/** One `.TP` per row: the first cell is the tag; the other cells follow as "Header: text". */
function table(node: Table): string[] {
  const [head, ...rows] = node.children;
  const headers = (head?.children ?? []).map((c) => inline(c.children));
  const out: string[] = [];
  for (const row of rows) {
    const cells = row.children.map((c) => inline(c.children));
    out.push('.TP', paragraph(cells[0] || '\\(em'));
    const rest = cells
      .slice(1)
      .map((cell, i) => [headers[i + 1] ?? '', cell] as const)
      .filter(([, cell]) => cell !== '');
    rest.forEach(([header, cell], i) => {
      if (i > 0) out.push('.br');
      out.push(paragraph(header ? `\\fI${header}:\\fP ${cell}` : cell));
    });
  }
  return out;
}

function block(node: RootContent, indent = 0): string[] {
  switch (node.type) {
    case 'heading': {
      const text = inline(node.children);
      return node.depth <= 2 ? [`.SH "${text.toUpperCase()}"`] : [`.SS "${text}"`];
    }
    case 'paragraph':
      return ['.PP', paragraph(inline(node.children))];
    case 'code':
      return ['.PP', '.RS 4', '.nf', ...node.value.split('\n').map((l) => `\\&${lit(l)}`), '.fi', '.RE'];
    case 'list':
      return ['.PP', ...list(node, indent)];
    case 'table':
      return table(node);
    case 'blockquote':
      return ['.RS 4', ...node.children.flatMap((c) => block(c, indent)), '.RE'];
    default:
      return []; // thematic breaks, html comments, definitions
  }
}

/** The page: `.TH`, NAME from the first heading (`# name(section) -- description`), then every block. */
export function toRoff(tree: Root, opts: { version: string; date: Date; manual: string }): string {
  const [title, ...rest] = tree.children;
  const m = title?.type === 'heading' ? /^(.+)\((\d)\) -- (.+)$/.exec(textOf(title.children)) : null;
  if (!m) throw new Error('man: a page must start with "# name(section) -- description"');
  const [, name, section, description] = m;
  const date = opts.date.toISOString().slice(0, 10);
  const lines = [
    `.\\" Generated by scripts/man.ts from the auditrelay documentation; do not edit.`,
    `.TH "${esc(name!.toUpperCase())}" "${section}" "${date}" "auditrelay ${esc(opts.version)}" "${esc(opts.manual)}"`,
    '.SH "NAME"',
    `${lit(name!)} \\- ${esc(description!)}`,
    ...rest.flatMap((n) => block(n)),
  ];
  return `${lines.join('\n')}\n`;
}

function compile(tree: Root, opts: { version: string; date: Date; manual: string }): string {
  return toRoff(tree, opts);
}

/** The date in the pages' footer: $SOURCE_DATE_EPOCH, else the last commit's, else now. */
export function pageDate(root: string): Date {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch && /^\d+$/.test(epoch)) return new Date(Number(epoch) * 1000);
  const git = spawnSync('git', ['log', '-1', '--format=%ct'], { cwd: root, encoding: 'utf8' });
  const t = Number(git.stdout?.trim());
  return git.status === 0 && t > 0 ? new Date(t * 1000) : new Date();
}

export function generateManPages(options: { root?: string; date?: Date } = {}): ManPage[] {
  const root = options.root ?? findRoot();
  const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
    version: string;
  };
  const date = options.date ?? pageDate(root);
  const readme = parse(root, 'README.md');
  const config = parse(root, 'docs/configuration.md');
  const logging = parse(root, 'docs/logging.md');
  const plugin = parse(root, 'docs/plugin.md');
  const settings = { version, date, manual: 'System Administration' };

  // README: the paragraphs between the first code block and "Why" say what auditrelay is.
  const intro: RootContent[] = [];
  {
    const nodes = readme.children;
    let i = nodes.findIndex((n) => n.type === 'code');
    while (++i < nodes.length && nodes[i]!.type !== 'heading') intro.push(structuredClone(nodes[i]!));
  }
  // "Commands" up to its first subsection (which has its own section below).
  const commands = lead(body(readme, 'Commands', 'README.md'));
  const synopsis = commands.find((n) => n.type === 'code');
  if (!synopsis) throw new Error('man: README.md "Commands" has no code block (the synopsis)');

  const main: Root = {
    type: 'root',
    children: [
      ...md('# auditrelay(8) -- forward Linux audit records to a central auditd; collect them'),
      ...md('## SYNOPSIS'),
      synopsis,
      ...md('## DESCRIPTION'),
      ...intro,
      ...commands.filter((n) => n !== synopsis),
      ...at(section(readme, 'Stopping, and kill -9', 'README.md'), 2, 'STOPPING'),
      ...at(section(plugin, 'Install', 'docs/plugin.md'), 2, 'PLUGIN MODE'),
      ...at(section(plugin, /^What auditd gives a plugin/, 'docs/plugin.md'), 3),
      ...md('## LOGGING'),
      ...without(body(logging, /^Logging/, 'docs/logging.md'), 'Tests').map((n) => {
        if (n.type === 'heading') n.depth = Math.max(3, n.depth + 1) as Heading['depth'];
        return n;
      }),
      ...at(section(readme, 'Configuration', 'README.md'), 2, 'CONFIGURATION'),
      ...md(
        'The agent: **auditrelay-agent.conf**(5); the collector: **auditrelay-collector.conf**(5). ' +
          '`auditrelay check-config FILE` validates a file.',
      ),
      ...at(section(readme, 'Differences from audisp-remote', 'README.md'), 2),
      ...md(`## FILES

| Path | What |
|---|---|
| \`/usr/bin/auditrelay\` | every command (links to \`/usr/lib/auditrelay/bin/auditrelay\`) |
| \`/usr/lib/auditrelay/\` | the program, its Node runtime (\`bin/node\`) and its native bindings |
| \`/usr/lib/auditrelay/auditrelay-plugin\` | the plugin entry auditd starts |
| \`/etc/audit/plugins.d/auditrelay.conf\` | the plugin's registration with auditd (\`active = no\` as installed) |
| \`/etc/audit/audisp-remote.conf\` | the agent's configuration in plugin mode, as audisp-remote's |
| \`/etc/auditrelay/\` | configurations of the services (\`agent.conf\`, \`collector.conf\`) |
| \`/lib/systemd/system/auditrelay-agent.service\`, \`auditrelay-collector.service\` | the services (neither enabled nor started as installed) |
| \`/var/spool/auditrelay/\` | \`queue_dir\`: records not yet acknowledged |
| \`/var/lib/auditrelay/\` | \`tail_state_file\` of \`input = tail\` |
| \`/run/auditrelay/agent.state\` | \`state_file\`: the state report written on SIGUSR1 |
| \`/var/log/auditrelay/\` | the collector's log directory (service mode) |
| \`${DOC_DIR}/\` | README.md and docs/: every detail |
`),
      ...md(`## SEE ALSO

**auditrelay-agent.conf**(5), **auditrelay-collector.conf**(5), **auditd**(8), **auditd.conf**(5),
**audisp-remote**(8), **audisp-remote.conf**(5), **auditd-plugins**(5), **systemd.service**(5), **journalctl**(1)`),
    ],
  };

  const syntax = [
    ...at(section(config, 'File syntax', 'docs/configuration.md'), 2, 'FILE SYNTAX'),
    ...at(section(config, 'Loading the file', 'docs/configuration.md'), 2, 'LOADING'),
  ];
  const agentConf: Root = {
    type: 'root',
    children: [
      ...md(
        '# auditrelay-agent.conf(5) -- configuration of the auditrelay agent (audisp-remote.conf syntax)',
      ),
      ...md(`## SYNOPSIS

\`/etc/audit/audisp-remote.conf\` (plugin mode), \`/etc/auditrelay/agent.conf\` (service mode), or any file given
with \`auditrelay agent --config FILE\`.`),
      ...md('## DESCRIPTION'),
      ...lead(body(config, 'Configuration', 'docs/configuration.md')),
      ...syntax,
      ...at(section(config, /^Agent keys/, 'docs/configuration.md'), 2, 'KEYS'),
      ...at(section(config, /^Differences from upstream/, 'docs/configuration.md'), 2),
      ...md(`## SEE ALSO

**auditrelay**(8), **auditrelay-collector.conf**(5), **audisp-remote.conf**(5), **audisp-remote**(8)`),
    ],
  };
  const collectorConf: Root = {
    type: 'root',
    children: [
      ...md(
        '# auditrelay-collector.conf(5) -- configuration of the auditrelay collector (auditd.conf syntax)',
      ),
      ...md(`## SYNOPSIS

\`/etc/auditrelay/collector.conf\` (service mode), or any file given with
\`auditrelay collector --config FILE\`.`),
      ...md('## DESCRIPTION'),
      ...lead(body(config, 'Configuration', 'docs/configuration.md')),
      ...syntax.map((n) => structuredClone(n)),
      ...at(section(config, /^Collector keys/, 'docs/configuration.md'), 2, 'KEYS'),
      ...at(section(config, /^Differences from upstream/, 'docs/configuration.md'), 2),
      ...md(`## SEE ALSO

**auditrelay**(8), **auditrelay-agent.conf**(5), **auditd.conf**(5), **auditd**(8)`),
    ],
  };

  return [
    { name: 'auditrelay', section: 8, tree: main },
    { name: 'auditrelay-agent.conf', section: 5, tree: agentConf },
    { name: 'auditrelay-collector.conf', section: 5, tree: collectorConf },
  ].map(({ name, section: s, tree }) => ({
    name,
    section: s,
    file: `${name}.${s}`,
    roff: compile(tree, settings),
  }));
}

function main(argv: string[]): void {
  const i = argv.indexOf('--out');
  const root = findRoot();
  const out = i >= 0 && argv[i + 1] ? path.resolve(argv[i + 1]!) : path.join(root, 'dist', 'man');
  mkdirSync(out, { recursive: true });
  for (const page of generateManPages({ root })) {
    writeFileSync(path.join(out, page.file), page.roff);
    process.stdout.write(`${path.join(out, page.file)}\n`);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url))
  main(process.argv.slice(2));
