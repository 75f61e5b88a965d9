/**
 * The collector's log file. The collector hands it one batch at a time (its own scheduler decides which records
 * form a batch, fairly between clients); a batch is written whole or not at all:
 *
 * - Opening (docs/collector.md, "The log file"): as auditd opens its log (src/fs/safe-files.ts
 *   `openLogForAppend`): the directory checked, no symlink followed, created with O_EXCL and mode 0600, only a
 *   regular file; loose permissions on an existing log are a warning.
 * - A torn tail (bytes after the last '\n', left by a collector killed in the middle of a write: they were never
 *   acknowledged, the clients send those records again) is cut off at open and logged, so the next record starts
 *   on a line of its own.
 * - Space is reserved before it is written into (src/collector/reserve.ts: fallocate KEEP_SIZE, in chunks of
 *   `reserveChunkBytes`). When the disk is full the reservation fails and nothing of the batch is written: the
 *   log stays exactly as it was, and a program tailing it never sees a line that later vanishes. Without
 *   reservation (no fallocate program, or a file system that cannot) free space is checked first (statfs) and
 *   bytes of a failed write are cut off again (a reader may see them for that moment; logged once at open).
 * - fsync policy: `always` syncs each batch before it is acknowledged; `interval` syncs in the background every
 *   `fsyncIntervalMs`; `never` leaves it to the kernel. A failed background sync is logged, and from then on no
 *   batch is written (each fails with the sync's error, so no record is acknowledged) until a retried sync
 *   succeeds.
 */
import { closeSync, promises as fsp, readSync } from 'node:fs';
import { FileSafetyError } from '../errors.js';
import { loosePermissions, openLogForAppend, openRegularForRead } from '../fs/safe-files.js';
import type { Logger } from '../log.js';
import { ReserveError, Reserver } from './reserve.js';
import { sanitizeRecord } from './sanitize.js';

export type FsyncPolicy = 'always' | 'interval' | 'never';

export interface LogWriterOptions {
  /** The log file; may change while the writer is closed (`setPath`, a reloaded log_file). */
  path: string;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  log: Logger;
  /** Bytes reserved ahead of the writes at a time. Default 8 MiB. */
  reserveChunkBytes?: number;
  /**
   * A torn tail longer than this is not cut (refuse to start instead: it cannot have been left by one of our
   * writes, so the file may not be what the configuration thinks). Default 2 MiB (more than one batch of the collector).
   */
  maxTornTailBytes?: number;
  /** Fault injection for tests: replaces fdatasync. */
  datasync?: (fh: fsp.FileHandle) => Promise<void>;
  /** For tests: do not reserve space (as on a file system without fallocate). */
  noReserve?: boolean;
}

export type WriterFailure = NodeJS.ErrnoException;

const NL = 0x0a;
/** Free bytes needed beyond twice the failed batch before writes resume after the file system was full. */
const ROOM_MARGIN = 16 * 1024;

export class LogWriter {
  readonly #o: LogWriterOptions;
  readonly #log: Logger;
  #fh: fsp.FileHandle | null = null;
  /** Where the next write lands (the file's size as far as we know). */
  #size = 0;
  /** End of the range known to be reserved (>= #size). */
  #reservedEnd = 0;
  #reserver: Reserver | null = null;
  #reserving: Promise<void> | null = null;
  /** The amount reserved ahead last time (see #aheadBytes). */
  #lastAhead = 0;
  #writing: Promise<void> = Promise.resolve();
  #dirty = false;
  #timer: NodeJS.Timeout | null = null;
  #syncError: NodeJS.ErrnoException | null = null;
  #syncing = false;
  /** Set after a write failed for lack of room (see #noteFull). */
  #full: { code: string; need: number } | null = null;
  bytesWritten = 0;
  /** Failed background syncs since start. */
  syncFailures = 0;
  /** The open file (device and inode), to notice that another program renamed or removed it. */
  #identity: { dev: number; ino: number } | null = null;

  constructor(options: LogWriterOptions) {
    this.#o = { ...options };
    this.#log = options.log;
  }

  /** Whether space is reserved before writes (false: the fallback described above). */
  get reserving(): boolean {
    return this.#reserver !== null;
  }

  /** Set while no batch is written because the last sync failed. */
  get syncError(): NodeJS.ErrnoException | null {
    return this.#syncError;
  }

  get size(): number {
    return this.#size;
  }

  get path(): string {
    return this.#o.path;
  }

  /** Whether a file is open (closed: before open, after close, while the log store has suspended logging). */
  get isOpen(): boolean {
    return this.#fh !== null;
  }

  /** Device and inode of the open file, or null when none is open. */
  get identity(): { dev: number; ino: number } | null {
    return this.#identity;
  }

