/**
 * The durable queue's files under attack and damage (issue 9, items 3, 4 and 8): a directory others can
 * write, a symbolic link planted at the cursor's temporary file, a stray segment name near 2^53, a zeroed
 * segment header in front of intact records, the top of the id space.
 */
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileSafetyError } from '../../src/errors.js';
import { DurableQueue, type DurableQueueOptions } from '../../src/queue/durable-queue.js';
import {
  encodeRecord,
  encodeSegmentHeader,
  SEGMENT_HEADER_SIZE,
  SEGMENT_NAME_RE,
  segmentName,
} from '../../src/queue/segment-format.js';

const b = (s: string) => Buffer.from(s);
let root: string;
const opened: DurableQueue[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-qsafe-'));
});
afterEach(async () => {
  for (const q of opened.splice(0)) await q.close();
  rmSync(root, { recursive: true, force: true });
});

async function openQueue(dir: string, options: Partial<DurableQueueOptions> = {}) {
  const r = await DurableQueue.open({
    dir,
    maxBytes: 64 * 1024 * 1024,
    fsync: 'never',
    fsyncIntervalMs: 200,
    ...options,
  });
  opened.push(r.queue);
  return r;
}

async function closeQueue(q: DurableQueue): Promise<void> {
  await q.close();
  opened.splice(opened.indexOf(q), 1);
}

function drain(q: DurableQueue): string[] {
  const out: string[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) out.push(r.payload.toString());
  return out;
}

describe('durable queue: the directory', () => {
  it('refuses a queue_dir others can write, with the fix, and writes nothing into it', async () => {
    const dir = join(root, 'q');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    const err = await openQueue(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FileSafetyError);
    expect((err as FileSafetyError).code).toBe('AR_UNSAFE_PATH');
    expect((err as Error).message).toMatch(
      /queue directory \(queue_dir\) .* is writable by others \(mode 0777\).*chmod go-w/,
    );
    expect(readdirSync(dir)).toEqual([]);
  });

  it('refuses a queue_dir that is a symbolic link', async () => {
    const real = join(root, 'real');
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, join(root, 'q'));
    await expect(openQueue(join(root, 'q'))).rejects.toThrow(
      /queue directory \(queue_dir\) .* is a symbolic link/,
    );
  });

  it('never follows a link planted at ack.tmp: the cursor is saved, the target untouched', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir);
    for (let i = 1; i <= 5; i++) q.append(b(`r${i}`));
    const victim = join(root, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, join(dir, 'ack.tmp'));
    for (let i = 0; i < 3; i++) q.ack(q.takeNext()!.id);
    await closeQueue(q);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    const { queue: q2 } = await openQueue(dir);
    expect(drain(q2)).toEqual(['r4', 'r5']);
  });
});

describe('durable queue: lengths and ids from files', () => {
  it('a stray segment name near 2^53 does not cost a single record', async () => {
    const dir = join(root, 'q');
    mkdirSync(dir, { mode: 0o700 });
    const stray = join(dir, segmentName(2 ** 53 - 1000));
    writeFileSync(stray, 'not a segment');
    const { queue: q, findings } = await openQueue(dir, { segmentBytes: 64 * 1024 });
    expect(findings).toMatchObject([{ kind: 'bad-segment', file: stray }]);
    for (let i = 1; i <= 2000; i++) expect(q.append(b(`record ${i}`))).toBe(true);
    await closeQueue(q);
    const { queue: q2, findings: again } = await openQueue(dir);
    expect(again).toEqual([]);
    const got = drain(q2);
    expect(got.length).toBe(2000);
    expect(got.at(-1)).toBe('record 2000');
  });

  it('at the top of the id space appends are refused with a clear error; nothing accepted is lost', async () => {
    const dir = join(root, 'q');
    mkdirSync(dir, { mode: 0o700 });
    // A valid segment whose last record has the id 2^53 - 3.
    const first = Number.MAX_SAFE_INTEGER - 2;
    const file = join(dir, segmentName(first));
    writeFileSync(file, Buffer.concat([encodeSegmentHeader(first), encodeRecord(first, b('high'))]));
    const { queue: q } = await openQueue(dir);
    expect(q.append(b('a'))).toBe(true); // id 2^53 - 2
    expect(q.append(b('b'))).toBe(true); // id 2^53 - 1, the last safe integer
    expect(q.append(b('c'))).toBe(false);
    expect(q.status).toBe('error');
    expect(q.lastError?.message).toMatch(/record ids are exhausted/);
    await closeQueue(q);
    const { queue: q2 } = await openQueue(dir);
    expect(drain(q2)).toEqual(['high', 'a', 'b']);
  });

  it('salvages the intact records behind a zeroed segment header', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir);
    for (let i = 1; i <= 20; i++) q.append(b(`record ${i}`));
    await closeQueue(q);
    const [seg] = readdirSync(dir).filter((n) => SEGMENT_NAME_RE.test(n));
    const fd = openSync(join(dir, seg!), 'r+');
    writeSync(fd, Buffer.alloc(SEGMENT_HEADER_SIZE), 0, SEGMENT_HEADER_SIZE, 0);
    closeSync(fd);
    const { queue: q2, findings } = await openQueue(dir);
    expect(findings).toMatchObject([{ kind: 'salvaged-segment', file: join(dir, seg!), records: 20 }]);
    expect(findings[0]!.message).toMatch(/header is unusable \(wrong magic.*20 intact record\(s\) kept/);
    expect(drain(q2)).toEqual(Array.from({ length: 20 }, (_, i) => `record ${i + 1}`));
    // The header was rewritten: the next start finds nothing to report.
    await closeQueue(q2);
    const { findings: again } = await openQueue(dir);
    expect(again).toEqual([]);
  });
});
