/**
 * One process per queue directory. Node has no flock() without native code, so the lock is a file
 * `lock` holding "<pid> <start time>\n", created atomically: written to a private temporary file and
 * hard-linked into place (link() fails with EEXIST when the lock exists, and the lock never appears
 * without its content).
 *
 * A lock is stale when its process is gone (`kill(pid, 0)` fails with ESRCH) or when the pid now
 * belongs to a process that started at another time (pid reuse; start time from /proc/<pid>/stat).
 * A stale lock is taken over. Two processes taking over the same stale lock at the same instant is
 * not excluded; service managers start one agent at a time.
 *
 * The temporary file is created exclusively and the lock is read only when it is a regular file of a few bytes
 * (no link followed, no FIFO read): anything else at `lock` counts as unreadable, i.e. stale.
 */
import { closeSync, linkSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { QueueError } from '../errors.js';
import { createExclusive, errnoOf, readRegularFile, writeFully } from '../fs/safe-files.js';

export const LOCK_FILE = 'lock';

export interface QueueLock {
  readonly path: string;
  /** The dead process whose lock was taken over, if any. */
  readonly staleOwner: { pid: number; content: string } | null;
  release(): void;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or null when unavailable. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

function parseLock(content: string): { pid: number; start: string | null } | null {
  const m = /^(\d+)(?: (\d+))?\n?$/.exec(content);
  if (!m) return null;
  const pid = Number(m[1]);
  return pid > 0 && Number.isSafeInteger(pid) ? { pid, start: m[2] ?? null } : null;
}

function isAlive(pid: number, start: string | null): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  // Same pid, other start time: a previous process whose pid was reused (after a reboot, or as pid 1
  // of a restarted container), possibly this very process.
  if (start === null) return true;
  const now = processStartTime(pid);
  return now === null || now === start;
}

function readLock(path: string): string {
  return readRegularFile(path, 'lock file', 4096).toString('latin1');
}

export function acquireLock(dir: string): QueueLock {
  const path = join(dir, LOCK_FILE);
  const content = `${process.pid} ${processStartTime(process.pid) ?? ''}`.trimEnd() + '\n';
  const tmp = join(dir, `${LOCK_FILE}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`);
  try {
    const fd = createExclusive(tmp, 0o644, 'lock file');
    try {
      writeFully(fd, Buffer.from(content, 'latin1'), 0);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw new QueueError(`cannot create the lock file in queue directory ${dir}: ${errnoOf(err)}`, {
      cause: err,
    });
  }
  let staleOwner: QueueLock['staleOwner'] = null;
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        linkSync(tmp, path);
        return {
          path,
          staleOwner,
          release() {
            try {
              if (readLock(path) === content) unlinkSync(path);
            } catch {
              // already gone
            }
          },
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          const code = (err as NodeJS.ErrnoException).code ?? String(err);
          throw new QueueError(`cannot create lock file ${path}: ${code}`, { cause: err });
        }
      }
      let held: string;
      try {
        held = readLock(path);
      } catch (err) {
        if (errnoOf(err) === 'ENOENT') continue; // released between link() and read: try again
        held = `<${(err as Error).message}>`; // not a regular file: unreadable, hence stale
      }
      const owner = parseLock(held);
      if (owner && isAlive(owner.pid, owner.start)) {
        const who = owner.pid === process.pid ? 'this process' : `process ${owner.pid}`;
        throw new QueueError(
          `queue directory ${dir} is in use by ${who} (lock file ${path}); ` +
            'only one agent may use a queue directory: stop the other one or choose another queue_dir',
        );
      }
      staleOwner = { pid: owner?.pid ?? 0, content: held };
      try {
        unlinkSync(path);
      } catch {
        // someone else removed it
      }
    }
    throw new QueueError(`could not take lock file ${path}: it keeps reappearing`);
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // ignore
    }
  }
}
