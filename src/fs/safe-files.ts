/**
 * Files are opened as auditd opens them (docs/errors.md, `AR_UNSAFE_PATH`):
 *
 * - nothing is written through a symbolic link (`O_NOFOLLOW` on the last component);
 * - temporary files are created with `O_EXCL` (a planted file or link makes the create fail, it is never
 *   truncated or followed), then renamed over the target;
 * - a directory we write into must be a real directory owned by root or by the running user and not group- or
 *   world-writable, so nobody else can plant, replace or remove files in it;
 * - a file we read (config, queue input) is opened non-blocking and checked to be a regular file before any read,
 *   so a FIFO or a device cannot hang the process.
 *
 * Every refusal is a `FileSafetyError` whose message says what, where and how to fix it.
 */

import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  type Stats,
  statfsSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { type FileHandle, open as openAsync } from 'node:fs/promises';
import path from 'node:path';
import { FileSafetyError } from '../errors.js';

const {
  O_WRONLY,
  O_RDONLY,
  O_RDWR,
  O_CREAT,
  O_EXCL,
  O_APPEND,
  O_NOFOLLOW,
  O_CLOEXEC,
  O_NONBLOCK,
  O_DIRECTORY,
} = constants as typeof constants & { O_CLOEXEC: number };

/**
 * The file operations this module (and the durable queue, which opens its files through it) performs: a seam
 * so that tests can make any one of them fail (EIO, ENOSPC, a failed fsync) without root or a broken disk.
 * Production code uses `nodeFileOps`, the node:fs functions themselves.
 */
export interface FileOps {
  openSync(path: string, flags: number, mode?: number): number;
  closeSync(fd: number): void;
  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number | null): number;
  writeSync(fd: number, buffer: Buffer, offset: number, length: number, position: number | null): number;
  fstatSync(fd: number): Stats;
  lstatSync(path: string): Stats;
  fsyncSync(fd: number): void;
  fdatasyncSync(fd: number): void;
  fdatasync(fd: number, callback: (err: NodeJS.ErrnoException | null) => void): void;
  ftruncateSync(fd: number, length: number): void;
  renameSync(from: string, to: string): void;
  unlinkSync(path: string): void;
  readdirSync(path: string): string[];
}

export const nodeFileOps: FileOps = {
  // The node:fs functions themselves (no wrapper on the record path); their overloads include these signatures.
  openSync: openSync as FileOps['openSync'],
  closeSync,
  readSync: readSync as FileOps['readSync'],
  writeSync: writeSync as FileOps['writeSync'],
  fstatSync: fstatSync as FileOps['fstatSync'],
  lstatSync: lstatSync as FileOps['lstatSync'],
  fsyncSync,
  fdatasyncSync,
  fdatasync,
  ftruncateSync: ftruncateSync as FileOps['ftruncateSync'],
  renameSync,
  unlinkSync,
  readdirSync: readdirSync as FileOps['readdirSync'],
};

/** The errno code of an error, also when a FileSafetyError wraps it (`cause`); else the message. */
export function errnoOf(err: unknown): string {
  let e = err as (NodeJS.ErrnoException & { cause?: unknown }) | undefined;
  for (let depth = 0; e && depth < 3; depth++) {
    if (typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) return e.code;
    e = e.cause as typeof e;
  }
  const top = err as Error | undefined;
  return top instanceof Error ? top.message : String(err);
}

/** Flags for a file we append to: created when missing, never through a symlink. */
export const APPEND_FLAGS = O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | (O_CLOEXEC ?? 0);
/** Flags for a file created fresh: fails if anything (file or link) is already there. */
export const EXCLUSIVE_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | (O_CLOEXEC ?? 0);
/** Flags for reading: no symlink, and no blocking open of a FIFO. */
export const READ_FLAGS = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | (O_CLOEXEC ?? 0);
/** Flags for repairing an existing file in place (truncate a torn tail, rewrite a header): as READ_FLAGS. */
export const UPDATE_FLAGS = O_RDWR | O_NOFOLLOW | O_NONBLOCK | (O_CLOEXEC ?? 0);

export function formatMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

function euid(): number {
  return typeof process.geteuid === 'function' ? process.geteuid() : 0;
}

