import { spawnSync } from 'node:child_process';
import {
  appendFileSync,
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DurableQueue, type DurableQueueOptions, type QueueFinding } from '../../src/queue/durable-queue.js';
import { RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, SEGMENT_NAME_RE } from '../../src/queue/segment-format.js';
import type { RecordQueue } from '../../src/queue/types.js';
import { requireOrSkip } from '../helpers/prereq.js';

const b = (s: string) => Buffer.from(s);
const text = (q: RecordQueue) => q.takeNext()?.payload.toString();

let root: string;
const open: DurableQueue[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-dq-'));
});

afterEach(async () => {
  for (const q of open.splice(0)) await q.close();
  rmSync(root, { recursive: true, force: true });
});

async function openQueue(
  dir: string,
  options: Partial<DurableQueueOptions> = {},
): Promise<{ queue: DurableQueue; findings: QueueFinding[] }> {
  const r = await DurableQueue.open({
    dir,
    maxBytes: 64 * 1024 * 1024,
    fsync: 'never',
    fsyncIntervalMs: 200,
    ...options,
  });
  open.push(r.queue);
  return r;
}

async function reopen(q: DurableQueue, options: Partial<DurableQueueOptions> = {}) {
  await q.close();
  open.splice(open.indexOf(q), 1);
  return openQueue(q.dir, options);
}

function segments(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => SEGMENT_NAME_RE.test(n))
    .sort()
    .map((n) => join(dir, n));
}

/** Takes every unsent record, acknowledging none. */
function drainTexts(q: RecordQueue): string[] {
  const out: string[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) out.push(r.payload.toString());
  return out;
}

function takeAndAck(q: RecordQueue, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = q.takeNext();
    if (!r) break;
    out.push(r.payload.toString());
    q.ack(r.id);
  }
  return out;
}

// The behaviour shared with the other queues (order, acks, rewind, events, a random sequence against the memory
// queue, bounds, close) is the contract suite: test/unit/queue-contract.test.ts.

// ---------------------------------------------------------------------------------------------

describe('durable queue: persistence', () => {
  it.each(['always', 'interval', 'never'] as const)(
    'brings back unacknowledged records in order after close/open, not acknowledged ones (fsync %s)',
    async (fsync) => {
      const dir = join(root, 'q');
      const { queue: q } = await openQueue(dir, { fsync });
      for (let i = 1; i <= 10; i++) q.append(b(`r${i}`));
      expect(takeAndAck(q, 3)).toEqual(['r1', 'r2', 'r3']);
      q.takeNext(); // r4 in flight, not acknowledged
      const { queue: q2, findings } = await reopen(q);
      expect(findings).toEqual([]);
      expect(q2.depth).toBe(7);
      expect(q2.bytes).toBe(b('r4r5r6r7r8r9r10').length);
      expect(q2.status).toBe('holding');
      expect(q2.append(b('r11'))).toBe(true);
      const first = q2.takeNext()!;
      expect(first.payload.toString()).toBe('r4');
      expect(first.id).toBe(4);
      expect([first.payload.toString(), ...drainTexts(q2)]).toEqual([
        'r4',
        'r5',
        'r6',
        'r7',
        'r8',
        'r9',
        'r10',
        'r11',
      ]);
      expect(q2.nextId).toBe(12);
    },
  );

  it('keeps ids increasing across restarts and deletes fully acknowledged segments', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { segmentBytes: 1024 });
    for (let i = 0; i < 200; i++) q.append(b(`record ${i} ${'p'.repeat(30)}`));
    expect(segments(dir).length).toBeGreaterThan(5);
    takeAndAck(q, 200);
    expect(q.depth).toBe(0);
    expect(segments(dir).length).toBe(1); // only the active one
    const { queue: q2 } = await reopen(q);
    expect(segments(dir).length).toBe(0);
    expect(q2.depth).toBe(0);
    expect(q2.status).toBe('empty');
    expect(q2.nextId).toBe(201);
    q2.append(b('next'));
    expect(q2.takeNext()!.id).toBe(201);
  });

  it('saves the ack cursor on its timer, so a crash resends only what was acknowledged since', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { ackPersistMs: 10 });
    for (let i = 1; i <= 10; i++) q.append(b(`r${i}`));
    takeAndAck(q, 3);
    await new Promise((r) => setTimeout(r, 60));
    takeAndAck(q, 2); // acknowledged after the last save: sent again after the crash
    const copy = join(root, 'crashed');
    cpSync(dir, copy, { recursive: true, filter: (src) => !src.endsWith('/lock') });
    const { queue: q2 } = await openQueue(copy);
    expect(drainTexts(q2)).toEqual(['r4', 'r5', 'r6', 'r7', 'r8', 'r9', 'r10']);
  });

  it('reads a large backlog back through a small memory window', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { memoryWindow: 16, segmentBytes: 4096 });
    for (let i = 0; i < 2000; i++) q.append(b(`line ${i}`));
    expect(q.spilled).toBe(2000 - 16);
    const got = drainTexts(q);
    expect(got.length).toBe(2000);
    expect(got.every((t, i) => t === `line ${i}`)).toBe(true);
    q.rewind();
    expect(q.takeNext()!.payload.toString()).toBe('line 0');
  });

  it('survives a crash: a copy of the directory taken while open (as after kill -9) opens intact', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { memoryWindow: 8, segmentBytes: 2048, ackPersistMs: 60_000 });
    for (let i = 1; i <= 300; i++) q.append(b(`r${i}`));
    takeAndAck(q, 120);
    // Snapshot of the files as a killed process would leave them (the page cache holds every write).
    const copy = join(root, 'crashed');
    cpSync(dir, copy, { recursive: true });
    rmSync(join(copy, 'lock')); // the lock names this (live) process; a dead owner is covered below
    const { queue: q2, findings } = await openQueue(copy);
    expect(findings).toEqual([]);
    const got = drainTexts(q2);
    // The ack cursor is written at most every ackPersistMs or when a segment is deleted, so some
    // acknowledged records may come back (at-least-once), but every unacknowledged one does, in order.
    expect(got.at(-1)).toBe('r300');
    const firstN = Number(got[0]!.slice(1));
    expect(firstN).toBeLessThanOrEqual(121);
    expect(got).toEqual(Array.from({ length: 300 - firstN + 1 }, (_, i) => `r${firstN + i}`));
  });
});

