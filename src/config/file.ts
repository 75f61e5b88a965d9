/**
 * Reading a config file: missing-file policy, read errors with errno, and upstream's ownership rule. The file is
 * opened as auditd opens its own (`O_NOFOLLOW`), without blocking (`O_NONBLOCK`: a FIFO put in its place cannot
 * hang `check-config`, the start or a SIGHUP reload), and read only once it is known to be a regular file of a
 * sane size.
 */
import { closeSync, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { getSystemErrorMap } from 'node:util';
import { ConfigError } from '../errors.js';
import { describeFileKind, READ_FLAGS } from '../fs/safe-files.js';

/** Far above any real config file (upstream's lines are at most 127 characters); a larger one is refused unread. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

export interface ReadConfigOptions {
  /** A missing file yields null (caller uses defaults) instead of an error. Default false. */
  allowMissing?: boolean;
  /**
   * Enforce upstream's rule: the file must be owned by root, not world-writable, and a regular file.
   * Default: true when running as root, false otherwise.
   */
  checkOwnership?: boolean;
}

/** True when the process runs as root (the default for the ownership checks). */
export function runningAsRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Describes a Node system error as `ENOENT (no such file or directory)`. */
export function describeErrno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.errno === 'number') {
    const entry = getSystemErrorMap().get(e.errno);
    if (entry) return `${entry[0]} (${entry[1]})`;
  }
  if (e && typeof e.code === 'string') return e.code;
  return String(err);
}

/** Reads the config file's text, or returns null when it is missing and `allowMissing` is set. */
export function readConfigFile(path: string, opts: ReadConfigOptions = {}): string | null {
  let fd: number;
  try {
    fd = openSync(path, READ_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      if (opts.allowMissing) return null;
      throw new ConfigError(
        'config file does not exist; create it or pass --config',
        { file: path },
        { cause: err },
      );
    }
    if (code === 'ELOOP') {
      throw new ConfigError(
        'config file is a symbolic link; it is never followed (as auditd): name the file itself',
        { file: path },
        { cause: err },
      );
    }
    throw new ConfigError(`cannot open config file: ${describeErrno(err)}`, { file: path }, { cause: err });
  }
  try {
    let st: Stats;
    try {
      st = fstatSync(fd);
    } catch (err) {
      throw new ConfigError(`cannot stat config file: ${describeErrno(err)}`, { file: path }, { cause: err });
    }
    // A FIFO, a socket or a device is never read. (A directory fails with EISDIR, or the ownership rule.)
    if (!st.isFile() && !st.isDirectory()) {
      throw new ConfigError(`config file is ${describeFileKind(st)}; only a regular file is accepted`, {
        file: path,
      });
    }
    if (opts.checkOwnership ?? runningAsRoot()) checkOwnership(path, st);
    if (st.size > MAX_CONFIG_BYTES) {
      throw new ConfigError(
        `config file is ${st.size} bytes, more than ${MAX_CONFIG_BYTES}: is it the right file?`,
        {
          file: path,
        },
      );
    }
    try {
      // One byte more than the size: a directory fails here with EISDIR whatever size it reports.
      const buf = Buffer.allocUnsafe(st.size + 1);
      let got = 0;
      while (got < buf.length) {
        const n = readSync(fd, buf, got, buf.length - got, got);
        if (n === 0) break;
        got += n;
      }
      return buf.subarray(0, got).toString('utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file: ${describeErrno(err)}`, { file: path }, { cause: err });
    }
  } finally {
    closeSync(fd);
  }
}

/** Upstream's rule for the config file itself (remote-config.c / auditd-config.c `load_config`). */
export function checkOwnership(path: string, st: Stats): void {
  if (!st.isFile()) {
    throw new ConfigError('config file is not a regular file', { file: path, allowed: 'a regular file' });
  }
  if (st.uid !== 0) {
    throw new ConfigError(`config file is owned by uid ${st.uid}, not by root`, {
      file: path,
      allowed: 'owner root (uid 0); fix with chown root',
    });
  }
  if ((st.mode & 0o002) !== 0) {
    throw new ConfigError(`config file is world-writable (mode ${formatMode(st.mode)})`, {
      file: path,
      allowed: 'no write permission for others; fix with chmod o-w',
    });
  }
}

export function formatMode(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}
