import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileSafetyError } from '../../src/errors.js';
import {
  checkPrivateDirectory,
  createExclusive,
  createTemporary,
  errnoOf,
  openAppendNoFollow,
  openRegularForUpdate,
  readRegularFile,
  writeFileAtomic,
} from '../../src/fs/safe-files.js';
import { requireOrSkip } from '../helpers/prereq.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'safe-files-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('safe files', () => {
  it('never appends through a symlink: the target is left untouched', () => {
    const victim = path.join(dir, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, path.join(dir, 'audit.log'));
    expect(() => openAppendNoFollow(path.join(dir, 'audit.log'), 0o600, 'log file')).toThrow(
      /is a symbolic link; it is never followed/,
    );
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
  });

  it('appends to a regular file and creates a missing one with the given mode', () => {
    const { fd, stat } = openAppendNoFollow(path.join(dir, 'new.log'), 0o600, 'log file');
    closeSync(fd);
    expect(stat.isFile()).toBe(true);
    expect(stat.mode & 0o777).toBe(0o600);
  });

  it('refuses a FIFO for append and for read without blocking', () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    expect(() => openAppendNoFollow(fifo, 0o600, 'log file')).toThrow(FileSafetyError);
    expect(() => readRegularFile(fifo, 'config file', 1 << 20)).toThrow(/is a FIFO; only a regular file/);
  });

  it('checks a length before reading', () => {
    const f = path.join(dir, 'big');
    writeFileSync(f, Buffer.alloc(100));
    expect(() => readRegularFile(f, 'queue file', 10)).toThrow(/100 bytes, more than the 10 bytes/);
    expect(readRegularFile(f, 'queue file', 100).length).toBe(100);
  });

  it('exclusive create fails on a planted file or link instead of truncating it', () => {
    const victim = path.join(dir, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, path.join(dir, 'ack.tmp'));
    expect(() => createExclusive(path.join(dir, 'ack.tmp'), 0o600, 'ack cursor')).toThrow(
      /already exists .* never overwritten in place/,
    );
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
  });

  it('atomic write replaces the file and leaves no temporary file', () => {
    const f = path.join(dir, 'state');
    writeFileAtomic(f, 'one\n', { mode: 0o640, what: 'state file' });
    writeFileAtomic(f, 'two\n', { mode: 0o640, what: 'state file' });
    expect(readFileSync(f, 'utf8')).toBe('two\n');
    expect(readdirSync(dir)).toEqual(['state']);
  });

  it('atomic write onto a symlink replaces the link, never the file it points at', () => {
    const victim = path.join(dir, 'victim');
    writeFileSync(victim, 'precious\n');
    symlinkSync(victim, path.join(dir, 'state'));
    writeFileAtomic(path.join(dir, 'state'), 'mine\n', { mode: 0o640, what: 'state file' });
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readFileSync(path.join(dir, 'state'), 'utf8')).toBe('mine\n');
  });

  it('directories: group/world-writable, symlinked or not a directory are refused with the fix', () => {
    const open = path.join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o1777);
    expect(() => checkPrivateDirectory(open, { what: 'queue_dir' })).toThrow(
      /writable by others \(mode 01777\).*chmod go-w/,
    );
    chmodSync(open, 0o770);
    expect(() => checkPrivateDirectory(open, { what: 'queue_dir' })).toThrow(/writable by its group/);
    const link = path.join(dir, 'link');
    symlinkSync(open, link);
    expect(() => checkPrivateDirectory(link, { what: 'queue_dir' })).toThrow(/is a symbolic link/);
    writeFileSync(path.join(dir, 'file'), '');
    expect(() => checkPrivateDirectory(path.join(dir, 'file'), { what: 'queue_dir' })).toThrow(
      /not a directory/,
    );
    const made = path.join(dir, 'a/b/c');
    expect(checkPrivateDirectory(made, { what: 'queue_dir', create: true, mode: 0o700 }).isDirectory()).toBe(
      true,
    );
  });

  it('a temporary file with a fixed name: a planted link or file there is removed, never opened or followed', () => {
    const victim = path.join(dir, 'victim');
    writeFileSync(victim, 'precious\n');
    const tmp = path.join(dir, 'ack.tmp');
    symlinkSync(victim, tmp);
    closeSync(createTemporary(tmp, 0o600, 'ack cursor'));
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readFileSync(tmp, 'utf8')).toBe('');
    writeFileAtomic(path.join(dir, 'tail.state'), 'state\n', {
      mode: 0o600,
      what: 'tail state',
      temp: path.join(dir, '.tail.state.tmp'),
    });
    expect(readdirSync(dir).sort()).toEqual(['ack.tmp', 'tail.state', 'victim']);
  });

  it('files repaired in place are regular files only, never links or FIFOs', () => {
    const fifo = path.join(dir, 'seg');
    execFileSync('mkfifo', [fifo]);
    expect(() => openRegularForUpdate(fifo, 'segment')).toThrow(/segment .* is a FIFO; only a regular file/);
    symlinkSync(path.join(dir, 'x'), path.join(dir, 'link'));
    expect(() => openRegularForUpdate(path.join(dir, 'link'), 'segment')).toThrow(/is a symbolic link/);
  });

  it("a directory under /proc is refused at once (Node's recursive mkdir would spin there forever)", () => {
    expect(() =>
      checkPrivateDirectory(`/proc/auditrelay-${process.pid}/q`, { what: 'queue_dir', create: true }),
    ).toThrow(/queue_dir \/proc\/auditrelay-\d+\/q is under \/proc, on a kernel file system \(proc\)/);
    expect(() => checkPrivateDirectory('/proc/self/fd', { what: 'queue_dir' })).toThrow(
      /kernel file system \(proc\)/,
    );
  });

  it('errnoOf finds the system error inside a FileSafetyError', () => {
    expect(errnoOf(new FileSafetyError('x', { cause: Object.assign(new Error('e'), { code: 'EIO' }) }))).toBe(
      'EIO',
    );
    expect(errnoOf(new FileSafetyError('not a regular file'))).toBe('not a regular file');
  });

  const root = requireOrSkip({ suite: 'safe files: directory owned by another user', root: true });
  it.skipIf(!root)('refuses a directory owned by another user', () => {
    const other = path.join(dir, 'other');
    mkdirSync(other, { mode: 0o755 });
    chownSync(other, 65534, 65534);
    expect(() => checkPrivateDirectory(other, { what: 'log directory' })).toThrow(
      /owned by uid 65534, not by root or by the running user/,
    );
  });
});
