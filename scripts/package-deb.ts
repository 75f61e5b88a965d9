/**
 * `npm run package`: the Debian package, `packages/auditrelay_<version>_<arch>.deb` (docs/packaging.md).
 *
 * Built with dpkg-deb from a staging tree, without debhelper:
 * - /usr/lib/auditrelay: package.json, bin/ (auditrelay.js, the `auditrelay` wrapper, and `node`: the Node runtime
 *   running this script, process.execPath, at least engines.node, self-contained — it may link only libc,
 *   libstdc++, libgcc_s, libm, libdl, libpthread), dist/ (the compiled sources, without source maps), diagrams/
 *   (the status page), native/build/Release/*.node (both bindings, required), the production node_modules (from
 *   package-lock.json: every package not marked dev, without node-addon-api, which only builds the bindings),
 *   test/fixtures/corpus (`auditrelay demo`), auditrelay-plugin;
 * - /usr/bin/auditrelay → ../lib/auditrelay/bin/auditrelay;
 * - /etc/audit/plugins.d/auditrelay.conf (a conffile, `active = no`), /lib/systemd/system/*.service (not enabled);
 * - the manual pages (scripts/man.ts), /usr/share/doc/auditrelay (README.md, docs/, copyright, changelog);
 * - the directories with their owners and modes: /var/spool/auditrelay 0750, /var/lib/auditrelay 0700,
 *   /var/log/auditrelay 0750, /etc/auditrelay 0750, all root;
 * - DEBIAN/: control (Depends computed by dpkg-shlibdeps from the ELF files), conffiles, md5sums and the
 *   maintainer scripts of packaging/debian/, which start and enable nothing.
 *
 * Options: `--out DIR` (default packages/). Environment: AUDITRELAY_PACKAGE_NODE (another Node binary to
 * bundle), DEB_MAINTAINER ("Name <address>"), AUDITRELAY_DEB_COMPRESSION (dpkg-deb's -Z and -z, default `xz:1`:
 * the Node binary dominates the time; `xz:6` for a release), SOURCE_DATE_EPOCH (dates; default: the last commit).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { generateManPages, pageDate } from './man.js';

const ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) || !existsSync(path.join(dir, 'packaging'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('package: cannot find the auditrelay source tree');
    dir = up;
  }
  return dir;
})();

/** Libraries the bundled Node binary may link: the ones every Debian system has (libc6, libstdc++6, libgcc-s1). */
const NODE_LIBS = new Set([
  'libc.so.6',
  'libm.so.6',
  'libdl.so.2',
  'libpthread.so.0',
  'librt.so.1',
  'libstdc++.so.6',
  'libgcc_s.so.1',
  'ld-linux-x86-64.so.2',
  'ld-linux-aarch64.so.1',
]);
const ADDONS = ['auditrelay_unix.node', 'auditrelay_gssapi.node'];
/** Only needed to build the bindings. */
const BUILD_ONLY_MODULES = new Set(['node_modules/node-addon-api']);
/** Files in node_modules that a package must not ship (lintian: npm ignore, VCS, CI files). */
const JUNK =
  /^(\.npmignore|\.gitignore|\.gitattributes|\.eslintrc.*|\.prettierrc.*|\.editorconfig|\.travis\.yml|\.github|\.nycrc.*|\.taprc)$/;
/** At the top of an npm package: its tests, benchmarks, examples and documentation site, never loaded at run time. */
const MODULE_EXTRAS = /^(test|tests|__tests__|benchmarks?|bench|docs?|examples?|index\.html)$/;
export const LIB = 'usr/lib/auditrelay';
export const DOC = 'usr/share/doc/auditrelay';

class PackageError extends Error {}

