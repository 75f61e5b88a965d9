/**
 * The RecordQueue contract (src/queue/types.ts), one suite run over every implementation: the memory queue, the
 * durable queue (with a tiny memory window and tiny segments, so that records spill to disk and are read back)
 * and the clean-stop queue of `mode = immediate`. Order, in-order acks, rewind, events, appendMany, the bound
 * with full/drain, flushAcks, lastError, and what a close leaves for the next start, per `persistence`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QueueError } from '../../src/errors.js';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import { SpillOnStopQueue } from '../../src/queue/spill-on-stop-queue.js';
import type { RecordQueue } from '../../src/queue/types.js';

const b = (s: string) => Buffer.from(s);
const text = (q: RecordQueue) => q.takeNext()?.payload.toString();

let root: string;
const open: RecordQueue[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-contract-'));
});

afterEach(async () => {
  for (const q of open.splice(0)) await q.close();
  rmSync(root, { recursive: true, force: true });
});

interface Implementation {
  /** A queue with room for far more than a test appends. */
  make(): Promise<RecordQueue>;
  /** A queue that refuses records after a few dozen small ones. */
  bounded(): Promise<RecordQueue>;
  /** What the next start finds in the same place after close(), or null when nothing is kept. */
  reopen(): Promise<RecordQueue | null>;
}

function track<T extends RecordQueue>(q: T): T {
  open.push(q);
  return q;
}

const durable = (maxBytes = 64 * 1024 * 1024) =>
  DurableQueue.open({
    dir: join(root, 'q'),
    maxBytes,
    fsync: 'never',
    fsyncIntervalMs: 200,
    memoryWindow: 3,
    segmentBytes: 1024,
  }).then((r) => track(r.queue));

const spilling = (capacity = 1_000_000) =>
  SpillOnStopQueue.open({
    capacity,
    dir: join(root, 'q'),
    maxBytes: 64 * 1024 * 1024,
    fsync: 'never',
    fsyncIntervalMs: 200,
  }).then(track);

const implementations: [string, Implementation][] = [
  [
    'MemoryQueue',
    {
      make: async () => track(new MemoryQueue(1_000_000)),
      bounded: async () => track(new MemoryQueue(40)),
      reopen: async () => null,
    },
  ],
  ['DurableQueue', { make: () => durable(), bounded: () => durable(16 * 1024), reopen: () => durable() }],
  ['SpillOnStopQueue', { make: () => spilling(), bounded: () => spilling(40), reopen: () => spilling() }],
];

/** The id of the oldest in-flight record of a memory queue (its ids start at 1 and are consecutive). */
function oldestInFlightId(m: MemoryQueue): number {
  return m.totalAcked + 1;
}

/** Takes every unsent record, acknowledging none. */
function drainTexts(q: RecordQueue): string[] {
  const out: string[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) out.push(r.payload.toString());
  return out;
}

