/**
 * Reads the backlog back: the unsent records that are on disk only (not in the queue's memory window), in id
 * order, segment after segment, through 256 KiB reads. Bytes that were intact at open() but are not any more are
 * stepped over (logged, `lastError`); an I/O error leaves the records where they are, sets the queue's status to
 * `error` and invites a retry.
 */
import { QueueError } from '../errors.js';
import { errnoOf, type FileOps, openRegularForRead } from '../fs/safe-files.js';
import type { QueueHealth, QueueLogger } from './queue-health.js';
import {
  ChunkReader,
  checkRecord,
  RECORD_HEADER_SIZE,
  type RecordView,
  resync,
  SEGMENT_HEADER_SIZE,
  type Segment,
} from './segment-format.js';
import type { QueuedRecord } from './types.js';

const READ_CHUNK = 256 * 1024;

export interface BacklogReaderOptions {
  dir: string;
  fs: FileOps;
  health: QueueHealth;
  log: QueueLogger;
  /** The queue's segments, oldest first. */
  segments: () => readonly Segment[];
  /** The segment being appended to (reading stops at its end). */
  active: () => Segment | null;
}

interface Cursor {
  seg: Segment;
  pos: number;
  fd: number | null;
  reader: ChunkReader | null;
}

export class BacklogReader {
  readonly #o: BacklogReaderOptions;
  /** Records waiting on disk only, from #cur on. */
  #pending = 0;
  #cur: Cursor | null = null;
  readonly #view: RecordView = { id: 0, length: 0, index: 0 };

  constructor(options: BacklogReaderOptions) {
    this.#o = options;
  }

  /** Unsent records on disk only. */
  get pending(): number {
    return this.#pending;
  }

  /** The segment being read, while records wait on disk (it is not deleted under the reader). */
  get segment(): Segment | null {
    return this.#pending > 0 ? (this.#cur?.seg ?? null) : null;
  }

  /** At open: `count` unacknowledged records wait on disk, the first at `pos` in `seg`. */
  resume(seg: Segment, pos: number, count: number): void {
    this.#cur = { seg, pos, fd: null, reader: null };
    this.#pending = count;
  }

  /** One more record went to disk only, at `pos` in `seg`. */
  add(seg: Segment, pos: number): void {
    if (this.#pending === 0) {
      if (this.#cur && this.#cur.seg !== seg) this.close();
      if (this.#cur) this.#cur.pos = pos;
      else this.#cur = { seg, pos, fd: null, reader: null };
    }
    this.#pending++;
  }

  /**
   * Moves waiting records into memory, oldest first, while `room()` allows: `push` receives each. `prevId` is the
   * id of the record before the first one to read. Returns the payload bytes of records found corrupt and
   * skipped. Never throws.
   */
  fill(prevId: number, room: () => boolean, push: (rec: QueuedRecord) => void): number {
    const { health, log } = this.#o;
    const view = this.#view;
    let prev = prevId;
    let lostBytes = 0;
    try {
      while (this.#pending > 0 && room()) {
        const rd = this.#cur;
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
          rd.fd = openRegularForRead(seg.path, 'segment', this.#o.fs).fd;
          rd.reader = new ChunkReader(rd.fd, seg.size, READ_CHUNK, true, this.#o.fs);
        }
        const r = rd.reader;
        r.size = seg.size;
        if (checkRecord(r, rd.pos, prev, seg.lastId, view)) {
          const start = view.index + RECORD_HEADER_SIZE;
          push({ id: view.id, payload: r.buf.subarray(start, start + view.length) });
          prev = view.id;
          this.#pending--;
          rd.pos += RECORD_HEADER_SIZE + view.length;
          continue;
        }
        lostBytes += this.#skipCorrupt(rd, r, prev);
      }
      health.ok('read');
    } catch (err) {
      this.#cur?.reader?.invalidate();
      const path = this.#cur?.seg.path;
      if (health.fail('read', err)) {
        log.error(
          { file: path, err: errnoOf(err), waiting: this.#pending },
          `queue: cannot read queued records back from ${path}: ${errnoOf(err)}; retrying`,
        );
      }
      health.scheduleRetry('read');
    }
    if (this.#pending === 0) this.close();
    return lostBytes;
  }

  close(): void {
    const rd = this.#cur;
    this.#cur = null;
    if (rd?.fd != null) {
      try {
        this.#o.fs.closeSync(rd.fd);
      } catch {
        // ignore
      }
    }
  }

  #nextSegment(rd: Cursor): boolean {
    if (rd.seg === this.#o.active()) return false;
    const segs = this.#o.segments();
    const next = segs[segs.indexOf(rd.seg) + 1];
    if (!next) return false;
    if (rd.fd !== null) this.#o.fs.closeSync(rd.fd);
    rd.seg = next;
    rd.pos = SEGMENT_HEADER_SIZE;
    rd.fd = null;
    rd.reader = null;
    return true;
  }

  /** Bytes that were intact at open() no longer are: skip to the next intact record and say so. */
  #skipCorrupt(rd: Cursor, r: ChunkReader, prev: number): number {
    const seg = rd.seg;
    const view = this.#view;
    const next = resync(r, rd.pos + 1, prev, seg.lastId, view);
    const to = next < 0 ? seg.size : next;
    const lost = Math.min(this.#pending, Math.max(0, next < 0 ? seg.lastId - prev : view.id - prev - 1));
    const lostBytes = Math.max(0, to - rd.pos - RECORD_HEADER_SIZE * lost);
    seg.skips.push({ at: rd.pos, to, records: lost });
    this.#o.health.note(new QueueError(`corrupt record in ${seg.path} at byte ${rd.pos}`));
    this.#o.log.error(
      { file: seg.path, offset: rd.pos, end: to, records: lost },
      `queue: ${seg.path} changed on disk: corrupt bytes ${rd.pos}..${to} skipped (${lost} record(s) lost)`,
    );
    this.#pending -= lost;
    rd.pos = to;
    return lostBytes;
  }

  /** The count of records on disk and the files disagree (should not happen): trust the files. */
  #lostTrack(where: string): void {
    this.#o.log.error(
      { dir: this.#o.dir, missing: this.#pending, where },
      `queue: ${this.#pending} record(s) counted as waiting on disk were not found (${where})`,
    );
    this.#o.health.note(new QueueError(`${this.#pending} queued record(s) not found on disk`));
    this.#pending = 0;
  }
}