// ---------------------------------------------------------------------------------------------

describe('durable queue: damaged files', () => {
  async function fill(n: number, options: Partial<DurableQueueOptions> = {}) {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, options);
    for (let i = 1; i <= n; i++) q.append(b(`record-${String(i).padStart(3, '0')}`));
    await q.close();
    open.splice(open.indexOf(q), 1);
    return dir;
  }
  const frame = RECORD_HEADER_SIZE + 'record-001'.length;

  it('truncates a torn tail and keeps every record before it', async () => {
    const dir = await fill(20);
    const [seg] = segments(dir);
    const size = statSync(seg!).size;
    truncateSync(seg!, size - 7); // the last record is cut in the middle
    const { queue: q, findings } = await openQueue(dir);
    expect(findings).toMatchObject([
      { kind: 'torn-tail', file: seg, offset: SEGMENT_HEADER_SIZE + 19 * frame, bytes: frame - 7 },
    ]);
    expect(statSync(seg!).size).toBe(SEGMENT_HEADER_SIZE + 19 * frame);
    expect(q.depth).toBe(19);
    q.append(b('after'));
    const got = drainTexts(q);
    expect(got.length).toBe(20);
    expect(got.at(-2)).toBe('record-019');
    expect(got.at(-1)).toBe('after');
    // and the repaired file opens cleanly
    const { findings: again } = await reopen(q);
    expect(again).toEqual([]);
  });

  it('skips a record with flipped bytes mid-file, keeps every intact record after it, reports the offset', async () => {
    const dir = await fill(20);
    const [seg] = segments(dir);
    const data = readFileSync(seg!);
    const at = SEGMENT_HEADER_SIZE + 9 * frame; // record 10
    data[at + RECORD_HEADER_SIZE + 3]! ^= 0xff;
    writeFileSync(seg!, data);
    const { queue: q, findings } = await openQueue(dir);
    expect(findings).toMatchObject([
      { kind: 'corrupt-record', file: seg, offset: at, end: at + frame, bytes: frame, records: 1 },
    ]);
    expect(findings[0]!.message).toMatch(/corrupt bytes \d+\.\.\d+ in .*seg-0+1\.log/);
    expect(q.depth).toBe(19);
    const got = drainTexts(q);
    expect(got).toEqual(
      Array.from({ length: 20 }, (_, i) => `record-${String(i + 1).padStart(3, '0')}`).filter(
        (r) => r !== 'record-010',
      ),
    );
  });

  it('resynchronises after a corrupted length field', async () => {
    const dir = await fill(20);
    const [seg] = segments(dir);
    const data = readFileSync(seg!);
    const at = SEGMENT_HEADER_SIZE + 4 * frame; // record 5
    data.writeUInt32LE(3, at + 4); // claims a 3-byte payload
    writeFileSync(seg!, data);
    const { queue: q, findings } = await openQueue(dir, { memoryWindow: 2 });
    expect(findings).toMatchObject([{ kind: 'corrupt-record', offset: at, end: at + frame, records: 1 }]);
    const got = drainTexts(q);
    expect(got.length).toBe(19);
    expect(got[4]).toBe('record-006');
  });

  it('reports a corruption found only when reading the backlog back, and goes on', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { memoryWindow: 2 });
    for (let i = 1; i <= 20; i++) q.append(b(`record-${String(i).padStart(3, '0')}`));
    const [seg] = segments(dir);
    const data = readFileSync(seg!);
    const at = SEGMENT_HEADER_SIZE + 11 * frame; // record 12, still on disk only
    data[at + RECORD_HEADER_SIZE]! ^= 0x01;
    writeFileSync(seg!, data);
    const got = drainTexts(q);
    expect(got.length).toBe(19);
    expect(got).not.toContain('record-012');
    expect(q.lastError?.message).toMatch(/corrupt record .* at byte \d+/);
    expect(q.depth).toBe(19);
  });

  it('sets aside a zero-length segment and one with the wrong magic, keeping the others', async () => {
    const dir = await fill(100, { segmentBytes: 1024 });
    const segs = segments(dir);
    expect(segs.length).toBeGreaterThan(1);
    const empty = join(dir, 'seg-00000000000000000500.log');
    writeFileSync(empty, '');
    const [firstSeg] = segs;
    const magicless = readFileSync(firstSeg!);
    magicless.write('NOTAQSEG', 0, 'latin1');
    writeFileSync(firstSeg!, magicless);
    const { queue: q, findings } = await openQueue(dir);
    expect(findings).toMatchObject([
      { kind: 'bad-segment', file: firstSeg, movedTo: `${firstSeg}.corrupt` },
      { kind: 'empty-segment', file: empty, movedTo: `${empty}.corrupt` },
    ]);
    expect(findings[0]!.message).toMatch(/wrong magic/);
    expect(existsSync(`${firstSeg}.corrupt`)).toBe(true);
    expect(existsSync(`${empty}.corrupt`)).toBe(true);
    const got = drainTexts(q);
    expect(got.length).toBeGreaterThan(0);
    expect(got.at(-1)).toBe('record-100');
    // ids stay above every id a segment name ever claimed
    expect(q.nextId).toBeGreaterThan(500);
  });

  it('resends everything when the ack cursor is damaged', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir);
    for (let i = 1; i <= 5; i++) q.append(b(`r${i}`));
    takeAndAck(q, 3);
    await q.close();
    open.splice(open.indexOf(q), 1);
    appendFileSync(join(dir, 'ack'), 'junk');
    const { queue: q2, findings } = await openQueue(dir);
    expect(findings).toMatchObject([{ kind: 'corrupt-ack-cursor', movedTo: join(dir, 'ack.corrupt') }]);
    expect(drainTexts(q2)).toEqual(['r1', 'r2', 'r3', 'r4', 'r5']);
  });
});

