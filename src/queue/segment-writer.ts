/**
 * Appends framed records to the newest ("active") segment file and makes them durable per `fsync`:
 * `always` syncs inside every write, `interval` on a timer (asynchronously, off the event loop), `never` leaves it
 * to the kernel. A segment is created exclusively (a file already at its name is never reused), and the directory
 * is synced after a create so that the new name survives a power loss.
 */
import { join } from 'node:path';
import { createExclusive, errnoOf, type FileOps, syncDirectory, writeFully } from '../fs/safe-files.js';
import type { FsyncPolicy } from './ack-cursor.js';
import type { QueueHealth, QueueLogger } from './queue-health.js';
import { encodeSegmentHeader, SEGMENT_HEADER_SIZE, type Segment, segmentName } from './segment-format.js';

export interface SegmentWriterOptions {
  dir: string;
  fs: FileOps;
  fsync: FsyncPolicy;
  segmentBytes: number;
  health: QueueHealth;
  log: QueueLogger;
}

interface Active {
  seg: Segment;
  fd: number;
}

export class SegmentWriter {
  readonly #o: SegmentWriterOptions;
  #active: Active | null = null;
  /** Written since the last data sync (`fsync = interval`). */
  #dirty = false;
  #syncing: { fd: number; closeAfter: boolean; done: Promise<void> } | null = null;

  constructor(options: SegmentWriterOptions) {
    this.#o = options;
  }

  /** The segment being appended to, if one is open. */
  get active(): Segment | null {
    return this.#active?.seg ?? null;
  }

  /** Whether the next record starts a new segment (none open, or the open one reached segmentBytes). */
  get needsNewSegment(): boolean {
    return !this.#active || this.#active.seg.size >= this.#o.segmentBytes;
  }

  /** Closes the active segment and creates the next one, starting at `firstId`. Throws on failure. */
  startSegment(firstId: number): Segment {
    this.seal();
    const { dir, fs, fsync, log } = this.#o;
    const path = join(dir, segmentName(firstId));
    const fd = createExclusive(path, 0o600, 'segment', fs);
    try {
      writeFully(fd, encodeSegmentHeader(firstId), 0, fs);
      if (fsync === 'always') fs.fdatasyncSync(fd);
    } catch (err) {
      fs.closeSync(fd);
      try {
        fs.unlinkSync(path);
      } catch {
        // leave it: the next open() removes a header-only or empty segment
      }
      throw err;
    }
    if (fsync !== 'never') {
      try {
        syncDirectory(dir, fs, true);
      } catch (err) {
        log.warn({ dir, err: errnoOf(err) }, 'queue: cannot sync the queue directory');
      }
    }
    const seg: Segment = { firstId, path, size: SEGMENT_HEADER_SIZE, lastId: firstId - 1, skips: [] };
    this.#active = { seg, fd };
    this.#dirty = fsync === 'interval';
    return seg;
  }

  /**
   * Writes `frames` at the end of the active segment (and syncs them with `fsync = always`). On failure, takes
   * back whatever part reached the file (if even that fails, the segment is closed: the next open() truncates the
   * partial record as a torn tail) and throws.
   */
  write(frames: Buffer): void {
    const act = this.#active!;
    const { fs, fsync } = this.#o;
    const pos = act.seg.size;
    try {
      writeFully(act.fd, frames, pos, fs);
      if (fsync === 'always') fs.fdatasyncSync(act.fd);
    } catch (err) {
      try {
        fs.ftruncateSync(act.fd, pos);
      } catch {
        this.#active = null;
        this.#closeFd(act.fd);
      }
      throw err;
    }
    if (fsync === 'interval') this.#dirty = true;
  }

  /** Closes the active segment (after a data sync when there are unsynced writes); it stays until acked. */
  seal(): void {
    const act = this.#active;
    if (!act) return;
    this.#active = null;
    if (this.#dirty) {
      try {
        this.#o.fs.fdatasyncSync(act.fd);
        this.#o.health.ok('sync');
      } catch (err) {
        this.#syncFailed(err, act.seg);
      }
    }
    this.#dirty = false;
    this.#closeFd(act.fd);
  }

  /** `fsync = interval`: one asynchronous data sync of the active segment when it has new writes. */
  readonly tick = (): void => {
    const act = this.#active;
    if (!act || !this.#dirty || this.#syncing) return;
    this.#dirty = false;
    let resolveDone: () => void = () => {};
    const s = {
      fd: act.fd,
      closeAfter: false,
      done: new Promise<void>((r) => {
        resolveDone = r;
      }),
    };
    this.#syncing = s;
    this.#o.fs.fdatasync(act.fd, (err) => {
      this.#syncing = null;
      if (s.closeAfter) this.#closeFd(s.fd);
      if (err) {
        if (this.#active?.fd === s.fd) this.#dirty = true;
        this.#syncFailed(err, act.seg);
      } else {
        this.#o.health.ok('sync');
      }
      resolveDone();
    });
  };

  /** Waits for a data sync under way, then seals the active segment. */
  async close(): Promise<void> {
    if (this.#syncing) await this.#syncing.done;
    this.seal();
  }

  #syncFailed(err: unknown, seg: Segment): void {
    if (this.#o.health.fail('sync', err)) {
      this.#o.log.error(
        { file: seg.path, err: errnoOf(err) },
        `queue: fdatasync of ${seg.path} failed: ${errnoOf(err)}; ` +
          'records written since the last successful sync may not survive a power loss',
      );
    }
  }

  #closeFd(fd: number): void {
    if (this.#syncing?.fd === fd) {
      this.#syncing.closeAfter = true;
      return;
    }
    try {
      this.#o.fs.closeSync(fd);
    } catch {
      // nothing useful to do
    }
  }
}
