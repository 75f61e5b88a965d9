/**
 * The tail input (src/input/tail.ts) under the real InputPump and queue: resume from the state file,
 * rename+create rotation (once, twice, while stopped), copytruncate (with and without the copy), a vanishing
 * file, torn lines, a full queue, a corrupt state file, manual commits. Deterministic: no poll timer and no
 * fs.watch (pollIntervalMs 0, watch false); each step calls checkNow() and waits until the stream settled.
 * One test uses fs.watch with a deadline.
 */
import {
  appendFileSync,
  copyFileSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { InputPump } from '../../src/input/input-pump.js';
import { TailInput, type TailInputOptions } from '../../src/input/tail.js';
import { checksum, loadTailState } from '../../src/input/tail-state.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { pollUntil } from '../helpers/wait.js';

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

let root = '';
const open: TailInput[] = [];

afterEach(() => {
  for (const t of open.splice(0)) t.destroy();
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

function setup(): { dir: string; log: string; state: string } {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-tail-'));
  return { dir: root, log: join(root, 'audit.log'), state: join(root, 'state', 'tail.json') };
}

const lines = (from: number, n: number) =>
  records(from, n)
    .map((l) => `${l}\n`)
    .join('');

function start(opts: Partial<TailInputOptions> & { path: string; stateFile: string }, capacity = 100_000) {
  const logs: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l) as LogLine) });
  const tail = new TailInput({
    pollIntervalMs: 0,
    watch: false,
    rotateWaitMs: 0,
    startAt: 'beginning',
    log,
    ...opts,
  });
  open.push(tail);
  const queue = new MemoryQueue(capacity);
  const pump = new InputPump({ stream: tail, queue, maxRecord: 8954, forwardEoe: false, log, name: 'tail' });
  pump.attach(() => {});
  const got: string[] = [];
  return {
    tail,
    queue,
    pump,
    logs,
    /** checkNow until nothing moves any more. */
    async settle(): Promise<void> {
      for (let i = 0; i < 10_000; i++) {
        const before = tail.stats.bytes + tail.stats.chunks * 1e9;
        tail.checkNow();
        await new Promise((r) => setImmediate(r));
        await new Promise((r) => setImmediate(r));
        const after = tail.stats.bytes + tail.stats.chunks * 1e9;
        if (after === before && (tail.readableLength === 0 || tail.readableFlowing === false)) return;
      }
      throw new Error('the tail input did not settle');
    },
    /** Every record queued so far (taken and acknowledged), as lines without '\n'. */
    take(): string[] {
      for (let r = queue.takeNext(); r; r = queue.takeNext()) {
        got.push(r.payload.toString('latin1').replace(/\n$/, ''));
        queue.ack(r.id);
      }
      return got;
    },
    warnings: () => logs.filter((l) => l.level >= 40).map((l) => l.msg),
  };
}

function state(file: string) {
  const s = loadTailState(file);
  if (!s.state) throw new Error(`no state: ${s.problem}`);
  return s.state;
}