// ---------------------------------------------------------------------------------------------

describe('durable queue: bounds, locking and errors', () => {
  it('refuses records at the byte bound (status full), then emits drain once acks free room', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir, { maxBytes: 16 * 1024, segmentBytes: 1024 });
    const seen: string[] = [];
    q.on('status', (s) => seen.push(s));
    q.on('drain', () => seen.push('drain'));
    const rec = b('x'.repeat(100));
    let accepted = 0;
    while (q.append(rec)) accepted++;
    expect(accepted).toBeGreaterThan(50);
    expect(q.status).toBe('full');
    expect(q.diskBytes).toBeLessThanOrEqual(16 * 1024);
    expect(q.append(rec)).toBe(false);
    expect(seen).toEqual(['holding', 'full']);
    // Acks free room only when a whole segment is acknowledged.
    let acked = 0;
    while (!seen.includes('drain')) {
      const r = q.takeNext()!;
      q.ack(r.id);
      acked++;
    }
    expect(acked).toBeLessThanOrEqual(Math.ceil(1024 / (RECORD_HEADER_SIZE + 100)) + 1);
    expect(seen).toEqual(['holding', 'full', 'holding', 'drain']);
    expect(q.append(rec)).toBe(true);
    // Everything acknowledged: the space of the active segment is reused as well.
    while (q.append(rec)) {}
    takeAndAck(q, 1_000);
    expect(q.depth).toBe(0);
    expect(q.append(rec)).toBe(true);
  });

  it('refuses a second opener of the same directory with a clear message', async () => {
    const dir = join(root, 'q');
    await openQueue(dir);
    await expect(openQueue(dir)).rejects.toThrow(
      /queue directory .* is in use by this process \(lock file .*lock\); only one agent may use a queue directory/,
    );
  });

  it('takes over the lock of a process that is gone, or of a reused pid', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir);
    q.append(b('kept'));
    await q.close();
    open.splice(0);
    const dead = spawnSync('true').pid!;
    writeFileSync(join(dir, 'lock'), `${dead} 12345\n`);
    const { queue: q2, findings } = await openQueue(dir);
    expect(findings).toMatchObject([{ kind: 'stale-lock', file: join(dir, 'lock') }]);
    expect(findings[0]!.message).toContain(`process ${dead}`);
    expect(text(q2)).toBe('kept');
    await q2.close();
    open.splice(0);
    // A live pid with another start time is a reused pid: the lock is stale too.
    writeFileSync(join(dir, 'lock'), `${process.ppid} 1\n`);
    const { findings: f3 } = await openQueue(dir);
    expect(f3).toMatchObject([{ kind: 'stale-lock' }]);
    expect(readFileSync(join(dir, 'lock'), 'latin1')).toMatch(new RegExp(`^${process.pid} \\d+\\n$`));
    await open.splice(0)[0]!.close();
    // Our own pid with another start time: a previous incarnation (pid 1 of a restarted container).
    writeFileSync(join(dir, 'lock'), `${process.pid} 1\n`);
    const { findings: f4 } = await openQueue(dir);
    expect(f4).toMatchObject([{ kind: 'stale-lock' }]);
  });

  it('rejects a directory that cannot be created', async () => {
    const file = join(root, 'plain-file');
    writeFileSync(file, 'x');
    await expect(openQueue(join(file, 'queue'))).rejects.toThrow(
      /cannot use queue directory .*plain-file\/queue: ENOTDIR/,
    );
  });

  it('accepts a pino logger and logs what open() found', async () => {
    const dir = join(root, 'q');
    const { queue: q } = await openQueue(dir);
    q.append(b('a'));
    await q.close();
    open.splice(0);
    writeFileSync(join(dir, 'seg-00000000000000000900.log'), 'garbage');
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    await openQueue(dir, { log });
    expect(lines.find((l) => l.level === 40)?.msg).toMatch(/queue: segment .* is unusable \(shorter than/);
    expect(lines.at(-1)?.msg).toBe('queue opened with 1 record(s) to send');
  });
});

