/**
 * `auditrelay demo`: the main job on embedded defaults. Starts a collector and an agent (real
 * processes) on loopback, forwards the bundled real audit records, restarts the collector midway,
 * and counts what arrived. Each record gets a ` demo_seq=N` suffix so that the count can tell a
 * lost record from a duplicate.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { UnavailableError, UsageError } from './errors.js';
import { isEoe } from './input/record-splitter.js';
import { BIN_PATH, DEMO_CORPUS_DIR } from './paths.js';

const BIN = BIN_PATH;
const CORPUS = DEMO_CORPUS_DIR;

export async function runDemo(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { rounds: { type: 'string', default: '40' }, rate: { type: 'string', default: '5000' } },
    strict: true,
  });
  const rounds = positive(values.rounds, '--rounds');
  const rate = positive(values.rate, '--rate');
  const records = loadRecords();
  const total = records.length * rounds;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-demo-'));
  const logFile = path.join(dir, 'received.log');
  const out = process.stderr;
  const children = new Set<ChildProcess>();
  const cleanup = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  // SIGUSR1: progress so far. SIGTERM/SIGINT: no orphans and no temporary directory left behind.
  const onUsr1 = () => {
    const r = countReceived(logFile);
    out.write(
      `auditrelay demo: ${r.unique} of ${total} records received so far (${r.duplicates} duplicated)\n`,
    );
  };
  const onStop = (signal: NodeJS.Signals) => () => {
    out.write(`auditrelay demo: stopped by ${signal} before the end; agent and collector stopped\n`);
    cleanup();
    process.exit(1);
  };
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGUSR1', onUsr1],
    ['SIGTERM', onStop('SIGTERM')],
    ['SIGINT', onStop('SIGINT')],
  ];
  for (const [sig, fn] of handlers) process.on(sig, fn);
  try {
    const port = await freePort();
    out.write(
      `auditrelay demo: ${records.length} real audit records from ${path.relative(process.cwd(), CORPUS) || CORPUS}` +
        ` × ${rounds} rounds = ${total} records, agent → collector on 127.0.0.1:${port}\n`,
    );
    const collectorConf = path.join(dir, 'collector.conf');
    // Room for the readiness probe's connection beside the agent's; the evidence key in the demo's directory.
    writeFileSync(
      collectorConf,
      `tcp_max_per_addr = 4\nlog_level = warn\nevidence_key_file = ${path.join(dir, 'evidence', 'signing.key')}\n`,
    );
    const startCollector = async () => {
      const c = start(children, [
        'collector',
        '--config',
        collectorConf,
        '--listen',
        `127.0.0.1:${port}`,
        '--log',
        logFile,
      ]);
      await waitFor(
        async () => c.exitCode !== null || (await canConnect(port)),
        10_000,
        `demo: the collector did not listen on 127.0.0.1:${port} within 10 s; see its messages above`,
      );
      if (c.exitCode !== null)
        throw new UnavailableError(
          `demo: the collector exited with status ${c.exitCode}; see its message above`,
        );
      return c;
    };
    let collector = await startCollector();
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${port}`,
        'reconnect_initial_ms = 50',
        'reconnect_max_ms = 1000',
        'drain_timeout = 60',
        `queue_dir = ${path.join(dir, 'queue')}`,
        `state_file = ${path.join(dir, 'agent.state')}`,
        `log_level = ${process.env.AUDITRELAY_DEMO_LOG_LEVEL ?? 'warn'}`,
        '',
      ].join('\n'),
    );
    const agent = start(children, ['agent', '--config', conf], true);
    const agentExit = once(agent, 'exit');

    // Feed the records at a steady rate so that the collector restart happens mid-stream.
    const feeding = (async () => {
      const batch = Math.max(1, Math.floor(rate / 20));
      for (let n = 0; n < total; n += batch) {
        const lines: Buffer[] = [];
        for (let i = n; i < Math.min(total, n + batch); i++) {
          const rec = records[i % records.length]!;
          lines.push(rec.subarray(0, rec.length - 1), Buffer.from(` demo_seq=${i + 1}\n`));
        }
        if (!agent.stdin!.write(Buffer.concat(lines))) await once(agent.stdin!, 'drain');
        await delay(50);
      }
      agent.stdin!.end();
    })();

    let restarted = false;
    let received = countReceived(logFile);
    const bar = new ProgressBar(total, out);
    while (received.unique < total && agent.exitCode === null) {
      await delay(100);
      received = countReceived(logFile);
      bar.update(received.unique, restarted ? 'collector restarted' : '');
      if (!restarted && received.unique >= total / 2) {
        restarted = true;
        bar.note('restarting the collector (it sends ENDING to the agent, which reconnects by itself)');
        collector.kill('SIGTERM');
        await once(collector, 'exit');
        children.delete(collector);
        collector = await startCollector();
      }
    }
    await feeding;
    const [code] = (await agentExit) as [number | null];
    received = countReceived(logFile);
    bar.update(received.unique, 'done');
    bar.finish();
    collector.kill('SIGTERM');
    await once(collector, 'exit');
    const lost = total - received.unique;
    out.write(
      `sent ${total}, received ${received.unique} distinct, lost ${lost}, duplicated ${received.duplicates}` +
        ` (agent exit status ${code})\n`,
    );
    return lost === 0 && code === 0 ? 0 : 1;
  } finally {
    for (const [sig, fn] of handlers) process.off(sig, fn);
    cleanup();
  }
}

function loadRecords(): Buffer[] {
  const out: Buffer[] = [];
  for (const f of readdirSync(CORPUS)
    .filter((n) => n.endsWith('.log'))
    .sort()) {
    for (const line of readFileSync(path.join(CORPUS, f), 'latin1').split('\n')) {
      if (line.trim() === '') continue;
      const rec = Buffer.from(`${line}\n`, 'latin1');
      if (!isEoe(rec)) out.push(rec);
    }
  }
  return out;
}

function countReceived(file: string): { unique: number; duplicates: number } {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch {
    return { unique: 0, duplicates: 0 };
  }
  const seen = new Set<number>();
  let duplicates = 0;
  // The collector appends ` rid=<agent>:<seq>` (record identities) after the record's own fields.
  for (const m of text.matchAll(/ demo_seq=(\d+)(?: rid=\S+)?$/gm)) {
    const n = Number(m[1]);
    if (seen.has(n)) duplicates++;
    else seen.add(n);
  }
  return { unique: seen.size, duplicates };
}

function start(children: Set<ChildProcess>, args: string[], pipeStdin = false): ChildProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: [pipeStdin ? 'pipe' : 'ignore', 'inherit', 'inherit'],
    env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'pretty' },
  });
  children.add(child);
  return child;
}

class ProgressBar {
  #last = '';
  constructor(
    readonly total: number,
    readonly out: NodeJS.WriteStream,
  ) {}
  update(n: number, note: string): void {
    const width = 40;
    const filled = Math.round((n / this.total) * width);
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${n}/${this.total} received ${note}`;
    if (line === this.#last) return;
    this.#last = line;
    this.out.write(this.out.isTTY ? `\r${line}\x1b[K` : `${line}\n`);
  }
  note(text: string): void {
    this.out.write(`${this.out.isTTY ? '\n' : ''}${text}\n`);
  }
  finish(): void {
    if (this.out.isTTY) this.out.write('\n');
  }
}

function positive(text: string | undefined, name: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError(`${name} must be a whole number of 1 or more, not '${text}'`);
  return n;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new UnavailableError(what);
    await delay(20);
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen({ host: '127.0.0.1', port: 0 }, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}