describe('tail input: reading and the state file', () => {
  it('reads whole lines only, holds a partial line until its newline, and commits line ends', async () => {
    const f = setup();
    writeFileSync(f.log, `${lines(1, 3)}type=USER_CMD msg=audit(1700000000.004:4): tag=T`);
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3]);
    const s1 = state(f.state);
    expect(s1.offset).toBe(Buffer.byteLength(lines(1, 3)));
    const content = readFileSync(f.log);
    expect(s1.checkSha256).toBe(checksum(content.subarray(s1.offset - s1.checkLen, s1.offset)));
    expect(s1.checkLen).toBe(64);
    appendFileSync(f.log, ' seq=4\n');
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4]);
    expect(state(f.state).offset).toBe(readFileSync(f.log).length);
  });

  it('without a state file starts at the end by default, including a line still being written', async () => {
    const f = setup();
    writeFileSync(f.log, `${lines(1, 3)}type=USER_CMD msg=audit(1700000000.004:4): tag=T`);
    const t = start({ path: f.log, stateFile: f.state, startAt: 'end' });
    await t.settle();
    expect(t.take()).toEqual([]);
    expect(state(f.state).offset).toBe(Buffer.byteLength(lines(1, 3)));
    appendFileSync(f.log, ` seq=4\n${lines(5, 1)}`);
    await t.settle();
    expect(seqs(t.take())).toEqual([4, 5]);
    expect(t.logs.some((l) => /no tail state yet: starting at the end/.test(l.msg))).toBe(true);
  });

  it('resumes at the saved offset after a restart: nothing lost, nothing twice', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 5));
    const a = start({ path: f.log, stateFile: f.state });
    await a.settle();
    expect(seqs(a.take())).toEqual([1, 2, 3, 4, 5]);
    a.tail.close();
    appendFileSync(f.log, lines(6, 5));
    const b = start({ path: f.log, stateFile: f.state });
    await b.settle();
    expect(seqs(b.take())).toEqual([6, 7, 8, 9, 10]);
  });

  it('a corrupt state file is reported and the file is read from its beginning (duplicates rather than a gap)', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const a = start({ path: f.log, stateFile: f.state });
    await a.settle();
    a.tail.close();
    writeFileSync(f.state, '{"version":1,"path":');
    const b = start({ path: f.log, stateFile: f.state, startAt: 'end' });
    await b.settle();
    expect(seqs(b.take())).toEqual([1, 2, 3]);
    expect(b.warnings().some((m) => /not valid JSON.*from its beginning/.test(m))).toBe(true);
  });

  it('the state file is replaced atomically and holds the documented fields', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const t = start({ path: f.log, stateFile: f.state, stateFsync: true });
    await t.settle();
    const raw = JSON.parse(readFileSync(f.state, 'utf8')) as Record<string, unknown>;
    expect(Object.keys(raw).sort()).toEqual(
      ['checkLen', 'checkSha256', 'dev', 'ino', 'mtimeMs', 'offset', 'path', 'version', 'written'].sort(),
    );
    expect(raw.path).toBe(f.log);
    expect(t.tail.stats.stateWrites).toBeGreaterThan(0);
  });
});

