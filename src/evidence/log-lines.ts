/**
 * Reading a log file's lines synchronously in chunks (the writer at start and after a write error, the verifier).
 * A line is the bytes before a '\n'; bytes after the last '\n' are an incomplete line, reported separately.
 */
import { readSync } from 'node:fs';
import { sha256 } from './merkle.js';

const CHUNK = 1024 * 1024;

export interface ScanResult {
  /** Complete lines seen (skipped ones included). */
  lines: number;
  /** Offset just after the last complete line. */
  end: number;
  /** Bytes after the last '\n' (an incomplete last line). */
  tail: number;
}

/**
 * Calls `onLine(line, index)` for every complete line from `offset` on (index counts from `firstIndex`), after
 * skipping `skip` lines without calling it. A line longer than `maxLine` is still passed whole (it is hashed, not
 * kept), assembled from its chunks.
 */
export function scanLines(
  fd: number,
  offset: number,
  onLine: ((line: Buffer, index: number, offset: number) => void) | null,
  options: { skip?: number; firstIndex?: number } = {},
): ScanResult {
  const buf = Buffer.allocUnsafe(CHUNK);
  let pos = offset;
  let carry: Buffer[] = [];
  let carryBytes = 0;
  let lines = 0;
  let end = offset;
  const skip = options.skip ?? 0;
  const first = options.firstIndex ?? 0;
  for (;;) {
    const n = readSync(fd, buf, 0, CHUNK, pos);
    if (n === 0) break;
    const chunk = buf.subarray(0, n);
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      if (onLine && lines >= skip) {
        const piece = chunk.subarray(start, nl);
        const line = carryBytes > 0 ? Buffer.concat([...carry, piece]) : piece;
        onLine(line, first + lines - skip, pos + start - carryBytes);
      }
      carry = [];
      carryBytes = 0;
      lines++;
      start = nl + 1;
      end = pos + start;
    }
    if (start < n) {
      // Keep the incomplete part only when it will be needed (copied: buf is reused).
      if (onLine && lines >= skip) carry.push(Buffer.from(chunk.subarray(start)));
      carryBytes += n - start;
    }
    pos += n;
  }
  return { lines, end, tail: pos - end };
}

/** SHA-256 of the first complete line of the file behind `fd`, or null when it has none. */
export function firstLineDigest(fd: number, maxBytes = 16 * 1024 * 1024): Buffer | null {
  const parts: Buffer[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (let pos = 0; total < maxBytes; ) {
    const n = readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) return null;
    const nl = buf.subarray(0, n).indexOf(0x0a);
    if (nl >= 0) {
      parts.push(Buffer.from(buf.subarray(0, nl)));
      return sha256(Buffer.concat(parts));
    }
    parts.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    pos += n;
  }
  return null;
}

/** The host a re-read record is attributed to: its `node=` prefix, else '-' (docs/evidence.md). */
export function hostFromLine(line: Buffer): string {
  if (line.length > 5 && line.subarray(0, 5).toString('latin1') === 'node=') {
    const sp = line.indexOf(0x20, 5);
    if (sp > 5) return line.subarray(5, sp).toString('utf8');
  }
  return '-';
}

const COMPRESSED = /\.(gz|xz|zst|bz2|lz4|Z)$/;

/**
 * Whether `name` is a log file of the set named `base`, and its age rank: 0 for `base` itself, N for auditd's
 * `base.N`, 1e9 for other rotated names (`base-20240101`, `base.old`: logrotate's dateext...). Compressed files and
 * the evidence directory are not log files of the set (their content cannot be checked as it is).
 */
export function rotationOf(base: string, name: string): number | null {
  if (name === base) return 0;
  if (!name.startsWith(base) || name.length === base.length) return null;
  const rest = name.slice(base.length);
  if (/^\.\d+$/.test(rest)) return Number(rest.slice(1));
  if (rest === '.evidence' || COMPRESSED.test(rest) || /\.tmp$/.test(rest)) return null;
  if (/^[.\-_]/.test(rest)) return 1e9;
  return null;
}
