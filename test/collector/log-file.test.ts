/**
 * The collector's log file (docs/collector.md, "The log file"): opened as auditd opens its log (no symlink, O_EXCL
 * create, checked directory), a torn tail repaired at open, a failed write that leaves nothing behind (checked by a
 * reader tailing the log through disk-full faults on a small tmpfs), and a failed background sync that stops
 * acknowledgements until a sync succeeds.
 */
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  existsSync,
  type FSWatcher,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  watch,
  writeFileSync,
  writeSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Logger, pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import {
  Collector,
  type CollectorSettings,
  DEFAULT_COLLECTOR_SETTINGS,
} from '../../src/collector/collector.js';
import { LogWriter } from '../../src/collector/log-writer.js';
import { ErrorCodes, FileSafetyError } from '../../src/errors.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import { WireClient } from '../helpers/wire-client.js';

interface LogEntry {
  level: number;
  msg: string;
  [k: string]: unknown;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-logfile-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function memoryLogger(logs: LogEntry[]): Logger {
  return pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogEntry) });
}

function collectorFor(logFile: string, overrides: Partial<CollectorSettings> = {}) {
  const logs: LogEntry[] = [];
  const collector = new Collector(
    { ...DEFAULT_COLLECTOR_SETTINGS, port: 0, logFile, fsync: 'never', ...overrides },
    memoryLogger(logs),
  );
  return { collector, logs };
}

async function started(logFile: string, overrides: Partial<CollectorSettings> = {}) {
  const c = collectorFor(logFile, overrides);
  const { port } = await c.collector.start();
  cleanups.push(() => c.collector.stop());
  const client = await WireClient.connect({ host: '127.0.0.1', port });
  cleanups.push(() => client.destroy());
  let seq = 0;
  /** Sends the lines in one write and returns their replies. */
  const send = async (lines: string[]) => {
    const before = client.replies.length;
    await client.write(Buffer.concat(lines.map((l) => encodeEvent(++seq, Buffer.from(`${l}\n`)))));
    return (await client.waitForReplies(before + lines.length, 30_000)).slice(before);
  };
  return { ...c, client, send };
}

const rec = (i: number) =>
  `type=USER_CMD msg=audit(1700000000.000:${i}): pid=1 msg='op=test n=${i} ${'p'.repeat(200)}'`;