function fail(message: string): never {
  throw new PackageError(message);
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    fail(
      code === 'ENOENT'
        ? `${cmd} is not installed (Debian: apt-get install ${cmd.startsWith('dpkg') ? 'dpkg-dev' : 'binutils'})`
        : `${cmd}: ${r.error.message}`,
    );
  }
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} failed (status ${r.status}):\n${r.stderr.trim()}`);
  return r.stdout;
}

/** `a >= b` for dotted versions. */
function versionAtLeast(a: string, b: string): boolean {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? 0;
    const y = pb[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

/** The Node binary to bundle: its version satisfies engines.node (">=X.Y"), and it is self-contained. */
function checkNode(node: string, engines: string): string {
  const min = /^>=\s*(\d+(?:\.\d+)*)$/.exec(engines.trim())?.[1];
  if (!min) fail(`package.json engines.node is "${engines}"; expected ">=X.Y"`);
  const version = run(node, ['-p', 'process.versions.node']).trim();
  if (!versionAtLeast(version, min)) {
    fail(
      `${node} is Node ${version}; the package needs Node >= ${min} (package.json engines.node): run npm run package with a newer Node, or set AUDITRELAY_PACKAGE_NODE`,
    );
  }
  const needed = [...run('readelf', ['-d', node]).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map(
    (m) => m[1]!,
  );
  const foreign = needed.filter((l) => !NODE_LIBS.has(l));
  if (foreign.length > 0) {
    fail(
      `${node} links ${foreign.join(', ')}: not a self-contained Node build (Debian's nodejs links libnode and others); use an official or NodeSource build, e.g. with AUDITRELAY_PACKAGE_NODE`,
    );
  }
  return version;
}

/** Node's license text, next to the binary as the official tarball and NodeSource's package install it. */
function nodeLicense(node: string): string {
  const prefix = path.resolve(path.dirname(node), '..');
  const candidates = [
    path.join(prefix, 'LICENSE'),
    path.join(prefix, 'share', 'doc', 'nodejs', 'LICENSE'),
    path.join(prefix, 'share', 'doc', 'node', 'LICENSE'),
  ];
  const found = candidates.find((c) => existsSync(c));
  if (!found) fail(`Node's LICENSE was not found (${candidates.join(', ')}); the package must carry it`);
  return found;
}

interface LockPackage {
  version?: string;
  license?: string;
  dev?: boolean;
  link?: boolean;
}

/** The production node_modules paths (relative, e.g. 'node_modules/pino'), from package-lock.json. */
export function productionModules(root = ROOT): { dir: string; version: string; license: string }[] {
  const lock = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockPackage>;
  };
  const out: { dir: string; version: string; license: string }[] = [];
  for (const [dir, p] of Object.entries(lock.packages)) {
    if (!dir || p.dev || p.link || BUILD_ONLY_MODULES.has(dir)) continue;
    if (!existsSync(path.join(root, dir))) {
      // An optional dependency for another platform, or a peer nobody installed.
      continue;
    }
    out.push({ dir, version: p.version ?? '', license: p.license ?? 'UNKNOWN' });
  }
  return out.sort((a, b) => a.dir.localeCompare(b.dir));
}

function copyTree(from: string, to: string, filter: (src: string) => boolean = () => true): void {
  cpSync(from, to, { recursive: true, dereference: false, filter, preserveTimestamps: false });
}

function install(from: string, to: string, mode: number): void {
  mkdirSync(path.dirname(to), { recursive: true });
  copyFileSync(from, to);
  chmodSync(to, mode);
}

function writeFile(to: string, content: string | Buffer, mode = 0o644): void {
  mkdirSync(path.dirname(to), { recursive: true });
  writeFileSync(to, content);
  chmodSync(to, mode);
}

/** Every regular file under `dir`, relative to it. */
function files(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...files(dir, r));
    else if (e.isFile()) out.push(r);
  }
  return out;
}

/** dpkg-gencontrol's Installed-Size: each file in KiB rounded up, plus 1 per directory and link. */
function installedSize(dir: string): number {
  let kib = 0;
  const walk = (p: string) => {
    for (const e of readdirSync(p, { withFileTypes: true })) {
      const full = path.join(p, e.name);
      if (e.isDirectory()) {
        if (path.relative(dir, full) === 'DEBIAN') continue;
        kib += 1;
        walk(full);
      } else if (e.isFile()) kib += Math.ceil(statSync(full).size / 1024);
      else kib += 1;
    }
  };
  walk(dir);
  return kib;
}

