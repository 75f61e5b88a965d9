/**
 * Import of audisp-remote's forward-mode queue file (src/migrate/import-queue.ts), with files built byte by
 * byte from the format in the reference (§6.5) — independently of the importer's own parser.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ImportQueueError, importQueue } from '../../src/migrate/import-queue.js';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import type { RecordQueue } from '../../src/queue/types.js';
import { terminate } from '../helpers/wait.js';

const ENTRY = 12288;
let root = '';

afterEach(() => {
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

function dir(): string {
  root ||= mkdtempSync(join(tmpdir(), 'auditrelay-import-'));
  return root;
}

interface Spec {
  numEntries: number;
  head: number;
  length: number;
  /** Slot contents; a string gets "\n\0" appended unless raw. */
  slots: Record<number, string | Buffer>;
  magic?: Buffer;
  version?: number;
  reserved?: number;
  entrySize?: number;
}

/** A queue file exactly as queue.c writes it: 32-byte big-endian header, slot i at (i + 1) × entry_size. */
function build(spec: Spec): string {
  const entry = spec.entrySize ?? ENTRY;
  const buf = Buffer.alloc((spec.numEntries + 1) * entry);
  (spec.magic ?? Buffer.from('\0audisp-remote', 'latin1')).copy(buf, 0);
  buf[14] = spec.version ?? 0;
  buf[15] = spec.reserved ?? 0;
  buf.writeUInt32BE(spec.numEntries, 16);
  buf.writeUInt32BE(entry, 20);
  buf.writeUInt32BE(spec.head, 24);
  buf.writeUInt32BE(spec.length, 28);
  for (const [i, content] of Object.entries(spec.slots)) {
    const bytes = typeof content === 'string' ? Buffer.from(`${content}\n\0`, 'latin1') : content;
    bytes.copy(buf, (Number(i) + 1) * entry);
  }
  const file = join(dir(), `remote-${Math.random().toString(36).slice(2)}.log`);
  writeFileSync(file, buf);
  return file;
}

function capture() {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  return { log: pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) }), lines };
}

function drain(q: RecordQueue): string[] {
  const out: string[] = [];
  for (let r = q.takeNext(); r; r = q.takeNext()) {
    out.push(r.payload.toString('latin1'));
    q.ack(r.id);
  }
  return out;
}

const rec = (n: number) => `type=USER_CMD msg=audit(1700000000.${n}:${n}): seq=${n}`;

