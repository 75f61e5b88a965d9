/**
 * The real peers Debian 12 does not ship, fetched by `scripts/fetch-peers.sh` into `.cache/peers/` (or the directory
 * in AUDITRELAY_PEERS): audit >= 4.2.1 from sid (run through `audit/run PROGRAM ARGS`, which uses sid's own loader
 * and libc) and nats-server >= 2.10. Suites that need them call `requireOrSkip({ files: [...] })` with the paths
 * below, so they skip loudly on a laptop and fail under CI=true.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

export const PEERS_DIR = process.env.AUDITRELAY_PEERS ?? path.join(PACKAGE_ROOT, '.cache/peers');
/** `run PROGRAM ARGS...` runs a program of audit >= 4.2.1 (auditd, audisp-remote, ausearch, ...). */
export const AUDIT42_RUN = path.join(PEERS_DIR, 'audit/run');
/** The extracted sid root (man pages in usr/share/man/man5, default configs in etc/audit). */
export const AUDIT42_ROOT = path.join(PEERS_DIR, 'audit/root');
export const NATS_SERVER = path.join(PEERS_DIR, 'nats-server');
export const FETCH_HINT = 'run scripts/fetch-peers.sh (downloads from Debian sid with a private apt config)';

/** The audit version the peers are (e.g. `1:4.2.1-1`), for the test log. */
export function audit42Version(): string {
  return execFileSync(AUDIT42_RUN, ['ausearch', '-v'], { encoding: 'utf8' }).trim();
}
