/**
 * The durable queue under faults, checked on the queue itself:
 * - `flushAcks()` (called by the session after each batch of replies) makes acknowledgements survive a
 *   crash of the process, so a restart after kill -9 resends at most one window;
 * - a full file system (ENOSPC before `queue_max_bytes`) is recovered from once the records are
 *   acknowledged: the active segment is closed so that it can be deleted and its space comes back;
 * - every file path fails on its own, without root, through the FileOps seam (test/helpers/faulty-file-ops.ts):
 *   EIO reading the backlog back, ENOSPC and EIO writing, failed fsyncs, a cursor that cannot be saved, and
 *   I/O errors while recovering at start. Each time: a clear log line (once), the right status, nothing
 *   accepted lost, and recovery once the fault passes.
 */
import { execFileSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { QueueError } from '../../src/errors.js';
import { DurableQueue, type DurableQueueOptions } from '../../src/queue/durable-queue.js';
import { SEGMENT_NAME_RE } from '../../src/queue/segment-format.js';
import { FaultyFileOps } from '../helpers/faulty-file-ops.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';

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

function capture() {
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
  const count = (re: RegExp) => lines.filter((l) => re.test(l.msg)).length;
  return { log, lines, count };
}

const once = (q: DurableQueue, event: 'drain' | 'readable') =>
  new Promise<void>((resolve) => q.once(event, () => resolve()));

function segmentFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => SEGMENT_NAME_RE.test(n));
}

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