describe('tail input: rotation', () => {
  it('rename + create: finishes the old file (also what was written after the rename), then the new one', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    appendFileSync(f.log, lines(4, 2)); // not read yet
    renameSync(f.log, `${f.log}.1`);
    appendFileSync(`${f.log}.1`, lines(6, 1)); // the writer had not switched yet
    writeFileSync(f.log, lines(7, 3));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const s = state(f.state);
    expect(s.path).toBe(f.log);
    expect(s.offset).toBe(Buffer.byteLength(lines(7, 3)));
    expect(t.tail.stats.rotations).toBe(1);
  });

  it('rename + create: a write that reaches the old file after its end was seen is still read (one more read before leaving it)', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 1));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(3, 1));
    // Runs synchronously inside the cycle, after the old file's end was read and the new file was seen:
    // the writer's last write to the old file lands exactly in that window.
    t.tail.once('rotation', () => appendFileSync(`${f.log}.1`, lines(2, 1)));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3]);
  });

  it('keeps reading the old file while the new one is empty, up to rotateWaitMs', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 1));
    const t = start({ path: f.log, stateFile: f.state, rotateWaitMs: 60_000 });
    await t.settle();
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, '');
    appendFileSync(`${f.log}.1`, lines(2, 1));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2]);
    expect(t.tail.reading?.file).toBe(f.log); // still the old descriptor (opened under this name)
    expect(t.tail.stats.rotations).toBe(0);
    appendFileSync(`${f.log}.1`, lines(3, 1));
    appendFileSync(f.log, lines(4, 1));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4]);
    expect(t.tail.stats.rotations).toBe(1);
  });

  it('rotated twice before it looked: the old file via its descriptor, then the one it never saw, then the new one', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    appendFileSync(f.log, lines(3, 2));
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(5, 3)); // B
    renameSync(`${f.log}.1`, `${f.log}.2`);
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(8, 2)); // C
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(t.tail.stats.gaps).toBe(0);
    expect(t.tail.stats.catchUpFiles).toBe(1);
  });

  it('rotated twice while stopped: resumes the old file (now .2) at its offset, reads .1 in full, then the new file', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const a = start({ path: f.log, stateFile: f.state });
    await a.settle();
    expect(seqs(a.take())).toEqual([1, 2]);
    a.tail.close();
    appendFileSync(f.log, lines(3, 2));
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(5, 3));
    renameSync(`${f.log}.1`, `${f.log}.2`);
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(8, 2));
    writeFileSync(`${f.log}.3`, lines(100, 2)); // older than everything: must not be read
    const b = start({ path: f.log, stateFile: f.state });
    await b.settle();
    expect(seqs(b.take())).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect(b.tail.stats.gaps).toBe(0);
  });

  it('reports a gap when the file it was reading is gone (rotated out while stopped), then reads what is newer', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const a = start({ path: f.log, stateFile: f.state });
    await a.settle();
    a.tail.close();
    const saved = state(f.state);
    appendFileSync(f.log, lines(3, 2)); // will be lost with the file
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(5, 2));
    unlinkSync(`${f.log}.1`); // removed (num_logs) before auditrelay came back
    const b = start({ path: f.log, stateFile: f.state });
    const gaps: unknown[] = [];
    b.tail.on('gap', (g) => gaps.push(g));
    await b.settle();
    expect(seqs(b.take())).toEqual([5, 6]);
    expect(gaps).toEqual([
      expect.objectContaining({ ino: saved.ino, dev: saved.dev, offset: saved.offset, file: f.log }),
    ]);
    const err = b.logs.find((l) => l.level === 50 && /may be missing/.test(l.msg));
    expect(err?.msg).toContain(`inode ${saved.ino}`);
  });

  it('a line cut by the rotation is forwarded on its own with a newline, never joined to the next file', async () => {
    const f = setup();
    writeFileSync(f.log, `${lines(1, 1)}type=USER_CMD msg=audit(1700000000.002:2): tag=T seq=2 cut`);
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    renameSync(f.log, `${f.log}.1`);
    writeFileSync(f.log, lines(3, 1));
    await t.settle();
    const got = t.take();
    expect(got).toEqual([
      records(1, 1)[0],
      'type=USER_CMD msg=audit(1700000000.002:2): tag=T seq=2 cut',
      records(3, 1)[0],
    ]);
    expect(t.tail.stats.tornRecords).toBe(1);
    expect(t.warnings().some((m) => /inside a line/.test(m))).toBe(true);
  });
});

describe('tail input: copytruncate, shrinking, vanishing', () => {
  it('copytruncate: reads the rest of the copy first, then the file from 0', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    appendFileSync(f.log, lines(4, 2)); // written before the copy, not read yet
    copyFileSync(f.log, `${f.log}.1`);
    truncateSync(f.log, 0);
    appendFileSync(f.log, lines(6, 1));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(t.tail.stats.truncations).toBe(1);
    expect(t.warnings()).toEqual([]);
  });

  it('copytruncate while stopped: resumes in the copy', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const a = start({ path: f.log, stateFile: f.state });
    await a.settle();
    a.tail.close();
    appendFileSync(f.log, lines(4, 2));
    copyFileSync(f.log, `${f.log}.1`);
    truncateSync(f.log, 0);
    appendFileSync(f.log, lines(6, 1));
    const b = start({ path: f.log, stateFile: f.state });
    await b.settle();
    expect(seqs(b.take())).toEqual([4, 5, 6]);
  });

  it('truncated and rewritten beyond our offset (same size or larger): detected by the checksum', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    writeFileSync(f.log, lines(11, 5)); // same inode, truncated and refilled past our offset
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 11, 12, 13, 14, 15]);
    expect(t.warnings().some((m) => /rewritten.*may have been missed/.test(m))).toBe(true);
  });

  it('shrinks without a copy: warns that records may have been missed and reads from 0', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    truncateSync(f.log, 0);
    appendFileSync(f.log, lines(4, 1));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4]);
    expect(t.warnings().filter((m) => /truncated.*may have been missed/.test(m))).toHaveLength(1);
  });

  it('a vanished file: reads the open file while it grows, logs once, reads the new file from 0', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 1));
    const t = start({ path: f.log, stateFile: f.state });
    await t.settle();
    const held = `${f.log}.moved`;
    renameSync(f.log, held); // moved away: no file at the path
    appendFileSync(held, lines(2, 1));
    await t.settle();
    await t.settle();
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2]);
    expect(t.warnings().filter((m) => /disappeared/.test(m))).toHaveLength(1);
    writeFileSync(f.log, lines(3, 2));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4]);
  });

  it('a file missing at start is waited for (logged once) and read from 0 when it appears', async () => {
    const f = setup();
    const t = start({ path: f.log, stateFile: f.state, startAt: 'end' });
    await t.settle();
    await t.settle();
    expect(t.warnings().filter((m) => /does not exist; waiting/.test(m))).toHaveLength(1);
    writeFileSync(f.log, lines(1, 2));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2]);
  });
});