/** What a non-regular file is, for messages ("a FIFO", "a symbolic link", …). */
export function describeFileKind(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a regular file';
}

/** The message for an errno on `what` at `where`. */
function errnoText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}

export interface DirectoryCheck {
  /** What the directory is for, in the message ("queue_dir", "log directory"). */
  what: string;
  /** Create it (mode `mode`, parents as needed) when missing. Default false. */
  create?: boolean;
  /** Mode for a created directory. Default 0o750. */
  mode?: number;
}

/**
 * Checks that `dir` is safe to create files in: a real directory (not a symlink), owned by root or by the running
 * user, not writable by group or others. Creates it when asked and missing. Returns its lstat.
 */
export function checkPrivateDirectory(dir: string, check: DirectoryCheck): Stats {
  let st: Stats;
  try {
    st = lstatSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !check.create) {
      throw new FileSafetyError(
        `${check.what} ${dir} does not exist; create it (e.g. \`mkdir -p -m 0750 ${dir}\`) or choose another path`,
        { cause: err },
      );
    }
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !check.create) {
      throw new FileSafetyError(`cannot use ${check.what} ${dir}: ${errnoText(err)}`, {
        cause: err,
      });
    }
    st = makeDirectory(dir, check);
  }
  if (st.isDirectory()) refuseKernelFileSystem(dir, dir, check.what);
  if (st.isSymbolicLink()) {
    throw new FileSafetyError(
      `${check.what} ${dir} is a symbolic link; point the setting at the real directory (${check.what} must not be a link others could re-point)`,
    );
  }
  if (!st.isDirectory()) {
    throw new FileSafetyError(`${check.what} ${dir} is ${describeFileKind(st)}, not a directory`);
  }
  const me = euid();
  if (st.uid !== 0 && st.uid !== me) {
    throw new FileSafetyError(
      `${check.what} ${dir} is owned by uid ${st.uid}, not by root or by the running user (uid ${me}); fix with: chown ${me === 0 ? 'root' : me} ${dir}`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw new FileSafetyError(
      `${check.what} ${dir} is writable by ${st.mode & 0o002 ? 'others' : 'its group'} (mode ${formatMode(st.mode)}), so another user could plant or replace files in it; fix with: chmod go-w ${dir}`,
    );
  }
  return st;
}

/**
 * Creates `dir` and its missing parents one at a time (mode `check.mode`). Node's own recursive mkdir loops
 * forever where a parent exists but refuses new entries with ENOENT (/proc), so it is not used.
 */
function makeDirectory(dir: string, check: DirectoryCheck): Stats {
  const missing: string[] = [];
  let existing = path.resolve(dir);
  for (;;) {
    try {
      lstatSync(existing);
      break;
    } catch (err) {
      const up = path.dirname(existing);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || up === existing) {
        throw new FileSafetyError(`cannot use ${check.what} ${dir}: ${errnoText(err)}`, { cause: err });
      }
      missing.push(existing);
      existing = up;
    }
  }
  refuseKernelFileSystem(existing, dir, check.what);
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d, { mode: check.mode ?? 0o750 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw new FileSafetyError(`cannot create ${check.what} ${dir}: ${errnoText(err)} (at ${d})`, {
        cause: err,
      });
    }
  }
  try {
    return lstatSync(dir);
  } catch (err) {
    throw new FileSafetyError(`cannot use ${check.what} ${dir}: ${errnoText(err)}`, { cause: err });
  }
}

/** statfs(2) magic numbers of the kernel's own file systems: nothing of ours can be kept there. */
const KERNEL_FILE_SYSTEMS = new Map<number, string>([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x1cd1, 'devpts'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x73636673, 'securityfs'],
  [0x74726163, 'tracefs'],
  [0xcafe4a11, 'bpf'],
  [0x6e736673, 'nsfs'],
  [0x42494e4d, 'binfmt_misc'],
  [0xde5e81e4, 'efivarfs'],
  [0x19800202, 'mqueue'],
]);

