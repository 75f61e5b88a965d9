/**
 * A crash-safe queue on disk (`mode = forward`): an append log of checksummed records in segment files under
 * `queue_dir`, with the acknowledgement position in a small cursor file. Same semantics as the memory queue —
 * [in flight | unsent], in-order acks of the head, `rewind()` — but bounded by bytes on disk, and with only a
 * bounded window of unsent records in memory: the rest is read back from disk as the session takes records.
 * Format and guarantees: docs/queue.md.
 *
 * This module holds the records' bookkeeping (the memory window, the byte bound, ids, status); the files are
 * handled by its parts, each behind the same file-operations seam (`FileOps`, so tests can fail any of them):
 *   recovery.ts        start-up: verify, repair, set aside
 *   segment-writer.ts  appending to the newest segment, data syncs
 *   backlog-reader.ts  reading unsent records back from disk
 *   ack-cursor.ts      the acknowledgement position
 *   queue-health.ts    which path fails, lastError, one log line per change, retries
 *
 * All file I/O on the record path is synchronous: `append()` returns only once the record is in the kernel (so a
 * killed process loses nothing it accepted), and, with `fsync = always`, on disk.
 */
import { EventEmitter } from 'node:events';
import { resolve } from 'node:path';
import { FileSafetyError, QueueError } from '../errors.js';
import { checkPrivateDirectory, errnoOf, type FileOps, nodeFileOps } from '../fs/safe-files.js';
import { AckCursor, type FsyncPolicy } from './ack-cursor.js';
import { BacklogReader } from './backlog-reader.js';
import { QueueHealth, type QueueLogger, SILENT } from './queue-health.js';
import { acquireLock, type QueueLock } from './queue-lock.js';
import { Ring } from './record-ring.js';
import { type QueueFinding, type RecoveredState, recover } from './recovery.js';
import {
  encodeRecordInto,
  MAX_ID,
  MAX_PAYLOAD,
  RECORD_HEADER_SIZE,
  SEGMENT_HEADER_SIZE,
  type Segment,
} from './segment-format.js';
import { SegmentWriter } from './segment-writer.js';
import type { QueuedRecord, QueueEvents, QueuePersistence, QueueStatus, RecordQueue } from './types.js';

export type { FsyncPolicy } from './ack-cursor.js';
export type { QueueLogger } from './queue-health.js';
export type { QueueFinding, QueueFindingKind } from './recovery.js';

export interface DurableQueueOptions {
  /** The queue directory (`queue_dir`); created (mode 0700) if missing, refused if others could write it. */
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
  /** The file operations (tests inject faults here). Default: node:fs. */
  fs?: FileOps;
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES = 1024;

export class DurableQueue extends EventEmitter<QueueEvents> implements RecordQueue {
  readonly dir: string;
  readonly capacity: number;
  readonly fsync: FsyncPolicy;
  readonly segmentBytes: number;
  readonly persistence: QueuePersistence = 'crash-safe';
  readonly capacityUnit = 'bytes' as const;

  readonly #log: QueueLogger;
  readonly #fs: FileOps;
  readonly #errorRetryMs: number;
  readonly #lock: QueueLock;
  readonly #window: number;
  readonly #windowBytes: number;
  readonly #health: QueueHealth;
  readonly #cursor: AckCursor;
  readonly #writer: SegmentWriter;
  readonly #reader: BacklogReader;
  readonly #segs: Segment[];
  /** [in flight | unsent records read into memory]; the other unsent records wait on disk (#reader). */
  readonly #mem = new Ring<QueuedRecord>();
  #inFlight = 0;
  #inFlightBytes = 0;
  #unsentMemBytes = 0;
  #bytes: number;
  #diskBytes: number;
  #nextId: number;
  #status: QueueStatus;
  #full = false;
  /** Frame size of the last record refused for lack of room. */
  #refusedNeed = 0;
  /** A record was refused because writing failed: retries are invited until a write works. */
  #refusedOnError = false;
  #timers: NodeJS.Timeout[] = [];
  #closed = false;
  #totalAppended = 0;
  #totalAcked = 0;

