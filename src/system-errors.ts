/**
 * Turns the Node system errors a command can meet at start (a port in use, a missing directory, a denied
 * permission, a host name that does not resolve) into one-line UnavailableErrors that say what failed, where,
 * and what to do. Anything else is left alone: an error nobody foresaw is a bug and keeps its stack trace.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describeErrno } from './config/file.js';
import { UnavailableError } from './errors.js';

interface SystemError extends NodeJS.ErrnoException {
  address?: string;
  port?: number;
  hostname?: string;
  dest?: string;
}

function isSystemError(err: unknown): err is SystemError {
  const e = err as SystemError | null;
  return (
    e instanceof Error &&
    typeof e.code === 'string' &&
    (typeof e.syscall === 'string' || typeof e.errno === 'number')
  );
}

function hostPort(address: string | undefined, port: number | undefined): string {
  const host = address ?? '?';
  const h = host.includes(':') ? `[${host}]` : host;
  return port === undefined ? h : `${h}:${port}`;
}

/** What to do about a socket that cannot listen. */
function listenAdvice(e: SystemError): string | undefined {
  const where = hostPort(e.address, e.port);
  switch (e.code) {
    case 'EADDRINUSE':
      return (
        `cannot listen on ${where}: the address is already in use by another process ` +
        `(see \`ss -ltnp 'sport = :${e.port ?? '?'}'\`); stop that process or choose another port`
      );
    case 'EADDRNOTAVAIL':
      return (
        `cannot listen on ${where}: no interface of this host has the address ${e.address ?? '?'}; ` +
        'use one of its addresses (`ip -brief address`), 127.0.0.1, or 0.0.0.0 for all'
      );
    case 'EACCES':
    case 'EPERM':
      return (
        `cannot listen on ${where}: permission denied; ports below 1024 need root ` +
        '(or CAP_NET_BIND_SERVICE), else choose a port of 1024 or above'
      );
    default:
      return undefined;
  }
}

/** What to do about a path that cannot be opened, created or read. */
function pathAdvice(e: SystemError): string | undefined {
  const p = e.path;
  if (p === undefined) return undefined;
  const dir = path.dirname(p);
  const verb = e.syscall === 'mkdir' ? 'create the directory' : e.syscall === 'bind' ? 'bind to' : 'open';
  switch (e.code) {
    case 'ENOENT':
      if (!existsSync(dir))
        return `cannot ${verb} ${p}: the directory ${dir} does not exist; create it (e.g. \`mkdir -p -m 0750 ${dir}\`) or choose another path`;
      return `cannot ${verb} ${p}: it does not exist; check the path`;
    case 'ENOTDIR':
      return `cannot ${verb} ${p}: a component of the path is not a directory; check the path`;
    case 'EISDIR':
      return `cannot ${verb} ${p}: it is a directory; give the path of a file (e.g. ${path.join(p, 'audit.log')})`;
    case 'EACCES':
    case 'EPERM':
      return `cannot ${verb} ${p}: permission denied; run as root or give this user access to ${dir}`;
    case 'EROFS':
      return `cannot ${verb} ${p}: the file system is read-only; choose a path on a writable file system`;
    case 'ENOSPC':
      return `cannot ${verb} ${p}: no space left on the device; free some space or choose another file system`;
    case 'ELOOP':
      return `cannot ${verb} ${p}: it is a symbolic link, which is never followed; give the real path`;
    case 'EADDRINUSE':
      return `cannot ${verb} ${p}: the socket is in use by another process; stop it or choose another path`;
    default:
      return undefined;
  }
}

/**
 * A one-line UnavailableError for a system error a user can fix, prefixed with `context` (e.g. `collector`),
 * or undefined when `err` is not such an error.
 */
export function explainSystemError(err: unknown, context?: string): UnavailableError | undefined {
  if (err instanceof UnavailableError) return err;
  if (!isSystemError(err)) return undefined;
  let text: string | undefined;
  if (err.syscall === 'listen' || (err.syscall === 'bind' && err.path === undefined))
    text = listenAdvice(err);
  else if (err.syscall === 'getaddrinfo' || err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') {
    const host = err.hostname ?? '?';
    text =
      err.code === 'EAI_AGAIN'
        ? `cannot resolve the host name ${host}: the resolver did not answer (EAI_AGAIN); try again, or use an IP address`
        : `cannot resolve the host name ${host} (${err.code}); use an IP address, or fix the name or /etc/hosts`;
  } else if (err.path !== undefined) text = pathAdvice(err);
  if (text === undefined) {
    // Still a system error with a clear cause: one line, never a stack trace.
    const where = err.path ?? (err.address ? hostPort(err.address, err.port) : undefined);
    text = `${err.syscall ?? 'operation'} ${where ? `${where} ` : ''}failed: ${describeErrno(err)}`;
  }
  return new UnavailableError(context ? `${context}: ${text}` : text, { cause: err });
}
