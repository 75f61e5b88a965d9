/**
 * The two durable-queue behaviours the fault matrix depends on, checked on the queue itself:
 * - `flushAcks()` (called by the session after each batch of replies) makes acknowledgements survive a
 *   crash of the process, so a restart after kill -9 resends at most one window;
 * - a full file system (ENOSPC before `queue_max_bytes`) is recovered from once the records are
 *   acknowledged: the active segment is closed so that it can be deleted and its space comes back.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DurableQueue, type DurableQueueOptions } from '../../src/queue/durable-queue.js';
import { requireOrSkip } from '../helpers/prereq.js';

const b = (s: string) => Buffer.from(s);
const cleanups: (() => unknown)[] = [];

afterEach(async () => {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch {
      // keep cleaning up
    }
  }
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'auditrelay-qfault-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function openQueue(dir: string, options: Partial<DurableQueueOptions> = {}): Promise<DurableQueue> {
  const { queue } = await DurableQueue.open({
    dir,
    maxBytes: 1024 * 1024 * 1024,
    fsync: 'interval',
    fsyncIntervalMs: 200,
    ackPersistMs: 60_000,
    ...options,
  });
  cleanups.push(() => queue.close());
  return queue;
}

/** What a restart after kill -9 sends: a copy of the directory as the killed process left it. */
async function afterCrash(dir: string): Promise<string[]> {
  const copy = `${dir}-crashed`;
  cpSync(dir, copy, { recursive: true, filter: (src) => !src.endsWith('/lock') });
  cleanups.push(() => rmSync(copy, { recursive: true, force: true }));
  const q = await openQueue(copy);
  const out: string[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) out.push(r.payload.toString());
  return out;
}

describe('durable queue under faults', () => {
  it('flushAcks: acknowledgements survive kill -9, so only the in-flight window is sent again', async () => {
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir);
    for (let i = 1; i <= 10; i++) q.append(b(`r${i}`));
    // A window of 4 in flight, 3 of them acknowledged (one batch of replies), then flushed.
    const inFlight = [q.takeNext()!, q.takeNext()!, q.takeNext()!, q.takeNext()!];
    for (const r of inFlight.slice(0, 3)) q.ack(r.id);
    q.flushAcks();
    expect(await afterCrash(dir)).toEqual(['r4', 'r5', 'r6', 'r7', 'r8', 'r9', 'r10']);
    // Later batches rewrite the same cursor in place.
    q.ack(inFlight[3]!.id);
    for (let i = 0; i < 3; i++) q.ack(q.takeNext()!.id);
    q.flushAcks();
    rmSync(`${dir}-crashed`, { recursive: true, force: true });
    expect(await afterCrash(dir)).toEqual(['r8', 'r9', 'r10']);
  });

  it('without flushAcks the cursor is saved on its timer only (at-least-once after a crash)', async () => {
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir);
    for (let i = 1; i <= 4; i++) q.append(b(`r${i}`));
    for (let i = 0; i < 3; i++) q.ack(q.takeNext()!.id);
    expect(await afterCrash(dir)).toEqual(['r1', 'r2', 'r3', 'r4']);
  });

  it('appendMany is append() for each record: same ids, same segments, same refusals at the bound', async () => {
    let seed = 42;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const payloads = Array.from({ length: 400 }, (_, i) => b(`r${i} ${'x'.repeat(rnd(300))}\n`));
    const small = { maxBytes: 16 * 1024, segmentBytes: 1024, memoryWindow: 8 };
    const one = await openQueue(join(tempDir(), 'one'), small);
    const many = await openQueue(join(tempDir(), 'many'), small);
    let accepted = 0;
    while (accepted < payloads.length && one.append(payloads[accepted]!)) accepted++;
    let taken = 0;
    while (taken < payloads.length) {
      const n = many.appendMany(payloads.slice(taken, taken + 1 + rnd(40)));
      taken += n;
      if (n === 0) break;
    }
    expect(accepted).toBeLessThan(payloads.length); // the bound was reached
    expect(taken).toBe(accepted);
    expect(many.status).toBe(one.status);
    expect(many.diskBytes).toBe(one.diskBytes);
    const drain = (q: DurableQueue) => {
      const out: string[] = [];
      for (let r = q.takeNext(); r; r = q.takeNext()) out.push(`${r.id}:${r.payload.toString()}`);
      return out;
    };
    expect(drain(many)).toEqual(drain(one));
  });

  const root = requireOrSkip({
    suite: 'durable queue on a full file system',
    root: true,
    binaries: ['mount'],
  });

  it.skipIf(!root)(
    'recovers from a full file system (ENOSPC below queue_max_bytes) once records are acknowledged',
    async () => {
      const mnt = join(tempDir(), 'mnt');
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'auditrelay-qfault', mnt]);
      cleanups.push(() => execFileSync('umount', ['-l', mnt]));
      const q = await openQueue(join(mnt, 'q'));
      const payload = (i: number) => b(`type=USER_CMD msg=audit(1.000:${i}): ${'x'.repeat(200)}\n`);
      let appended = 0;
      while (q.append(payload(appended + 1))) appended++;
      expect(appended).toBeGreaterThan(100);
      expect(q.status).toBe('error');
      expect((q.lastError as NodeJS.ErrnoException).code).toBe('ENOSPC');
      // Still full while nothing is acknowledged.
      expect(q.append(payload(appended + 1))).toBe(false);
      // The server acknowledges everything: the segment that filled the disk goes, and with it the error.
      const drained = new Promise<void>((resolve) => q.once('drain', () => resolve()));
      for (let r = q.takeNext(); r; r = q.takeNext()) q.ack(r.id);
      await drained;
      expect(q.append(payload(appended + 1))).toBe(true);
      expect(q.status).toBe('holding');
      expect(q.takeNext()!.payload.toString()).toBe(payload(appended + 1).toString());
    },
  );
});