// A tiny tmpfs makes a real full disk (tests run as root).
const mountable = (() => {
  if (!requireOrSkip({ suite: 'durable queue: full disk (mounts a tmpfs)', root: true, binaries: ['mount'] }))
    return false;
  const probe = mkdtempSync(join(tmpdir(), 'auditrelay-mnt-'));
  const ok = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (ok) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return ok;
})();

describe.runIf(mountable)('durable queue: full disk (tmpfs of 64 KiB)', () => {
  let mnt: string;
  beforeEach(() => {
    mnt = mkdtempSync(join(tmpdir(), 'auditrelay-full-'));
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]).status).toBe(0);
  });
  afterEach(async () => {
    for (const q of open.splice(0)) await q.close();
    spawnSync('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  });

  it('refuses appends without throwing, reports error, keeps what it accepted, and recovers', async () => {
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const { queue: q } = await openQueue(join(mnt, 'q'), {
      maxBytes: 10 * 1024 * 1024,
      segmentBytes: 8192,
      errorRetryMs: 20,
      log,
    });
    const seen: string[] = [];
    q.on('status', (s) => seen.push(s));
    const rec = b('y'.repeat(200));
    let accepted = 0;
    while (q.append(rec)) accepted++;
    expect(accepted).toBeGreaterThan(100);
    expect(q.status).toBe('error');
    expect(seen).toEqual(['holding', 'error']);
    expect((q.lastError as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(lines.find((l) => l.level === 50)?.msg).toMatch(
      /queue: cannot write to .*: ENOSPC; the \d+ record\(s\) already queued are kept/,
    );
    expect(q.depth).toBe(accepted);
    // The caller is invited to retry (drain) while the error lasts.
    await new Promise<void>((r) => q.once('drain', r));
    expect(q.append(rec)).toBe(false);
    // Everything accepted is still there and intact.
    const got = takeAndAck(q, accepted);
    expect(got.length).toBe(accepted);
    expect(got.every((t) => t === rec.toString())).toBe(true);
    // Acks deleted the segments: writing works again.
    expect(q.append(rec)).toBe(true);
    expect(q.status).toBe('holding');
    expect(lines.some((l) => /queue: writing works again/.test(l.msg))).toBe(true);
  });
});