  /** Another file for the next open (only while closed). */
  setPath(path: string): void {
    if (this.#fh) throw new Error('setPath on an open log writer');
    this.#o.path = path;
  }

  /** A reloaded fsync policy (flush/freq): takes effect at once. */
  setFsync(fsync: FsyncPolicy, intervalMs: number): void {
    this.#o.fsync = fsync;
    this.#o.fsyncIntervalMs = intervalMs;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#fh && fsync === 'interval') this.#startSyncTimer();
  }

  #startSyncTimer(): void {
    this.#timer = setInterval(() => void this.#backgroundSync(), this.#o.fsyncIntervalMs);
    this.#timer.unref();
  }

  async open(): Promise<void> {
    const { path } = this.#o;
    const { fh, stat, created } = await openLogForAppend(path, 0o600, 'log_file');
    this.#fh = fh;
    this.#identity = { dev: stat.dev, ino: stat.ino };
    this.#full = null;
    if (!created) {
      const loose = loosePermissions(path, stat, 'log_file');
      if (loose) this.#log.warn({ log: path, mode: stat.mode & 0o7777, uid: stat.uid }, loose);
    }
    this.#size = stat.size;
    try {
      if (stat.size > 0) await this.#repairTornTail(stat.size);
    } catch (err) {
      await fh.close();
      this.#fh = null;
      this.#identity = null;
      throw err;
    }
    this.#reservedEnd = this.#size;
    this.#lastAhead = 0;
    if (!this.#o.noReserve) {
      const r = Reserver.start(fh.fd);
      if (typeof r === 'string') {
        this.#log.warn(
          { log: path },
          `space for the log cannot be reserved (${r}): free space is checked before each write instead, and when the disk fills a reader may briefly see the start of a record that is then removed; install util-linux`,
        );
      } else {
        this.#reserver = r;
      }
    }
    if (this.#o.fsync === 'interval') this.#startSyncTimer();
  }

  /**
   * Writes `data` (whole lines) at the end of the log: all of it, or nothing (the promise rejects with the
   * errno error; ENOSPC/EDQUOT mean "full"). Calls are serialised.
   */
  write(data: Buffer): Promise<void> {
    const run = this.#writing.then(() => this.#write(data));
    this.#writing = run.catch(() => {});
    return run;
  }