describe.each(implementations)('RecordQueue contract: %s', (_name, impl) => {
  it('keeps order, acks the head, rewinds in-flight records', async () => {
    const q = await impl.make();
    for (let i = 1; i <= 5; i++) expect(q.append(b(`r${i}`))).toBe(true);
    const a = q.takeNext()!;
    const c = q.takeNext()!;
    expect([a.payload.toString(), c.payload.toString()]).toEqual(['r1', 'r2']);
    expect(q.inFlight).toBe(2);
    q.ack(a.id);
    expect(q.depth).toBe(4);
    expect(q.bytes).toBe(8);
    q.rewind();
    expect(q.inFlight).toBe(0);
    expect(q.unsent).toBe(4);
    expect(text(q)).toBe('r2');
    expect(() => q.ack(999)).toThrow(/not the oldest in flight/);
  });

  it('emits readable when unsent records appear after being empty, and status changes', async () => {
    const q = await impl.make();
    const seen: string[] = [];
    q.on('readable', () => seen.push('readable'));
    q.on('status', (s) => seen.push(s));
    q.append(b('a'));
    q.append(b('b'));
    const x = q.takeNext()!;
    const y = q.takeNext()!;
    q.rewind();
    q.takeNext();
    q.takeNext();
    q.ack(x.id);
    q.ack(y.id);
    expect(seen).toEqual(['readable', 'holding', 'readable', 'empty']);
    expect(q.totalAppended).toBe(2);
    expect(q.totalAcked).toBe(2);
  });

  it('matches the memory queue on a long random sequence of operations', async () => {
    const q = await impl.make();
    const model = new MemoryQueue(1_000_000);
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let n = 0;
    for (let step = 0; step < 5000; step++) {
      const op = rand(10);
      if (op < 4) {
        const p = b(`rec-${n++}-${'x'.repeat(rand(40))}`);
        expect(q.append(p)).toBe(model.append(p));
      } else if (op < 8) {
        const got = q.takeNext();
        const want = model.takeNext();
        expect(got?.payload.toString()).toBe(want?.payload.toString());
        expect(got?.id).toBe(want?.id);
      } else if (op < 9) {
        const k = rand(5);
        for (let i = 0; i < k && model.inFlight > 0; i++) {
          const id = oldestInFlightId(model);
          model.ack(id);
          q.ack(id);
        }
      } else {
        q.rewind();
        model.rewind();
      }
      expect([q.depth, q.inFlight, q.unsent, q.bytes, q.status]).toEqual([
        model.depth,
        model.inFlight,
        model.unsent,
        model.bytes,
        model.status,
      ]);
    }
  });

  it('gives increasing ids and refuses an ack out of order or with nothing in flight', async () => {
    const q = await impl.make();
    expect(() => q.ack(1)).toThrow(QueueError);
    q.appendMany([b('a'), b('b'), b('c')]);
    const ids = [q.takeNext()!.id, q.takeNext()!.id, q.takeNext()!.id];
    expect(ids[1]).toBe(ids[0]! + 1);
    expect(ids[2]).toBe(ids[1]! + 1);
    expect(() => q.ack(ids[1]!)).toThrow(/not the oldest in flight/);
    q.ack(ids[0]!);
    expect(q.inFlight).toBe(2);
  });

  it('appendMany is append() per record, and stops at the first one refused at the bound', async () => {
    const q = await impl.bounded();
    const many = Array.from({ length: 1000 }, (_, i) => b(`record ${i} ${'y'.repeat(100)}`));
    const taken = q.appendMany(many);
    expect(taken).toBeGreaterThan(10);
    expect(taken).toBeLessThan(many.length);
    expect(q.status).toBe('full');
    expect(q.depth).toBe(taken);
    expect(q.totalAppended).toBe(taken);
    expect(q.append(many[taken]!)).toBe(false);
    expect(q.appendMany(many.slice(taken))).toBe(0);
    expect(drainTexts(q)).toEqual(many.slice(0, taken).map(String));
  });

  it('full, then drain once acknowledgements free room; the refused record is accepted then', async () => {
    const q = await impl.bounded();
    const rec = b('z'.repeat(100));
    while (q.append(rec)) {}
    expect(q.status).toBe('full');
    let drained = false;
    q.once('drain', () => {
      drained = true;
    });
    while (!drained) {
      const r = q.takeNext();
      expect(r).toBeDefined();
      q.ack(r!.id);
    }
    expect(q.status).toBe('holding');
    expect(q.append(rec)).toBe(true);
  });

  it('flushAcks never throws and changes nothing that is queued; a healthy queue has no lastError', async () => {
    const q = await impl.make();
    q.flushAcks();
    for (let i = 1; i <= 4; i++) q.append(b(`r${i}`));
    q.ack(q.takeNext()!.id);
    q.flushAcks();
    expect(q.depth).toBe(3);
    expect(q.lastError).toBeNull();
    expect(['crash-safe', 'clean-stop', 'none']).toContain(q.persistence);
  });

  it('close: the next start finds what persistence promises — undelivered records then held ones, in order', async () => {
    const q = await impl.make();
    for (let i = 1; i <= 10; i++) q.append(b(`r${i}`));
    q.ack(q.takeNext()!.id); // r1 delivered
    q.takeNext(); // r2 in flight
    const { lost } = await q.close([b('held 1'), b('held 2')]);
    open.splice(open.indexOf(q), 1);
    const next = await impl.reopen();
    if (q.persistence === 'none') {
      expect(lost).toBe(9 + 2);
      expect(next).toBeNull();
      return;
    }
    expect(lost).toBe(0);
    expect(drainTexts(next!)).toEqual([
      'r2',
      'r3',
      'r4',
      'r5',
      'r6',
      'r7',
      'r8',
      'r9',
      'r10',
      'held 1',
      'held 2',
    ]);
  });
});
