/**
 * The durable queue in separate Node processes: a real kill -9, a second process refused by the
 * lock, and memory with a backlog of 1,000,000 records (bounded here; the figures are printed for
 * docs/queue.md). The append rate per fsync policy is a benchmark, not a test: `npm run bench -- --only queue`
 * (bench/queue-append.ts). The queue's sources are transpiled to a temporary directory so that a plain
 * `node` child can import them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DurableQueue } from '../../src/queue/durable-queue.js';

let root: string;
let moduleUrl: string;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-dqp-'));
  const out = join(root, 'build');
  const repo = fileURLToPath(new URL('../../', import.meta.url));
  const sources = [
    'src/errors.ts',
    ...['src/queue', 'src/fs'].flatMap((d) =>
      readdirSync(join(repo, d))
        .filter((f) => f.endsWith('.ts'))
        .map((f) => `${d}/${f}`),
    ),
  ];
  for (const src of sources) {
    const js = ts.transpileModule(readFileSync(join(repo, src), 'utf8'), {
      compilerOptions: {
        module: ts.ModuleKind.ESNext,
        target: ts.ScriptTarget.ES2022,
        verbatimModuleSyntax: true,
      },
      fileName: src,
    }).outputText;
    const dest = join(out, src.replace(/\.ts$/, '.js'));
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, js);
  }
  writeFileSync(join(out, 'package.json'), '{"type":"module"}');
  moduleUrl = `file://${join(out, 'src/queue/durable-queue.js')}`;
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

interface Child {
  proc: ChildProcess;
  lines: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  nextLine(): Promise<string>;
}

/** Runs an ES module body in a child `node`, with `DurableQueue` imported; collects stdout lines. */
function runChild(body: string, args: string[] = []): Child {
  const script = join(root, `child-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(script, `import { DurableQueue } from ${JSON.stringify(moduleUrl)};\n${body}\n`);
  const proc = spawn(process.execPath, ['--expose-gc', script, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const w = waiters.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    proc,
    lines,
    exited,
    nextLine: () =>
      lines.length > 0
        ? Promise.resolve(lines.shift()!)
        : new Promise<string>((resolve, reject) => {
            waiters.push(resolve);
            void exited.then((e) =>
              reject(new Error(`child exited (${e.code ?? e.signal}) before writing a line`)),
            );
          }),
  };
}

describe('durable queue across processes', () => {
  it('keeps every unacknowledged record through kill -9, and takes over the dead process lock', async () => {
    const dir = join(root, 'killed');
    const child = runChild(
      `
      const { queue } = await DurableQueue.open({ dir: process.argv[2], maxBytes: 1 << 30, fsync: 'interval',
        fsyncIntervalMs: 200, segmentBytes: 64 * 1024, memoryWindow: 100 });
      for (let i = 1; i <= 5000; i++) queue.append(Buffer.from('record ' + i));
      for (let i = 0; i < 1800; i++) { const r = queue.takeNext(); queue.ack(r.id); }
      for (let i = 0; i < 50; i++) queue.takeNext(); // in flight, never acknowledged
      process.kill(process.pid, 'SIGKILL');
      `,
      [dir],
    );
    expect(await child.exited).toEqual({ code: null, signal: 'SIGKILL' });
    const { queue, findings } = await DurableQueue.open({
      dir,
      maxBytes: 1 << 30,
      fsync: 'interval',
      fsyncIntervalMs: 200,
    });
    try {
      expect(findings.map((f) => f.kind)).toEqual(['stale-lock']);
      expect(findings[0]!.message).toContain(`process ${child.proc.pid}`);
      const got: string[] = [];
      for (let r = queue.takeNext(); r; r = queue.takeNext()) got.push(r.payload.toString());
      const first = Number(got[0]!.split(' ')[1]);
      // Acknowledged records whose cursor was not saved yet come back (at-least-once); nothing is lost.
      expect(first).toBeLessThanOrEqual(1801);
      expect(got).toEqual(Array.from({ length: 5000 - first + 1 }, (_, i) => `record ${first + i}`));
      expect(queue.nextId).toBe(5001);
    } finally {
      await queue.close();
    }
  });

  it('refuses to open a directory another live process holds, naming it', async () => {
    const dir = join(root, 'held');
    const child = runChild(
      `
      const { queue } = await DurableQueue.open({ dir: process.argv[2], maxBytes: 1 << 20, fsync: 'never',
        fsyncIntervalMs: 200 });
      console.log('open');
      setInterval(() => {}, 1000);
      `,
      [dir],
    );
    try {
      expect(await child.nextLine()).toBe('open');
      await expect(
        DurableQueue.open({ dir, maxBytes: 1 << 20, fsync: 'never', fsyncIntervalMs: 200 }),
      ).rejects.toThrow(
        `queue directory ${dir} is in use by process ${child.proc.pid} (lock file ${dir}/lock)`,
      );
    } finally {
      child.proc.kill('SIGKILL');
      await child.exited;
    }
  });

  it('keeps memory flat with a backlog of 1,000,000 records (figures printed)', async () => {
    const child = runChild(
      `
      const mb = (n) => Math.round(n / 1048576 * 10) / 10;
      const payload = Buffer.alloc(300, 'b');
      const opts = { dir: process.argv[2], maxBytes: 1 << 30, fsync: 'interval', fsyncIntervalMs: 200 };
      globalThis.gc();
      const base = process.memoryUsage();
      let { queue } = await DurableQueue.open(opts);
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 1000000; i++) if (!queue.append(payload)) throw new Error('refused at ' + i);
      const appendS = Number(process.hrtime.bigint() - t0) / 1e9;
      globalThis.gc();
      const filled = process.memoryUsage();
      const depth1 = queue.depth;
      await queue.close();
      const t1 = process.hrtime.bigint();
      ({ queue } = await DurableQueue.open(opts));
      const openS = Number(process.hrtime.bigint() - t1) / 1e9;
      let taken = 0;
      for (let i = 0; i < 100000; i++) { const r = queue.takeNext(); queue.ack(r.id); taken++; }
      globalThis.gc();
      const reopened = process.memoryUsage();
      const peakRss = process.resourceUsage().maxRSS * 1024;
      console.log(JSON.stringify({
        depth: depth1, depthAfter: queue.depth, appendRate: Math.round(1000000 / appendS), openS,
        baseRss: mb(base.rss), filledRss: mb(filled.rss), reopenedRss: mb(reopened.rss), peakRss: mb(peakRss),
        baseHeap: mb(base.heapUsed), filledHeap: mb(filled.heapUsed), reopenedHeap: mb(reopened.heapUsed),
        external: mb(reopened.external + reopened.arrayBuffers),
      }));
      await queue.close();
      `,
      [join(root, 'million')],
    );
    const m = JSON.parse(await child.nextLine()) as Record<string, number>;
    console.log(
      `1,000,000-record backlog (300-byte payloads, ${Math.round((1_000_000 * 316) / 1048576)} MiB on disk): ` +
        `append ${m.appendRate}/s; RSS ${m.baseRss} MB empty, ${m.filledRss} MB full, ${m.reopenedRss} MB after ` +
        `reopen (open took ${m.openS!.toFixed(2)} s), peak ${m.peakRss} MB; heap used ${m.baseHeap} → ` +
        `${m.filledHeap} → ${m.reopenedHeap} MB`,
    );
    expect(m.depth).toBe(1_000_000);
    expect(m.depthAfter).toBe(900_000);
    // Robust bound: the backlog itself would be ≥ 300 MB if it were held in memory.
    expect(m.filledHeap! - m.baseHeap!).toBeLessThan(64);
    expect(m.reopenedHeap! - m.baseHeap!).toBeLessThan(64);
    expect(m.peakRss).toBeLessThan(150);
    await child.exited;
  }, 120_000);
});
