/**
 * The queue of `mode = immediate` (Debian's shipped setting): records live in a memory queue bounded by
 * `queue_depth`, as upstream's — but a clean stop loses none of them. `close()` writes every record not yet
 * acknowledged (in flight, unsent, and those the input held back while the queue was full), in order, into the
 * durable queue's format under `queue_dir`; the next start finds them there and sends them before any new record.
 * kill -9 (or a power loss) still loses what is in memory, as upstream: `mode = forward` is the crash-safe one.
 *
 * While running, records saved at the last stop come first: the queue is [saved (on disk) | memory], each part
 * [in flight | unsent]. Acknowledgements arrive in order, so the saved part drains first; once it is empty its
 * directory lock is released and only the memory queue is left. Ids continue above the saved ones.
 */
import { EventEmitter } from 'node:events';
import { resolve } from 'node:path';
import { QueueError } from '../errors.js';
import { checkPrivateDirectory, errnoOf, type FileOps, nodeFileOps } from '../fs/safe-files.js';
import type { FsyncPolicy } from './ack-cursor.js';
import { DurableQueue } from './durable-queue.js';
import { MemoryQueue } from './memory-queue.js';
import { type QueueLogger, SILENT } from './queue-health.js';
import { SEGMENT_NAME_RE } from './segment-format.js';
import type { QueuedRecord, QueueEvents, QueuePersistence, QueueStatus, RecordQueue } from './types.js';

export interface SpillOnStopOptions {
  /** Records held in memory (`queue_depth`). */
  capacity: number;
  /** Where records are saved at a stop (`queue_dir`): created 0700 when first needed, refused if others can write it. */
  dir: string;
  /** Bound of what a stop can save (`queue_max_bytes`). */
  maxBytes: number;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  log?: QueueLogger;
  fs?: FileOps;
}

const WHAT = 'queue directory (queue_dir)';

export class SpillOnStopQueue extends EventEmitter<QueueEvents> implements RecordQueue {
  readonly persistence: QueuePersistence = 'clean-stop';
  readonly capacity: number;
  readonly capacityUnit = 'records' as const;
  readonly dir: string;
  readonly #o: SpillOnStopOptions;
  readonly #log: QueueLogger;
  readonly #memory: MemoryQueue;
  /** Records saved at the last stop, sent first; null once they are all acknowledged (or when there were none). */
  #saved: DurableQueue | null;
  /** Ids of saved records are ≤ #offset; a memory record's id is #offset + its id in the memory queue. */
  readonly #offset: number;
  #savedAcked = 0;
  /** The saved part being closed once delivered (a stop waits for it: it holds the directory lock until done). */
  #retiring: Promise<unknown> | null = null;
  #lastError: Error | null = null;
  #status: QueueStatus;
  #closed = false;

  /**
   * Opens the queue: when `dir` holds records (saved at the last stop, or left by `mode = forward`), the directory
   * is checked and they are opened to be sent first; otherwise nothing on disk is touched until a stop needs it.
   */
  static async open(options: SpillOnStopOptions): Promise<SpillOnStopQueue> {
    const log = options.log ?? SILENT;
    const dir = resolve(options.dir);
    let saved: DurableQueue | null = null;
    if (holdsSegments(dir, options.fs ?? nodeFileOps)) {
      ({ queue: saved } = await DurableQueue.open({ ...durableOptions(options, dir), log }));
      if (saved.depth === 0) {
        await saved.close();
        saved = null;
      } else {
        log.info(
          { dir, records: saved.depth },
          `queue: ${saved.depth} record(s) saved at the last stop (in ${dir}) are sent first`,
        );
      }
    }
    return new SpillOnStopQueue(options, dir, saved);
  }

