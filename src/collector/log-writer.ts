/**
 * Appends record lines to the collector's log file. Writes from all clients are coalesced into one
 * write at a time and complete in the order they were asked for, so acknowledgements (sent after
 * the write) keep each client's request order. The fsync policy decides when data reaches the disk.
 */
import { promises as fsp } from 'node:fs';

export type FsyncPolicy = 'always' | 'interval' | 'never';

export interface LogWriterOptions {
  path: string;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
}

interface Pending {
  bufs: Buffer[];
  done: (err: NodeJS.ErrnoException | null) => void;
}

export class LogWriter {
  readonly #o: LogWriterOptions;
  #fh: fsp.FileHandle | null = null;
  #queue: Pending[] = [];
  #writing = false;
  #dirty = false;
  #timer: NodeJS.Timeout | null = null;
  bytesWritten = 0;

  constructor(options: LogWriterOptions) {
    this.#o = options;
  }

  async open(): Promise<void> {
    this.#fh = await fsp.open(this.#o.path, 'a', 0o600);
    if (this.#o.fsync === 'interval') {
      this.#timer = setInterval(() => void this.#syncIfDirty(), this.#o.fsyncIntervalMs);
      this.#timer.unref();
    }
  }

  /** Appends the buffers (possibly none: then it only waits for earlier writes). */
  append(bufs: Buffer[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ bufs, done: (err) => (err ? reject(err) : resolve()) });
      if (!this.#writing) void this.#flush();
    });
  }

  async close(): Promise<void> {
    while (this.#writing || this.#queue.length > 0) await this.append([]);
    if (this.#timer) clearInterval(this.#timer);
    const fh = this.#fh;
    this.#fh = null;
    if (fh) {
      if (this.#o.fsync !== 'never') await fh.datasync().catch(() => {});
      await fh.close();
    }
  }

  async #flush(): Promise<void> {
    this.#writing = true;
    while (this.#queue.length > 0) {
      const batch = this.#queue;
      this.#queue = [];
      const bufs = batch.flatMap((p) => p.bufs);
      let error: NodeJS.ErrnoException | null = null;
      const progress = { written: 0 };
      try {
        if (!this.#fh) throw Object.assign(new Error('log file is closed'), { code: 'EBADF' });
        if (bufs.length > 0) {
          await writeAll(this.#fh, bufs, progress);
          if (this.#o.fsync === 'always') await this.#fh.datasync();
          else this.#dirty = true;
        }
      } catch (err) {
        error = err as NodeJS.ErrnoException;
        // The batch fails as a whole (no record of it is acknowledged), so none of it may stay in the log:
        // a partial write (ENOSPC, EFBIG) would leave a cut line that the next record is appended to.
        if (progress.written > 0 && this.#fh) await this.#truncateTail(this.#fh, progress.written);
      }
      if (!error) this.bytesWritten += progress.written;
      for (const p of batch) p.done(error);
    }
    this.#writing = false;
  }

  /** Removes the last `bytes` bytes of the file (best effort: a FIFO or character device cannot be truncated). */
  async #truncateTail(fh: fsp.FileHandle, bytes: number): Promise<void> {
    try {
      const { size } = await fh.stat();
      if (size >= bytes) await fh.truncate(size - bytes);
    } catch {
      // Nothing more can be done; the write error is reported to the clients.
    }
  }

  async #syncIfDirty(): Promise<void> {
    if (!this.#dirty || !this.#fh) return;
    this.#dirty = false;
    await this.#fh.datasync().catch(() => {
      this.#dirty = true;
    });
  }
}

async function writeAll(fh: fsp.FileHandle, bufs: Buffer[], progress: { written: number }): Promise<void> {
  let rest = bufs;
  while (rest.length > 0) {
    const { bytesWritten } = await fh.writev(rest.slice(0, 1024));
    progress.written += bytesWritten;
    let n = bytesWritten;
    let i = 0;
    while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length;
    rest = rest.slice(i);
    if (n > 0 && rest.length > 0) rest = [rest[0]!.subarray(n), ...rest.slice(1)];
  }
}
