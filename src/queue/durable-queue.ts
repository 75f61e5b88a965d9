/**
 * A crash-safe queue on disk (`mode = forward`): an append log of checksummed records in segment
 * files under `queue_dir`, with the acknowledgement position in a small cursor file. Same semantics
 * as the memory queue — [in flight | unsent], in-order acks of the head, `rewind()` — but bounded by
 * bytes on disk, and with only a bounded window of unsent records in memory: the rest is read back
 * from disk as the session takes records. Format and guarantees: docs/queue.md.
 *
 * All file I/O on the record path is synchronous: `append()` returns only once the record is in the
 * kernel (so a killed process loses nothing it accepted), and, with `fsync = always`, on disk.
 */
import { EventEmitter } from 'node:events';
import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import { QueueError } from '../errors.js';
import { acquireLock, type QueueLock } from './queue-lock.js';
import { Ring } from './record-ring.js';
import {
  ChunkReader,
  checkRecord,
  decodeAck,
  decodeSegmentHeader,
  encodeAck,
  encodeRecordInto,
  encodeSegmentHeader,
  MAX_PAYLOAD,
  RECORD_HEADER_SIZE,
  type RecordView,
  resync,
  SEGMENT_HEADER_SIZE,
  SEGMENT_NAME_RE,
  type Skip,
  scanSegment,
  segmentName,
} from './segment-format.js';
import type { QueuedRecord, QueueEvents, QueueStatus, RecordQueue } from './types.js';

export type FsyncPolicy = 'always' | 'interval' | 'never';

/** The part of a pino logger the queue uses. */
export interface QueueLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface DurableQueueOptions {
  /** The queue directory (`queue_dir`); created if missing. */
  dir: string;
  /** Bound on the bytes of segment files (`queue_max_bytes`). */
  maxBytes: number;
  fsync: FsyncPolicy;
  /** Period of the data sync with `fsync = interval`. */
  fsyncIntervalMs: number;
  /** Size at which a segment file is closed and a new one started. Default 64 MiB, at most maxBytes / 8. */
  segmentBytes?: number;
  /** Unsent records kept in memory (read ahead from disk). Default 4096. */
  memoryWindow?: number;
  /** Bytes of unsent payload kept in memory, whichever bound comes first. Default 4 MiB. */
  memoryWindowBytes?: number;
  /** Longest time between writes of the ack cursor. Default 1000 ms. */
  ackPersistMs?: number;
  /** After an I/O error, how often the caller is invited to retry (`drain` / `readable`). Default 1000 ms. */
  errorRetryMs?: number;
  log?: QueueLogger;
}

export type QueueFindingKind =
  | 'stale-lock'
  | 'corrupt-ack-cursor'
  | 'empty-segment'
  | 'bad-segment'
  | 'torn-tail'
  | 'corrupt-record';

/** Something `open()` found and repaired or set aside; also logged (warn) by `open()`. */
export interface QueueFinding {
  kind: QueueFindingKind;
  /** The file concerned (absolute path). */
  file: string;
  /** Byte offset in the file where the bad bytes start. */
  offset?: number;
  /** Byte offset where intact data resumes (corrupt-record) or where the file ended (torn-tail). */
  end?: number;
  /** Bytes skipped or truncated. */
  bytes?: number;
  /** Records lost, when the gap in ids tells. */
  records?: number;
  /** Where a file unfit for use was moved (`*.corrupt`). */
  movedTo?: string;
  /** One line for the log. */
  message: string;
}

interface Segment {
  firstId: number;
  path: string;
  /** End of the intact records: where the next record goes (active segment) or where reading stops. */
  size: number;
  /** Id of the last intact record (firstId - 1 while there is none). */
  lastId: number;
  /** Corrupt byte ranges to step over when reading. */
  skips: Skip[];
}

interface ReadCursor {
  seg: Segment;
  pos: number;
  fd: number | null;
  reader: ChunkReader | null;
}

interface RecoveredState {
  segs: Segment[];
  acked: number;
  nextId: number;
  unacked: number;
  unackedBytes: number;
  readStart: { seg: Segment; pos: number } | null;
}

const ACK_FILE = 'ack';
const ACK_TMP = 'ack.tmp';
const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES = 1024;
const SCAN_CHUNK = 1024 * 1024;
const READ_CHUNK = 256 * 1024;

const noop = () => {};
const SILENT: QueueLogger = { debug: noop, info: noop, warn: noop, error: noop };

function errCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}

function writeAll(fd: number, buf: Buffer, position: number): number {
  let off = 0;
  while (off < buf.length) {
    const n = writeSync(fd, buf, off, buf.length - off, position + off);
    if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    off += n;
  }
  return off;
}