  /**
   * Waits for writes in progress, syncs (unless fsync = never), releases unused reserved space, closes. `readOnly`
   * (a rotation, as auditd does it): the file becomes mode 0400 before it is closed, so nothing appends to it any more.
   */
  async close(options: { readOnly?: boolean } = {}): Promise<void> {
    await this.#writing;
    await this.#reserving?.catch(() => {});
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const fh = this.#fh;
    this.#fh = null;
    this.#identity = null;
    this.#reserver?.close();
    this.#reserver = null;
    if (!fh) return;
    try {
      if (this.#o.fsync !== 'never' || options.readOnly) await this.#datasync(fh).catch(() => {});
      if (options.readOnly) await fh.chmod(0o400).catch(() => {});
      // Blocks reserved beyond the end go back to the file system (the size does not change).
      if (this.#reservedEnd > this.#size) {
        const { size } = await fh.stat();
        await fh.truncate(size).catch(() => {});
      }
    } finally {
      await fh.close();
    }
  }

  async #write(data: Buffer): Promise<void> {
    const fh = this.#fh;
    if (!fh) throw errno('EBADF', 'the log file is closed');
    if (this.#syncError) throw this.#syncError;
    if (data.length === 0) return;
    if (this.#full !== null) await this.#checkRoomAgain(data.length);
    try {
      await this.#ensureReserved(data.length);
    } catch (err) {
      this.#noteFull(err as NodeJS.ErrnoException, data.length);
      throw err;
    }
    const before = this.#size;
    let written = 0;
    try {
      while (written < data.length) {
        const { bytesWritten } = await fh.write(data, written, data.length - written);
        if (bytesWritten === 0) throw errno('EIO', 'write returned 0');
        written += bytesWritten;
      }
    } catch (err) {
      if (written > 0) await this.#cutBack(fh, before, written, err as NodeJS.ErrnoException);
      this.#noteFull(err as NodeJS.ErrnoException, data.length);
      throw err;
    }
    this.#size += written;
    this.bytesWritten += written;
    if (this.#o.fsync === 'always') await this.#datasync(fh);
    else if (this.#o.fsync === 'interval') this.#dirty = true;
    this.#reserveAhead();
  }

  /**
   * After "full" (ENOSPC/EDQUOT), writes are refused until the file system has room again for twice the batch that
   * failed (plus ROOM_MARGIN): a smaller batch sneaking into the last bytes would be written while the client's earlier
   * records were refused (and are sent again), so the log would hold a client's records out of its order.
   */
  #noteFull(err: NodeJS.ErrnoException, bytes: number): void {
    if (err.code !== 'ENOSPC' && err.code !== 'EDQUOT') return;
    this.#full = { code: err.code, need: 2 * bytes + ROOM_MARGIN };
  }

  async #checkRoomAgain(bytes: number): Promise<void> {
    const full = this.#full!;
    let avail = 0;
    try {
      const st = await fsp.statfs(this.#o.path);
      avail = st.bavail * st.bsize;
    } catch {
      this.#full = null; // cannot tell: let the write say
      return;
    }
    const need = Math.max(full.need, bytes + ROOM_MARGIN);
    if (full.code === 'ENOSPC' && avail < need) {
      throw errno('ENOSPC', `the file system has ${avail} bytes free; writes resume at ${need}`);
    }
    this.#full = null;
  }

  /** Makes sure [size, size + bytes) is reserved (or, without reservation, that the file system has room). */
  async #ensureReserved(bytes: number): Promise<void> {
    const end = this.#size + bytes;
    if (this.#reserver === null) {
      await this.#checkFreeSpace(bytes);
      return;
    }
    while (this.#reservedEnd < end) {
      if (this.#reserving) {
        await this.#reserving.catch(() => {});
        continue;
      }
      // Reserve what is needed now plus some ahead; when that does not fit, exactly what is needed.
      const ahead = await this.#aheadBytes();
      try {
        await this.#reserve(end - this.#reservedEnd + ahead);
      } catch (err) {
        if (!(err instanceof ReserveError)) throw err;
        if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
          try {
            await this.#reserve(end - this.#reservedEnd);
          } catch (err2) {
            if (err2 instanceof ReserveError && (err2.code === 'ENOSPC' || err2.code === 'EDQUOT')) {
              throw errno(err2.code, `cannot reserve ${bytes} bytes for the log: ${err2.message}`);
            }
            throw err2;
          }
        } else {
          this.#giveUpReserving(err);
          await this.#checkFreeSpace(bytes);
          return;
        }
      }
    }
  }

  /**
   * How much to reserve ahead: reserveChunkBytes, but at most a sixteenth of the free space, so that a nearly
   * full file system is not taken by space the log does not use yet (and "full" is said as late as possible).
   */
  async #aheadBytes(): Promise<number> {
    const chunk = this.#o.reserveChunkBytes ?? 8 << 20;
    let ahead = chunk;
    try {
      const st = await fsp.statfs(this.#o.path);
      ahead = Math.min(chunk, Math.floor((st.bavail * st.bsize) / 16 / 65536) * 65536);
    } catch {
      // cannot tell: the whole chunk
    }
    this.#lastAhead = ahead;
    return ahead;
  }

  #reserve(length: number): Promise<void> {
    const p = this.#reserveNow(length);
    this.#track(p);
    return p;
  }