/** Copyright owners from a package's license file ("Copyright (c) 2016 X"), else its package.json author. */
function copyrightOf(moduleDir: string): string {
  for (const name of readdirSync(moduleDir)) {
    if (!/^(licen[cs]e|copying)/i.test(name)) continue;
    const text = readFileSync(path.join(moduleDir, name), 'utf8');
    const lines = [...text.matchAll(/^\s*Copyright\s+(?:\(c\)|©)?\s*(.+)$/gim)].map((m) => m[1]!.trim());
    if (lines.length > 0) return [...new Set(lines)].join('\n ');
  }
  const pkg = JSON.parse(readFileSync(path.join(moduleDir, 'package.json'), 'utf8')) as {
    author?: string | { name?: string };
  };
  const author = typeof pkg.author === 'string' ? pkg.author : pkg.author?.name;
  return author ? author : `the authors of ${path.basename(moduleDir)}`;
}

const EXPAT = `Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following conditions:
.
The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.`;

const ISC = `Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is hereby
granted, provided that the above copyright notice and this permission notice appear in all copies.
.
THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE INCLUDING ALL
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT,
INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN
AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR
PERFORMANCE OF THIS SOFTWARE.`;

const UNLICENSE = `This is free and unencumbered software released into the public domain.
.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this software, either in source code
form or as a compiled binary, for any purpose, commercial or non-commercial, and by any means.
.
In jurisdictions that recognize copyright laws, the author or authors of this software dedicate any and all
copyright interest in the software to the public domain. We make this dedication for the benefit of the public at
large and to the detriment of our heirs and successors. We intend this dedication to be an overt act of
relinquishment in perpetuity of all present and future rights to this software under copyright law.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE,
ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
.
For more information, please refer to <https://unlicense.org/>`;

/** DEP-5 copyright: auditrelay, the Node runtime, every bundled npm package. */
function copyright(modules: { dir: string; license: string }[]): string {
  const spdxToDebian: Record<string, string> = {
    MIT: 'Expat',
    ISC: 'ISC',
    'Apache-2.0': 'Apache-2.0',
    Unlicense: 'Unlicense',
  };
  const used = new Set<string>(['Apache-2.0']);
  const paras = [
    `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: auditrelay
Source: https://github.com/auditrelay/auditrelay

Files: *
Copyright: the auditrelay developers
License: Apache-2.0

Files: ${LIB}/bin/node
Copyright: Node.js contributors and the authors of its bundled components
License: Node.js
 Node.js is MIT-licensed; it bundles components under their own licenses (OpenSSL, ICU, zlib, libuv, V8 and
 others). The complete text is in /${DOC}/node/LICENSE.`,
  ];
  for (const m of modules) {
    const license = spdxToDebian[m.license];
    if (!license)
      fail(
        `${m.dir}: license "${m.license}" is not one the copyright file knows (Expat, ISC, Apache-2.0, Unlicense); add it to scripts/package-deb.ts`,
      );
    used.add(license);
    paras.push(`Files: ${LIB}/${m.dir}/*
Copyright: ${copyrightOf(path.join(ROOT, m.dir))}
License: ${license}`);
  }
  paras.push(`License: Apache-2.0
 Licensed under the Apache License, Version 2.0. On Debian systems, the complete text of the Apache License,
 Version 2.0 can be found in /usr/share/common-licenses/Apache-2.0.`);
  if (used.has('Expat')) paras.push(`License: Expat\n${EXPAT.replace(/^/gm, ' ')}`);
  if (used.has('ISC')) paras.push(`License: ISC\n${ISC.replace(/^/gm, ' ')}`);
  if (used.has('Unlicense')) paras.push(`License: Unlicense\n${UNLICENSE.replace(/^/gm, ' ')}`);
  return `${paras.join('\n\n')}\n`;
}

