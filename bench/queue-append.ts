/**
 * The durable queue's append rate per `fsync` policy, in a fresh Node process (run by bench/run.ts, or alone):
 *
 *   node dist/bench/queue-append.js DIR [--scale 1]
 *
 * Records of 300 bytes, as docs/queue.md states them: first one by one with `append()` (the method of the
 * measurement that used to live in test/unit/durable-queue-process.test.ts, unchanged), then in chunks of 256
 * with `appendMany()`, which is what the input pump does with every input chunk. A warm-up run (JIT) is not
 * measured. Prints one JSON line: appends per second for each case. `--scale` multiplies the record counts
 * (0.01 for a smoke run).
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DurableQueue } from '../src/queue/durable-queue.js';

const { values, positionals } = parseArgs({
  options: { scale: { type: 'string', default: '1' } },
  allowPositionals: true,
});
const root = positionals[0];
if (root === undefined) {
  process.stderr.write('usage: queue-append DIR [--scale N]\n');
  process.exit(2);
}
const scale = Number(values.scale);
const payload = Buffer.alloc(300, 'a');
const CHUNK = 256;
type FsyncPolicy = 'always' | 'interval' | 'never';

/** [name, fsync policy, records, one by one or in chunks]; the warm-up comes first and is not reported. */
const CASES: [string, FsyncPolicy, number, 'append' | 'appendMany'][] = [
  ['warmup', 'interval', 100_000, 'append'],
  ['interval', 'interval', 300_000, 'append'],
  ['never', 'never', 300_000, 'append'],
  ['always', 'always', 2000, 'append'],
  ['interval, appendMany', 'interval', 300_000, 'appendMany'],
  ['never, appendMany', 'never', 300_000, 'appendMany'],
  ['always, appendMany', 'always', 50_000, 'appendMany'],
];

const out: Record<string, number> = {};
for (const [name, fsync, count, method] of CASES) {
  const n = Math.max(method === 'appendMany' ? CHUNK : 1, Math.round(count * scale));
  const dir = path.join(root, name.replace(/\W+/g, '-'));
  const { queue } = await DurableQueue.open({ dir, maxBytes: 1 << 30, fsync, fsyncIntervalMs: 200 });
  const chunk = Array.from({ length: CHUNK }, () => payload);
  const t = process.hrtime.bigint();
  if (method === 'append') {
    for (let i = 0; i < n; i++) if (!queue.append(payload)) throw new Error(`${name}: refused at ${i}`);
  } else {
    for (let i = 0; i < n; i += CHUNK) {
      const want = Math.min(CHUNK, n - i);
      const part = want === CHUNK ? chunk : chunk.slice(0, want);
      if (queue.appendMany(part) !== want) throw new Error(`${name}: refused at ${i}`);
    }
  }
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  if (name !== 'warmup') out[name] = Math.round(n / seconds);
  await queue.close();
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(out)}\n`);