export class DurableQueue extends EventEmitter<QueueEvents> implements RecordQueue {
  readonly dir: string;
  readonly capacity: number;
  readonly fsync: FsyncPolicy;
  readonly segmentBytes: number;
  /** The last I/O error met (also logged); null when none happened yet. */
  lastError: Error | null = null;

  readonly #log: QueueLogger;
  readonly #lock: QueueLock;
  readonly #window: number;
  readonly #windowBytes: number;
  readonly #errorRetryMs: number;
  readonly #segs: Segment[];
  #active: { seg: Segment; fd: number } | null = null;
  /** [in flight | unsent records read into memory]; the other unsent records are on disk only. */
  readonly #mem = new Ring<QueuedRecord>();
  #inFlight = 0;
  #inFlightBytes = 0;
  #unsentMemBytes = 0;
  /** Unsent records on disk only, from #read on. */
  #spilled = 0;
  #read: ReadCursor | null = null;
  #bytes: number;
  #diskBytes: number;
  #nextId: number;
  #ackedThrough: number;
  #persistedAck: number;
  #status: QueueStatus;
  #full = false;
  /** Frame size of the last record refused for lack of room. */
  #refusedNeed = 0;
  #refusedOnError = false;
  #readRetry = false;
  #writeError: Error | null = null;
  #syncError: Error | null = null;
  #readError: Error | null = null;
  #ackError: Error | null = null;
  /** The open `ack` file (the last one renamed into place), rewritten in place after each batch of acks. */
  #ackFd: number | null = null;
  /** Cursor value last written to `ack` (in place or durably). */
  #writtenAck: number;
  #dirty = false;
  #syncing: { fd: number; closeAfter: boolean; done: Promise<void> } | null = null;
  #timers: NodeJS.Timeout[] = [];
  #retryTimer: NodeJS.Timeout | null = null;
  #closed = false;
  #totalAppended = 0;
  #totalAcked = 0;
  readonly #view: RecordView = { id: 0, length: 0, index: 0 };

