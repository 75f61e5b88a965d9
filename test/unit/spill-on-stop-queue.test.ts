/**
 * The queue of `mode = immediate` (src/queue/spill-on-stop-queue.ts): a memory queue whose clean stop writes the
 * undelivered records to queue_dir, and whose next start sends them first. The contract it shares with the other
 * queues is in queue-contract.test.ts; here, what is its own.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { SpillOnStopQueue } from '../../src/queue/spill-on-stop-queue.js';
import type { RecordQueue } from '../../src/queue/types.js';

const b = (s: string) => Buffer.from(s);
let root: string;
let dir: string;
const opened: RecordQueue[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-spill-'));
  dir = join(root, 'q');
});
afterEach(async () => {
  for (const q of opened.splice(0)) await q.close();
  chmodSync(root, 0o700);
  rmSync(root, { recursive: true, force: true });
});

function capture() {
  const lines: { level: number; msg: string }[] = [];
  return { log: pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) }), lines };
}

async function openSpill(log = capture().log, capacity = 100): Promise<SpillOnStopQueue> {
  const q = await SpillOnStopQueue.open({
    capacity,
    dir,
    maxBytes: 1 << 24,
    fsync: 'never',
    fsyncIntervalMs: 200,
    log,
  });
  opened.push(q);
  return q;
}

async function stop(q: RecordQueue, held: Buffer[] = []) {
  opened.splice(opened.indexOf(q), 1);
  return q.close(held);
}

function takeAll(q: RecordQueue): { id: number; text: string }[] {
  const out: { id: number; text: string }[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) out.push({ id: r.id, text: r.payload.toString() });
  return out;
}

describe('SpillOnStopQueue (mode = immediate)', () => {
  it('touches nothing on disk until a stop has records to keep', async () => {
    const q = await openSpill();
    q.append(b('a'));
    q.ack(q.takeNext()!.id);
    expect(await stop(q)).toEqual({ lost: 0 });
    expect(existsSync(dir)).toBe(false);
  });

  it('sends the records saved at the last stop first, then new ones, with ids above theirs', async () => {
    const { log, lines } = capture();
    const first = await openSpill(log);
    for (let i = 1; i <= 5; i++) first.append(b(`old ${i}`));
    first.ack(first.takeNext()!.id); // old 1 delivered
    first.takeNext(); // old 2 in flight: not delivered
    expect(await stop(first, [b('held')])).toEqual({ lost: 0 });
    expect(
      lines.some((l) => /5 undelivered record\(s\) written to .*\/q; they are sent first/.test(l.msg)),
    ).toBe(true);

    const second = await openSpill(log);
    expect(
      lines.some((l) => /5 record\(s\) saved at the last stop \(in .*\/q\) are sent first/.test(l.msg)),
    ).toBe(true);
    expect(second.depth).toBe(5);
    second.append(b('new 1'));
    second.append(b('new 2'));
    const got = takeAll(second);
    expect(got.map((r) => r.text)).toEqual(['old 2', 'old 3', 'old 4', 'old 5', 'held', 'new 1', 'new 2']);
    const ids = got.map((r) => r.id);
    expect(ids).toEqual([...ids].sort((x, y) => x - y));
    expect(new Set(ids).size).toBe(ids.length);
    // A reconnect sends everything unacknowledged again, saved records first.
    second.rewind();
    expect(takeAll(second).map((r) => r.text)).toEqual(got.map((r) => r.text));
    for (const r of got) second.ack(r.id);
    expect(second.depth).toBe(0);
    expect(lines.some((l) => /the records saved at the last stop are delivered/.test(l.msg))).toBe(true);
    await stop(second);
    // Delivered: nothing is sent a third time, and the directory is free (no lock held).
    expect(readdirSync(dir).filter((n) => n.startsWith('seg-'))).toEqual([]);
    const { queue: check } = await DurableQueue.open({
      dir,
      maxBytes: 1 << 24,
      fsync: 'never',
      fsyncIntervalMs: 200,
    });
    expect(check.depth).toBe(0);
    await check.close();
  });

  it('a stop before the saved records are delivered keeps them, and the new ones after them', async () => {
    const first = await openSpill();
    first.appendMany([b('a'), b('b')]);
    await stop(first);
    const second = await openSpill();
    second.append(b('c'));
    second.ack(second.takeNext()!.id); // a delivered
    second.takeNext(); // b in flight
    await stop(second);
    const third = await openSpill();
    expect(takeAll(third).map((r) => r.text)).toEqual(['b', 'c']);
  });

  it('sends first what mode = forward left in queue_dir', async () => {
    const { queue: forward } = await DurableQueue.open({
      dir,
      maxBytes: 1 << 24,
      fsync: 'never',
      fsyncIntervalMs: 200,
    });
    forward.appendMany([b('from forward 1'), b('from forward 2')]);
    await forward.close();
    const q = await openSpill();
    q.append(b('immediate'));
    expect(takeAll(q).map((r) => r.text)).toEqual(['from forward 1', 'from forward 2', 'immediate']);
  });

  it('holds back no more than queue_depth in memory; a stop keeps the held records too', async () => {
    const q = await openSpill(capture().log, 3);
    expect(q.appendMany([b('1'), b('2'), b('3'), b('4')])).toBe(3);
    expect(q.status).toBe('full');
    await stop(q, [b('4'), b('5')]);
    const next = await openSpill(capture().log, 3);
    expect(next.depth).toBe(5); // the saved part is not bounded by queue_depth
    expect(takeAll(next).map((r) => r.text)).toEqual(['1', '2', '3', '4', '5']);
  });

  it('a queue_dir others can write: refused at start, and nothing written into it at a stop', async () => {
    const first = await openSpill();
    first.append(b('kept'));
    await stop(first);
    chmodSync(dir, 0o777);
    await expect(openSpill()).rejects.toThrow(/queue directory \(queue_dir\) .* is writable by others/);
    // Made unsafe while the agent runs: the records are not written into it at the stop (reported lost).
    rmSync(dir, { recursive: true });
    const { log, lines } = capture();
    const q = await openSpill(log);
    q.append(b('x'));
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    expect(await stop(q)).toEqual({ lost: 1 });
    expect(readdirSync(dir)).toEqual([]);
    expect(
      lines.some((l) =>
        /cannot write the 1 undelivered record\(s\) to .*: .*writable by others.*they are lost/.test(l.msg),
      ),
    ).toBe(true);
  });
});