/** Depends from the ELF files' libraries, with the versions Debian's symbols files require. */
function shlibDepends(elfs: string[]): string {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-shlibdeps-'));
  try {
    writeFile(
      path.join(tmp, 'debian', 'control'),
      'Source: auditrelay\n\nPackage: auditrelay\nArchitecture: any\n',
    );
    const out = run('dpkg-shlibdeps', ['-O', '--ignore-missing-info', ...elfs.map((e) => `-e${e}`)], {
      cwd: tmp,
    });
    const m = /^shlibs:Depends=(.*)$/m.exec(out);
    if (!m) fail(`dpkg-shlibdeps printed no shlibs:Depends:\n${out}`);
    return m[1]!.trim();
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function debianDate(d: Date): string {
  // RFC 5322, as dpkg-parsechangelog wants: "Mon, 01 Dec 2025 17:40:00 +0000".
  return d.toUTCString().replace('GMT', '+0000');
}

export interface BuildResult {
  deb: string;
  version: string;
  arch: string;
  nodeVersion: string;
  depends: string;
  seconds: number;
}

export function buildDeb(opts: { out?: string } = {}): BuildResult {
  const started = performance.now();
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    name: string;
    version: string;
    description: string;
    license: string;
    engines: { node: string };
    author?: string;
  };
  const arch = run('dpkg', ['--print-architecture']).trim();
  const node = process.env.AUDITRELAY_PACKAGE_NODE || process.execPath;
  const nodeVersion = checkNode(node, pkg.engines.node);
  const license = nodeLicense(node);
  for (const addon of ADDONS) {
    if (!existsSync(path.join(ROOT, 'native', 'build', 'Release', addon))) {
      fail(
        `native/build/Release/${addon} is missing: the package ships both bindings; build them with ` +
          '`AUDITRELAY_REQUIRE_NATIVE=1 AUDITRELAY_REQUIRE_KRB5=1 node scripts/build-native.mjs` (needs libkrb5-dev, g++, make, python3)',
      );
    }
  }
  if (!existsSync(path.join(ROOT, 'dist', 'src', 'cli.js')))
    fail('dist/ is missing: run npm run build first');
  const date = pageDate(ROOT);
  const maintainer =
    process.env.DEB_MAINTAINER || pkg.author || 'auditrelay developers <auditrelay@example.org>';

  const outDir = path.resolve(opts.out ?? path.join(ROOT, 'packages'));
  mkdirSync(outDir, { recursive: true });
  const stage = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-deb-stage-'));
  try {
    const lib = path.join(stage, LIB);
    // The program.
    writeFile(
      path.join(lib, 'package.json'),
      `${JSON.stringify(
        {
          name: pkg.name,
          version: pkg.version,
          description: pkg.description,
          license: pkg.license,
          type: 'module',
          engines: pkg.engines,
        },
        null,
        2,
      )}\n`,
    );
    // Run through bin/auditrelay, with the package's Node: its `#!/usr/bin/env -S node` line (which would need a
    // node on PATH) becomes a comment, and the file is not executable itself.
    const entry = readFileSync(path.join(ROOT, 'bin', 'auditrelay.js'), 'utf8');
    if (!entry.startsWith('#!'))
      fail('bin/auditrelay.js no longer starts with its #! line; update scripts/package-deb.ts');
    writeFile(
      path.join(lib, 'bin', 'auditrelay.js'),
      entry.replace(
        /^#!.*/,
        '// Started by /usr/lib/auditrelay/bin/auditrelay with the Node runtime of the package.',
      ),
      0o644,
    );
    install(path.join(ROOT, 'packaging', 'auditrelay'), path.join(lib, 'bin', 'auditrelay'), 0o755);
    install(node, path.join(lib, 'bin', 'node'), 0o755);
    install(path.join(ROOT, 'packaging', 'auditrelay-plugin'), path.join(lib, 'auditrelay-plugin'), 0o755);
    for (const d of ['src', 'machines', 'supervisors']) {
      copyTree(path.join(ROOT, 'dist', d), path.join(lib, 'dist', d), (src) => !src.endsWith('.map'));
    }
    copyTree(path.join(ROOT, 'diagrams'), path.join(lib, 'diagrams'));
    copyTree(
      path.join(ROOT, 'test', 'fixtures', 'corpus'),
      path.join(lib, 'test', 'fixtures', 'corpus'),
      (src) => !JUNK.test(path.basename(src)),
    );
    for (const addon of ADDONS) {
      install(
        path.join(ROOT, 'native', 'build', 'Release', addon),
        path.join(lib, 'native', 'build', 'Release', addon),
        0o644,
      );
    }
    const modules = productionModules();
    for (const m of modules) {
      copyTree(path.join(ROOT, m.dir), path.join(lib, m.dir), (src) => {
        if (JUNK.test(path.basename(src))) return false;
        const rel = path.relative(path.join(ROOT, m.dir), src).split(path.sep);
        if (rel.length === 1 && MODULE_EXTRAS.test(rel[0]!)) return false;
        // Nested node_modules are copied as packages of their own (they are in the lock file).
        return !rel.includes('node_modules');
      });
    }
    // Strip the ELF files as dh_strip does (the Node binary carries debug information).
    const elfs = [
      path.join(lib, 'bin', 'node'),
      ...ADDONS.map((a) => path.join(lib, 'native', 'build', 'Release', a)),
    ];
    for (const elf of elfs) {
      const mode = statSync(elf).mode & 0o777;
      chmodSync(elf, 0o755);
      run('strip', ['--remove-section=.comment', '--remove-section=.note', '--strip-unneeded', elf]);
      chmodSync(elf, mode);
    }
    // On PATH.
    mkdirSync(path.join(stage, 'usr', 'bin'), { recursive: true });
    symlinkSync('../lib/auditrelay/bin/auditrelay', path.join(stage, 'usr', 'bin', 'auditrelay'));
    // auditd's plugin (inactive) and the units (not enabled).
    install(
      path.join(ROOT, 'packaging', 'plugins.d', 'auditrelay.conf'),
      path.join(stage, 'etc', 'audit', 'plugins.d', 'auditrelay.conf'),
      0o640,
    );
    for (const unit of ['auditrelay-agent.service', 'auditrelay-collector.service']) {
      install(
        path.join(ROOT, 'packaging', 'systemd', unit),
        path.join(stage, 'lib', 'systemd', 'system', unit),
        0o644,
      );
    }
    // Manual pages.
    for (const page of generateManPages({ root: ROOT, date })) {
      writeFile(
        path.join(stage, 'usr', 'share', 'man', `man${page.section}`, `${page.file}.gz`),
        gzipSync(page.roff, { level: 9 }),
      );
    }
    // Documentation, copyright, changelog, lintian overrides.
    const doc = path.join(stage, DOC);
    install(path.join(ROOT, 'README.md'), path.join(doc, 'README.md'), 0o644);
    copyTree(path.join(ROOT, 'docs'), path.join(doc, 'docs'));
    install(license, path.join(doc, 'node', 'LICENSE'), 0o644);
    writeFile(path.join(doc, 'copyright'), copyright(modules));
    const commit = spawnSync('git', ['rev-parse', '--short=12', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
    }).stdout?.trim();
    writeFile(
      path.join(doc, 'changelog.gz'),
      gzipSync(
        `auditrelay (${pkg.version}) bookworm; urgency=medium\n\n` +
          `  * auditrelay ${pkg.version}${commit ? ` (commit ${commit})` : ''}, with Node.js ${nodeVersion}.\n\n` +
          ` -- ${maintainer}  ${debianDate(date)}\n`,
        { level: 9 },
      ),
    );
    install(
      path.join(ROOT, 'packaging', 'debian', 'lintian-overrides'),
      path.join(stage, 'usr', 'share', 'lintian', 'overrides', 'auditrelay'),
      0o644,
    );
    // Directories with their owners (root, dpkg-deb --root-owner-group) and modes.
    // /etc/audit and its plugins.d as the auditd package has them (0750), whichever package comes first.
    const dirModes: [string, number][] = [
      ['var/spool/auditrelay', 0o750],
      ['var/lib/auditrelay', 0o700],
      ['var/log/auditrelay', 0o750],
      ['etc/auditrelay', 0o750],
      ['etc/audit', 0o750],
      ['etc/audit/plugins.d', 0o750],
    ];
    for (const [dir, mode] of dirModes) {
      mkdirSync(path.join(stage, dir), { recursive: true });
      chmodSync(path.join(stage, dir), mode);
    }
    // Everything else: directories 0755, files 0644 unless executable.
    normalizeModes(stage, new Set(dirModes.map(([d]) => d)));

    // DEBIAN/
    const depends = shlibDepends(elfs);
    const control = readFileSync(path.join(ROOT, 'packaging', 'debian', 'control'), 'utf8')
      .replace('@VERSION@', pkg.version)
      .replace('@ARCH@', arch)
      .replace('@MAINTAINER@', maintainer)
      .replace('@INSTALLED_SIZE@', String(installedSize(stage)))
      .replace('@DEPENDS@', depends);
    const debian = path.join(stage, 'DEBIAN');
    writeFile(path.join(debian, 'control'), control);
    writeFile(path.join(debian, 'conffiles'), '/etc/audit/plugins.d/auditrelay.conf\n');
    for (const script of ['postinst', 'prerm', 'postrm']) {
      install(path.join(ROOT, 'packaging', 'debian', script), path.join(debian, script), 0o755);
    }
    const sums = files(stage)
      .filter((f) => !f.startsWith(`DEBIAN${path.sep}`) && !f.startsWith(`etc${path.sep}`))
      .sort()
      .map(
        (f) =>
          `${createHash('md5')
            .update(readFileSync(path.join(stage, f)))
            .digest('hex')}  ${f}`,
      );
    writeFile(path.join(debian, 'md5sums'), `${sums.join('\n')}\n`);
    chmodSync(debian, 0o755);

    const deb = path.join(outDir, `${pkg.name}_${pkg.version}_${arch}.deb`);
    const [z, level] = (process.env.AUDITRELAY_DEB_COMPRESSION ?? 'xz:1').split(':');
    run(
      'dpkg-deb',
      ['--root-owner-group', `-Z${z}`, ...(level ? [`-z${level}`] : []), '--build', stage, deb],
      {
        env: { ...process.env, SOURCE_DATE_EPOCH: String(Math.floor(date.getTime() / 1000)) },
      },
    );
    return {
      deb,
      version: pkg.version,
      arch,
      nodeVersion,
      depends,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

function normalizeModes(stage: string, keep: Set<string>): void {
  const walk = (rel: string) => {
    const full = path.join(stage, rel);
    const st = lstatSync(full);
    if (st.isSymbolicLink()) return;
    if (st.isDirectory()) {
      if (!keep.has(rel)) chmodSync(full, 0o755);
      for (const name of readdirSync(full)) walk(path.join(rel, name));
      return;
    }
    if (rel.startsWith(`etc${path.sep}audit${path.sep}`)) return; // 0640, as Debian's plugins.d files
    chmodSync(full, st.mode & 0o111 ? 0o755 : 0o644);
  };
  walk('');
}

function main(argv: string[]): number {
  const i = argv.indexOf('--out');
  try {
    const r = buildDeb(i >= 0 && argv[i + 1] ? { out: argv[i + 1]! } : {});
    const size = (statSync(r.deb).size / 1024 / 1024).toFixed(1);
    process.stdout.write(
      `${path.relative(process.cwd(), r.deb) || r.deb}: auditrelay ${r.version} (${r.arch}), Node ${r.nodeVersion}, ${size} MiB, built in ${r.seconds.toFixed(1)} s\nDepends: ${r.depends}\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof PackageError) {
      process.stderr.write(`auditrelay package: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
