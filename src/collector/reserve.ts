/**
 * Space reservation for the collector's log: fallocate(2) with FALLOC_FL_KEEP_SIZE allocates blocks beyond the end
 * of the file without changing its size, so a reader sees nothing, and a later write into the reserved range
 * cannot fail with ENOSPC or EDQUOT (the blocks are already the file's). This is how the collector makes a
 * failed write leave the log exactly as it was (docs/collector.md, "Log write failures").
 *
 * Node has no binding for fallocate(2). Rather than a native addon that would need a compiler on every machine,
 * util-linux's `fallocate --keep-size` (Debian: the essential package util-linux, always installed) does it on the
 * log's descriptor, passed to it as fd 3 (`/proc/self/fd/3` reopens the same inode). Starting a process from the
 * collector costs tens of milliseconds of a blocked event loop (fork of a large process), so one small helper
 * shell is started when the log is opened and runs `fallocate` for each request it reads on its stdin; requests
 * come a few times per reserved chunk of megabytes, never per record. Where sh or fallocate is missing, the helper
 * dies, or the file system cannot (EOPNOTSUPP), the request fails with a ReserveError saying so and the writer falls
 * back (log-writer.ts).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

function findProgram(candidates: string[]): string | null {
  for (const p of candidates) {
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

/** The fallocate program, or null when none is installed. */
export function findFallocate(): string | null {
  return findProgram(['/usr/bin/fallocate', '/bin/fallocate', '/usr/sbin/fallocate', '/sbin/fallocate']);
}

export class ReserveError extends Error {
  readonly code: 'ENOSPC' | 'EDQUOT' | 'EOPNOTSUPP' | 'EFBIG' | 'EIO';
  constructor(code: ReserveError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/** One request per line: `OFFSET LENGTH`; one answer per line: `ok` or `err <fallocate's message>`. */
const SCRIPT = `
while read -r off len; do
  if out=$("$0" --keep-size --offset "$off" --length "$len" /proc/self/fd/3 2>&1); then
    echo ok
  else
    printf 'err %s\\n' "$(printf '%s' "$out" | tr '\\n' ' ')"
  fi
done
`;

function classify(text: string): ReserveError['code'] {
  if (/no space left/i.test(text)) return 'ENOSPC';
  if (/quota/i.test(text)) return 'EDQUOT';
  if (/not supported/i.test(text)) return 'EOPNOTSUPP';
  if (/too large/i.test(text)) return 'EFBIG';
  return 'EIO';
}

/** A helper that reserves space in one file (the descriptor given at start), one request at a time. */
export class Reserver {
  readonly #child: ChildProcess;
  #pending: { resolve: () => void; reject: (e: ReserveError) => void } | null = null;
  #buf = '';
  #dead: string | null = null;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (s: string) => {
      this.#buf += s;
      for (let nl = this.#buf.indexOf('\n'); nl !== -1; nl = this.#buf.indexOf('\n')) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        const p = this.#pending;
        this.#pending = null;
        if (!p) continue;
        if (line === 'ok') p.resolve();
        else {
          const text = line.replace(/^err /, '').trim();
          p.reject(new ReserveError(classify(text), text || 'fallocate failed'));
        }
      }
    });
    child.stdin!.on('error', () => {});
    child.on('error', (err) => this.#die(`cannot run the reservation helper: ${err.message}`));
    child.on('exit', (code, signal) => this.#die(`the reservation helper exited (${code ?? signal})`));
  }

  /** Starts the helper for the file open as `fd`, or returns null (with the reason) when it cannot run here. */
  static start(fd: number): Reserver | string {
    const fallocate = findFallocate();
    if (!fallocate) return 'the fallocate program (util-linux) is not installed';
    const sh = findProgram(['/bin/sh', '/usr/bin/sh']);
    if (!sh) return 'no /bin/sh to run fallocate from';
    const child = spawn(sh, ['-c', SCRIPT, fallocate], {
      stdio: ['pipe', 'pipe', 'ignore', fd],
      env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' },
    });
    // It must never keep the collector's event loop alive or outlive it.
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    return new Reserver(child);
  }

  /** Reserves [offset, offset + length) without changing the file's size; one request at a time. */
  reserve(offset: number, length: number): Promise<void> {
    if (this.#dead) return Promise.reject(new ReserveError('EIO', this.#dead));
    if (this.#pending) return Promise.reject(new ReserveError('EIO', 'a reservation is already in progress'));
    return new Promise((resolve, reject) => {
      this.#pending = { resolve, reject };
      this.#child.stdin!.write(`${offset} ${length}\n`);
    });
  }

  close(): void {
    this.#dead ??= 'closed';
    this.#child.stdin!.end();
    if (this.#child.exitCode === null) this.#child.kill();
  }

  #die(reason: string): void {
    this.#dead ??= reason;
    const p = this.#pending;
    this.#pending = null;
    p?.reject(new ReserveError('EIO', this.#dead));
  }
}
