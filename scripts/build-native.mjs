#!/usr/bin/env node
/**
 * Builds the optional GSS-API binding (native/ -> native/build/Release/auditrelay_gssapi.node) that the krb5
 * transport needs. Run by npm's install step, and by hand after installing the krb5 development files.
 *
 * - No krb5 development files (Debian: libkrb5-dev) or no compiler: prints one line saying krb5 support is not
 *   built and how to get it, exits 0 so `npm ci` succeeds; everything but transport = krb5 works.
 * - Headers present but the build (or loading the result) fails: prints the error, exits 0 as well.
 * - AUDITRELAY_REQUIRE_KRB5=1: both cases exit 1 instead (packaging and CI that must ship krb5 support).
 * - AUDITRELAY_SKIP_KRB5=1: does nothing.
 *
 * node-gyp: npm's own copy (npm exports its path as npm_config_node_gyp to lifecycle scripts; otherwise it is
 * looked up next to npm), so nothing is downloaded. Node headers: npm's nodedir config when set, else the running
 * Node's own prefix when it ships headers (Debian's nodejs: /usr/include/node), so no network access is needed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const addon = path.join(nativeDir, 'build', 'Release', 'auditrelay_gssapi.node');
const strict = process.env.AUDITRELAY_REQUIRE_KRB5 === '1';
const HOW =
  'install libkrb5-dev (and build-essential, python3), then run `node scripts/build-native.mjs` in ' +
  `${root} to enable transport = krb5`;

function notBuilt(reason) {
  console.log(`auditrelay: krb5 support is not built: ${reason}; ${HOW}`);
  process.exit(strict ? 1 : 0);
}

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { encoding: 'utf8', ...opts });
}

function onPath(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  return undefined;
}

/** Include directories krb5-config reports for gssapi (undefined when krb5-config is missing or fails). */
function krb5IncludeDirs() {
  const res = run('krb5-config', ['--cflags', 'gssapi']);
  if (res.error || res.status !== 0) return undefined;
  const dirs = [];
  const words = res.stdout.trim().split(/\s+/);
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w === '-I' || w === '-isystem') dirs.push(words[++i]);
    else if (w.startsWith('-isystem')) dirs.push(w.slice('-isystem'.length));
    else if (w.startsWith('-I')) dirs.push(w.slice(2));
  }
  return dirs;
}

/** npm's bundled node-gyp: npm_config_node_gyp, else next to npm-cli.js or the `npm` on PATH or Node's prefix. */
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const npmRoots = [];
  if (process.env.npm_execpath) npmRoots.push(path.resolve(path.dirname(process.env.npm_execpath), '..'));
  const npmBin = onPath('npm');
  if (npmBin) {
    try {
      npmRoots.push(path.resolve(path.dirname(realpathSync(npmBin)), '..'));
    } catch {
      // dangling link
    }
  }
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  npmRoots.push(path.join(prefix, 'lib', 'node_modules', 'npm'), path.join(prefix, 'share', 'nodejs', 'npm'));
  for (const npmRoot of npmRoots) {
    candidates.push(path.join(npmRoot, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  candidates.push(path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((c) => existsSync(c));
}

if (process.env.AUDITRELAY_SKIP_KRB5 === '1') {
  console.log('auditrelay: krb5 support not built (AUDITRELAY_SKIP_KRB5=1)');
  process.exit(0);
}

const includeDirs = krb5IncludeDirs();
const headerDirs = [...(includeDirs ?? []), '/usr/include', '/usr/local/include'];
const header = headerDirs.map((d) => path.join(d, 'gssapi', 'gssapi.h')).find((h) => existsSync(h));
if (header === undefined) notBuilt('the GSS-API headers (gssapi/gssapi.h) are not installed');
if (includeDirs === undefined) notBuilt(`${header} exists but krb5-config (from libkrb5-dev) does not run`);
for (const [tool, pkg] of [
  ['make', 'make'],
  [process.env.CXX || 'g++', 'g++'],
  ['python3', 'python3'],
]) {
  if (!(path.isAbsolute(tool) ? existsSync(tool) : onPath(tool))) {
    notBuilt(`${tool} not found (Debian package ${pkg}, or build-essential)`);
  }
}
const nodeGyp = findNodeGyp();
if (nodeGyp === undefined) notBuilt("npm's node-gyp was not found");

const args = [nodeGyp, 'rebuild', '--loglevel=warn'];
if (!process.env.npm_config_nodedir) {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  if (existsSync(path.join(prefix, 'include', 'node', 'common.gypi'))) args.push(`--nodedir=${prefix}`);
}

const started = performance.now();
console.log(`auditrelay: building krb5 support (${path.relative(root, nativeDir)}/, node-gyp ${nodeGyp})`);
const build = spawnSync(process.execPath, args, { cwd: nativeDir, stdio: 'inherit' });
const seconds = ((performance.now() - started) / 1000).toFixed(1);
if (build.error || build.status !== 0) {
  const why = build.error
    ? build.error.message
    : `node-gyp exited with status ${build.status ?? build.signal}`;
  console.error(
    `auditrelay: ERROR: building krb5 support failed after ${seconds} s (${why}); see the output above.`,
  );
  console.error(
    strict
      ? 'auditrelay: AUDITRELAY_REQUIRE_KRB5=1, failing the install.'
      : 'auditrelay: continuing without krb5 support (transport = krb5 will report it is unavailable); ' +
          'set AUDITRELAY_REQUIRE_KRB5=1 to make this fatal.',
  );
  process.exit(strict ? 1 : 0);
}

// Prove the result loads (links against libgssapi_krb5, Node-API version) in a separate process.
const load = run(process.execPath, ['-e', `require(${JSON.stringify(addon)})`]);
if (load.status !== 0) {
  console.error(`auditrelay: ERROR: ${addon} was built but does not load:\n${load.stderr.trim()}`);
  process.exit(strict ? 1 : 0);
}
console.log(`auditrelay: built krb5 support in ${seconds} s: ${path.relative(root, addon)}`);
