/**
 * Input by tailing auditd's log file (`/var/log/audit/audit.log`) with a persisted position, for hosts
 * where auditrelay runs as a service instead of as an auditd plugin.
 *
 * A `Readable` whose chunks are whole lines (every chunk ends with '\n'; a line still being written stays
 * here until its '\n' arrives), for `InputPump`. The position of the end of each chunk (file identity +
 * offset + checksum of the bytes before it) is committed to a state file (`tail-state.ts`) once the
 * chunk's records are in the queue:
 * - `commit: 'auto'` (default): a chunk counts as queued when the consumer returns from its 'data' handler
 *   without having paused the stream, or — if it paused in the handler (InputPump does when the queue is
 *   full and it holds records back) — when it resumes the stream (InputPump resumes only once every held
 *   record is in the queue). So the consumer must handle 'data' synchronously or pause until it is done.
 * - `commit: 'manual'`: the caller calls `commit(input.positionOf(chunk))` after queueing the chunk.
 * Positions are committed in order; an older one is ignored. Chunks pushed but not committed (in the
 * Readable's buffer, held by the pump, in a queue that failed) are read again after a restart: a crash
 * never loses a record, and sends again at most what was read but not yet committed.
 *
 * Files: the live file is the one at `path`. Rotation is detected by comparing the inode at `path` with the
 * inode of the open file:
 * - rename + create (auditd's own rotation, logrotate `create`): the old file is read to its end through
 *   the descriptor we hold, once more after the new file has data (or after `rotateWaitMs` if it stays
 *   empty), so writes that reached the old file before the writer switched are not lost; then rotated
 *   siblings newer than it that we never saw (`audit.log.1` when the file was rotated twice) are read in
 *   full, oldest first; then the new file from offset 0;
 * - copytruncate (size below our offset, or the bytes before our offset changed): the rotated copy is
 *   looked for (a sibling with the same bytes before our offset); if found, the rest of it is read first;
 *   then the file from offset 0. Without a copy, a warning says records may have been missed;
 * - the file vanishes: the open descriptor is read as long as it grows; a warning is logged once and the
 *   path is watched until a file appears again (read from 0, or from our offset if it is the same inode);
 * - at start, the state file's inode is looked for at `path` and among the rotated siblings (`audit.log.N`,
 *   `audit.log-DATE`, not compressed ones): found, it is read from the saved offset, then the newer
 *   siblings, then the live file; not found (deleted by `num_logs`, compressed, moved away), a gap is
 *   reported (error log + 'gap' event): records after the saved offset of that file may be missing.
 *
 * A line that never gets its '\n' (the file was rotated or truncated after a partial write) is forwarded
 * with a '\n' added, as a record of its own, with a warning — never joined to bytes of another file.
 *
 * Change detection: `fs.watch` on the directory plus a poll every `pollIntervalMs` (inotify can miss
 * events, e.g. on network file systems). `checkNow()` runs one cycle synchronously (tests; the poll).
 */
