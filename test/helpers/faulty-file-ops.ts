/**
 * Fault injection for code that does its file I/O through `FileOps` (src/fs/safe-files.ts): any operation on a
 * matching path (descriptors are followed back to the path they were opened with) fails with the given errno,
 * once, n times or until healed. No root, no broken disk: EIO on a read, ENOSPC on a write, a failed fsync.
 */
import { type FileOps, nodeFileOps } from '../../src/fs/safe-files.js';

export type FileOpName = Exclude<keyof FileOps, never>;

export interface FaultRule {
  op: FileOpName;
  /** Which files: matched against the path (for descriptor operations, the path the descriptor was opened with). */
  path?: RegExp;
  code: string;
  /** How many calls fail; default: every call until heal(). */
  times?: number;
}

export class FaultyFileOps {
  readonly ops: FileOps;
  readonly #rules: FaultRule[] = [];
  readonly #paths = new Map<number, string>();
  /** Every injected failure, as "op path code". */
  readonly injected: string[] = [];

  constructor(base: FileOps = nodeFileOps) {
    const fail = (op: FileOpName, path: string | undefined): void => {
      const i = this.#rules.findIndex(
        (r) => r.op === op && (!r.path || (path !== undefined && r.path.test(path))),
      );
      if (i < 0) return;
      const rule = this.#rules[i]!;
      if (rule.times !== undefined && --rule.times <= 0) this.#rules.splice(i, 1);
      this.injected.push(`${op} ${path ?? '?'} ${rule.code}`);
      throw Object.assign(new Error(`${rule.code}: injected fault, ${op} ${path ?? ''}`), {
        code: rule.code,
        syscall: op,
      });
    };
    const ofFd = (fd: number) => this.#paths.get(fd);
    this.ops = {
      openSync: (p, flags, mode) => {
        fail('openSync', p);
        const fd = base.openSync(p, flags, mode);
        this.#paths.set(fd, p);
        return fd;
      },
      closeSync: (fd) => {
        this.#paths.delete(fd);
        base.closeSync(fd);
      },
      readSync: (fd, buf, off, len, pos) => {
        fail('readSync', ofFd(fd));
        return base.readSync(fd, buf, off, len, pos);
      },
      writeSync: (fd, buf, off, len, pos) => {
        fail('writeSync', ofFd(fd));
        return base.writeSync(fd, buf, off, len, pos);
      },
      fstatSync: (fd) => {
        fail('fstatSync', ofFd(fd));
        return base.fstatSync(fd);
      },
      lstatSync: (p) => {
        fail('lstatSync', p);
        return base.lstatSync(p);
      },
      fsyncSync: (fd) => {
        fail('fsyncSync', ofFd(fd));
        base.fsyncSync(fd);
      },
      fdatasyncSync: (fd) => {
        fail('fdatasyncSync', ofFd(fd));
        base.fdatasyncSync(fd);
      },
      fdatasync: (fd, cb) => {
        try {
          fail('fdatasync', ofFd(fd));
        } catch (err) {
          setImmediate(() => cb(err as NodeJS.ErrnoException));
          return;
        }
        base.fdatasync(fd, cb);
      },
      ftruncateSync: (fd, len) => {
        fail('ftruncateSync', ofFd(fd));
        base.ftruncateSync(fd, len);
      },
      renameSync: (from, to) => {
        fail('renameSync', from);
        base.renameSync(from, to);
      },
      unlinkSync: (p) => {
        fail('unlinkSync', p);
        base.unlinkSync(p);
      },
      readdirSync: (p) => {
        fail('readdirSync', p);
        return base.readdirSync(p);
      },
    };
  }

  /** Makes `op` fail on matching files with `code` (every time, or `times` times). */
  fail(op: FileOpName, path: RegExp | undefined, code: string, times?: number): this {
    this.#rules.push({ op, ...(path ? { path } : {}), code, ...(times !== undefined ? { times } : {}) });
    return this;
  }

  /** Every rule removed: the file system works again. */
  heal(): void {
    this.#rules.length = 0;
  }
}
