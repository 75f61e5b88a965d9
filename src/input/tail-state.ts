/**
 * The tail input's persisted position (`tail_state_file`): which file (device + inode), up to which byte
 * offset its records are in the queue, and a checksum of the bytes just before that offset, so that a
 * file that was replaced or truncated and rewritten is recognised even when its inode number is reused.
 *
 * Written atomically: a temporary file in the same directory, optionally fsync'd, renamed over the state
 * file (and the directory fsync'd), so the file is always the old or the new state, never a mix. Written as
 * auditd writes its files (src/fs/safe-files.ts): the directory is checked (owned by root or the running user, not
 * writable by group or others; created 0700 when missing), the temporary file is created exclusively (whatever
 * was left at its name is removed, never followed), and the state is read only from a regular file.
 *
 * Format: one JSON object (version 1):
 *   {"version":1,"path":"/var/log/audit/audit.log","dev":"2049","ino":"1234567","offset":8192,
 *    "mtimeMs":1700000000000.5,"checkLen":64,"checkSha256":"<hex>","written":"<ISO time>"}
 * dev and ino are decimal strings (64-bit values); offset is the end of the last record that was queued,
 * always at a line boundary; checkSha256 is SHA-256 of the checkLen bytes that end at offset
 * (checkLen = min(offset, 64)).
 */
import { createHash } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { checkParentDirectory, errnoOf, readRegularFile, writeFileAtomic } from '../fs/safe-files.js';

export const TAIL_STATE_VERSION = 1;
/** Bytes before the offset covered by the checksum. */
export const CHECK_BYTES = 64;
/** Far above any state (about 300 bytes): a larger file is not read. */
const MAX_STATE_BYTES = 64 * 1024;

export interface TailState {
  version: typeof TAIL_STATE_VERSION;
  /** Where the file was when the position was taken (informative; the identity is dev + ino). */
  path: string;
  dev: string;
  ino: string;
  offset: number;
  /** The file's modification time when the position was taken. */
  mtimeMs: number;
  checkLen: number;
  checkSha256: string;
  written?: string;
}

export function checksum(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export type LoadedTailState =
  | { state: TailState; problem: null }
  | { state: null; problem: null }
  | { state: null; problem: string };

/** Reads the state file: `{ state: null, problem: null }` when it does not exist; a description when it is unusable. */
export function loadTailState(file: string): LoadedTailState {
  let text: string;
  try {
    text = readRegularFile(file, 'tail state file', MAX_STATE_BYTES).toString('utf8');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return { state: null, problem: null };
    return { state: null, problem: (err as Error).message };
  }
  let v: Partial<TailState>;
  try {
    v = JSON.parse(text) as Partial<TailState>;
  } catch {
    return { state: null, problem: `tail state file ${file} is not valid JSON (${text.length} bytes)` };
  }
  const ok =
    v !== null &&
    typeof v === 'object' &&
    v.version === TAIL_STATE_VERSION &&
    typeof v.path === 'string' &&
    typeof v.dev === 'string' &&
    /^\d+$/.test(v.dev) &&
    typeof v.ino === 'string' &&
    /^\d+$/.test(v.ino) &&
    Number.isSafeInteger(v.offset) &&
    (v.offset as number) >= 0 &&
    typeof v.mtimeMs === 'number' &&
    Number.isInteger(v.checkLen) &&
    (v.checkLen as number) >= 0 &&
    (v.checkLen as number) <= CHECK_BYTES &&
    (v.checkLen as number) <= (v.offset as number) &&
    typeof v.checkSha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(v.checkSha256);
  if (!ok) return { state: null, problem: `tail state file ${file} has unexpected content` };
  return { state: v as TailState, problem: null };
}

/**
 * Checks (and creates, mode 0700) the state file's directory: refused when it is a link, owned by another user, or
 * writable by group or others (a FileSafetyError saying how to fix it). Called at start and before each write.
 */
export function prepareTailStateDirectory(file: string): void {
  checkParentDirectory(file, 'tail_state_file', { create: true, mode: 0o700 });
}

/** Replaces the state file atomically (temp file + rename); with `fsync`, the data and the rename are durable. */
export function saveTailState(file: string, state: TailState, fsync: boolean): void {
  prepareTailStateDirectory(file);
  const body = `${JSON.stringify({ ...state, written: new Date().toISOString() })}\n`;
  writeFileAtomic(file, body, {
    mode: 0o600,
    fsync,
    what: 'tail state file',
    temp: join(dirname(file), `.${basename(file)}.tmp`),
  });
}