import {
  type BigIntStats,
  closeSync,
  type FSWatcher,
  fstatSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  watch,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { FileSafetyError } from '../errors.js';
import type { Logger } from '../log.js';
import { readExact } from '../util/read-exact.js';
import {
  CHECK_BYTES,
  checksum,
  loadTailState,
  prepareTailStateDirectory,
  saveTailState,
  TAIL_STATE_VERSION,
  type TailState,
} from './tail-state.js';

export const DEFAULT_AUDIT_LOG = '/var/log/audit/audit.log';

export interface TailInputOptions {
  /** The live log file. Default `/var/log/audit/audit.log`. */
  path?: string;
  /** Where the position is persisted (`tail_state_file`). */
  stateFile: string;
  log: Logger;
  /** Where to start when there is no state file: `end` (default: records already in the file are not sent) or `beginning`. */
  startAt?: 'end' | 'beginning';
  /** Poll period; 0 = no timer (call `checkNow()`). Default 1000 ms. */
  pollIntervalMs?: number;
  /** Watch the directory with fs.watch for quicker reaction. Default true. */
  watch?: boolean;
  /** After a rename rotation, how long to wait for the new file's first bytes before leaving the old file. Default 5000 ms. */
  rotateWaitMs?: number;
  /** Default 'auto' (see the module comment). */
  commit?: 'auto' | 'manual';
  /** fsync the state file (and its directory) at every write. Default false. */
  stateFsync?: boolean;
  /** Write the state at most this often (the newest committed position wins); 0 = at every commit. Default 0. */
  stateWriteIntervalMs?: number;
  /** Bytes read per chunk. Default 64 KiB. */
  chunkBytes?: number;
  /** A line without '\n' longer than this is forwarded as it is (with '\n' added). Default 1 MiB. */
  maxLineBytes?: number;
}

/** The end of a chunk: everything before `offset` in the file `dev`/`ino` is in that chunk or before it. */
export interface TailPosition {
  /** Order of the chunk (positions commit in order). */
  readonly seq: number;
  readonly file: string;
  readonly dev: string;
  readonly ino: string;
  readonly offset: number;
  readonly mtimeMs: number;
  /** Up to 64 bytes that end at `offset`. */
  readonly check: Buffer;
}

export interface TailStats {
  chunks: number;
  bytes: number;
  rotations: number;
  truncations: number;
  catchUpFiles: number;
  gaps: number;
  tornRecords: number;
  stateWrites: number;
  stateErrors: number;
}

export interface TailGap {
  file: string;
  dev: string;
  ino: string;
  offset: number;
  message: string;
}

interface Cursor {
  fd: number;
  dev: string;
  ino: string;
  key: string;
  /** Path the file had when it was opened. */
  name: string;
  /** The file at `path` when opened: it may still grow, and it is checked for rotation and truncation. */
  live: boolean;
  /** Next byte to read. */
  pos: number;
  /** Bytes after the last '\n' read so far. */
  carry: Buffer;
  /** Up to CHECK_BYTES bytes that end at `pos - carry.length`. */
  endTail: Buffer;
  /** Rotation decided: read to the end once more, then leave the file. */
  draining: boolean;
  /** Hit its end: verify the bytes before our offset before reading again (content replaced?). */
  verify: boolean;
}

interface Sibling {
  name: string;
  full: string;
  key: string;
  size: number;
  mtimeMs: number;
  /** N of `<base>.N`, else null. */
  n: number | null;
}

const NL = 0x0a;
const COMPRESSED = /\.(gz|bz2|xz|zst|lz4|lzma|z|Z|zip)$/;
const EMPTY = Buffer.alloc(0);
const FINISHED_MEMORY = 256;

function keyOf(st: { dev: bigint; ino: bigint }): string {
  return `${st.dev}:${st.ino}`;
}

function lastBytes(a: Buffer, b: Buffer): Buffer {
  if (b.length >= CHECK_BYTES) return Buffer.from(b.subarray(b.length - CHECK_BYTES));
  const keep = Math.min(a.length, CHECK_BYTES - b.length);
  return Buffer.concat([a.subarray(a.length - keep), b]);
}

function errCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}

export class TailInput extends Readable {
  readonly path: string;
  readonly stateFile: string;
  readonly stats: TailStats = {
    chunks: 0,
    bytes: 0,
    rotations: 0,
    truncations: 0,
    catchUpFiles: 0,
    gaps: 0,
    tornRecords: 0,
    stateWrites: 0,
    stateErrors: 0,
  };
  readonly #log: Logger;
  readonly #o: Required<Omit<TailInputOptions, 'path' | 'stateFile' | 'log'>>;
  readonly #dir: string;
  readonly #base: string;
  #cur: Cursor | null = null;
  #next: Cursor[] = [];
  /** Where to start the live file the next time it is opened without a cursor. */
  #liveStart: number | 'end' = 0;
  readonly #finished: string[] = [];
  #initialized = false;
  #started = false;
  #closed = false;
  #inCycle = false;
  #wanted = false;
  #missing = false;
  #rotationSeenAt = 0;
  readonly #problems = new Set<string>();
  #timer: NodeJS.Timeout | null = null;
  #immediate: NodeJS.Immediate | null = null;
  #watcher: FSWatcher | null = null;
  // Positions and commits.
  readonly #positions = new WeakMap<Buffer, TailPosition>();
  #seq = 0;
  #lastPushedSeq = 0;
  #committedSeq = 0;
  #committed: TailPosition | null = null;
  #marker: { afterSeq: number; pos: TailPosition } | null = null;
  #pendingAuto: TailPosition | null = null;
  #unsaved: TailPosition | null = null;
  #saveTimer: NodeJS.Timeout | null = null;