describe('collector log file: opened as auditd opens it', () => {
  it('a sticky world-writable directory with audit.log linked to a root-owned file: refuses to start, writes nothing through the link', async () => {
    const dir = tempDir();
    const shared = path.join(dir, 'shared');
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    const privateDir = path.join(dir, 'private');
    mkdirSync(privateDir, { mode: 0o700 });
    const target = path.join(privateDir, 'shadow');
    writeFileSync(target, 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
    const planted = path.join(shared, 'audit.log');
    symlinkSync(target, planted);
    const { collector } = collectorFor(planted);
    const err = await collector.start().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(FileSafetyError);
    expect((err as FileSafetyError).code).toBe(ErrorCodes.UNSAFE_PATH);
    expect((err as Error).message).toContain(`fix with: chmod go-w ${shared}`);
    expect(readFileSync(target, 'utf8')).toBe('root:*:19000:0:99999:7:::\n');
    // Even in a directory that passes the check, a link at the log path is never followed.
    const safe = path.join(dir, 'safe');
    mkdirSync(safe, { mode: 0o700 });
    const link = path.join(safe, 'audit.log');
    symlinkSync(target, link);
    const second = collectorFor(link).collector;
    await expect(second.start()).rejects.toThrow(/is a symbolic link; it is never followed/);
    expect(readFileSync(target, 'utf8')).toBe('root:*:19000:0:99999:7:::\n');
  });

  it('creates a missing log with mode 0600; an existing log with loose permissions is a warning with the fix', async () => {
    const dir = tempDir();
    const fresh = path.join(dir, 'new.log');
    const a = await started(fresh);
    expect(statSync(fresh).mode & 0o777).toBe(0o600);
    expect(a.logs.filter((e) => e.level >= 40)).toEqual([]);
    const loose = path.join(dir, 'loose.log');
    writeFileSync(loose, '');
    chmodSync(loose, 0o666);
    const b = await started(loose);
    const w = b.logs.find((e) => e.level === 40 && String(e.msg).includes(loose));
    expect(w?.msg).toContain('writable by others');
    expect(w?.msg).toContain(`fix with: chmod 0640 ${loose}`);
    const [ack] = await b.send([rec(1)]);
    expect(ack!.type).toBe(MessageType.ACK);
  });
});

describe('collector log file: never a fragment', () => {
  it('repairs a torn tail at open (a collector killed mid-write): the partial line is removed and logged, the next record starts a line', async () => {
    const dir = tempDir();
    const logFile = path.join(dir, 'audit.log');
    const whole = `${rec(1)}\n${rec(2)}\n`;
    // What `kill -9` in the middle of a write leaves: the start of a record without its newline.
    const torn = "type=USER_CMD msg=audit(1700000000.000:3): pid=1 msg='op=fault scen";
    writeFileSync(logFile, `${whole}${torn}`, { mode: 0o600 });
    const c = await started(logFile);
    expect(readFileSync(logFile, 'latin1')).toBe(whole);
    const w = c.logs.find((e) => e.level === 40 && String(e.msg).includes('partial line'));
    expect(w).toMatchObject({ bytes: torn.length, offset: whole.length });
    const [ack] = await c.send([rec(3)]);
    expect(ack!.type).toBe(MessageType.ACK);
    expect(readFileSync(logFile, 'latin1')).toBe(`${whole}${rec(3)}\n`);
  });

  it('a tail without a newline that no write of ours can have left stops the start instead of being cut', async () => {
    const dir = tempDir();
    const logFile = path.join(dir, 'audit.log');
    const content = `${'x'.repeat(5000)}`;
    writeFileSync(logFile, content, { mode: 0o600 });
    const writer = new LogWriter({
      path: logFile,
      fsync: 'never',
      fsyncIntervalMs: 200,
      log: memoryLogger([]),
      maxTornTailBytes: 4096,
    });
    await expect(writer.open()).rejects.toThrow(/ends with more than 4096 bytes without a newline/);
    expect(readFileSync(logFile, 'latin1')).toBe(content);
  });

  const root = requireOrSkip({ suite: 'collector log through disk-full faults (tmpfs)', root: true });
  it.skipIf(!root)(
    'a reader tailing the log through disk-full faults never sees a byte that later vanishes; a refused batch changes nothing',
    { timeout: 120_000 },
    async () => {
      const dir = tempDir();
      const mnt = path.join(dir, 'mnt');
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', mnt], { stdio: 'pipe' });
      cleanups.push(() => {
        execFileSync('umount', [mnt], { stdio: 'pipe' });
      });
      const logFile = path.join(mnt, 'audit.log');
      const c = await started(logFile);

      // inotify on the directory: 'change' events for audit.log, and a sentinel file to know that every event
      // before it has arrived (one inotify queue, in order).
      const events: string[] = [];
      const watcher: FSWatcher = watch(mnt, (type, name) => events.push(`${type}:${name}`));
      cleanups.push(() => watcher.close());
      let syncs = 0;
      const settle = async () => {
        const name = `.sync-${++syncs}`;
        writeFileSync(path.join(mnt, name), '');
        await pollUntil(() => events.some((e) => e.endsWith(`:${name}`)), { timeoutMs: 5000, what: name });
        unlinkSync(path.join(mnt, name));
        return events.length;
      };
      const logChanges = (from: number) => events.slice(from).filter((e) => e === 'change:audit.log');

      // The tailing reader: it only ever appends what it reads; the file must never shrink under it.
      const seen: Buffer[] = [];
      let offset = 0;
      let shrank: string | null = null;
      const rfd = openSync(logFile, 'r');
      cleanups.push(() => closeSync(rfd));
      const buf = Buffer.alloc(1 << 16);
      const tail = setInterval(() => {
        const size = statSync(logFile).size;
        if (size < offset) shrank ??= `size ${size} after reading ${offset} bytes`;
        for (;;) {
          const n = readSync(rfd, buf, 0, buf.length, offset);
          if (n === 0) break;
          seen.push(Buffer.from(buf.subarray(0, n)));
          offset += n;
        }
      }, 1);
      cleanups.push(() => clearInterval(tail));

      const acked: string[] = [];
      let n = 0;
      for (let fault = 1; fault <= 3; fault++) {
        // Fill the file system with a ballast file.
        const ballast = path.join(mnt, 'ballast');
        const bfd = openSync(ballast, 'w');
        try {
          for (;;) writeSync(bfd, Buffer.alloc(4096));
        } catch (err) {
          expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
        } finally {
          closeSync(bfd);
        }
        // Batches until the disk is full for the collector too (space it reserved earlier is used first).
        let refused = 0;
        for (let tries = 0; tries < 200 && refused < 3; tries++) {
          const lines = [rec(++n), rec(++n), rec(++n), rec(++n), rec(++n)];
          const mark = await settle();
          const size = statSync(logFile).size;
          const replies = await c.send(lines);
          const types = new Set(replies.map((r) => r.type));
          expect(types.size, 'a batch is acknowledged or refused as a whole').toBe(1);
          if (types.has(MessageType.ACK)) {
            acked.push(...lines);
            continue;
          }
          expect([...types]).toEqual([MessageType.DISKFULL]);
          refused++;
          // Nothing of a refused batch ever reached the file: no write, no truncate, same size.
          expect(logChanges(mark), `fault ${fault}: the log changed during a refused batch`).toEqual([]);
          await settle();
          expect(logChanges(mark)).toEqual([]);
          expect(statSync(logFile).size).toBe(size);
        }
        expect(refused, `fault ${fault}: the disk never filled up`).toBe(3);
        // Room again: the next batch is acknowledged and starts on a line of its own.
        unlinkSync(ballast);
        const lines = [rec(++n), rec(++n)];
        const replies = await c.send(lines);
        expect(replies.map((r) => r.type)).toEqual([MessageType.ACK, MessageType.ACK]);
        acked.push(...lines);
      }
      await pollUntil(() => offset === statSync(logFile).size, {
        timeoutMs: 5000,
        what: 'the reader to catch up',
      });
      clearInterval(tail);
      const final = readFileSync(logFile);
      expect(shrank).toBeNull();
      expect(Buffer.concat(seen).equals(final)).toBe(true);
      expect(final.toString('latin1')).toBe(acked.map((l) => `${l}\n`).join(''));
      expect(existsSync(path.join(mnt, 'ballast'))).toBe(false);
    },
  );
});

describe('collector log file: a failed background sync', () => {
  it('is logged, and no record is written or acknowledged until a sync succeeds again', async () => {
    const dir = tempDir();
    const logFile = path.join(dir, 'audit.log');
    let failing = false;
    const c = await started(logFile, {
      fsync: 'interval',
      fsyncIntervalMs: 20,
      logWriterHooks: {
        datasync: async (fh) => {
          if (failing) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
          await fh.datasync();
        },
      },
    });
    expect((await c.send([rec(1)]))[0]!.type).toBe(MessageType.ACK);
    failing = true;
    // The next background sync fails (the write before it made the log dirty).
    expect((await c.send([rec(2)]))[0]!.type).toBe(MessageType.ACK);
    const error = await pollUntil(
      () => c.logs.find((e) => e.level === 50 && String(e.msg).includes('fdatasync')),
      {
        timeoutMs: 5000,
        what: 'the sync error in the log',
      },
    );
    expect(error.msg).toContain('no record is written or acknowledged until a sync succeeds');
    const sizeAtFailure = statSync(logFile).size;
    const refused = await c.send([rec(3), rec(4)]);
    expect(refused.map((r) => [r.type, r.payload.toString()])).toEqual([
      [MessageType.DISKERROR, 'disk write error'],
      [MessageType.DISKERROR, 'disk write error'],
    ]);
    expect(statSync(logFile).size).toBe(sizeAtFailure);
    failing = false;
    await pollUntil(() => c.collector.writer.syncError === null, {
      timeoutMs: 5000,
      what: 'a successful sync',
    });
    expect(c.logs.some((e) => String(e.msg).includes('synced to disk again'))).toBe(true);
    expect((await c.send([rec(5)]))[0]!.type).toBe(MessageType.ACK);
    expect(readFileSync(logFile, 'latin1')).toBe([rec(1), rec(2), rec(5)].map((l) => `${l}\n`).join(''));
  });
});
