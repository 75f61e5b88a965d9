/**
 * A bare Debian 12 root for the package test: `debootstrap --variant=minbase bookworm` plus the packages an
 * administrator replacing audisp-remote has (auditd, audispd-plugins) and the libraries our Depends pull in
 * (libgssapi-krb5-2, libkrb5-3: apt would bring them; the test installs with dpkg, offline). No Node.
 *
 * debootstrap takes minutes and needs a Debian mirror, so the finished root is cached as a tarball under
 * .cache/debootstrap/ (AUDITRELAY_DEBOOTSTRAP_CACHE=DIR elsewhere), keyed by everything that shapes it; every test
 * run extracts a fresh copy. The mirror: AUDITRELAY_DEBIAN_MIRROR, else the first bookworm source of the host's
 * apt configuration, else deb.debian.org.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary } from '../helpers/prereq.js';

export const SUITE = 'bookworm';
export const VARIANT = 'minbase';
export const INCLUDE = ['auditd', 'audispd-plugins', 'libgssapi-krb5-2', 'libkrb5-3'];

/** Like run(), without blocking the event loop (debootstrap runs while the package is built). */
function runAsync(cmd: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (d: Buffer) => {
      out = (out + d.toString()).slice(-8000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `status ${code}`}):\n${out}`));
    });
  });
}

function run(cmd: string, args: string[], timeoutMs: number): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  if (r.error || r.status !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} failed (${r.error?.message ?? `status ${r.status}`}):\n${(r.stderr ?? '').slice(-4000)}\n${(r.stdout ?? '').slice(-4000)}`,
    );
  }
  return r.stdout;
}

/** The mirror debootstrap downloads from. */
export function debianMirror(): string {
  if (process.env.AUDITRELAY_DEBIAN_MIRROR) return process.env.AUDITRELAY_DEBIAN_MIRROR;
  const dir = '/etc/apt/sources.list.d';
  const texts: string[] = [];
  try {
    for (const f of readdirSync(dir).filter((f) => /\.(sources|list)$/.test(f))) {
      texts.push(readFileSync(path.join(dir, f), 'utf8'));
    }
    texts.push(readFileSync('/etc/apt/sources.list', 'utf8'));
  } catch {
    // whatever was readable
  }
  for (const text of texts) {
    // deb822: a stanza with "Suites: bookworm" and "URIs: …"; one-line: "deb URI bookworm main".
    for (const stanza of text.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      if (uri && /^Suites:.*\bbookworm\b/m.test(stanza) && /^Types:.*\bdeb\b/m.test(stanza)) return uri;
    }
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(text);
    if (line?.[1]) return line[1];
  }
  return 'http://deb.debian.org/debian';
}

export function cacheDir(): string {
  return process.env.AUDITRELAY_DEBOOTSTRAP_CACHE ?? path.join(REPO_ROOT, '.cache', 'debootstrap');
}

/** The cached root tarball, made with debootstrap when missing. Returns its path and whether it was made now. */
export async function debianRootTarball(): Promise<{ tarball: string; created: boolean; seconds: number }> {
  const started = performance.now();
  const mirror = debianMirror();
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        SUITE,
        VARIANT,
        INCLUDE,
        mirror,
        arch: run('dpkg', ['--print-architecture'], 10_000).trim(),
      }),
    )
    .digest('hex')
    .slice(0, 12);
  const dir = cacheDir();
  const tarball = path.join(dir, `${SUITE}-${VARIANT}-${key}.tar.zst`);
  if (existsSync(tarball)) return { tarball, created: false, seconds: 0 };
  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(path.join(dir, '.build-'));
  try {
    const root = path.join(work, 'root');
    // At a lower priority, as the other CPU-heavy steps of the package test (other test files run meanwhile).
    await runAsync(
      'nice',
      [
        '-n',
        '10',
        findBinary('debootstrap') ?? 'debootstrap',
        `--variant=${VARIANT}`,
        `--include=${INCLUDE.join(',')}`,
        SUITE,
        root,
        mirror,
      ],
      20 * 60_000,
    );
    // Downloaded .debs are not part of a fresh system.
    await runAsync('/bin/sh', ['-c', `rm -f "${root}"/var/cache/apt/archives/*.deb`], 60_000);
    await runAsync(
      'nice',
      ['-n', '10', 'tar', '--zstd', '-C', root, '-cf', `${tarball}.tmp`, '.'],
      10 * 60_000,
    );
    renameSync(`${tarball}.tmp`, tarball);
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(`${tarball}.tmp`, { force: true });
  }
  return { tarball, created: true, seconds: (performance.now() - started) / 1000 };
}

/** A fresh copy of the root in a new directory under `parent`. */
export function extractRoot(tarball: string, parent: string): string {
  const root = mkdtempSync(path.join(parent, 'debian12-'));
  run('nice', ['-n', '10', 'tar', '--zstd', '-C', root, '-xpf', tarball], 10 * 60_000);
  return root;
}