  #reserveNow(length: number): Promise<void> {
    const offset = this.#reservedEnd;
    return this.#reserver!.reserve(offset, length).then(() => {
      this.#reservedEnd = Math.max(this.#reservedEnd, offset + length);
    });
  }

  #track(p: Promise<void>): void {
    this.#reserving = p;
    const clear = () => {
      if (this.#reserving === p) this.#reserving = null;
    };
    p.then(clear, clear);
  }

  /** After a write: when less than half of the last ahead is left, reserve more in the background. */
  #reserveAhead(): void {
    if (this.#reserver === null || this.#reserving) return;
    if (this.#reservedEnd - this.#size >= this.#lastAhead / 2 && this.#reservedEnd > this.#size) return;
    const p = this.#aheadBytes().then((ahead) => {
      const want = this.#size + ahead - this.#reservedEnd;
      return want > 0 && this.#reserver ? this.#reserveNow(want) : undefined;
    });
    this.#track(p);
    p.catch((err: unknown) => {
      // No room for the whole ahead is not an error yet: the next write reserves exactly what it needs.
      if (
        err instanceof ReserveError &&
        err.code !== 'ENOSPC' &&
        err.code !== 'EDQUOT' &&
        err.code !== 'EFBIG'
      )
        this.#giveUpReserving(err);
    });
  }

  #giveUpReserving(err: ReserveError): void {
    if (this.#reserver === null) return;
    this.#reserver.close();
    this.#reserver = null;
    this.#log.warn(
      { log: this.#o.path, error: err.code, detail: err.message },
      `cannot reserve space for the log (${err.message}): from now on free space is checked before each write instead, and when the disk fills a reader may briefly see the start of a record that is then removed`,
    );
  }

  async #checkFreeSpace(bytes: number): Promise<void> {
    let st: { bavail: number; bsize: number };
    try {
      st = await fsp.statfs(this.#o.path);
    } catch {
      return; // cannot tell; the write itself will say
    }
    // A margin for the file system's own blocks (extent tree, journal).
    if (st.bavail * st.bsize < bytes + 64 * 1024) {
      throw errno('ENOSPC', `only ${st.bavail * st.bsize} bytes free for a write of ${bytes}`);
    }
  }

  /** A write failed after `written` bytes reached the file: remove them so no fragment stays. */
  async #cutBack(
    fh: fsp.FileHandle,
    before: number,
    written: number,
    cause: NodeJS.ErrnoException,
  ): Promise<void> {
    try {
      await fh.truncate(before);
      this.#log.error(
        { log: this.#o.path, bytes: written, error: cause.code ?? cause.message },
        `a failed write (${cause.code ?? cause.message}) left ${written} byte(s) of an unacknowledged batch in the log: removed again`,
      );
    } catch (err) {
      this.#size = before + written;
      this.#log.error(
        { log: this.#o.path, bytes: written, error: (err as NodeJS.ErrnoException).code },
        `a failed write left ${written} byte(s) in the log and they cannot be removed (${(err as NodeJS.ErrnoException).code}): the log now ends in a partial line; it is repaired at the next start`,
      );
    }
  }

  async #datasync(fh: fsp.FileHandle): Promise<void> {
    if (this.#o.datasync) await this.#o.datasync(fh);
    else await fh.datasync();
  }

  async #backgroundSync(): Promise<void> {
    const fh = this.#fh;
    if (!fh || this.#syncing || (!this.#dirty && !this.#syncError)) return;
    this.#syncing = true;
    const wasDirty = this.#dirty;
    this.#dirty = false;
    try {
      await this.#datasync(fh);
      if (this.#syncError) {
        this.#log.warn(
          { log: this.#o.path },
          'the log can be synced to disk again: records are written and acknowledged again',
        );
        this.#syncError = null;
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      this.#dirty = this.#dirty || wasDirty;
      this.syncFailures++;
      if (!this.#syncError) {
        this.#log.error(
          { log: this.#o.path, error: e.code ?? e.message, retryMs: this.#o.fsyncIntervalMs },
          `fdatasync of the log failed (${e.code ?? e.message}): records acknowledged in the last ${this.#o.fsyncIntervalMs} ms may not be on disk; no record is written or acknowledged until a sync succeeds (retried every ${this.#o.fsyncIntervalMs} ms); check the disk and the kernel log`,
        );
      }
      this.#syncError = Object.assign(new Error(`the log cannot be synced: ${e.code ?? e.message}`), {
        code: e.code === 'ENOSPC' || e.code === 'EDQUOT' ? e.code : 'EIO',
      }) as NodeJS.ErrnoException;
    } finally {
      this.#syncing = false;
    }
  }

  /**
   * Cuts bytes after the last '\n' (a write that a killed collector did not finish; never acknowledged). Only a
   * tail shorter than maxTornTailBytes is cut; a longer one stops the start (it is not ours).
   */
  async #repairTornTail(size: number): Promise<void> {
    const { path } = this.#o;
    const { fd, stat } = openRegularForRead(path, 'log_file');
    try {
      const cur = this.#fh ? await this.#fh.stat() : stat;
      if (cur.ino !== stat.ino || cur.dev !== stat.dev) return; // replaced in between: nothing to repair
      const last = Buffer.alloc(1);
      readSync(fd, last, 0, 1, size - 1);
      if (last[0] === NL) return;
      const limit = this.#o.maxTornTailBytes ?? 2 << 20;
      const chunk = Buffer.alloc(64 * 1024);
      let end = size;
      let keep = -1;
      while (end > 0 && size - end <= limit) {
        const start = Math.max(0, end - chunk.length);
        const n = readSync(fd, chunk, 0, end - start, start);
        const at = chunk.subarray(0, n).lastIndexOf(NL);
        if (at !== -1) {
          keep = start + at + 1;
          break;
        }
        end = start;
      }
      if (keep === -1) {
        if (end === 0 && size <= limit) keep = 0;
        else {
          throw new FileSafetyError(
            `log_file ${path} ends with more than ${limit} bytes without a newline: no write of the collector leaves that much, so this may not be an audit log; check the file, then move it away or end it with a newline`,
          );
        }
      }
      const torn = size - keep;
      const preview = Buffer.alloc(Math.min(torn, 200));
      readSync(fd, preview, 0, preview.length, keep);
      await this.#fh!.truncate(keep);
      this.#size = keep;
      this.#log.warn(
        { log: path, bytes: torn, offset: keep, start: sanitizeRecord(preview).line.toString('latin1') },
        `log_file ${path} ended in a partial line (${torn} byte(s) after the last newline, left by a write that did not finish, e.g. a collector killed mid-write): removed; those records were never acknowledged and their clients send them again`,
      );
    } finally {
      closeSync(fd);
    }
  }
}

function errno(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code }) as NodeJS.ErrnoException;
}
