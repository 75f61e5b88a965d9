/**
 * The ack cursor (`ack` in queue_dir, 24 bytes, docs/queue.md): the id of the last acknowledged record.
 *
 * Saved by writing `ack.tmp` (created exclusively: whatever was left at that name is removed, never opened or
 * followed), syncing it (unless `fsync = never`) and renaming it over `ack`, so the file is always the old or the
 * new cursor. Between saves, `flush()` rewrites the renamed file in place through the descriptor kept open, one
 * 24-byte pwrite without a sync: enough to survive kill -9 of the process.
 */
import { join } from 'node:path';
import { FileSafetyError, QueueError } from '../errors.js';
import {
  createTemporary,
  describeFileKind,
  errnoOf,
  type FileOps,
  readRegularFile,
  syncDirectory,
  writeFully,
} from '../fs/safe-files.js';
import type { QueueHealth, QueueLogger } from './queue-health.js';
import type { QueueFinding } from './recovery.js';
import { decodeAck, encodeAck } from './segment-format.js';

export const ACK_FILE = 'ack';
export const ACK_TMP = 'ack.tmp';
/** Larger than any cursor: a bigger file is not read (it is set aside as unusable). */
const MAX_ACK_FILE = 4096;

export type FsyncPolicy = 'always' | 'interval' | 'never';

/** Moves a file unfit for use out of the way (`*.corrupt`), keeping it for inspection; returns its new path. */
export function moveAside(path: string, fs: FileOps): string | undefined {
  for (let i = 0; i < 100; i++) {
    const to = i === 0 ? `${path}.corrupt` : `${path}.${i}.corrupt`;
    try {
      fs.lstatSync(to);
      continue;
    } catch {
      // free name
    }
    try {
      fs.renameSync(path, to);
      return to;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/**
 * Whether an error opening or reading a file means the file itself is unfit (a link, a FIFO, a directory, too
 * large) — it is set aside — rather than an I/O error, which fails the open and leaves the file alone.
 */
export function isUnusableFile(err: unknown): boolean {
  if (!(err instanceof FileSafetyError)) return false;
  if (err.cause === undefined) return true;
  return ['ELOOP', 'ENXIO', 'EISDIR'].includes(errnoOf(err));
}

export function asideNote(to: string | undefined): string {
  return to ? `moved to ${to}` : 'could not be moved aside: ignored';
}

/**
 * Reads the cursor at start. A missing file is 0; an unusable one (wrong size, magic or checksum, not a regular
 * file) is set aside and reported (every record still on disk is then sent again); an I/O error fails the open,
 * leaving the file as it is.
 */
export function loadAckCursor(dir: string, fs: FileOps, findings: QueueFinding[]): number {
  const path = join(dir, ACK_FILE);
  let reason: string;
  try {
    const st = fs.lstatSync(path);
    if (!st.isFile()) {
      reason = `${describeFileKind(st)}, not a regular file`;
    } else {
      const d = decodeAck(readRegularFile(path, 'ack cursor', MAX_ACK_FILE, fs));
      if (!('reason' in d)) return d.acked;
      reason = d.reason;
    }
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return 0;
    if (!isUnusableFile(err)) {
      throw new QueueError(`cannot read the ack cursor ${path}: ${errnoOf(err)}; it is left as it is`, {
        cause: err,
      });
    }
    reason = (err as Error).message;
  }
  const movedTo = moveAside(path, fs);
  findings.push({
    kind: 'corrupt-ack-cursor',
    file: path,
    movedTo,
    message: `ack cursor ${path} is unusable (${reason}), ${asideNote(movedTo)}; every record still on disk will be sent again`,
  });
  return 0;
}

export interface AckCursorOptions {
  dir: string;
  fs: FileOps;
  fsync: FsyncPolicy;
  health: QueueHealth;
  log: QueueLogger;
}

export class AckCursor {
  readonly #o: AckCursorOptions;
  /** The last acknowledged id (in memory). */
  #acked: number;
  /** Saved durably (temp file + sync + rename). */
  #persisted: number;
  /** Written to `ack`, in place or durably. */
  #written: number;
  /** The `ack` file last renamed into place, kept open for the in-place rewrites. */
  #fd: number | null = null;

  constructor(options: AckCursorOptions, acked: number) {
    this.#o = options;
    this.#acked = acked;
    this.#persisted = acked;
    this.#written = acked;
  }

  get acked(): number {
    return this.#acked;
  }

  advance(id: number): void {
    this.#acked = id;
  }

  /** In-place write of the cursor (no sync): survives kill -9. A failure is left to the periodic save. */
  flush(): void {
    const acked = this.#acked;
    if (acked === this.#written) return;
    if (this.#fd === null) {
      // No cursor file open yet: create one (once; after a failure the periodic save retries).
      if (!this.#o.health.failing('ack')) this.persist(false);
      return;
    }
    try {
      writeFully(this.#fd, encodeAck(acked), 0, this.#o.fs);
      this.#written = acked;
    } catch {
      // The periodic save tries again and reports a failure.
    }
  }

  /** Saves the cursor if it moved (with `syncDir`, the rename too). Failure only means resends after a restart. */
  persist(syncDir: boolean): void {
    const acked = this.#acked;
    if (acked === this.#persisted) return;
    const { dir, fs, fsync, health, log } = this.#o;
    const tmp = join(dir, ACK_TMP);
    try {
      const fd = createTemporary(tmp, 0o600, 'ack cursor temporary file', fs);
      try {
        writeFully(fd, encodeAck(acked), 0, fs);
        if (fsync !== 'never') fs.fdatasyncSync(fd);
        fs.renameSync(tmp, join(dir, ACK_FILE));
      } catch (err) {
        fs.closeSync(fd);
        try {
          fs.unlinkSync(tmp);
        } catch {
          // the next save removes it
        }
        throw err;
      }
      this.#closeFd();
      this.#fd = fd;
      this.#written = acked;
      if (syncDir && fsync !== 'never') {
        try {
          syncDirectory(dir, fs, true);
        } catch (err) {
          log.warn({ dir, err: errnoOf(err) }, 'queue: cannot sync the queue directory');
        }
      }
      this.#persisted = acked;
      health.ok('ack');
    } catch (err) {
      if (health.fail('ack', err)) {
        log.warn(
          { dir, err: errnoOf(err) },
          `queue: cannot save the acknowledgement position: ${errnoOf(err)}; ` +
            'after a restart, records acknowledged since may be sent again',
        );
      }
    }
  }

  /** Saves the cursor (rename synced) and closes the file. */
  close(): void {
    this.persist(true);
    this.#closeFd();
  }

  #closeFd(): void {
    if (this.#fd === null) return;
    try {
      this.#o.fs.closeSync(this.#fd);
    } catch {
      // nothing useful to do
    }
    this.#fd = null;
  }
}