  /**
   * Opens (or creates) the queue in `options.dir`: takes the directory lock, verifies every segment,
   * repairs what it can and reports it in `findings` (also logged). Rejects with a QueueError when the
   * directory cannot be used or another process holds it.
   */
  static async open(
    options: DurableQueueOptions,
  ): Promise<{ queue: DurableQueue; findings: QueueFinding[] }> {
    const o = validate(options);
    const log = options.log ?? SILENT;
    const dir = resolve(options.dir);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (!statSync(dir).isDirectory())
        throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    } catch (err) {
      throw new QueueError(`cannot use queue directory ${dir}: ${errCode(err)}`, { cause: err });
    }
    const lock = acquireLock(dir);
    try {
      const findings: QueueFinding[] = [];
      if (lock.staleOwner) {
        findings.push({
          kind: 'stale-lock',
          file: lock.path,
          message: lock.staleOwner.pid
            ? `took over the lock of process ${lock.staleOwner.pid}, which is no longer running`
            : `took over a lock file with unreadable content (${JSON.stringify(lock.staleOwner.content)})`,
        });
      }
      const state = recover(dir, findings);
      const queue = new DurableQueue(options, o, dir, lock, state);
      for (const f of findings) {
        const { message, ...fields } = f;
        log.warn({ queueFinding: fields }, `queue: ${message}`);
      }
      log.info(
        {
          dir,
          records: queue.depth,
          bytes: queue.bytes,
          segments: state.segs.length,
          nextId: state.nextId,
          fsync: o.fsync,
        },
        queue.depth > 0 ? `queue opened with ${queue.depth} record(s) to send` : 'queue opened',
      );
      return { queue, findings };
    } catch (err) {
      lock.release();
      if (err instanceof QueueError) throw err;
      throw new QueueError(`cannot open the queue in ${dir}: ${errCode(err)}`, { cause: err });
    }
  }

  private constructor(
    options: DurableQueueOptions,
    o: ReturnType<typeof validate>,
    dir: string,
    lock: QueueLock,
    state: RecoveredState,
  ) {
    super();
    this.dir = dir;
    this.capacity = o.maxBytes;
    this.fsync = o.fsync;
    this.segmentBytes = o.segmentBytes;
    this.#log = options.log ?? SILENT;
    this.#lock = lock;
    this.#window = o.memoryWindow;
    this.#windowBytes = o.memoryWindowBytes;
    this.#errorRetryMs = o.errorRetryMs;
    this.#segs = state.segs;
    this.#ackedThrough = state.acked;
    this.#persistedAck = state.acked;
    this.#writtenAck = state.acked;
    this.#nextId = state.nextId;
    this.#bytes = state.unackedBytes;
    this.#diskBytes = state.segs.reduce((n, s) => n + s.size, 0);
    if (state.readStart && state.unacked > 0) {
      this.#spilled = state.unacked;
      this.#read = { seg: state.readStart.seg, pos: state.readStart.pos, fd: null, reader: null };
      this.#refill();
    }
    this.#status = this.#computeStatus();
    if (o.fsync === 'interval') this.#timers.push(setInterval(this.#syncTick, o.fsyncIntervalMs));
    this.#timers.push(setInterval(() => this.#persistAck(false), o.ackPersistMs));
    for (const t of this.#timers) t.unref();
  }

  get depth(): number {
    return this.#mem.length + this.#spilled;
  }
  get bytes(): number {
    return this.#bytes;
  }
  get inFlight(): number {
    return this.#inFlight;
  }
  get unsent(): number {
    return this.#mem.length - this.#inFlight + this.#spilled;
  }
  /** Unsent records on disk only (not read into memory yet). */
  get spilled(): number {
    return this.#spilled;
  }
  /** Bytes of segment files, the quantity bounded by `capacity` (maxBytes). */
  get diskBytes(): number {
    return this.#diskBytes;
  }
  get status(): QueueStatus {
    return this.#status;
  }
  get totalAppended(): number {
    return this.#totalAppended;
  }
  get totalAcked(): number {
    return this.#totalAcked;
  }
  /** The id the next appended record gets. */
  get nextId(): number {
    return this.#nextId;
  }
  get #unsentInMemory(): number {
    return this.#mem.length - this.#inFlight;
  }

  /**
   * Writes the record to the active segment (and fdatasyncs it with `fsync = always`) before returning
   * true. Returns false, without throwing, when the byte bound is reached (status `full`, `drain`
   * follows once acks free room) or when the write fails (status `error`, `lastError`; `drain` is
   * emitted every errorRetryMs so the caller retries).
   */
  append(payload: Buffer): boolean {
    return this.appendMany([payload]) === 1;
  }

  /**
   * Appends records in order, as `append()` for each one would, stopping at the first one refused; returns
   * how many were accepted. The records that go into one segment are written with one write (and synced
   * once with `fsync = always`) before it returns.
   */
  appendMany(payloads: readonly Buffer[]): number {
    if (this.#closed) return 0;
    let done = 0;
    while (done < payloads.length) {
      const n = this.#appendRun(payloads, done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Appends payloads[from..] that go into the current (or a new) segment with one write; returns how many. */
  #appendRun(payloads: readonly Buffer[], from: number): number {
    const tooBig = (p: Buffer) =>
      p.length > MAX_PAYLOAD || RECORD_HEADER_SIZE + p.length + SEGMENT_HEADER_SIZE > this.capacity;
    const first = payloads[from]!;
    if (tooBig(first)) throw new RangeError(`a record of ${first.length} bytes can never fit in this queue`);
    const firstLen = RECORD_HEADER_SIZE + first.length;
    if (!this.#makeRoom(firstLen)) {
      if (!this.#full)
        this.#log.debug({ diskBytes: this.#diskBytes, depth: this.depth }, 'queue: disk bound reached');
      this.#full = true;
      this.#refusedNeed = firstLen;
      this.#updateStatus();
      return 0;
    }
    let act: { seg: Segment; fd: number };
    try {
      if (!this.#active || this.#active.seg.size >= this.segmentBytes) {
        this.#seal();
        this.#createSegment(this.#nextId);
      }
      act = this.#active!;
    } catch (err) {
      this.#appendFailed(err);
      return 0;
    }
    const seg = act.seg;
    const pos = seg.size;
    // The records that still start inside this segment and fit the bound.
    let end = from + 1;
    let bytes = firstLen;
    while (end < payloads.length) {
      const p = payloads[end]!;
      const len = RECORD_HEADER_SIZE + p.length;
      if (tooBig(p) || pos + bytes >= this.segmentBytes || this.#diskBytes + bytes + len > this.capacity)
        break;
      bytes += len;
      end++;
    }
    const buf = Buffer.allocUnsafe(bytes);
    for (let i = from, off = 0, id = this.#nextId; i < end; i++, id++) {
      off += encodeRecordInto(buf, off, id, payloads[i]!);
    }
    try {
      this.#writeRecord(act, buf, pos);
    } catch (err) {
      this.#appendFailed(err);
      return 0;
    }
    const unsentBefore = this.unsent;
    for (let i = from, off = 0; i < end; i++) {
      const payload = payloads[i]!;
      const len = RECORD_HEADER_SIZE + payload.length;
      const id = this.#nextId++;
      seg.size += len;
      seg.lastId = id;
      this.#diskBytes += len;
      this.#totalAppended++;
      this.#bytes += payload.length;
      if (
        this.#spilled === 0 &&
        this.#unsentInMemory < this.#window &&
        this.#unsentMemBytes < this.#windowBytes
      ) {
        this.#mem.push({ id, payload: buf.subarray(off + RECORD_HEADER_SIZE, off + len) });
        this.#unsentMemBytes += payload.length;
      } else {
        if (this.#spilled === 0) this.#startReading(seg, pos + off);
        this.#spilled++;
      }
      off += len;
    }
    if (this.fsync === 'interval') this.#dirty = true;
    if (this.#writeError) {
      this.#writeError = null;
      this.#log.info({ dir: this.dir }, 'queue: writing works again');
    }
    this.#refusedOnError = false;
    const drained = this.#full;
    this.#full = false;
    this.#refusedNeed = 0;
    if (unsentBefore === 0) this.emit('readable');
    this.#updateStatus();
    if (drained) this.emit('drain');
    return end - from;
  }

  #appendFailed(err: unknown): void {
    this.#writeFailed(err);
    const code = errCode(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') this.#releaseSpace();
  }

  takeNext(): QueuedRecord | undefined {
    if (this.#unsentInMemory === 0 && this.#spilled > 0) this.#refill();
    const rec = this.#mem.at(this.#inFlight);
    if (!rec) return undefined;
    this.#inFlight++;
    this.#inFlightBytes += rec.payload.length;
    this.#unsentMemBytes -= rec.payload.length;
    if (this.#spilled > 0 && this.#unsentInMemory < this.#window / 2) this.#refill();
    return rec;
  }

  ack(id: number): void {
    const head = this.#inFlight > 0 ? this.#mem.at(0) : undefined;
    if (!head || head.id !== id) {
      throw new QueueError(`acknowledged record ${id} is not the oldest in flight (${head?.id ?? 'none'})`);
    }
    this.#mem.shift();
    this.#inFlight--;
    this.#inFlightBytes -= head.payload.length;
    this.#bytes -= head.payload.length;
    this.#totalAcked++;
    this.#ackedThrough = id;
    let freed = false;
    for (let s = this.#segs[0]; s && s !== this.#active?.seg && s.lastId <= id; s = this.#segs[0]) {
      if (this.#spilled > 0 && this.#read?.seg === s) break;
      this.#deleteHeadSegment();
      freed = true;
    }
    const wasFull = this.#full;
    if (wasFull && this.#makeRoom(this.#refusedNeed)) {
      this.#full = false;
      this.#refusedNeed = 0;
    }
    this.#updateStatus();
    if (wasFull && !this.#full) this.emit('drain');
    else if (freed && this.#writeError && this.#refusedOnError) this.emit('drain');
  }

  rewind(): void {
    const had = this.#inFlight;
    this.#inFlight = 0;
    this.#unsentMemBytes += this.#inFlightBytes;
    this.#inFlightBytes = 0;
    if (had > 0 && this.unsent === had) this.emit('readable');
  }

  /** Syncs the data, persists the ack cursor, closes the files and releases the directory lock. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#syncing) await this.#syncing.done;
    this.#seal();
    this.#closeReader();
    this.#persistAck(true);
    if (this.#ackFd !== null) this.#closeFd(this.#ackFd);
    this.#ackFd = null;
    this.#lock.release();
  }

  // --- writing ---------------------------------------------------------------------------------

  #fits(frameLen: number): boolean {
    const newSegment = !this.#active || this.#active.seg.size >= this.segmentBytes;
    return this.#diskBytes + frameLen + (newSegment ? SEGMENT_HEADER_SIZE : 0) <= this.capacity;
  }

  /** Whether a frame fits; when everything is acknowledged, first drops the (fully acked) active segment. */
  #makeRoom(frameLen: number): boolean {
    if (this.#fits(frameLen)) return true;
    if (this.depth > 0 || !this.#active) return false;
    const seg = this.#active.seg;
    this.#seal();
    if (this.#segs[0] === seg) this.#deleteHeadSegment();
    return this.#fits(frameLen);
  }

  /**
   * The file system is full before `capacity` is reached. The active segment is never deleted while it is
   * appended to, so it is closed: once its records are acknowledged it is deleted like any other and its
   * space comes back (the next append starts a new segment). Segments already fully acknowledged go now.
   */
  #releaseSpace(): void {
    const act = this.#active;
    if (act && act.seg.lastId >= act.seg.firstId) this.#seal();
    for (
      let s = this.#segs[0];
      s && s !== this.#active?.seg && s.lastId <= this.#ackedThrough;
      s = this.#segs[0]
    ) {
      if (this.#spilled > 0 && this.#read?.seg === s) break;
      this.#deleteHeadSegment();
    }
  }

  #createSegment(firstId: number): void {
    const path = join(this.dir, segmentName(firstId));
    const fd = openSync(path, 'wx', 0o600);
    try {
      writeAll(fd, encodeSegmentHeader(firstId), 0);
      if (this.fsync === 'always') fdatasyncSync(fd);
    } catch (err) {
      closeSync(fd);
      try {
        unlinkSync(path);
      } catch {
        // leave it: the next open() removes a header-only or empty segment
      }
      throw err;
    }
    if (this.fsync !== 'never') this.#syncDir();
    const seg: Segment = { firstId, path, size: SEGMENT_HEADER_SIZE, lastId: firstId - 1, skips: [] };
    this.#segs.push(seg);
    this.#diskBytes += SEGMENT_HEADER_SIZE;
    this.#active = { seg, fd };
    this.#dirty = this.fsync === 'interval';
  }

  #writeRecord(act: { seg: Segment; fd: number }, frame: Buffer, pos: number): void {
    try {
      writeAll(act.fd, frame, pos);
      if (this.fsync === 'always') fdatasyncSync(act.fd);
    } catch (err) {
      // Take back whatever part of the record reached the file; if even that fails, stop using
      // this segment (the next open() truncates the partial record as a torn tail).
      try {
        ftruncateSync(act.fd, pos);
      } catch {
        this.#active = null;
        this.#closeFd(act.fd);
      }
      throw err;
    }
  }

  /** Closes the active segment (after a data sync unless `fsync = never`); it stays until acked. */
  #seal(): void {
    const act = this.#active;
    if (!act) return;
    this.#active = null;
    if (this.#dirty) {
      try {
        fdatasyncSync(act.fd);
        this.#syncSucceeded();
      } catch (err) {
        this.#syncFailed(err, act.seg);
      }
    }
    this.#dirty = false;
    this.#closeFd(act.fd);
  }

  #closeFd(fd: number): void {
    if (this.#syncing?.fd === fd) {
      this.#syncing.closeAfter = true;
      return;
    }
    try {
      closeSync(fd);
    } catch {
      // nothing useful to do
    }
  }

  readonly #syncTick = (): void => {
    const act = this.#active;
    if (!act || !this.#dirty || this.#syncing) return;
    this.#dirty = false;
    let resolveDone: () => void = noop;
    const s = {
      fd: act.fd,
      closeAfter: false,
      done: new Promise<void>((r) => {
        resolveDone = r;
      }),
    };
    this.#syncing = s;
    fdatasync(act.fd, (err) => {
      this.#syncing = null;
      if (s.closeAfter) this.#closeFd(s.fd);
      if (err) {
        if (this.#active?.fd === s.fd) this.#dirty = true;
        this.#syncFailed(err, act.seg);
      } else {
        this.#syncSucceeded();
      }
      resolveDone();
    });
  };

  #syncDir(): void {
    try {
      const fd = openSync(this.dir, 'r');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      this.#log.warn({ dir: this.dir, err: errCode(err) }, 'queue: cannot sync the queue directory');
    }
  }

  #writeFailed(err: unknown): void {
    const e = err instanceof Error ? err : new Error(String(err));
    this.lastError = e;
    this.#refusedOnError = true;
    if (!this.#writeError) {
      this.#writeError = e;
      const depth = this.depth;
      this.#log.error(
        { dir: this.dir, err: errCode(err), depth },
        `queue: cannot write to ${this.dir}: ${errCode(err)}; the ${depth} record(s) already queued are kept, ` +
          `new records are refused until a write succeeds (retried every ${this.#errorRetryMs} ms)`,
      );
    }
    this.#updateStatus();
    this.#scheduleRetry();
  }

  #syncFailed(err: unknown, seg: Segment): void {
    const e = err instanceof Error ? err : new Error(String(err));
    this.lastError = e;
    if (!this.#syncError) {
      this.#syncError = e;
      this.#log.error(
        { file: seg.path, err: errCode(err) },
        `queue: fdatasync of ${seg.path} failed: ${errCode(err)}; ` +
          'records written since the last successful sync may not survive a power loss',
      );
    }
    this.#updateStatus();
  }

  #syncSucceeded(): void {
    if (!this.#syncError) return;
    this.#syncError = null;
    this.#log.info({ dir: this.dir }, 'queue: data sync works again');
    this.#updateStatus();
  }

  #scheduleRetry(): void {
    if (this.#retryTimer || this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#closed) return;
      if (this.#refusedOnError) this.emit('drain');
      if (this.#readRetry) {
        this.#readRetry = false;
        this.emit('readable');
      }
    }, this.#errorRetryMs);
    this.#retryTimer.unref();
  }

  // --- acknowledgements ------------------------------------------------------------------------

  /**
   * Makes the acknowledgements so far survive a crash of the process (kill -9): the cursor is rewritten in
   * place in the current `ack` file, one 24-byte pwrite without a sync. The session calls it after each
   * batch of replies, before it sends more, so a restart after kill -9 resends at most one window, not
   * everything acknowledged since the last save. Durability against a power loss is unchanged: the cursor
   * is synced every ackPersistMs, before a segment is deleted and at close.
   */
  flushAcks(): void {
    const acked = this.#ackedThrough;
    if (this.#closed || acked === this.#writtenAck) return;
    if (this.#ackFd === null) {
      // No cursor file open yet: create one (once; after a failure the periodic save retries).
      if (!this.#ackError) this.#persistAck(false);
      return;
    }
    try {
      writeAll(this.#ackFd, encodeAck(acked), 0);
      this.#writtenAck = acked;
    } catch {
      // The periodic save tries again and reports a failure.
    }
  }

  /** Writes the ack cursor (temp file + rename) if it moved. Failure only means resends after a restart. */
  #persistAck(syncDir: boolean): void {
    const acked = this.#ackedThrough;
    if (acked === this.#persistedAck) return;
    const tmp = join(this.dir, ACK_TMP);
    try {
      const fd = openSync(tmp, 'w', 0o600);
      try {
        writeAll(fd, encodeAck(acked), 0);
        if (this.fsync !== 'never') fdatasyncSync(fd);
        renameSync(tmp, join(this.dir, ACK_FILE));
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      // Keep the file open for the in-place rewrites until the next save replaces it.
      if (this.#ackFd !== null) this.#closeFd(this.#ackFd);
      this.#ackFd = fd;
      this.#writtenAck = acked;
      if (syncDir && this.fsync !== 'never') this.#syncDir();
      this.#persistedAck = acked;
      if (this.#ackError) {
        this.#ackError = null;
        this.#log.info({ dir: this.dir }, 'queue: the acknowledgement position is saved again');
      }
    } catch (err) {
      this.lastError = err instanceof Error ? err : new Error(String(err));
      if (!this.#ackError) {
        this.#ackError = this.lastError;
        this.#log.warn(
          { dir: this.dir, err: errCode(err) },
          `queue: cannot save the acknowledgement position: ${errCode(err)}; ` +
            'after a restart, records acknowledged since may be sent again',
        );
      }
    }
  }

  /** Removes the oldest segment, every record of which is acknowledged (cursor saved first). */
  #deleteHeadSegment(): void {
    const seg = this.#segs.shift();
    if (!seg) return;
    // The cursor must cover the segment before it goes, so ids never restart lower after a crash.
    this.#persistAck(true);
    if (this.#read?.seg === seg) this.#closeReader();
    try {
      unlinkSync(seg.path);
    } catch (err) {
      if (errCode(err) !== 'ENOENT') {
        this.lastError = err instanceof Error ? err : new Error(String(err));
        this.#log.warn({ file: seg.path, err: errCode(err) }, 'queue: cannot delete an acknowledged segment');
      }
    }
    this.#diskBytes -= seg.size;
  }

  // --- reading the backlog back ----------------------------------------------------------------

  #startReading(seg: Segment, pos: number): void {
    if (this.#read && this.#read.seg !== seg) this.#closeReader();
    if (this.#read) this.#read.pos = pos;
    else this.#read = { seg, pos, fd: null, reader: null };
  }

  #closeReader(): void {
    const rd = this.#read;
    this.#read = null;
    if (rd?.fd != null) {
      try {
        closeSync(rd.fd);
      } catch {
        // ignore
      }
    }
  }

  /** Reads unsent records from disk into memory up to the window. Never throws. */
  #refill(): void {
    const view = this.#view;
    try {
      while (
        this.#spilled > 0 &&
        this.#unsentInMemory < this.#window &&
        this.#unsentMemBytes < this.#windowBytes
      ) {
        const rd = this.#read;
        if (!rd) {
          this.#lostTrack('no read position');
          break;
        }
        const seg = rd.seg;
        if (rd.pos >= seg.size) {
          if (!this.#nextSegment(rd)) {
            this.#lostTrack(`end of ${seg.path}`);
            break;
          }
          continue;
        }
        const skip = seg.skips.find((s) => s.at === rd.pos);
        if (skip) {
          rd.pos = skip.to;
          continue;
        }
        if (rd.fd === null || !rd.reader) {
          rd.fd = openSync(seg.path, 'r');
          rd.reader = new ChunkReader(rd.fd, seg.size, READ_CHUNK, true);
        }
        const r = rd.reader;
        r.size = seg.size;
        const prev = this.#mem.last()?.id ?? this.#ackedThrough;
        if (checkRecord(r, rd.pos, prev, seg.lastId, view)) {
          const start = view.index + RECORD_HEADER_SIZE;
          this.#mem.push({ id: view.id, payload: r.buf.subarray(start, start + view.length) });
          this.#unsentMemBytes += view.length;
          this.#spilled--;
          rd.pos += RECORD_HEADER_SIZE + view.length;
          continue;
        }
        this.#skipCorrupt(rd, r, prev);
      }
      if (this.#readError) {
        this.#readError = null;
        this.#log.info({ dir: this.dir }, 'queue: reading works again');
        this.#updateStatus();
      }
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      this.lastError = e;
      this.#read?.reader?.invalidate();
      if (!this.#readError) {
        this.#readError = e;
        this.#log.error(
          { file: this.#read?.seg.path, err: errCode(err), waiting: this.#spilled },
          `queue: cannot read queued records back from ${this.#read?.seg.path}: ${errCode(err)}; retrying`,
        );
        this.#updateStatus();
      }
      this.#readRetry = true;
      this.#scheduleRetry();
    }
    if (this.#spilled === 0) this.#closeReader();
  }

  #nextSegment(rd: ReadCursor): boolean {
    if (rd.seg === this.#active?.seg) return false;
    const next = this.#segs[this.#segs.indexOf(rd.seg) + 1];
    if (!next) return false;
    if (rd.fd !== null) closeSync(rd.fd);
    rd.seg = next;
    rd.pos = SEGMENT_HEADER_SIZE;
    rd.fd = null;
    rd.reader = null;
    return true;
  }

  /** Bytes that were intact at open() no longer are: skip to the next intact record and say so. */
  #skipCorrupt(rd: ReadCursor, r: ChunkReader, prev: number): void {
    const seg = rd.seg;
    const view = this.#view;
    const next = resync(r, rd.pos + 1, prev, seg.lastId, view);
    const to = next < 0 ? seg.size : next;
    const lost = Math.min(this.#spilled, Math.max(0, next < 0 ? seg.lastId - prev : view.id - prev - 1));
    const lostBytes = Math.max(0, to - rd.pos - RECORD_HEADER_SIZE * lost);
    seg.skips.push({ at: rd.pos, to, records: lost });
    this.lastError = new QueueError(`corrupt record in ${seg.path} at byte ${rd.pos}`);
    this.#log.error(
      { file: seg.path, offset: rd.pos, end: to, records: lost },
      `queue: ${seg.path} changed on disk: corrupt bytes ${rd.pos}..${to} skipped (${lost} record(s) lost)`,
    );
    this.#spilled -= lost;
    this.#bytes = Math.max(0, this.#bytes - lostBytes);
    rd.pos = to;
  }

  /** The count of records on disk and the files disagree (should not happen): trust the files. */
  #lostTrack(where: string): void {
    this.#log.error(
      { dir: this.dir, missing: this.#spilled, where },
      `queue: ${this.#spilled} record(s) counted as waiting on disk were not found (${where})`,
    );
    this.lastError = new QueueError(`${this.#spilled} queued record(s) not found on disk`);
    this.#spilled = 0;
    this.#updateStatus();
  }

  // --- status ----------------------------------------------------------------------------------

  #computeStatus(): QueueStatus {
    if (this.#writeError || this.#syncError || this.#readError) return 'error';
    if (this.#full) return 'full';
    return this.depth === 0 ? 'empty' : 'holding';
  }

  #updateStatus(): void {
    const next = this.#computeStatus();
    if (next !== this.#status) {
      this.#status = next;
      this.emit('status', next);
    }
  }
}

function validate(options: DurableQueueOptions) {
  const int = (name: string, v: number, min: number) => {
    if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be an integer ≥ ${min}`);
    return v;
  };
  const maxBytes = int('maxBytes', options.maxBytes, 16 * 1024);
  if (!['always', 'interval', 'never'].includes(options.fsync)) {
    throw new RangeError(`fsync must be always, interval or never`);
  }
  const segmentBytes = Math.min(
    Math.max(MIN_SEGMENT_BYTES, Math.floor(maxBytes / 8)),
    int('segmentBytes', options.segmentBytes ?? DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES),
  );
  return {
    maxBytes,
    fsync: options.fsync,
    fsyncIntervalMs: options.fsync === 'interval' ? int('fsyncIntervalMs', options.fsyncIntervalMs, 1) : 0,
    segmentBytes,
    memoryWindow: int('memoryWindow', options.memoryWindow ?? 4096, 1),
    memoryWindowBytes: int('memoryWindowBytes', options.memoryWindowBytes ?? 4 * 1024 * 1024, 1),
    ackPersistMs: int('ackPersistMs', options.ackPersistMs ?? 1000, 1),
    errorRetryMs: int('errorRetryMs', options.errorRetryMs ?? 1000, 1),
  };
}

/** Moves a file unfit for use out of the way, keeping it for inspection; returns its new path. */
function moveAside(path: string): string | undefined {
  for (let i = 0; i < 100; i++) {
    const to = i === 0 ? `${path}.corrupt` : `${path}.${i}.corrupt`;
    try {
      statSync(to);
      continue;
    } catch {
      // free name
    }
    try {
      renameSync(path, to);
      return to;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

function asideNote(to: string | undefined): string {
  return to ? `moved to ${to}` : 'could not be moved aside: ignored';
}

/** Reads the cursor and verifies every segment; repairs torn tails; sets aside unusable files. */
function recover(dir: string, findings: QueueFinding[]): RecoveredState {
  let acked = 0;
  const ackPath = join(dir, ACK_FILE);
  try {
    const d = decodeAck(readFileSync(ackPath));
    if ('reason' in d) {
      const movedTo = moveAside(ackPath);
      findings.push({
        kind: 'corrupt-ack-cursor',
        file: ackPath,
        movedTo,
        message: `ack cursor ${ackPath} is unusable (${d.reason}), ${asideNote(movedTo)}; every record still on disk will be sent again`,
      });
    } else {
      acked = d.acked;
    }
  } catch (err) {
    if (errCode(err) !== 'ENOENT')
      throw new QueueError(`cannot read ${ackPath}: ${errCode(err)}`, { cause: err });
  }
  try {
    unlinkSync(join(dir, ACK_TMP));
  } catch {
    // none left over
  }

  const segs: Segment[] = [];
  let lastId = 0;
  let highestNamed = 0;
  let unacked = 0;
  let unackedBytes = 0;
  let readStart: RecoveredState['readStart'] = null;
  const names = readdirSync(dir)
    .filter((n) => SEGMENT_NAME_RE.test(n))
    .sort();
  for (const [i, name] of names.entries()) {
    const path = join(dir, name);
    const namedId = Number(SEGMENT_NAME_RE.exec(name)![1]);
    if (Number.isSafeInteger(namedId)) highestNamed = Math.max(highestNamed, namedId);
    const isLast = i === names.length - 1;
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (err) {
      const movedTo = moveAside(path);
      findings.push({
        kind: 'bad-segment',
        file: path,
        movedTo,
        message: `segment ${path} cannot be opened (${errCode(err)}), ${asideNote(movedTo)}`,
      });
      continue;
    }
    let drop: 'aside' | 'delete' | null = null;
    let reason = '';
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(SEGMENT_HEADER_SIZE);
      const got = size === 0 ? 0 : readSync(fd, head, 0, SEGMENT_HEADER_SIZE, 0);
      const h = decodeSegmentHeader(head.subarray(0, got));
      if (size === 0) {
        drop = 'aside';
        reason = 'empty';
      } else if ('reason' in h || h.firstId !== namedId) {
        drop = 'aside';
        reason = 'reason' in h ? h.reason : `its header says first id ${h.firstId}`;
      } else {
        const seg: Segment = { firstId: h.firstId, path, size, lastId: 0, skips: [] };
        const reader = new ChunkReader(fd, size, SCAN_CHUNK, false);
        const scan = scanSegment(reader, h.firstId, lastId, (id, pos, length) => {
          if (id <= acked) return;
          unacked++;
          unackedBytes += length;
          if (!readStart) readStart = { seg, pos };
        });
        for (const s of scan.skips) {
          findings.push({
            kind: 'corrupt-record',
            file: path,
            offset: s.at,
            end: s.to,
            bytes: s.to - s.at,
            records: s.records,
            message:
              `corrupt bytes ${s.at}..${s.to} in ${path} skipped (${s.records} record(s) lost); ` +
              'the intact records after them are kept',
          });
        }
        if (scan.tailAt !== null) {
          ftruncateSync(fd, scan.tailAt);
          findings.push({
            kind: 'torn-tail',
            file: path,
            offset: scan.tailAt,
            end: size,
            bytes: size - scan.tailAt,
            message:
              `${isLast ? 'torn tail' : 'unreadable end'} of ${path}: bytes ${scan.tailAt}..${size} ` +
              'hold no intact record, truncated',
          });
          seg.size = scan.tailAt;
        }
        seg.lastId = scan.lastId;
        seg.skips = scan.skips;
        if (scan.count === 0) {
          drop = 'delete'; // header only: nothing in it
        } else {
          lastId = scan.lastId;
          segs.push(seg);
        }
      }
    } finally {
      closeSync(fd);
    }
    if (drop === 'delete') {
      unlinkSync(path);
    } else if (drop === 'aside') {
      const movedTo = moveAside(path);
      findings.push({
        kind: reason === 'empty' ? 'empty-segment' : 'bad-segment',
        file: path,
        movedTo,
        message:
          reason === 'empty'
            ? `segment ${path} is empty, ${asideNote(movedTo)}`
            : `segment ${path} is unusable (${reason}), ${asideNote(movedTo)}`,
      });
    }
  }
  // Segments every record of which was acknowledged before the restart go now.
  while (segs[0] && segs[0].lastId <= acked) {
    try {
      unlinkSync(segs.shift()!.path);
    } catch {
      // its records are all acknowledged: it is ignored, and deleted by a later open()
    }
  }
  // Above every id a segment name claims, so a new segment never collides with a file left behind.
  const nextId = Math.max(acked, lastId, highestNamed) + 1;
  return { segs, acked, nextId, unacked, unackedBytes, readStart };
}
