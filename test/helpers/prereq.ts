/**
 * One rule for every suite that needs root, namespaces or the Debian audit binaries:
 * - on a developer machine a missing prerequisite skips the suite loudly (console.warn says what is missing and how
 *   to get it);
 * - in CI (`process.env.CI === 'true'`) a missing prerequisite is an error: the suite must not silently skip.
 *
 * Usage:
 *   const available = requireOrSkip({ suite: 'interop harness', root: true, namespaces: true, binaries: [...] });
 *   describe.skipIf(!available)('...', () => { ... });
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import path from 'node:path';
import { loadGssapi } from '../../src/krb5/gssapi.js';

export interface Prerequisites {
  /** Name of the suite, used in the skip/error message. */
  suite: string;
  /** Needs uid 0 (real root, not a user namespace). */
  root?: boolean;
  /** Needs to create network + mount namespaces (`unshare --net --mount`), probed by actually doing it. */
  namespaces?: boolean;
  /** Executables, as absolute paths or bare names looked up in the sbin/bin directories. */
  binaries?: readonly string[];
  /** Files that must exist. */
  files?: readonly string[];
  /**
   * Needs the native GSS-API binding (native/build/Release/auditrelay_gssapi.node, or AUDITRELAY_GSSAPI_ADDON):
   * built by `npm install` only where libkrb5-dev and a C++ toolchain are installed. Probed by loading it.
   */
  gssapiBinding?: boolean;
}

/** True when running under CI, where missing prerequisites must fail instead of skipping. */
export const isCI = process.env.CI === 'true';

const SEARCH_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Debian package that provides a binary, for the install hint. */
const PACKAGE_OF: Record<string, string> = {
  auditd: 'auditd',
  'audisp-remote': 'audispd-plugins',
  unshare: 'util-linux',
  nsenter: 'util-linux',
  mount: 'mount',
  ip: 'iproute2',
  ss: 'iproute2',
  bash: 'bash',
  mkfifo: 'coreutils',
  env: 'coreutils',
  krb5kdc: 'krb5-kdc',
  kdb5_util: 'krb5-kdc',
  'kadmin.local': 'krb5-admin-server',
  kinit: 'krb5-user',
  chromium: 'chromium',
  cc: 'gcc',
  python3: 'python3',
  'systemd-analyze': 'systemd',
  'systemd-notify': 'systemd',
  strace: 'strace',
  debootstrap: 'debootstrap',
  'dpkg-deb': 'dpkg',
  'dpkg-shlibdeps': 'dpkg-dev',
  lintian: 'lintian',
  strip: 'binutils',
  readelf: 'binutils',
  chroot: 'coreutils',
  tar: 'tar',
  zstd: 'zstd',
  groff: 'groff-base',
};

/** Absolute path of an executable: `name` itself if absolute and executable, else the first hit in SEARCH_DIRS. */
export function findBinary(name: string): string | undefined {
  const candidates = path.isAbsolute(name) ? [name] : SEARCH_DIRS.map((dir) => path.join(dir, name));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

/** Like findBinary but throws a descriptive error. */
export function requireBinary(name: string): string {
  const found = findBinary(name);
  if (found === undefined) throw new Error(`required executable not found: ${name} (${installHint(name)})`);
  return found;
}

function installHint(binary: string): string {
  const pkg = PACKAGE_OF[path.basename(binary)];
  return pkg ? `install it with: sudo apt-get install ${pkg}` : 'install the package that provides it';
}

let namespaceProbe: string | undefined | null = null;

/** undefined if `unshare --net --mount` works, else the reason it does not. Probed once per process. */
function probeNamespaces(): string | undefined {
  if (namespaceProbe !== null) return namespaceProbe;
  const unshare = findBinary('unshare');
  if (unshare === undefined) {
    namespaceProbe = `unshare not found (${installHint('unshare')})`;
    return namespaceProbe;
  }
  const res = spawnSync(unshare, ['--net', '--mount', '--propagation', 'private', '--', 'true'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 10_000,
  });
  namespaceProbe =
    res.status === 0
      ? undefined
      : `cannot create network+mount namespaces (\`unshare --net --mount true\` failed: ${
          res.error?.message ?? res.stderr?.toString().trim() ?? `status ${res.status}`
        }); run as real root on a host or a privileged container (CAP_SYS_ADMIN)`;
  return namespaceProbe;
}

/** Human-readable list of what is missing, each entry with how to fix it. Empty when everything is there. */
export function missingPrerequisites(req: Prerequisites): string[] {
  const missing: string[] = [];
  const uid = process.getuid?.();
  if (req.root && uid !== 0) {
    missing.push(
      `not running as root (uid ${uid ?? 'unknown'}): run this suite as root, e.g. \`sudo -E npx vitest run test/interop\``,
    );
  }
  for (const bin of req.binaries ?? []) {
    if (findBinary(bin) === undefined) missing.push(`${bin} not found: ${installHint(bin)}`);
  }
  for (const file of req.files ?? []) {
    try {
      statSync(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      missing.push(code === 'ENOENT' ? `${file} does not exist` : `${file} is not accessible (${code})`);
    }
  }
  if (req.gssapiBinding) {
    try {
      loadGssapi();
    } catch (err) {
      // The loader's message names the file, the package (libkrb5-dev) and the rebuild command.
      missing.push((err as Error).message);
    }
  }
  // Only probe namespaces when the cheaper checks passed (the probe itself needs root and unshare).
  if (req.namespaces && missing.length === 0) {
    const reason = probeNamespaces();
    if (reason !== undefined) missing.push(reason);
  }
  return missing;
}

/**
 * Returns true when the suite can run. Otherwise: in CI throws (the suite must fail), elsewhere warns loudly and
 * returns false so that `describe.skipIf(!available)` skips it.
 */
export function requireOrSkip(req: Prerequisites): boolean {
  const missing = missingPrerequisites(req);
  if (missing.length === 0) return true;
  const list = missing.map((m) => `  - ${m}`).join('\n');
  if (isCI) {
    throw new Error(
      `${req.suite}: prerequisites missing in CI (CI=true), refusing to skip:\n${list}\n` +
        'CI must run as root with the Debian packages of docs/testing.md installed (auditd, audispd-plugins, the ' +
        'MIT krb5 KDC, libkrb5-dev) and the GSS-API binding built.',
    );
  }
  console.warn(`\n[SKIPPED] ${req.suite}: prerequisites missing:\n${list}\n(see docs/testing.md)\n`);
  return false;
}