  constructor(options: TailInputOptions) {
    const chunkBytes = options.chunkBytes ?? 64 * 1024;
    super({ highWaterMark: chunkBytes });
    this.path = resolve(options.path ?? DEFAULT_AUDIT_LOG);
    this.stateFile = resolve(options.stateFile);
    // Refused at start (FileSafetyError) when others could plant or replace files beside the state.
    prepareTailStateDirectory(this.stateFile);
    this.#log = options.log;
    this.#dir = dirname(this.path);
    this.#base = basename(this.path);
    this.#o = {
      startAt: options.startAt ?? 'end',
      pollIntervalMs: options.pollIntervalMs ?? 1000,
      watch: options.watch ?? true,
      rotateWaitMs: options.rotateWaitMs ?? 5000,
      commit: options.commit ?? 'auto',
      stateFsync: options.stateFsync ?? false,
      stateWriteIntervalMs: options.stateWriteIntervalMs ?? 0,
      chunkBytes,
      maxLineBytes: Math.max(options.maxLineBytes ?? 1024 * 1024, 2),
    };
  }

  /** The newest committed position (what the state file holds, or will once a throttled write is done). */
  get committed(): TailPosition | null {
    return this.#committed;
  }

  /** The file being read and the next byte to read (diagnostics). */
  get reading(): { file: string; offset: number } | null {
    return this.#cur ? { file: this.#cur.name, offset: this.#cur.pos } : null;
  }

  /** The position at the end of a chunk this stream emitted (manual commit). */
  positionOf(chunk: Buffer): TailPosition | undefined {
    return this.#positions.get(chunk);
  }

  /** Records everything up to `pos` as queued: persisted in the state file. Older positions are ignored. */
  commit(pos: TailPosition): void {
    if (pos.seq <= this.#committedSeq) return;
    this.#committedSeq = pos.seq;
    let target = pos;
    const marker = this.#marker;
    if (marker && marker.afterSeq <= pos.seq) {
      this.#marker = null;
      // The chunk that ended the previous file is queued: the next file's start is the position now.
      if (marker.afterSeq === pos.seq) target = marker.pos;
    }
    this.#save(target);
  }

  /** Starts watching and polling (also done by the first read). */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#startWatch();
    if (this.#o.pollIntervalMs > 0) {
      this.#timer = setInterval(() => {
        this.#startWatch();
        this.checkNow();
      }, this.#o.pollIntervalMs);
    }
  }

  /** One synchronous cycle: detect rotation/truncation/vanishing, read what the consumer wants. */
  checkNow(): void {
    if (this.#closed || this.#inCycle) return;
    this.#inCycle = true;
    try {
      this.#cycle();
    } catch (err) {
      this.#problem('cycle', `tail: unexpected error while reading ${this.path}: ${errCode(err)}; retrying`, {
        err,
      });
    } finally {
      this.#inCycle = false;
    }
  }

  /** Stops reading: saves the committed position, closes every file, ends the stream. */
  close(): void {
    if (this.#closed) return;
    this.#shutdown();
    this.push(null);
  }

  override _read(): void {
    this.#wanted = true;
    if (!this.#started) this.start();
    this.checkNow();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#shutdown();
    callback(err);
  }

  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event !== 'data' || this.#o.commit !== 'auto') return super.emit(event, ...args);
    const result = super.emit(event, ...args);
    const pos = this.#positions.get(args[0] as Buffer);
    if (pos) {
      // Paused inside the handler: some record of this chunk is not in the queue yet (held back).
      if (this.readableFlowing === false) this.#pendingAuto = pos;
      else this.commit(pos);
    }
    return result;
  }

  override resume(): this {
    const pending = this.#pendingAuto;
    this.#pendingAuto = null;
    if (pending) this.commit(pending);
    return super.resume();
  }

  // ---------------------------------------------------------------------------------------------

  #shutdown(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#timer = null;
    this.#immediate = null;
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#saveTimer) clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    if (this.#unsaved) this.#write(this.#unsaved);
    for (const c of [this.#cur, ...this.#next]) if (c) this.#closeFd(c);
    this.#cur = null;
    this.#next = [];
  }

  #startWatch(): void {
    if (!this.#o.watch || this.#watcher || this.#closed) return;
    try {
      this.#watcher = watch(this.#dir, { persistent: false }, () => this.#soon());
      this.#watcher.on('error', () => {
        this.#watcher?.close();
        this.#watcher = null;
      });
    } catch {
      this.#watcher = null; // directory missing: the poll retries
    }
  }

  #soon(): void {
    if (this.#immediate || this.#closed) return;
    this.#immediate = setImmediate(() => {
      this.#immediate = null;
      this.checkNow();
    });
  }

  /** Logs a problem once until it is cleared (`#clear`). */
  #problem(key: string, message: string, fields: object = {}): void {
    if (this.#problems.has(key)) {
      this.#log.debug({ input: 'tail', path: this.path, ...fields }, message);
      return;
    }
    this.#problems.add(key);
    this.#log.error({ input: 'tail', path: this.path, ...fields }, message);
  }

  #clear(key: string): void {
    this.#problems.delete(key);
  }

  #cycle(): void {
    if (!this.#initialized && !this.#init()) return;
    for (;;) {
      if (!this.#wanted || this.#closed) return;
      if (!this.#cur) {
        const next = this.#next.shift();
        if (next) {
          this.#enter(next);
          continue;
        }
        if (!this.#openLive()) return;
        continue;
      }
      const cur = this.#cur;
      if (cur.verify && cur.live && !this.#verify(cur)) continue;
      if (this.#readChunk(cur) > 0) continue;
      if (!cur.live || cur.draining) {
        this.#leave(cur, 'end');
        continue;
      }
      cur.verify = true;
      if (!this.#checkLive(cur)) return;
    }
  }

  // --- start-up ---------------------------------------------------------------------------------

  #init(): boolean {
    const loaded = loadTailState(this.stateFile);
    if (loaded.problem) {
      this.#log.warn(
        { input: 'tail', stateFile: this.stateFile },
        `${loaded.problem}: reading ${this.path} from its beginning (records already sent are sent again)`,
      );
      this.#liveStart = 0;
      this.#initialized = true;
      return true;
    }
    const state = loaded.state;
    if (!state) {
      this.#liveStart = this.#o.startAt === 'end' ? 'end' : 0;
      this.#log.info(
        { input: 'tail', path: this.path, stateFile: this.stateFile, startAt: this.#o.startAt },
        this.#o.startAt === 'end'
          ? `no tail state yet: starting at the end of ${this.path} (records already in it are not sent; tail_start = beginning sends them)`
          : `no tail state yet: starting at the beginning of ${this.path}`,
      );
      this.#initialized = true;
      return true;
    }
    const stateKey = `${state.dev}:${state.ino}`;
    const live = this.#statPath();
    if (live && keyOf(live) === stateKey) {
      const cur = this.#open(this.path, stateKey, true);
      if (!cur) return false; // unreadable: logged, retried by the poll
      this.#initialized = true;
      this.#resume(cur, state);
      return true;
    }
    this.#initialized = true;
    const sibs = this.#siblings();
    const found = sibs.find((s) => s.key === stateKey);
    const liveKey = live ? keyOf(live) : null;
    if (found) {
      const cur = this.#open(found.full, stateKey, liveKey === null);
      if (cur && this.#matches(cur.fd, state.offset, state.checkLen, state.checkSha256)) {
        cur.pos = state.offset;
        cur.endTail = readExact(cur.fd, state.checkLen, state.offset - state.checkLen);
        const newer = this.#newer(sibs, found, state.mtimeMs, liveKey);
        this.#log.info(
          { input: 'tail', file: found.full, offset: state.offset, newer: newer.map((s) => s.full) },
          `${this.path} was rotated while auditrelay was not reading it: reading ${found.full} from offset ${state.offset}` +
            (newer.length ? `, then ${newer.length} newer rotated file(s), ` : ', ') +
            `then ${this.path}`,
        );
        this.stats.rotations++;
        this.#enter(cur);
        this.#queueCatchUp(newer);
        this.#queueLive(liveKey);
        return true;
      }
      if (cur) this.#closeFd(cur);
    }
    this.#reportGap(state, sibs, liveKey);
    return true;
  }

  /** Resume the live file at the saved position, or handle it as truncated/replaced. */
  #resume(cur: Cursor, state: TailState): void {
    const size = Number(fstatSync(cur.fd).size);
    const intact =
      size >= state.offset && this.#matches(cur.fd, state.offset, state.checkLen, state.checkSha256);
    if (intact) {
      cur.pos = state.offset;
      cur.endTail = readExact(cur.fd, state.checkLen, state.offset - state.checkLen);
      this.#log.info(
        { input: 'tail', path: this.path, offset: state.offset },
        `resuming ${this.path} at offset ${state.offset}`,
      );
      this.#enter(cur);
      return;
    }
    // Same inode, but shorter than our offset or other bytes before it: truncated (copytruncate) while we
    // were not running. The copy, if any, holds the rest of what we had not read.
    this.#enter(cur);
    this.#truncated(cur, state.offset, state.checkLen, state.checkSha256, size);
  }

  #reportGap(state: TailState, sibs: Sibling[], liveKey: string | null): void {
    const message =
      `the file auditrelay was reading (${state.path}, device ${state.dev} inode ${state.ino}, read up to offset ${state.offset}) ` +
      `is no longer at ${this.path} nor among its rotated files in ${this.#dir}: it was rotated away (removed by num_logs, compressed or moved) ` +
      'before auditrelay read it to its end. Records written to it after that offset may be missing from what auditrelay forwarded';
    this.stats.gaps++;
    this.#log.error(
      { input: 'tail', path: this.path, dev: state.dev, ino: state.ino, offset: state.offset },
      message,
    );
    this.emit('gap', {
      file: state.path,
      dev: state.dev,
      ino: state.ino,
      offset: state.offset,
      message,
    } satisfies TailGap);
    const newer = this.#newer(sibs, null, state.mtimeMs, liveKey);
    if (newer.length) {
      this.#log.warn(
        { input: 'tail', files: newer.map((s) => s.full) },
        `reading ${newer.length} rotated file(s) written after it in full before ${this.path}`,
      );
    }
    this.#queueCatchUp(newer);
    this.#liveStart = 0;
    this.#queueLive(liveKey);
  }

  // --- files --------------------------------------------------------------------------------------

  #statPath(): BigIntStats | null {
    try {
      const st = statSync(this.path, { bigint: true });
      this.#clear('stat');
      return st;
    } catch (err) {
      if (errCode(err) !== 'ENOENT')
        this.#problem('stat', `tail: cannot stat ${this.path}: ${errCode(err)}; retrying`);
      return null;
    }
  }

  /** Opens `file`; when `key` is given the opened file must have that identity. */
  #open(file: string, key: string | null, live: boolean): Cursor | null {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (err) {
      const code = errCode(err);
      if (code !== 'ENOENT') this.#problem(`open:${file}`, `tail: cannot open ${file}: ${code}; retrying`);
      return null;
    }
    this.#clear(`open:${file}`);
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile() || (key !== null && keyOf(st) !== key)) {
      closeSync(fd);
      if (!st.isFile()) this.#problem(`type:${file}`, `tail: ${file} is not a regular file; retrying`);
      return null;
    }
    return {
      fd,
      dev: String(st.dev),
      ino: String(st.ino),
      key: keyOf(st),
      name: file,
      live,
      pos: 0,
      carry: EMPTY,
      endTail: EMPTY,
      draining: false,
      verify: false,
    };
  }

  #closeFd(c: Cursor): void {
    try {
      closeSync(c.fd);
    } catch {
      // already closed
    }
  }

  /** Opens the file at `path` as the live file (after start-up, or once the previous one is finished). */
  #openLive(): boolean {
    const cur = this.#open(this.path, null, true);
    if (!cur) {
      if (!this.#missing && !this.#statPath()) {
        this.#missing = true;
        this.#log.warn(
          { input: 'tail', path: this.path },
          `${this.path} does not exist; waiting for it to appear (checked on directory events and every ${this.#o.pollIntervalMs} ms)`,
        );
        this.emit('missing');
      }
      return false;
    }
    if (this.#missing) {
      // A file that appears while we wait holds only records we have not seen.
      this.#missing = false;
      this.#liveStart = 0;
      this.#log.info({ input: 'tail', path: this.path }, `${this.path} appeared; reading it from the start`);
      this.emit('appeared');
    }
    if (this.#liveStart === 'end') {
      this.#startAtEnd(cur);
    } else {
      cur.pos = this.#liveStart;
      if (cur.pos > 0)
        cur.endTail = readExact(
          cur.fd,
          Math.min(cur.pos, CHECK_BYTES),
          cur.pos - Math.min(cur.pos, CHECK_BYTES),
        );
    }
    this.#liveStart = 0;
    this.#enter(cur);
    return true;
  }

  /** Start after the last complete line (a line being written is read in full). */
  #startAtEnd(cur: Cursor): void {
    const size = Number(fstatSync(cur.fd).size);
    const window = Math.min(size, 64 * 1024);
    const tail = readExact(cur.fd, window, size - window);
    const nl = tail.lastIndexOf(NL);
    cur.pos = nl >= 0 ? size - window + nl + 1 : window === size ? 0 : size;
    const take = Math.min(cur.pos, CHECK_BYTES);
    cur.endTail = readExact(cur.fd, take, cur.pos - take);
  }

  /** Makes `c` the current file and records its start as the position once everything before is queued. */
  #enter(c: Cursor): void {
    this.#cur = c;
    this.#rotationSeenAt = 0;
    const pos = this.#position(c, c.pos - c.carry.length, c.endTail);
    if (this.#committedSeq >= this.#lastPushedSeq) {
      this.#committedSeq = this.#lastPushedSeq;
      this.#marker = null;
      this.#save(pos);
    } else {
      this.#marker = { afterSeq: this.#lastPushedSeq, pos };
    }
  }

  /** Done with `c` (its end was reached and it will not grow any more). */
  #leave(c: Cursor, why: 'end' | 'truncated'): void {
    if (c.carry.length > 0) this.#pushTorn(c, why === 'end' ? 'the file ended' : 'the file was truncated');
    this.#closeFd(c);
    this.#finished.push(c.key);
    if (this.#finished.length > FINISHED_MEMORY) this.#finished.shift();
    if (this.#cur === c) this.#cur = null;
    this.emit('fileDone', { file: c.name, dev: c.dev, ino: c.ino, offset: c.pos });
  }

  #queueCatchUp(sibs: Sibling[]): void {
    for (const s of sibs) {
      const c = this.#open(s.full, s.key, false) ?? this.#reopenMoved(s.key, false);
      if (!c) {
        this.#log.warn(
          { input: 'tail', file: s.full },
          `rotated file ${s.full} disappeared before it could be read: its records may be missing`,
        );
        this.stats.gaps++;
        continue;
      }
      this.stats.catchUpFiles++;
      this.#next.push(c);
    }
  }

  /**
   * Opens the file now at `path` and queues it (from offset 0) after the catch-up files: held open, it is
   * read in full even if it is rotated again before its turn. If it cannot be opened now, it is opened
   * when its turn comes.
   */
  #queueLive(key: string | null): void {
    if (key === null) return;
    const c = this.#open(this.path, key, true);
    if (c) this.#next.push(c);
  }

  /** A sibling renamed again between listing and opening: find it by identity. */
  #reopenMoved(key: string, live: boolean): Cursor | null {
    const s = this.#siblings().find((x) => x.key === key);
    return s ? this.#open(s.full, key, live) : null;
  }

  #siblings(): Sibling[] {
    let names: string[];
    try {
      names = readdirSync(this.#dir);
    } catch {
      return [];
    }
    const out: Sibling[] = [];
    const prefix = this.#base;
    for (const name of names) {
      if (name === prefix || !name.startsWith(prefix)) continue;
      const rest = name.slice(prefix.length);
      if (!/^[.\-_]/.test(rest) || COMPRESSED.test(name) || name.endsWith('.tmp')) continue;
      const full = join(this.#dir, name);
      if (full === this.stateFile) continue;
      try {
        const st = statSync(full, { bigint: true });
        if (!st.isFile()) continue;
        const m = /^\.(\d+)$/.exec(rest);
        out.push({
          name,
          full,
          key: keyOf(st),
          size: Number(st.size),
          mtimeMs: Number(st.mtimeNs / 1000n) / 1000,
          n: m ? Number(m[1]) : null,
        });
      } catch {
        // vanished while listing
      }
    }
    return out;
  }

  /**
   * Rotated files written after `ref` (or, without ref, modified at or after `mtimeMs`), oldest first,
   * excluding the live file and files already read. With auditd's numbering (`.N`, larger = older) the
   * number decides; otherwise the modification time.
   */
  #newer(sibs: Sibling[], ref: Sibling | null, mtimeMs: number, liveKey: string | null): Sibling[] {
    const queued = new Set([this.#cur?.key, ...this.#next.map((c) => c.key)]);
    const candidates = sibs.filter(
      (s) => s.key !== ref?.key && s.key !== liveKey && !this.#finished.includes(s.key) && !queued.has(s.key),
    );
    if (ref && ref.n !== null) {
      const refN = ref.n;
      return candidates.filter((s) => s.n !== null && s.n < refN).sort((a, b) => b.n! - a.n!);
    }
    return candidates
      .filter((s) => s.mtimeMs >= mtimeMs)
      .sort((a, b) => a.mtimeMs - b.mtimeMs || (b.n ?? 0) - (a.n ?? 0));
  }

  #matches(fd: number, offset: number, len: number, sha: string): boolean {
    if (offset < len) return false;
    const bytes = readExact(fd, len, offset - len);
    return bytes.length === len && checksum(bytes) === sha;
  }

  // --- reading ------------------------------------------------------------------------------------

  #readChunk(cur: Cursor): number {
    const buf = Buffer.allocUnsafe(this.#o.chunkBytes);
    let n: number;
    try {
      n = readSync(cur.fd, buf, 0, buf.length, cur.pos);
      this.#clear(`read:${cur.key}`);
    } catch (err) {
      this.#problem(`read:${cur.key}`, `tail: cannot read ${cur.name}: ${errCode(err)}; retrying`);
      return 0;
    }
    if (n === 0) return 0;
    cur.pos += n;
    cur.verify = false;
    this.stats.bytes += n;
    const data = cur.carry.length > 0 ? Buffer.concat([cur.carry, buf.subarray(0, n)]) : buf.subarray(0, n);
    const nl = data.lastIndexOf(NL);
    if (nl === -1) {
      cur.carry = Buffer.from(data);
      if (cur.carry.length >= this.#o.maxLineBytes) {
        this.#log.warn(
          { input: 'tail', file: cur.name, offset: cur.pos - cur.carry.length, bytes: cur.carry.length },
          `a line longer than ${this.#o.maxLineBytes} bytes without a newline: forwarded as it is (a newline added)`,
        );
        this.#pushTorn(cur, null);
      }
      return n;
    }
    const lines = data.subarray(0, nl + 1);
    cur.carry = nl + 1 < data.length ? Buffer.from(data.subarray(nl + 1)) : EMPTY;
    cur.endTail = lastBytes(cur.endTail, lines);
    this.#push(lines, cur);
    return n;
  }

  /** The carried partial line is forwarded with a '\n' added (its end will never come). */
  #pushTorn(cur: Cursor, why: string | null): void {
    const line = Buffer.concat([cur.carry, Buffer.from('\n')]);
    cur.endTail = lastBytes(cur.endTail, cur.carry);
    cur.carry = EMPTY;
    if (why) {
      this.stats.tornRecords++;
      this.#log.warn(
        { input: 'tail', file: cur.name, offset: cur.pos, bytes: line.length - 1 },
        `${cur.name}: ${why} inside a line: its ${line.length - 1} bytes are forwarded as a record of their own (a newline added)`,
      );
    }
    this.#push(line, cur);
  }

  #position(cur: Cursor, offset: number, check: Buffer): TailPosition {
    let mtimeMs = 0;
    try {
      mtimeMs = fstatSync(cur.fd).mtimeMs;
    } catch {
      // closed: keep 0
    }
    return { seq: this.#seq, file: cur.name, dev: cur.dev, ino: cur.ino, offset, mtimeMs, check };
  }

  #push(chunk: Buffer, cur: Cursor): void {
    this.#seq++;
    const pos = this.#position(cur, cur.pos - cur.carry.length, cur.endTail);
    this.#positions.set(chunk, pos);
    this.#lastPushedSeq = pos.seq;
    this.stats.chunks++;
    this.#wanted = this.push(chunk);
  }

  /** Bytes before our offset still the same? Otherwise the file was truncated and rewritten. */
  #verify(cur: Cursor): boolean {
    const lineEnd = cur.pos - cur.carry.length;
    const len = cur.endTail.length;
    let size: number;
    try {
      size = Number(fstatSync(cur.fd).size);
    } catch {
      return true;
    }
    if (size <= cur.pos) return true; // nothing new (shrinking is handled at the end of the file)
    if (len === 0 || readExact(cur.fd, len, lineEnd - len).equals(cur.endTail)) {
      cur.verify = false;
      return true;
    }
    this.#truncated(cur, lineEnd, len, checksum(cur.endTail), size);
    return false;
  }

  /**
   * At the end of the live file: is it still the file at `path`, did it shrink? Returns false to wait for
   * more data or events, true to go on reading.
   */
  #checkLive(cur: Cursor): boolean {
    const st = this.#statPath();
    if (!st) {
      if (!this.#missing) {
        this.#missing = true;
        this.#log.warn(
          { input: 'tail', path: this.path },
          `${this.path} disappeared; reading on the file it was while it grows, and waiting for a new ${this.path}`,
        );
        this.emit('missing');
      }
      return false;
    }
    if (this.#missing) {
      this.#missing = false;
      this.#log.info({ input: 'tail', path: this.path }, `${this.path} is back`);
      this.emit('appeared');
    }
    if (keyOf(st) === cur.key) {
      this.#rotationSeenAt = 0;
      const size = Number(fstatSync(cur.fd).size);
      if (size < cur.pos) {
        this.#truncated(cur, cur.pos - cur.carry.length, cur.endTail.length, checksum(cur.endTail), size);
        return true;
      }
      return false;
    }
    // Another file is at `path`: rotated by rename. Leave the old file once the writer has moved over:
    // when the new file has data (read the old one once more first) or after rotateWaitMs.
    const now = Date.now();
    if (this.#rotationSeenAt === 0) this.#rotationSeenAt = now;
    if (st.size === 0n && now - this.#rotationSeenAt < this.#o.rotateWaitMs) return false;
    cur.draining = true;
    this.stats.rotations++;
    const sibs = this.#siblings();
    const liveKey = keyOf(st);
    const self = sibs.find((s) => s.key === cur.key) ?? null;
    let mtimeMs = 0;
    try {
      mtimeMs = fstatSync(cur.fd).mtimeMs;
    } catch {
      // keep 0
    }
    const newer = this.#newer(sibs, self, mtimeMs, liveKey);
    this.#log.info(
      { input: 'tail', path: this.path, rotatedTo: self?.full ?? null, newer: newer.map((s) => s.full) },
      `${this.path} was rotated${self ? ` to ${self.full}` : ''}: finishing it` +
        (newer.length ? `, then ${newer.length} rotated file(s) auditrelay had not seen,` : '') +
        ` then the new ${this.path}`,
    );
    this.emit('rotation', {
      from: cur.name,
      rotatedTo: self?.full ?? null,
      catchUp: newer.map((s) => s.full),
    });
    this.#queueCatchUp(newer);
    this.#queueLive(liveKey);
    return true;
  }

  /**
   * `cur` (the live file) lost the bytes before `offset` (shrunk to `size`, or rewritten). Read the rest of
   * the rotated copy if there is one, then the file from 0.
   */
  #truncated(cur: Cursor, offset: number, checkLen: number, sha: string, size: number): void {
    this.stats.truncations++;
    const copy = offset > 0 ? this.#findCopy(cur.key, offset, checkLen, sha) : null;
    const shrunk = size < offset;
    const what = shrunk
      ? `was truncated (size ${size} < offset ${offset})`
      : `was rewritten (the bytes before offset ${offset} changed)`;
    let copyCursor: Cursor | null = null;
    if (copy) {
      copyCursor = this.#open(copy.full, copy.key, false);
      if (copyCursor) {
        copyCursor.pos = offset;
        copyCursor.endTail = readExact(copyCursor.fd, checkLen, offset - checkLen);
      }
    }
    if (copyCursor) {
      this.#log.info(
        { input: 'tail', path: this.path, copy: copy!.full, offset },
        `${this.path} ${what}: copytruncate; reading the rest of its copy ${copy!.full} from offset ${offset} first (${copy!.size - offset} bytes), then ${this.path} from the start`,
      );
      cur.carry = EMPTY; // the copy holds the partial line too: read it again from there
    } else if (offset > 0) {
      this.#log.warn(
        { input: 'tail', path: this.path, offset, size },
        `${this.path} ${what} and no rotated copy with the same bytes was found: reading it from the start; records written after offset ${offset} before the truncation may have been missed`,
      );
      if (cur.carry.length > 0) this.#pushTorn(cur, 'the file was truncated');
    }
    this.emit('truncation', { file: this.path, offset, size, copy: copyCursor ? copy!.full : null });
    cur.pos = 0;
    cur.carry = EMPTY;
    cur.endTail = EMPTY;
    cur.verify = false;
    cur.draining = false;
    if (copyCursor) {
      this.#cur = null;
      this.#next.unshift(copyCursor, cur);
    } else {
      this.#enter(cur);
    }
  }

  #findCopy(key: string, offset: number, checkLen: number, sha: string): Sibling | null {
    const sibs = this.#siblings()
      .filter((s) => s.key !== key && s.size >= offset)
      .sort((a, b) => b.mtimeMs - a.mtimeMs);
    for (const s of sibs.slice(0, 8)) {
      let fd: number | null = null;
      try {
        fd = openSync(s.full, 'r');
        if (this.#matches(fd, offset, checkLen, sha)) return s;
      } catch {
        // unreadable: not it
      } finally {
        if (fd !== null) closeSync(fd);
      }
    }
    return null;
  }

  // --- state --------------------------------------------------------------------------------------

  #save(pos: TailPosition): void {
    this.#committed = pos;
    this.emit('commit', pos);
    if (this.#o.stateWriteIntervalMs <= 0 || this.#closed) {
      this.#write(pos);
      return;
    }
    this.#unsaved = pos;
    if (!this.#saveTimer) {
      this.#saveTimer = setTimeout(() => {
        this.#saveTimer = null;
        if (this.#unsaved) this.#write(this.#unsaved);
      }, this.#o.stateWriteIntervalMs);
    }
  }

  #write(pos: TailPosition): void {
    this.#unsaved = null;
    const state: TailState = {
      version: TAIL_STATE_VERSION,
      path: pos.file,
      dev: pos.dev,
      ino: pos.ino,
      offset: pos.offset,
      mtimeMs: pos.mtimeMs,
      checkLen: pos.check.length,
      checkSha256: checksum(pos.check),
    };
    try {
      saveTailState(this.stateFile, state, this.#o.stateFsync);
      this.stats.stateWrites++;
      this.#clear('state');
    } catch (err) {
      this.stats.stateErrors++;
      this.#problem(
        'state',
        `tail: cannot write the state file ${this.stateFile}: ${err instanceof FileSafetyError ? err.message : errCode(err)}; forwarding goes on, but after a restart records since the last saved position are sent again`,
      );
    }
  }
}