describe('tail input: commits follow the queue', () => {
  it('a chunk the queue did not take is not committed; after a crash it is read again: no loss, no duplicate', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const a = start({ path: f.log, stateFile: f.state }, 3);
    await a.settle();
    const afterFirst = state(f.state).offset;
    expect(afterFirst).toBe(Buffer.byteLength(lines(1, 3)));
    appendFileSync(f.log, lines(4, 2));
    await a.settle();
    expect(a.pump.held).toBe(2); // queue full: the pump holds them and paused the stream
    expect(state(f.state).offset).toBe(afterFirst);
    const firstRun = seqs(a.take().slice());
    a.tail.destroy(); // crash: nothing more is committed
    const b = start({ path: f.log, stateFile: f.state });
    await b.settle();
    const all = [...firstRun, ...seqs(b.take())];
    expect(gapsAndDuplicates(all, 5)).toEqual({ lost: [], duplicates: 0 });
  });

  it('commits the held chunk once the queue took it (the pump resumed the stream)', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 3));
    const t = start({ path: f.log, stateFile: f.state }, 3);
    await t.settle();
    appendFileSync(f.log, lines(4, 2));
    await t.settle();
    expect(t.pump.held).toBe(2);
    t.take(); // acks free room: 'drain' → the pump appends the held records and resumes
    expect(t.pump.held).toBe(0);
    expect(state(f.state).offset).toBe(Buffer.byteLength(lines(1, 5)));
    await t.settle();
    expect(seqs(t.take())).toEqual([1, 2, 3, 4, 5]);
  });

  it('manual commits: positionOf(chunk) then commit()', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 2));
    const log = pino({ level: 'silent' });
    const tail = new TailInput({
      path: f.log,
      stateFile: f.state,
      log,
      pollIntervalMs: 0,
      watch: false,
      startAt: 'beginning',
      commit: 'manual',
    });
    open.push(tail);
    const chunks: Buffer[] = [];
    tail.on('data', (c: Buffer) => chunks.push(c));
    await pollUntil(() => chunks.length > 0, { timeoutMs: 5000, what: 'a chunk' });
    expect(state(f.state).offset).toBe(0); // the start position, written at once
    const pos = tail.positionOf(chunks[0]!);
    expect(pos?.offset).toBe(Buffer.byteLength(lines(1, 2)));
    tail.commit(pos!);
    expect(state(f.state).offset).toBe(pos!.offset);
    tail.commit({ ...pos!, seq: 0, offset: 1 }); // older: ignored
    expect(state(f.state).offset).toBe(pos!.offset);
  });

  it('reacts to fs.watch events without a poll timer', async () => {
    const f = setup();
    writeFileSync(f.log, lines(1, 1));
    const t = start({ path: f.log, stateFile: f.state, watch: true });
    await t.settle();
    appendFileSync(f.log, lines(2, 2));
    await pollUntil(() => t.take().length === 3, {
      timeoutMs: 10_000,
      what: 'records read after a watch event',
    });
    expect(seqs(t.take())).toEqual([1, 2, 3]);
  });
});