function refuseKernelFileSystem(existing: string, dir: string, what: string): void {
  let type: number;
  try {
    type = Number(statfsSync(existing).type);
  } catch {
    return; // the next operation reports the problem
  }
  const name = KERNEL_FILE_SYSTEMS.get(type >>> 0);
  if (name) {
    throw new FileSafetyError(
      `${what} ${dir} is under ${existing}, on a kernel file system (${name}) that cannot hold files; choose a directory on a disk`,
    );
  }
}

/** Checks the directory that holds `file` (see checkPrivateDirectory). */
export function checkParentDirectory(
  file: string,
  what: string,
  options: Omit<DirectoryCheck, 'what'> = {},
): Stats {
  return checkPrivateDirectory(path.dirname(path.resolve(file)), {
    ...options,
    what: `directory of ${what}`,
  });
}

/**
 * Opens `file` for appending without following a symlink; creates it (mode `mode`) when missing. Refuses
 * anything that is not a regular file. Returns the descriptor and its stat.
 */
export function openAppendNoFollow(
  file: string,
  mode: number,
  what: string,
  ops: FileOps = nodeFileOps,
): { fd: number; stat: Stats } {
  let fd: number;
  try {
    fd = ops.openSync(file, APPEND_FLAGS | O_NONBLOCK, mode);
  } catch (err) {
    throw openError(err, file, what);
  }
  return { fd, stat: requireRegular(fd, file, what, ops) };
}

/** Creates `file` exclusively (fails if anything, a file or a link, is there). */
export function createExclusive(
  file: string,
  mode: number,
  what: string,
  ops: FileOps = nodeFileOps,
): number {
  try {
    return ops.openSync(file, EXCLUSIVE_FLAGS, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new FileSafetyError(
        `${what} ${file} already exists (left over, or planted by someone else); it is never overwritten in place: remove it after checking what it is`,
        { cause: err },
      );
    }
    throw openError(err, file, what);
  }
}

/**
 * Creates a temporary file with a fixed name (`ack.tmp`) exclusively. Whatever is already at that name (left by
 * a crash, or a link someone planted) is removed first — unlinking a link removes the link, never its target —
 * and never opened. Only for a directory checked with checkPrivateDirectory: there nobody else can put it back.
 */