describe('import of audisp-remote queue files', () => {
  it('imports the queued records in order, with their newline', () => {
    const file = build({
      numEntries: 8,
      head: 0,
      length: 3,
      slots: { 0: rec(1), 1: rec(2), 2: rec(3), 3: rec(99) },
    });
    const q = new MemoryQueue(100);
    const { log } = capture();
    const r = importQueue(file, q, log);
    expect(r).toMatchObject({ imported: 3, skipped: 0, records: 3, findings: [] });
    expect(r.header).toEqual({
      version: 0,
      reserved: 0,
      numEntries: 8,
      entrySize: ENTRY,
      queueHead: 0,
      queueLength: 3,
    });
    expect(drain(q)).toEqual([`${rec(1)}\n`, `${rec(2)}\n`, `${rec(3)}\n`]); // slot 3 is stale: not queued
  });

  it('wraps around from queue_head and ignores the stale slots outside the queue', () => {
    const file = build({
      numEntries: 4,
      head: 3,
      length: 3,
      slots: { 3: rec(1), 0: rec(2), 1: rec(3), 2: rec(0) },
    });
    const q = new MemoryQueue(100);
    expect(importQueue(file, q, capture().log).imported).toBe(3);
    expect(drain(q)).toEqual([`${rec(1)}\n`, `${rec(2)}\n`, `${rec(3)}\n`]);
  });

  it('an empty queue imports nothing', () => {
    const file = build({ numEntries: 4, head: 2, length: 0, slots: { 2: rec(1) } });
    const q = new MemoryQueue(100);
    expect(importQueue(file, q, capture().log)).toMatchObject({ imported: 0, skipped: 0 });
  });

  it('a slot without a terminator is skipped and reported with its slot number; the others are imported', () => {
    const file = build({
      numEntries: 4,
      head: 1,
      length: 3,
      slots: { 1: rec(1), 2: Buffer.alloc(ENTRY, 0x41), 3: rec(3) },
    });
    const q = new MemoryQueue(100);
    const { log, lines } = capture();
    const r = importQueue(file, q, log);
    expect(r.imported).toBe(2);
    expect(r.skipped).toBe(1);
    expect(r.findings).toEqual([
      expect.objectContaining({ kind: 'unterminated-slot', slot: 2, position: 1 }),
    ]);
    expect(r.findings[0]!.message).toMatch(/slot 2 .*no NUL terminator/);
    expect(lines.some((l) => l.level === 40 && /slot 2/.test(l.msg))).toBe(true);
    expect(drain(q)).toEqual([`${rec(1)}\n`, `${rec(3)}\n`]);
  });

  it('empty slots are skipped and reported; a record without a newline gets one; a long one is split', () => {
    const long = `type=EXECVE msg=audit(1.2:3): ${'a'.repeat(9000)}`;
    const file = build({
      numEntries: 4,
      head: 0,
      length: 4,
      slots: {
        0: Buffer.from('\0'),
        1: Buffer.from(`${rec(1)}\0`),
        2: long,
        3: `type=EOE msg=audit(1.2:3):`,
      },
    });
    const q = new MemoryQueue(100);
    const r = importQueue(file, q, capture().log);
    expect(r.findings.map((f) => [f.kind, f.slot])).toEqual([
      ['blank-slot', 0],
      ['split-record', 2],
    ]);
    const got = drain(q);
    expect(got[0]).toBe(`${rec(1)}\n`);
    expect(got.slice(1, 3).map((g) => g.length)).toEqual([8954, long.length - 8953 + 1]);
    expect(got.slice(1, 3).join('').replace(/\n/g, '')).toBe(long);
    expect(got[3]).toBe('type=EOE msg=audit(1.2:3):\n');
  });

  it('errors: wrong magic, unknown version, corrupt header, truncated file, missing file — nothing imported', () => {
    const q = new MemoryQueue(100);
    const { log } = capture();
    const cases: [string, RegExp, string][] = [
      [
        build({
          numEntries: 2,
          head: 0,
          length: 1,
          slots: { 0: rec(1) },
          magic: Buffer.from('\0audisp-REMOTE'),
        }),
        /not an audisp-remote queue file/,
        'bad-magic',
      ],
      [
        build({ numEntries: 2, head: 0, length: 1, slots: { 0: rec(1) }, version: 1 }),
        /version 1 is not supported/,
        'bad-version',
      ],
      [
        build({ numEntries: 2, head: 2, length: 1, slots: {} }),
        /corrupt header: queue_head 2 is not below num_entries 2/,
        'bad-header',
      ],
      [
        build({ numEntries: 2, head: 0, length: 3, slots: {} }),
        /queue_length 3 exceeds num_entries 2/,
        'bad-header',
      ],
      [join(dir(), 'absent'), /does not exist: nothing to import/, 'missing'],
    ];
    const text = join(dir(), 'text');
    writeFileSync(text, 'type=SYSCALL msg=audit(1.2:3): not a queue file at all\n');
    cases.push([text, /not an audisp-remote queue file: it starts with "type=SYSCALL m/, 'bad-magic']);
    const short = join(dir(), 'short');
    writeFileSync(short, Buffer.from('\0audisp-remote\0\0'));
    cases.push([short, /shorter than the 32-byte header/, 'truncated']);
    for (const [file, message, reason] of cases) {
      let err: unknown;
      try {
        importQueue(file, q, log);
      } catch (e) {
        err = e;
      }
      expect(err, file).toBeInstanceOf(ImportQueueError);
      expect((err as ImportQueueError).message).toMatch(message);
      expect((err as ImportQueueError).reason).toBe(reason);
      expect((err as ImportQueueError).code).toBe('AR_QUEUE');
    }
    expect(q.totalAppended).toBe(0);
  });

  it('a truncated file: an error naming the missing queued slots; imports nothing', () => {
    const file = build({ numEntries: 4, head: 2, length: 2, slots: { 2: rec(1), 3: rec(2) } });
    truncateSync(file, 4 * ENTRY + 100); // slot 3 (at 4 × 12288) is cut
    const q = new MemoryQueue(100);
    expect(() => importQueue(file, q, capture().log)).toThrow(
      /truncated: .*queued slot\(s\) 3 lie beyond the end, nothing was imported/,
    );
    expect(q.totalAppended).toBe(0);
    // Cut only where no queued slot lies: imported, with a finding.
    const file2 = build({ numEntries: 4, head: 0, length: 2, slots: { 0: rec(1), 1: rec(2) } });
    truncateSync(file2, 3 * ENTRY);
    const r = importQueue(file2, q, capture().log);
    expect(r.imported).toBe(2);
    expect(r.findings.map((f) => f.kind)).toEqual(['file-size']);
  });

  it('a full queue stops the import with the count; skip resumes without duplicates', () => {
    const slots: Record<number, string> = {};
    for (let i = 0; i < 5; i++) slots[i] = rec(i + 1);
    const file = build({ numEntries: 8, head: 0, length: 5, slots });
    const q = new MemoryQueue(3);
    let err: ImportQueueError | undefined;
    try {
      importQueue(file, q, capture().log);
    } catch (e) {
      err = e as ImportQueueError;
    }
    expect(err?.reason).toBe('queue-full');
    expect(err?.imported).toBe(3);
    expect(err?.message).toMatch(/after 3 of 5 record\(s\).*skip = 3/);
    const first = drain(q);
    const r = importQueue(file, q, capture().log, { skip: 3 });
    expect(r).toMatchObject({ imported: 2, skippedByOption: 3 });
    expect([...first, ...drain(q)]).toEqual([1, 2, 3, 4, 5].map((n) => `${rec(n)}\n`));
  });

  it('dry run: counts, appends nothing', () => {
    const file = build({ numEntries: 4, head: 0, length: 2, slots: { 0: rec(1), 1: rec(2) } });
    const q = new MemoryQueue(10);
    expect(importQueue(file, q, capture().log, { dryRun: true })).toMatchObject({ imported: 0, records: 2 });
    expect(q.totalAppended).toBe(0);
  });

  it('refuses a file that another process has open (audisp-remote still running)', async () => {
    const file = build({ numEntries: 4, head: 0, length: 1, slots: { 0: rec(1) } });
    const fd = openSync(file, 'r+');
    const holder = spawn('/bin/sh', ['-c', 'read x'], { stdio: ['pipe', 'ignore', 'ignore', fd] });
    closeSync(fd);
    try {
      expect(() => importQueue(file, new MemoryQueue(10), capture().log)).toThrow(
        new RegExp(`is open in process ${holder.pid}: stop audisp-remote`),
      );
    } finally {
      await terminate(holder, 'SIGKILL', 5000);
    }
    expect(importQueue(file, new MemoryQueue(10), capture().log).imported).toBe(1);
  });

  it('into the durable queue: the records survive a close and reopen, in order', async () => {
    const slots: Record<number, string> = {};
    for (let i = 0; i < 4; i++) slots[(6 + i) % 8] = rec(i + 1);
    const file = build({ numEntries: 8, head: 6, length: 4, slots });
    const qdir = join(dir(), 'queue');
    const opts = { dir: qdir, maxBytes: 1024 * 1024, fsync: 'always' as const, fsyncIntervalMs: 200 };
    const a = await DurableQueue.open(opts);
    expect(importQueue(file, a.queue, capture().log).imported).toBe(4);
    await a.queue.close();
    const b = await DurableQueue.open(opts);
    try {
      expect(drain(b.queue)).toEqual([1, 2, 3, 4].map((n) => `${rec(n)}\n`));
    } finally {
      await b.queue.close();
    }
  });
});
