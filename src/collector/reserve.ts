/**
 * Space reservation for the collector's log: fallocate(2) with FALLOC_FL_KEEP_SIZE allocates blocks beyond the end
 * of the file without changing its size, so a reader sees nothing, and a later write into the reserved range
 * cannot fail with ENOSPC or EDQUOT (the blocks are already the file's). This is how the collector makes a
 * failed write leave the log exactly as it was (docs/collector.md, "Log write failures").
 *
 * Node has no binding for fallocate(2). Rather than a native addon that would need a compiler on every machine,
 * this runs util-linux's `fallocate --keep-size` (Debian: the essential package util-linux, always installed)
 * on the collector's own descriptor (`/proc/self/fd/3` in the child, which is the log's inode, reopened), a few
 * times per reserved chunk of megabytes, never per record. Where the program is missing or the file system
 * cannot (EOPNOTSUPP), `findFallocate`/`reserve` say so and the writer falls back to checking free space
 * first (statfs) and cutting a failed write off again.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

const CANDIDATES = ['/usr/bin/fallocate', '/bin/fallocate', '/usr/sbin/fallocate', '/sbin/fallocate'];

/** The fallocate program, or null when none is installed. */
export function findFallocate(): string | null {
  for (const p of CANDIDATES) {
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

export class ReserveError extends Error {
  readonly code: 'ENOSPC' | 'EDQUOT' | 'EOPNOTSUPP' | 'EFBIG' | 'EIO';
  constructor(code: ReserveError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * Reserves [offset, offset + length) of the file open as `fd` without changing its size. Rejects with a
 * ReserveError whose code says why (ENOSPC / EDQUOT: no room; EOPNOTSUPP: the file system cannot; EIO: anything
 * else, e.g. the program failed to start).
 */
export function reserve(program: string, fd: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    const child = spawn(
      program,
      ['--keep-size', '--offset', String(offset), '--length', String(length), '/proc/self/fd/3'],
      { stdio: ['ignore', 'ignore', 'pipe', fd], env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } },
    );
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      if (stderr.length < 1000) stderr += s;
    });
    child.on('error', (err) => reject(new ReserveError('EIO', `cannot run ${program}: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) {
        resolve();
        return;
      }
      const text = stderr.trim() || `exit ${code ?? signal}`;
      const kind: ReserveError['code'] = /no space left/i.test(text)
        ? 'ENOSPC'
        : /quota/i.test(text)
          ? 'EDQUOT'
          : /not supported/i.test(text)
            ? 'EOPNOTSUPP'
            : /too large/i.test(text)
              ? 'EFBIG'
              : 'EIO';
      reject(new ReserveError(kind, text));
    });
  });
}