  private constructor(options: SpillOnStopOptions, dir: string, saved: DurableQueue | null) {
    super();
    this.#o = options;
    this.#log = options.log ?? SILENT;
    this.dir = dir;
    this.capacity = options.capacity;
    this.#memory = new MemoryQueue(options.capacity);
    this.#saved = saved;
    this.#offset = saved ? saved.nextId - 1 : 0;
    this.#memory.on('readable', () => this.emit('readable'));
    this.#memory.on('drain', () => this.emit('drain'));
    this.#memory.on('status', () => this.#updateStatus());
    if (saved) {
      saved.on('readable', () => this.emit('readable'));
      saved.on('status', () => this.#updateStatus());
    }
    this.#status = this.#computeStatus();
  }

  get used(): number {
    return this.depth;
  }
  get depth(): number {
    return this.#memory.depth + (this.#saved?.depth ?? 0);
  }
  get bytes(): number {
    return this.#memory.bytes + (this.#saved?.bytes ?? 0);
  }
  get inFlight(): number {
    return this.#memory.inFlight + (this.#saved?.inFlight ?? 0);
  }
  get unsent(): number {
    return this.#memory.unsent + (this.#saved?.unsent ?? 0);
  }
  get status(): QueueStatus {
    return this.#status;
  }
  get totalAppended(): number {
    return this.#memory.totalAppended;
  }
  get totalAcked(): number {
    return this.#memory.totalAcked + this.#savedAcked;
  }
  get lastError(): Error | null {
    return this.#saved?.lastError ?? this.#lastError;
  }

  append(payload: Buffer): boolean {
    return !this.#closed && this.#memory.append(payload);
  }

  appendMany(payloads: readonly Buffer[]): number {
    return this.#closed ? 0 : this.#memory.appendMany(payloads);
  }

  takeNext(): QueuedRecord | undefined {
    const saved = this.#saved;
    if (saved && saved.unsent > 0) return saved.takeNext();
    const rec = this.#memory.takeNext();
    return rec && this.#offset > 0 ? { id: this.#offset + rec.id, payload: rec.payload } : rec;
  }

  ack(id: number): void {
    const saved = this.#saved;
    if (saved && saved.inFlight > 0) {
      saved.ack(id);
      this.#savedAcked++;
      if (saved.depth === 0) this.#retireSaved(saved);
      return;
    }
    if (id <= this.#offset) {
      throw new QueueError(`acknowledged record ${id} is not the oldest in flight`);
    }
    this.#memory.ack(id - this.#offset);
  }

  rewind(): void {
    this.#saved?.rewind();
    this.#memory.rewind();
  }

  flushAcks(): void {
    this.#saved?.flushAcks();
  }

  /**
   * The clean stop: every record not acknowledged — saved ones still waiting, then the memory queue's (in flight
   * first), then `held` — is written to `dir`, in that order, and sent first after the next start.
   */
  async close(held: readonly Buffer[] = []): Promise<{ lost: number }> {
    if (this.#closed) return { lost: held.length };
    this.#closed = true;
    await this.#retiring;
    const records = [...this.#memory.undelivered(), ...held];
    let saved = this.#saved;
    this.#saved = null;
    if (records.length === 0) {
      await saved?.close();
      return { lost: 0 };
    }
    try {
      if (!saved) {
        checkPrivateDirectory(this.dir, { what: WHAT, create: true, mode: 0o700 });
        ({ queue: saved } = await DurableQueue.open({
          ...durableOptions(this.#o, this.dir),
          log: this.#log,
        }));
      }
      const earlier = saved.depth;
      const written = saved.appendMany(records);
      const { lost: closeLost } = await saved.close();
      const lost = records.length - written + closeLost;
      if (written > 0) {
        this.#log.info(
          { dir: this.dir, records: written, earlier },
          `queue: ${written} undelivered record(s) written to ${this.dir}${earlier > 0 ? ` after the ${earlier} saved earlier` : ''}; they are sent first after the next start`,
        );
      }
      if (lost > 0) {
        this.#log.error(
          { dir: this.dir, lost, err: saved.lastError?.message },
          `queue: ${lost} undelivered record(s) could not be written to ${this.dir} (${saved.lastError?.message ?? 'queue_max_bytes reached'}): they are lost`,
        );
      }
      return { lost };
    } catch (err) {
      await saved?.close().catch(() => {});
      this.#log.error(
        { dir: this.dir, lost: records.length, err: errnoOf(err) },
        `queue: cannot write the ${records.length} undelivered record(s) to ${this.dir}: ${(err as Error).message}; they are lost`,
      );
      return { lost: records.length };
    }
  }

  /** Every saved record is acknowledged: close that part (its segments are deleted, its lock released). */
  #retireSaved(saved: DurableQueue): void {
    this.#saved = null;
    saved.removeAllListeners();
    this.#retiring = saved.close().catch((err: unknown) => {
      this.#lastError = err instanceof Error ? err : new Error(String(err));
    });
    this.#log.info({ dir: this.dir }, 'queue: the records saved at the last stop are delivered');
    this.#updateStatus();
  }

  #computeStatus(): QueueStatus {
    if (this.#saved?.status === 'error') return 'error';
    if (this.#memory.status === 'full') return 'full';
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

function durableOptions(o: SpillOnStopOptions, dir: string) {
  return {
    dir,
    maxBytes: o.maxBytes,
    fsync: o.fsync,
    fsyncIntervalMs: o.fsyncIntervalMs,
    ...(o.fs ? { fs: o.fs } : {}),
  };
}

/** Whether `dir` exists and holds segment files (checked first: a directory others can write is refused). */
function holdsSegments(dir: string, fs: FileOps): boolean {
  try {
    fs.lstatSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return false;
    throw new QueueError(`cannot use ${WHAT} ${dir}: ${errnoOf(err)}`, { cause: err });
  }
  checkPrivateDirectory(dir, { what: WHAT });
  return fs.readdirSync(dir).some((n) => SEGMENT_NAME_RE.test(n));
}