  /**
   * Opens (or creates) the queue in `options.dir`: checks the directory (a real directory, owned by root or the
   * running user, not writable by group or others: a FileSafetyError otherwise), takes the directory lock,
   * verifies every segment, repairs what it can and reports it in `findings` (also logged). Rejects with a
   * QueueError when the directory cannot be used or another process holds it.
   */
  static async open(
    options: DurableQueueOptions,
  ): Promise<{ queue: DurableQueue; findings: QueueFinding[] }> {
    const o = validate(options);
    const log = options.log ?? SILENT;
    const fs = options.fs ?? nodeFileOps;
    const dir = resolve(options.dir);
    try {
      checkPrivateDirectory(dir, { what: 'queue directory (queue_dir)', create: true, mode: 0o700 });
    } catch (err) {
      // A refusal for safety stays a FileSafetyError; a system error (ENOTDIR, EACCES…) is the queue's.
      if (err instanceof FileSafetyError && err.cause === undefined) throw err;
      const message =
        err instanceof FileSafetyError ? err.message : `cannot use queue directory ${dir}: ${errnoOf(err)}`;
      throw new QueueError(message, { cause: err });
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
      const state = recover(dir, fs, findings);
      const queue = new DurableQueue(options, o, dir, fs, lock, state);
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
      throw new QueueError(`cannot open the queue in ${dir}: ${errnoOf(err)}`, { cause: err });
    }
  }