describe('durable queue: every file path fails on its own (FileOps seam, no root)', () => {
  const rec = (i: number) => b(`record ${i}`);

  it('read path: EIO reading the backlog back sets error, keeps the records, retries, then delivers them in order', async () => {
    const fs = new FaultyFileOps();
    const { log, count } = capture();
    const q = await openQueue(join(tempDir(), 'q'), { fs: fs.ops, memoryWindow: 4, errorRetryMs: 20, log });
    for (let i = 1; i <= 50; i++) q.append(rec(i));
    expect(q.spilled).toBe(46);
    fs.fail('readSync', /seg-/, 'EIO');
    const got: string[] = [];
    for (let r = q.takeNext(); r; r = q.takeNext()) got.push(r.payload.toString());
    expect(got).toEqual(['record 1', 'record 2', 'record 3', 'record 4']);
    expect(q.status).toBe('error');
    expect((q.lastError as NodeJS.ErrnoException).code).toBe('EIO');
    expect(q.depth).toBe(50);
    // Retried every errorRetryMs while it lasts; one log line for the whole outage.
    await once(q, 'readable');
    expect(q.takeNext()).toBeUndefined();
    expect(count(/cannot read queued records back from .*seg-.*: EIO; retrying/)).toBe(1);
    fs.heal();
    await once(q, 'readable');
    for (let r = q.takeNext(); r; r = q.takeNext()) got.push(r.payload.toString());
    expect(got).toEqual(Array.from({ length: 50 }, (_, i) => `record ${i + 1}`));
    expect(q.status).toBe('holding');
    expect(count(/queue: reading works again/)).toBe(1);
  });

  it('write path: ENOSPC (or EIO) writing a record refuses it without a partial write, then writing works again', async () => {
    const fs = new FaultyFileOps();
    const { log, count } = capture();
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir, { fs: fs.ops, errorRetryMs: 20, log });
    expect(q.append(rec(1))).toBe(true);
    const [seg] = segmentFiles(dir);
    const size = statSync(join(dir, seg!)).size;
    fs.fail('writeSync', /seg-/, 'ENOSPC');
    expect(q.append(rec(2))).toBe(false);
    expect(q.appendMany([rec(2), rec(3)])).toBe(0);
    expect(q.status).toBe('error');
    expect((q.lastError as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(statSync(join(dir, seg!)).size).toBe(size);
    await once(q, 'drain'); // the caller is invited to retry
    expect(count(/cannot write to .*: ENOSPC; the 1 record\(s\) already queued are kept/)).toBe(1);
    fs.heal();
    expect(q.append(rec(2))).toBe(true);
    expect(q.status).toBe('holding');
    expect(count(/queue: writing works again/)).toBe(1);
    // A segment that cannot be created is the same refusal.
    fs.fail('openSync', /seg-/, 'EIO', 1);
    const fresh = await openQueue(join(tempDir(), 'q2'), { fs: fs.ops, errorRetryMs: 20 });
    expect(fresh.append(rec(1))).toBe(false);
    expect((fresh.lastError as NodeJS.ErrnoException).code).toBe('EIO');
    expect(fresh.append(rec(1))).toBe(true);
    expect(q.takeNext()!.payload.toString()).toBe('record 1');
    expect(q.takeNext()!.payload.toString()).toBe('record 2');
  });

  it('sync path, fsync = always: a failed fdatasync refuses the record (taken back), nothing accepted is lost', async () => {
    const fs = new FaultyFileOps();
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir, { fs: fs.ops, fsync: 'always', errorRetryMs: 20 });
    expect(q.append(rec(1))).toBe(true);
    const [seg] = segmentFiles(dir);
    const size = statSync(join(dir, seg!)).size;
    fs.fail('fdatasyncSync', /seg-/, 'EIO', 1);
    expect(q.append(rec(2))).toBe(false);
    expect(q.status).toBe('error');
    expect(statSync(join(dir, seg!)).size).toBe(size);
    expect(q.append(rec(2))).toBe(true);
    expect(q.status).toBe('holding');
    await q.close();
    const again = await openQueue(dir);
    expect([again.takeNext()?.payload.toString(), again.takeNext()?.payload.toString()]).toEqual([
      'record 1',
      'record 2',
    ]);
  });

  it('sync path, fsync = interval: a failed background fdatasync is reported until a sync succeeds', async () => {
    const fs = new FaultyFileOps();
    const { log, count } = capture();
    const q = await openQueue(join(tempDir(), 'q'), {
      fs: fs.ops,
      fsync: 'interval',
      fsyncIntervalMs: 10,
      log,
    });
    fs.fail('fdatasync', /seg-/, 'EIO');
    q.append(rec(1));
    await pollUntil(() => q.status === 'error', {
      timeoutMs: 5000,
      what: 'status error after a failed sync',
    });
    expect((q.lastError as NodeJS.ErrnoException).code).toBe('EIO');
    expect(count(/fdatasync of .*seg-.* failed: EIO; records written since the last successful sync/)).toBe(
      1,
    );
    fs.heal();
    await pollUntil(() => q.status === 'holding', {
      timeoutMs: 5000,
      what: 'status holding after a good sync',
    });
    expect(count(/queue: data sync works again/)).toBe(1);
    expect(q.takeNext()!.payload.toString()).toBe('record 1');
  });

  it('sync path: a directory that cannot be synced after a segment is created is a warning; appends go on', async () => {
    const fs = new FaultyFileOps();
    const { log, count } = capture();
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir, { fs: fs.ops, log });
    fs.fail('fsyncSync', new RegExp(`^${dir}$`), 'EIO');
    expect(q.append(rec(1))).toBe(true);
    expect(q.status).toBe('holding');
    expect(count(/cannot sync the queue directory/)).toBe(1);
  });

  it('ack-cursor path: a cursor that cannot be saved is a warning (resends after a restart), never a loss', async () => {
    for (const [op, path] of [
      ['openSync', /ack\.tmp$/],
      ['writeSync', /ack\.tmp$/],
      ['fdatasyncSync', /ack\.tmp$/],
      ['renameSync', /ack\.tmp$/],
    ] as const) {
      const fs = new FaultyFileOps();
      const { log, count } = capture();
      const dir = join(tempDir(), 'q');
      const q = await openQueue(dir, { fs: fs.ops, log });
      for (let i = 1; i <= 5; i++) q.append(rec(i));
      fs.fail(op, path, 'EIO');
      for (let i = 0; i < 3; i++) q.ack(q.takeNext()!.id);
      q.flushAcks();
      await q.close();
      expect(q.status, op).not.toBe('error');
      expect((q.lastError as NodeJS.ErrnoException).code, op).toBe('EIO');
      expect(
        count(
          /cannot save the acknowledgement position: EIO; after a restart, records acknowledged since may be sent again/,
        ),
        op,
      ).toBe(1);
      expect(existsSync(join(dir, 'ack.tmp')), op).toBe(false);
      const again = await openQueue(dir);
      const got: string[] = [];
      for (let r = again.takeNext(); r; r = again.takeNext()) got.push(r.payload.toString());
      expect(got, op).toEqual(['record 1', 'record 2', 'record 3', 'record 4', 'record 5']);
    }
  });

  it('ack-cursor path: saving works again after a passing failure', async () => {
    const fs = new FaultyFileOps();
    const { log, count } = capture();
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir, { fs: fs.ops, log, ackPersistMs: 10 });
    for (let i = 1; i <= 5; i++) q.append(rec(i));
    fs.fail('openSync', /ack\.tmp$/, 'EIO', 1);
    for (let i = 0; i < 3; i++) q.ack(q.takeNext()!.id);
    q.flushAcks();
    await pollUntil(() => count(/the acknowledgement position is saved again/) === 1, {
      timeoutMs: 5000,
      what: 'the cursor saved again',
    });
    expect(await afterCrash(dir)).toEqual(['record 4', 'record 5']);
  });

  it('recovery path: an I/O error reading a segment or the cursor at start fails the open and changes nothing', async () => {
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir, { segmentBytes: 1024 });
    for (let i = 1; i <= 100; i++) q.append(rec(i));
    q.ack(q.takeNext()!.id);
    await q.close();
    cleanups.pop();
    const before = readdirSync(dir).sort();
    for (const [op, path, what] of [
      ['readSync', /seg-0+1\.log$/, /cannot read segment .*seg-0+1\.log: EIO; nothing was changed/],
      ['lstatSync', /seg-0+1\.log$/, /cannot read segment .*seg-0+1\.log: EIO/],
      ['readSync', /\/ack$/, /cannot read the ack cursor .*\/ack: EIO; it is left as it is/],
    ] as const) {
      const fs = new FaultyFileOps().fail(op, path, 'EIO');
      const err = await DurableQueue.open({
        dir,
        maxBytes: 1 << 30,
        fsync: 'never',
        fsyncIntervalMs: 200,
        fs: fs.ops,
      }).catch((e: unknown) => e);
      expect(err, op).toBeInstanceOf(QueueError);
      expect((err as Error).message).toMatch(what);
      expect(readdirSync(dir).sort(), op).toEqual(before.filter((n) => n !== 'lock'));
    }
    // The fault passed: everything is there.
    const healed = await openQueue(dir);
    expect(healed.depth).toBe(99);
  });

  it('recovery path: a torn tail that cannot be truncated is left and ignored; the records before it are kept', async () => {
    const dir = join(tempDir(), 'q');
    const q = await openQueue(dir);
    for (let i = 1; i <= 10; i++) q.append(rec(i));
    await q.close();
    cleanups.pop();
    const seg = join(dir, segmentFiles(dir)[0]!);
    truncateSync(seg, statSync(seg).size - 3);
    const fs = new FaultyFileOps().fail('ftruncateSync', /seg-/, 'EIO');
    const { queue, findings } = await DurableQueue.open({
      dir,
      maxBytes: 1 << 30,
      fsync: 'never',
      fsyncIntervalMs: 200,
      fs: fs.ops,
    });
    cleanups.push(() => queue.close());
    expect(findings).toMatchObject([{ kind: 'torn-tail' }]);
    expect(findings[0]!.message).toMatch(
      /not truncated \(EIO\): ignored, and looked at again at the next start/,
    );
    expect(queue.depth).toBe(9);
    queue.append(rec(11));
    const got: string[] = [];
    for (let r = queue.takeNext(); r; r = queue.takeNext()) got.push(r.payload.toString());
    expect(got).toEqual([...Array.from({ length: 9 }, (_, i) => `record ${i + 1}`), 'record 11']);
  });
});
