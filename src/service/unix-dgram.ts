/**
 * AF_UNIX datagrams, which Node's core lacks: the `auditrelay_unix` binding (native/unix.cc, built by
 * scripts/build-native.mjs with the GSS-API binding but needing only a C++ compiler). Used by sd_notify
 * (src/service/notify.ts) and by the syslog target of the logger (src/log.ts).
 *
 * Why our own binding rather than an npm package: the only maintained candidates (`unix-dgram`, built on nan;
 * `node-unix-socket`, prebuilt Rust binaries) add a second native build or downloaded binaries for three system
 * calls, while the project already builds a Node-API addon with node-gyp; native/unix.cc is about 100 lines over
 * libc only.
 *
 * Loaded lazily and never throwing at load: without the binding `loadUnixDgram()` returns the reason, and the
 * callers fall back (systemd-notify for sd_notify, stderr for the logger) and say so.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { getSystemErrorName } from 'node:util';
import { PACKAGE_ROOT } from '../paths.js';

/** File name of the binding under native/build/Release. */
export const UNIX_ADDON_FILE = 'auditrelay_unix.node';
/** Environment variable that overrides the binding's location (tests, distribution packages). */
export const UNIX_ADDON_PATH_ENV = 'AUDITRELAY_UNIX_ADDON';

interface NativeUnix {
  sendDatagram(path: string, data: Buffer): void;
  connectDatagram(path: string): number;
  sendOn(fd: number, data: Buffer): void;
}

/** The binding's functions; errors are Node-style (`code` such as 'ENOENT', `errno`, `syscall`). */
export interface UnixDgram {
  /** One datagram to `socketPath` ('@name' = abstract) from a fresh socket; non-blocking. */
  sendTo(socketPath: string, data: Buffer): void;
  /** A connected, non-blocking, close-on-exec datagram socket; close it with fs.closeSync(fd). */
  connect(socketPath: string): number;
  /** One datagram on a connected socket; non-blocking (EAGAIN when the receiver's queue is full). */
  send(fd: number, data: Buffer): void;
}

export function unixAddonPath(): string {
  return (
    process.env[UNIX_ADDON_PATH_ENV] || path.join(PACKAGE_ROOT, 'native', 'build', 'Release', UNIX_ADDON_FILE)
  );
}

let cached: UnixDgram | string | undefined;

/** The binding, or a sentence saying why it is unavailable (and how to build it). Loaded once. */
export function loadUnixDgram(): UnixDgram | string {
  if (cached !== undefined) return cached;
  const file = unixAddonPath();
  const hint =
    'install build-essential and python3, then run `node scripts/build-native.mjs` in the package directory';
  if (!existsSync(file)) {
    cached = `the unix socket binding is not built (${file} is missing); ${hint}`;
    return cached;
  }
  let native: NativeUnix;
  try {
    native = createRequire(import.meta.url)(file) as NativeUnix;
  } catch (err) {
    cached = `the unix socket binding ${file} does not load (${(err as Error).message}); ${hint}`;
    return cached;
  }
  const call = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw nodeError(err);
    }
  };
  cached = {
    sendTo: (p, data) => call(() => native.sendDatagram(p, data)),
    connect: (p) => call(() => native.connectDatagram(p)),
    send: (fd, data) => call(() => native.sendOn(fd, data)),
  };
  return cached;
}

/** Adds `code` ('ENOENT', 'EAGAIN', ...) from the binding's positive `errno`, as Node's own errors have. */
function nodeError(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException;
  if (err instanceof Error && typeof e.errno === 'number' && e.errno > 0) {
    try {
      e.code = getSystemErrorName(-e.errno);
    } catch {
      e.code = `E${e.errno}`;
    }
    e.errno = -e.errno;
  }
  return err;
}