export function createTemporary(
  file: string,
  mode: number,
  what: string,
  ops: FileOps = nodeFileOps,
): number {
  try {
    return ops.openSync(file, EXCLUSIVE_FLAGS, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw openError(err, file, what);
  }
  try {
    if (ops.lstatSync(file).isDirectory()) {
      throw new FileSafetyError(`${what} ${file} is a directory; remove it`);
    }
    ops.unlinkSync(file);
  } catch (err) {
    if (err instanceof FileSafetyError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw openError(err, file, what);
  }
  return createExclusive(file, mode, what, ops);
}

/**
 * Opens an existing file for reading: no symlink, non-blocking open (a FIFO cannot hang us), and only a regular
 * file is accepted. The caller closes the descriptor.
 */
export function openRegularForRead(
  file: string,
  what: string,
  ops: FileOps = nodeFileOps,
): { fd: number; stat: Stats } {
  let fd: number;
  try {
    fd = ops.openSync(file, READ_FLAGS);
  } catch (err) {
    throw openError(err, file, what);
  }
  return { fd, stat: requireRegular(fd, file, what, ops) };
}

/** As openRegularForRead, for reading and repairing in place (truncating a torn tail, rewriting a header). */
export function openRegularForUpdate(
  file: string,
  what: string,
  ops: FileOps = nodeFileOps,
): { fd: number; stat: Stats } {
  let fd: number;
  try {
    fd = ops.openSync(file, UPDATE_FLAGS);
  } catch (err) {
    throw openError(err, file, what);
  }
  return { fd, stat: requireRegular(fd, file, what, ops) };
}

/**
 * Reads a whole regular file of at most `maxBytes` (checked before it is read) without following a symlink.
 */
export function readRegularFile(
  file: string,
  what: string,
  maxBytes: number,
  ops: FileOps = nodeFileOps,
): Buffer {
  const { fd, stat } = openRegularForRead(file, what, ops);
  try {
    if (stat.size > maxBytes) {
      throw new FileSafetyError(
        `${what} ${file} is ${stat.size} bytes, more than the ${maxBytes} bytes a ${what} can be; is it the right file?`,
      );
    }
    const buf = Buffer.allocUnsafe(stat.size);
    let off = 0;
    while (off < buf.length) {
      const n = ops.readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    ops.closeSync(fd);
  }
}

export interface AtomicWriteOptions {
  mode: number;
  /** fsync the file before the rename and the directory after it. Default true. */
  fsync?: boolean;
  /** What the file is, for messages. */
  what: string;
  /**
   * A fixed name for the temporary file (see createTemporary). Default: a fresh random name beside the file
   * (`<file>.<pid>.<random>.tmp`).
   */
  temp?: string;
  ops?: FileOps;
}

/**
 * Replaces `file` with `data` atomically: a temporary file beside it is created exclusively (never through a
 * link, never reusing a planted file), written, optionally synced, and renamed over the target. The directory
 * must already have been checked by the caller (checkPrivateDirectory) when others could write there.
 */
export function writeFileAtomic(file: string, data: Buffer | string, options: AtomicWriteOptions): void {
  const ops = options.ops ?? nodeFileOps;
  const what = `temporary file for ${options.what}`;
  const tmp = options.temp ?? `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = options.temp
    ? createTemporary(tmp, options.mode, what, ops)
    : createExclusive(tmp, options.mode, what, ops);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    writeFully(fd, buf, 0, ops);
    if (options.fsync !== false) ops.fsyncSync(fd);
  } catch (err) {
    ops.closeSync(fd);
    unlinkQuietly(tmp, ops);
    throw new FileSafetyError(`cannot write ${options.what} ${file}: ${errnoText(err)}`, { cause: err });
  }
  ops.closeSync(fd);
  try {
    ops.renameSync(tmp, file);
  } catch (err) {
    unlinkQuietly(tmp, ops);
    throw new FileSafetyError(`cannot replace ${options.what} ${file}: ${errnoText(err)}`, { cause: err });
  }
  if (options.fsync !== false) syncDirectory(path.dirname(file), ops);
}

/** Writes all of `buf` at `position` (pwrite, repeated after a short write). */
export function writeFully(fd: number, buf: Buffer, position: number, ops: FileOps = nodeFileOps): void {
  let off = 0;
  while (off < buf.length) {
    const n = ops.writeSync(fd, buf, off, buf.length - off, position + off);
    if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    off += n;
  }
}

/**
 * fsync a directory (after a create, rename or unlink in it). With `strict`, a failure is thrown (the caller
 * reports it); otherwise it is ignored (some file systems cannot sync a directory; the rename is still atomic).
 */
export function syncDirectory(dir: string, ops: FileOps = nodeFileOps, strict = false): void {
  let fd: number;
  try {
    fd = ops.openSync(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (err) {
    if (strict) throw err;
    return;
  }
  try {
    ops.fsyncSync(fd);
  } catch (err) {
    if (strict) throw err;
  } finally {
    ops.closeSync(fd);
  }
}

function unlinkQuietly(file: string, ops: FileOps): void {
  try {
    ops.unlinkSync(file);
  } catch {
    // already gone
  }
}

function requireRegular(fd: number, file: string, what: string, ops: FileOps): Stats {
  let st: Stats;
  try {
    st = ops.fstatSync(fd);
  } catch (err) {
    ops.closeSync(fd);
    throw new FileSafetyError(`cannot stat ${what} ${file}: ${errnoText(err)}`, { cause: err });
  }
  if (!st.isFile()) {
    ops.closeSync(fd);
    throw new FileSafetyError(`${what} ${file} is ${describeFileKind(st)}; only a regular file is accepted`);
  }
  return st;
}

function openError(err: unknown, file: string, what: string): FileSafetyError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ELOOP') {
    return new FileSafetyError(
      `${what} ${file} is a symbolic link; it is never followed (another user could point it at any file): remove the link`,
      { cause: err },
    );
  }
  if (code === 'ENXIO') {
    // O_NONBLOCK | O_WRONLY on a FIFO without a reader.
    return new FileSafetyError(`${what} ${file} is a FIFO; only a regular file is accepted`, { cause: err });
  }
  return new FileSafetyError(`cannot open ${what} ${file}: ${errnoText(err)}`, { cause: err });
}

// ---------------------------------------------------------------------------------------------------------
// Log files (the collector's log_file), opened as auditd opens its log (auditd-event.c `open_audit_log`):
// O_WRONLY | O_APPEND | O_NOFOLLOW, and when missing created with O_CREAT | O_EXCL, mode 0600.

export interface OpenedLog {
  fh: FileHandle;
  stat: Stats;
  /** True when this call created the file. */
  created: boolean;
}

/**
 * Opens `file` for appending as auditd opens its log: the directory must pass checkPrivateDirectory (else a
 * FileSafetyError with the fix); a symlink is never followed (ELOOP → the error says to remove the link); a
 * missing file is created exclusively with `mode` (a file or link planted in between makes the create fail
 * and the open is retried once, never followed); anything but a regular file is refused. The open is
 * non-blocking, so a FIFO planted at the path cannot hang the caller. Asynchronous (the thread pool does the
 * opens), so a slow file system does not stall the event loop.
 */
export async function openLogForAppend(file: string, mode: number, what: string): Promise<OpenedLog> {
  // A directory given as the log is the likelier mistake: say that before judging its parent.
  if (lstatOrNull(file)?.isDirectory()) {
    throw new FileSafetyError(
      `${what} ${file} is a directory; give the path of a file (e.g. ${path.join(file, 'audit.log')})`,
    );
  }
  checkParentDirectory(file, what);
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await openAsync(file, APPEND_FLAGS_EXISTING | O_NONBLOCK);
      return { fh, stat: await requireRegularHandle(fh, file, what), created: false };
    } catch (err) {
      if (err instanceof FileSafetyError) throw err;
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw openError(err, file, what);
    }
    try {
      const fh = await openAsync(file, EXCLUSIVE_APPEND_FLAGS, mode);
      return { fh, stat: await requireRegularHandle(fh, file, what), created: true };
    } catch (err) {
      if (err instanceof FileSafetyError) throw err;
      // Something appeared between the two opens: look again (once), never through a link.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && attempt === 0) continue;
      throw openError(err, file, what);
    }
  }
}

function lstatOrNull(file: string): Stats | null {
  try {
    return lstatSync(file);
  } catch {
    return null;
  }
}

/** Append to an existing file only (no O_CREAT), without following a symlink. */
const APPEND_FLAGS_EXISTING = O_WRONLY | O_APPEND | O_NOFOLLOW | (O_CLOEXEC ?? 0);
/** Create a new file for appending; fails if anything is there. */
const EXCLUSIVE_APPEND_FLAGS = EXCLUSIVE_FLAGS | O_APPEND;

async function requireRegularHandle(fh: FileHandle, file: string, what: string): Promise<Stats> {
  let st: Stats;
  try {
    st = await fh.stat();
  } catch (err) {
    await fh.close();
    throw new FileSafetyError(`cannot stat ${what} ${file}: ${errnoText(err)}`, { cause: err });
  }
  if (!st.isFile()) {
    await fh.close();
    throw new FileSafetyError(`${what} ${file} is ${describeFileKind(st)}; only a regular file is accepted`);
  }
  return st;
}

/**
 * Why an existing file's permissions are looser than an audit log's should be (auditd: 0600, or 0640 with
 * log_group), or null when they are fine: writable by group or others, readable by others, or owned by a user
 * other than root and the running user. The caller logs it as a warning; the text ends with the fix.
 */
export function loosePermissions(file: string, st: Stats, what: string): string | null {
  const problems: string[] = [];
  const fixes: string[] = [];
  if (st.mode & 0o022) problems.push(`writable by ${st.mode & 0o002 ? 'others' : 'its group'}`);
  if (st.mode & 0o004) problems.push('readable by others');
  if (problems.length > 0) fixes.push(`chmod ${formatMode(st.mode & 0o640)} ${file}`);
  const me = euid();
  if (st.uid !== 0 && st.uid !== me) {
    problems.push(`owned by uid ${st.uid}, not by root or the running user (uid ${me})`);
    fixes.push(`chown ${me === 0 ? 'root' : me} ${file}`);
  }
  if (problems.length === 0) return null;
  return `${what} ${file} is ${problems.join(', ')} (mode ${formatMode(st.mode)}): others could read or change the audit trail; fix with: ${fixes.join(' && ')}`;
}

// ---------------------------------------------------------------------------------------------------------
// Files that hold a secret or a policy (TLS keys, the allowed-clients list, certificates), read as audit 4.2's
// autls reads its own: O_NOFOLLOW | O_NONBLOCK, a regular file, the owner and mode checked on the descriptor
// (no race between a check and the open).

/**
 * - `secret`: upstream's rule for key files (tls_psk_file, key= files, krb5 keys): owned by root and mode exactly
 *   0400, since anyone who can read it can impersonate this host or its clients;
 * - `protected`: upstream's rule for tls_allowed_clients: owned by root, not writable by group or others.
 *
 * When auditrelay does not run as root (a test, a development run) the running user counts as root for the
 * owner check: such a process cannot own a file as root.
 */
export type OwnedFileRule = 'secret' | 'protected';

/** Why `st` breaks `rule`, with the fix, or null. */
export function ownedFileProblem(file: string, st: Stats, rule: OwnedFileRule, what: string): string | null {
  const me = euid();
  const owners = me === 0 ? 'root' : `root or the running user (uid ${me})`;
  const owner = me === 0 ? 'root:root' : String(me);
  if (st.uid !== 0 && st.uid !== me) {
    const need = rule === 'secret' ? `owned by ${owners} with mode 0400` : `owned by ${owners}`;
    return `${what} ${file} is owned by uid ${st.uid}; it must be ${need}${rule === 'secret' ? ' (anyone who can read or replace it can impersonate this host or its clients)' : ' (whoever owns it decides which clients are trusted)'}: fix with chown ${owner} ${file}`;
  }
  if (rule === 'secret' && (st.mode & 0o7777) !== 0o400) {
    return `${what} ${file} has mode ${formatMode(st.mode)}; a key file must be mode 0400 (readable by its owner only), as auditd requires: fix with chmod 0400 ${file}`;
  }
  if (rule === 'protected' && (st.mode & 0o022) !== 0) {
    return `${what} ${file} is writable by ${st.mode & 0o002 ? 'others' : 'its group'} (mode ${formatMode(st.mode)}); whoever can write it decides which clients are trusted: fix with chmod go-w ${file}`;
  }
  return null;
}

/**
 * Reads a whole file of at most `maxBytes` that must obey `rule` (see OwnedFileRule); the checks are made on the
 * open descriptor. Throws FileSafetyError whose message says what is wrong and how to fix it.
 */
export function readOwnedFile(
  file: string,
  what: string,
  rule: OwnedFileRule,
  maxBytes: number,
  ops: FileOps = nodeFileOps,
): Buffer {
  const { fd, stat } = openRegularForRead(file, what, ops);
  try {
    const problem = ownedFileProblem(file, stat, rule, what);
    if (problem !== null) throw new FileSafetyError(problem);
    if (stat.size > maxBytes) {
      throw new FileSafetyError(
        `${what} ${file} is ${stat.size} bytes, more than the ${maxBytes} bytes a ${what} can be; is it the right file?`,
      );
    }
    const buf = Buffer.alloc(stat.size);
    let off = 0;
    while (off < buf.length) {
      const n = ops.readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    ops.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Rotated logs (the collector's log_file, as auditd rotates it: LOG → LOG.1 → LOG.2 …, higher numbers older).
// The directory was checked with checkParentDirectory when the log was opened and is checked again before each
// rotation: nobody else can plant or replace a file in it. rename(2) never follows a symbolic link (it renames the
// link itself) and nothing is opened here, so no rotation writes through a link; anything at a log name that is not
// a regular file is refused rather than moved.

function lstatIfThere(file: string, ops: FileOps): Stats | null {
  try {
    return ops.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function renameLog(from: string, to: string, what: string, ops: FileOps): boolean {
  const st = lstatIfThere(from, ops);
  if (st === null) return false;
  if (!st.isFile()) {
    throw new FileSafetyError(
      `${what}: ${from} is ${describeFileKind(st)}, not a log file: it is not moved; remove it and rotate again`,
    );
  }
  ops.renameSync(from, to);
  return true;
}

/**
 * auditd's `rotate_logs`: LOG.(n-2) → LOG.(n-1), …, LOG.1 → LOG.2, then LOG → LOG.1, so that `numLogs` files remain
 * (LOG.(n-1), the oldest, is replaced). Returns the renames done, oldest first. Throws on the first failure (the
 * files already moved stay moved, as with auditd). `numLogs` < 2: nothing (auditd: rotation disabled).
 */
export function rotateLogFiles(
  file: string,
  numLogs: number,
  ops: FileOps = nodeFileOps,
): [string, string][] {
  if (numLogs < 2) return [];
  checkParentDirectory(file, 'log_file');
  const done: [string, string][] = [];
  for (let i = numLogs - 1; i > 1; i--) {
    if (renameLog(`${file}.${i - 1}`, `${file}.${i}`, 'rotation', ops))
      done.push([`${file}.${i - 1}`, `${file}.${i}`]);
  }
  if (renameLog(file, `${file}.1`, 'rotation', ops)) done.push([file, `${file}.1`]);
  syncDirectory(path.dirname(file), ops);
  return done;
}

/**
 * auditd's `shift_logs` (max_log_file_action = keep_logs): every LOG.i becomes LOG.(i+1) and LOG becomes LOG.1;
 * nothing is replaced or removed. Returns the renames done.
 */
export function shiftLogFiles(file: string, ops: FileOps = nodeFileOps): [string, string][] {
  checkParentDirectory(file, 'log_file');
  let last = 0;
  while (lstatIfThere(`${file}.${last + 1}`, ops) !== null) last++;
  const done: [string, string][] = [];
  for (let i = last; i >= 1; i--) {
    if (renameLog(`${file}.${i}`, `${file}.${i + 1}`, 'rotation', ops))
      done.push([`${file}.${i}`, `${file}.${i + 1}`]);
  }
  if (renameLog(file, `${file}.1`, 'rotation', ops)) done.push([file, `${file}.1`]);
  syncDirectory(path.dirname(file), ops);
  return done;
}

/**
 * auditd's `check_excess_logs`: with rotation to `numLogs` files, LOG.numLogs, LOG.(numLogs+1), … are left over
 * (num_logs was lowered): they are removed, up to the first missing number. Returns the files removed.
 */
export function removeExcessLogs(file: string, numLogs: number, ops: FileOps = nodeFileOps): string[] {
  if (numLogs < 2) return [];
  checkParentDirectory(file, 'log_file');
  const removed: string[] = [];
  for (let i = numLogs; ; i++) {
    const name = `${file}.${i}`;
    const st = lstatIfThere(name, ops);
    if (st === null || !st.isFile()) break;
    ops.unlinkSync(name);
    removed.push(name);
  }
  if (removed.length > 0) syncDirectory(path.dirname(file), ops);
  return removed;
}

/**
 * A script run by a failure action (`exec /path`), checked as auditd's `check_exe_name` does: an absolute path to a
 * regular file (here also: not a symbolic link) owned by root (or the running user), mode 0750, 0755, 0555 or 0550;
 * and, beyond auditd, in a directory nobody else can write (else anyone could replace what root runs).
 */
export function checkActionScript(file: string, what: string): Stats {
  if (!path.isAbsolute(file)) throw new FileSafetyError(`${what} script ${file} is not an absolute path`);
  let st: Stats;
  try {
    st = lstatSync(file);
  } catch (err) {
    throw new FileSafetyError(`${what} script ${file} cannot be used: ${errnoText(err)}`, { cause: err });
  }
  if (!st.isFile()) {
    throw new FileSafetyError(
      `${what} script ${file} is ${describeFileKind(st)}; give the path of the script itself`,
    );
  }
  const me = euid();
  if (st.uid !== 0 && st.uid !== me) {
    throw new FileSafetyError(
      `${what} script ${file} is owned by uid ${st.uid}, not by root; fix with: chown root ${file}`,
    );
  }
  const mode = st.mode & 0o777;
  if (![0o750, 0o755, 0o555, 0o550].includes(mode)) {
    throw new FileSafetyError(
      `${what} script ${file} has mode ${formatMode(mode)}; it must be 0750, 0755, 0555 or 0550 (as auditd requires); fix with: chmod 0750 ${file}`,
    );
  }
  checkParentDirectory(file, `${what} script`);
  return st;
}