  private constructor(
    options: DurableQueueOptions,
    o: ReturnType<typeof validate>,
    dir: string,
    fs: FileOps,
    lock: QueueLock,
    state: RecoveredState,
  ) {
    super();
    this.dir = dir;
    this.capacity = o.maxBytes;
    this.fsync = o.fsync;
    this.segmentBytes = o.segmentBytes;
    const log = options.log ?? SILENT;
    this.#log = log;
    this.#fs = fs;
    this.#errorRetryMs = o.errorRetryMs;
    this.#lock = lock;
    this.#window = o.memoryWindow;
    this.#windowBytes = o.memoryWindowBytes;
    this.#segs = state.segs;
    this.#health = new QueueHealth({
      dir,
      log,
      retryMs: o.errorRetryMs,
      onChange: () => this.#updateStatus(),
      onRetry: (write, read) => {
        if (write && this.#refusedOnError) this.emit('drain');
        if (read) this.emit('readable');
      },
    });
    this.#cursor = new AckCursor({ dir, fs, fsync: o.fsync, health: this.#health, log }, state.acked);
    this.#writer = new SegmentWriter({
      dir,
      fs,
      fsync: o.fsync,
      segmentBytes: o.segmentBytes,
      health: this.#health,
      log,
    });
    this.#reader = new BacklogReader({
      dir,
      fs,
      health: this.#health,
      log,
      segments: () => this.#segs,
      active: () => this.#writer.active,
    });
    this.#nextId = state.nextId;
    this.#bytes = state.unackedBytes;
    this.#diskBytes = state.segs.reduce((n, s) => n + s.size, 0);
    if (state.readStart && state.unacked > 0) {
      this.#reader.resume(state.readStart.seg, state.readStart.pos, state.unacked);
      this.#refill();
    }
    this.#status = this.#computeStatus();
    if (o.fsync === 'interval') this.#timers.push(setInterval(this.#writer.tick, o.fsyncIntervalMs));
    this.#timers.push(setInterval(() => this.#cursor.persist(false), o.ackPersistMs));
    for (const t of this.#timers) t.unref();
  }

  get depth(): number {
    return this.#mem.length + this.#reader.pending;
  }
  get bytes(): number {
    return this.#bytes;
  }
  get inFlight(): number {
    return this.#inFlight;
  }
  get unsent(): number {
    return this.#mem.length - this.#inFlight + this.#reader.pending;
  }
  /** Unsent records on disk only (not read into memory yet). */
  get spilled(): number {
    return this.#reader.pending;
  }
  /** Bytes of segment files, the quantity bounded by `capacity` (maxBytes). */
  get diskBytes(): number {
    return this.#diskBytes;
  }
  get used(): number {
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
  /** The last I/O error met (also logged); null when none happened yet. */
  get lastError(): Error | null {
    return this.#health.lastError;
  }
  get #unsentInMemory(): number {
    return this.#mem.length - this.#inFlight;
  }

  /**
   * Writes the record to the active segment (and fdatasyncs it with `fsync = always`) before returning true.
   * Returns false, without throwing, when the byte bound is reached (status `full`, `drain` follows once acks
   * free room) or when the write fails (status `error`, `lastError`; `drain` is emitted every errorRetryMs so the
   * caller retries).
   */
  append(payload: Buffer): boolean {
    return this.appendMany([payload]) === 1;
  }

  /**
   * Appends records in order, as `append()` for each one would, stopping at the first one refused; returns how
   * many were accepted. The records that go into one segment are written with one write (and synced once with
   * `fsync = always`) before it returns.
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
    if (this.#nextId > MAX_ID) {
      this.#appendFailed(
        new QueueError(
          `record ids are exhausted in ${this.dir} (the next id would exceed 2^53 - 1); deliver the backlog, then move the directory away`,
        ),
      );
      return 0;
    }
    const firstLen = RECORD_HEADER_SIZE + first.length;
    if (!this.#makeRoom(firstLen)) {
      if (!this.#full)
        this.#log.debug({ diskBytes: this.#diskBytes, depth: this.depth }, 'queue: disk bound reached');
      this.#full = true;
      this.#refusedNeed = firstLen;
      this.#updateStatus();
      return 0;
    }
    let seg: Segment;
    try {
      if (this.#writer.needsNewSegment) {
        const created = this.#writer.startSegment(this.#nextId);
        this.#segs.push(created);
        this.#diskBytes += SEGMENT_HEADER_SIZE;
      }
      seg = this.#writer.active!;
    } catch (err) {
      this.#appendFailed(err);
      return 0;
    }
    const pos = seg.size;
    // The records that still start inside this segment, fit the bound and have an id.
    let end = from + 1;
    let bytes = firstLen;
    while (end < payloads.length && this.#nextId + (end - from) <= MAX_ID) {
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
      this.#writer.write(buf);
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
        this.#reader.pending === 0 &&
        this.#unsentInMemory < this.#window &&
        this.#unsentMemBytes < this.#windowBytes
      ) {
        this.#mem.push({ id, payload: buf.subarray(off + RECORD_HEADER_SIZE, off + len) });
        this.#unsentMemBytes += payload.length;
      } else {
        this.#reader.add(seg, pos + off);
      }
      off += len;
    }
    this.#health.ok('write');
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
    this.#refusedOnError = true;
    if (this.#health.fail('write', err)) {
      const depth = this.depth;
      this.#log.error(
        { dir: this.dir, err: errnoOf(err), depth },
        `queue: cannot write to ${this.dir}: ${errnoOf(err)}; the ${depth} record(s) already queued are kept, ` +
          `new records are refused until a write succeeds (retried every ${this.#errorRetryMs} ms)`,
      );
    }
    this.#updateStatus();
    this.#health.scheduleRetry('write');
    const code = errnoOf(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') this.#releaseSpace();
  }

  takeNext(): QueuedRecord | undefined {
    if (this.#unsentInMemory === 0 && this.#reader.pending > 0) this.#refill();
    const rec = this.#mem.at(this.#inFlight);
    if (!rec) return undefined;
    this.#inFlight++;
    this.#inFlightBytes += rec.payload.length;
    this.#unsentMemBytes -= rec.payload.length;
    if (this.#reader.pending > 0 && this.#unsentInMemory < this.#window / 2) this.#refill();
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
    this.#cursor.advance(id);
    const freed = this.#deleteAcknowledgedSegments();
    const wasFull = this.#full;
    if (wasFull && this.#makeRoom(this.#refusedNeed)) {
      this.#full = false;
      this.#refusedNeed = 0;
    }
    this.#updateStatus();
    if (wasFull && !this.#full) this.emit('drain');
    else if (freed && this.#health.failing('write') && this.#refusedOnError) this.emit('drain');
  }

  rewind(): void {
    const had = this.#inFlight;
    this.#inFlight = 0;
    this.#unsentMemBytes += this.#inFlightBytes;
    this.#inFlightBytes = 0;
    if (had > 0 && this.unsent === had) this.emit('readable');
  }

  /**
   * Makes the acknowledgements so far survive a crash of the process (kill -9): the cursor is rewritten in place,
   * one 24-byte pwrite without a sync. The session calls it after each batch of replies, before it sends more, so
   * a restart after kill -9 resends at most one window. Durability against a power loss is unchanged: the cursor
   * is synced every ackPersistMs, before a segment is deleted and at close.
   */
  flushAcks(): void {
    if (!this.#closed) this.#cursor.flush();
  }

  /**
   * Syncs the data, persists the ack cursor, closes the files and releases the directory lock. `held` records
   * (refused while the queue was full) are appended first where room came back; the others are reported lost.
   */
  async close(held: readonly Buffer[] = []): Promise<{ lost: number }> {
    if (this.#closed) return { lost: held.length };
    const kept = held.length > 0 ? this.appendMany(held) : 0;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    this.#health.close();
    await this.#writer.close();
    this.#reader.close();
    this.#cursor.close();
    this.#lock.release();
    return { lost: held.length - kept };
  }

  // --- room ------------------------------------------------------------------------------------

  #fits(frameLen: number): boolean {
    const header = this.#writer.needsNewSegment ? SEGMENT_HEADER_SIZE : 0;
    return this.#diskBytes + frameLen + header <= this.capacity;
  }

  /** Whether a frame fits; when everything is acknowledged, first drops the (fully acked) active segment. */
  #makeRoom(frameLen: number): boolean {
    if (this.#fits(frameLen)) return true;
    const active = this.#writer.active;
    if (this.depth > 0 || !active) return false;
    this.#writer.seal();
    if (this.#segs[0] === active) this.#deleteHeadSegment();
    return this.#fits(frameLen);
  }

  /** Deletes the oldest segments whose records are all acknowledged (not the active one, not one being read). */
  #deleteAcknowledgedSegments(): boolean {
    let freed = false;
    const acked = this.#cursor.acked;
    for (let s = this.#segs[0]; s && s !== this.#writer.active && s.lastId <= acked; s = this.#segs[0]) {
      if (this.#reader.segment === s) break;
      this.#deleteHeadSegment();
      freed = true;
    }
    return freed;
  }

  /**
   * The file system is full before `capacity` is reached. The active segment is never deleted while it is
   * appended to, so it is closed: once its records are acknowledged it is deleted like any other and its space
   * comes back (the next append starts a new segment). Segments already fully acknowledged go now.
   */
  #releaseSpace(): void {
    const active = this.#writer.active;
    if (active && active.lastId >= active.firstId) this.#writer.seal();
    this.#deleteAcknowledgedSegments();
  }

  /** Removes the oldest segment, every record of which is acknowledged (cursor saved first). */
  #deleteHeadSegment(): void {
    const seg = this.#segs.shift();
    if (!seg) return;
    // The cursor must cover the segment before it goes, so ids never restart lower after a crash.
    this.#cursor.persist(true);
    try {
      this.#fs.unlinkSync(seg.path);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') {
        this.#health.note(err);
        this.#log.warn({ file: seg.path, err: errnoOf(err) }, 'queue: cannot delete an acknowledged segment');
      }
    }
    this.#diskBytes -= seg.size;
  }

  // --- reading back ----------------------------------------------------------------------------

  /** Reads unsent records from disk into memory up to the window. Never throws. */
  #refill(): void {
    const lostBytes = this.#reader.fill(
      this.#mem.last()?.id ?? this.#cursor.acked,
      () => this.#unsentInMemory < this.#window && this.#unsentMemBytes < this.#windowBytes,
      (rec) => {
        this.#mem.push(rec);
        this.#unsentMemBytes += rec.payload.length;
      },
    );
    if (lostBytes > 0) this.#bytes = Math.max(0, this.#bytes - lostBytes);
    this.#updateStatus();
  }

  // --- status ----------------------------------------------------------------------------------

  #computeStatus(): QueueStatus {
    if (this.#health.inError) return 'error';
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
