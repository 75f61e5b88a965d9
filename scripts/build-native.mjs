#!/usr/bin/env node
/**
 * Builds auditrelay's native bindings (native/ -> native/build/Release/), with npm's own node-gyp. Run by npm's
 * install step, and by hand (`node scripts/build-native.mjs`) after installing what was missing.
 *
 * - auditrelay_unix.node: AF_UNIX datagrams (sd_notify without systemd-notify, syslog on /dev/log in plugin mode);
 *   needs only a C++ compiler, make and python3.
 * - auditrelay_gssapi.node: the GSS-API binding that transport = krb5 needs; built only when the krb5 development
 *   files are present too (Debian: libkrb5-dev).
 *
 * Optional, exactly as before for krb5: a missing prerequisite or a failed build prints one line saying what is not
 * built and how to get it, and exits 0 so `npm ci` succeeds (everything else works; see docs/packaging.md and
 * docs/kerberos.md for what each binding adds). A failed build with krb5 is retried without it, so that the unix
 * binding is still built.
 * - AUDITRELAY_REQUIRE_KRB5=1: a missing or failed krb5 binding exits 1 (packaging, CI).
 * - AUDITRELAY_REQUIRE_NATIVE=1: a missing or failed unix binding exits 1 (packaging, CI).
 * - AUDITRELAY_SKIP_KRB5=1: the krb5 binding is not built (the unix binding still is).
 * - AUDITRELAY_SKIP_NATIVE=1: nothing is built.
 *
 * node-gyp: npm's own copy (npm exports its path as npm_config_node_gyp to lifecycle scripts; otherwise it is
 * looked up next to npm), so nothing is downloaded. Node headers: npm's nodedir config when set, else the running
 * Node's own prefix when it ships headers (Debian's nodejs: /usr/include/node), so no network access is needed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const release = path.join(nativeDir, 'build', 'Release');
const ADDONS = {
  unix: path.join(release, 'auditrelay_unix.node'),
  krb5: path.join(release, 'auditrelay_gssapi.node'),
};
const requireKrb5 = process.env.AUDITRELAY_REQUIRE_KRB5 === '1';
const requireNative = process.env.AUDITRELAY_REQUIRE_NATIVE === '1';
const HOW_KRB5 =
  'install libkrb5-dev (and build-essential, python3), then run `node scripts/build-native.mjs` in ' +
  `${root} to enable transport = krb5`;
const HOW_UNIX =
  'install build-essential and python3, then run `node scripts/build-native.mjs` in ' +
  `${root}; without it sd_notify runs systemd-notify and log_target = syslog is unavailable (docs/packaging.md)`;

let failed = false;
function krb5NotBuilt(reason) {
  console.log(`auditrelay: krb5 support is not built: ${reason}; ${HOW_KRB5}`);
  if (requireKrb5) failed = true;
}
function unixNotBuilt(reason) {
  console.log(`auditrelay: the unix socket binding is not built: ${reason}; ${HOW_UNIX}`);
  if (requireNative) failed = true;
}
function finish() {
  if (failed) console.error('auditrelay: AUDITRELAY_REQUIRE_KRB5/AUDITRELAY_REQUIRE_NATIVE is set: failing.');
  process.exit(failed ? 1 : 0);
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

/** Why the krb5 binding cannot be built, or undefined when it can. */
function krb5Missing() {
  if (process.env.AUDITRELAY_SKIP_KRB5 === '1') return 'AUDITRELAY_SKIP_KRB5=1';
  const includeDirs = krb5IncludeDirs();
  const headerDirs = [...(includeDirs ?? []), '/usr/include', '/usr/local/include'];
  const header = headerDirs.map((d) => path.join(d, 'gssapi', 'gssapi.h')).find((h) => existsSync(h));
  if (header === undefined) return 'the GSS-API headers (gssapi/gssapi.h) are not installed';
  if (includeDirs === undefined) return `${header} exists but krb5-config (from libkrb5-dev) does not run`;
  return undefined;
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

/** Runs node-gyp rebuild; true when it succeeded. */
function build(nodeGyp, withKrb5) {
  const args = [nodeGyp, 'rebuild', '--loglevel=warn'];
  if (!process.env.npm_config_nodedir) {
    const prefix = path.resolve(path.dirname(process.execPath), '..');
    if (existsSync(path.join(prefix, 'include', 'node', 'common.gypi'))) args.push(`--nodedir=${prefix}`);
  }
  args.push('--', `-Dwith_gssapi=${withKrb5 ? 'true' : 'false'}`);
  const started = performance.now();
  const what = withKrb5 ? 'the unix socket binding and krb5 support' : 'the unix socket binding';
  console.log(`auditrelay: building ${what} (${path.relative(root, nativeDir)}/, node-gyp ${nodeGyp})`);
  const res = spawnSync(process.execPath, args, { cwd: nativeDir, stdio: 'inherit' });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (res.error || res.status !== 0) {
    const why = res.error ? res.error.message : `node-gyp exited with status ${res.status ?? res.signal}`;
    console.error(
      `auditrelay: ERROR: building ${what} failed after ${seconds} s (${why}); see the output above.`,
    );
    return false;
  }
  console.log(`auditrelay: built ${what} in ${seconds} s`);
  return true;
}

/** Proves that an addon loads (links, Node-API version) in a separate process; the error text, or undefined. */
function loadError(file) {
  if (!existsSync(file)) return `${file} was not produced`;
  const load = run(process.execPath, ['-e', `require(${JSON.stringify(file)})`]);
  return load.status === 0 ? undefined : `${file} was built but does not load:\n${load.stderr.trim()}`;
}

if (process.env.AUDITRELAY_SKIP_NATIVE === '1') {
  console.log('auditrelay: native bindings not built (AUDITRELAY_SKIP_NATIVE=1)');
  process.exit(0);
}

const missingTools = [];
for (const [tool, pkg] of [
  ['make', 'make'],
  [process.env.CXX || 'g++', 'g++'],
  ['python3', 'python3'],
]) {
  if (!(path.isAbsolute(tool) ? existsSync(tool) : onPath(tool))) {
    missingTools.push(`${tool} not found (Debian package ${pkg}, or build-essential)`);
  }
}
const nodeGyp = findNodeGyp();
if (nodeGyp === undefined) missingTools.push("npm's node-gyp was not found");
if (missingTools.length > 0) {
  unixNotBuilt(missingTools.join('; '));
  krb5NotBuilt(missingTools.join('; '));
  finish();
}

const krb5Reason = krb5Missing();
if (krb5Reason !== undefined) krb5NotBuilt(krb5Reason);
let withKrb5 = krb5Reason === undefined;
if (!build(nodeGyp, withKrb5)) {
  if (withKrb5) {
    krb5NotBuilt('its build failed (output above)');
    withKrb5 = false;
    console.error('auditrelay: retrying without krb5 support');
    if (!build(nodeGyp, false)) unixNotBuilt('its build failed (output above)');
  } else {
    unixNotBuilt('its build failed (output above)');
  }
}
// A stale binding from an earlier build must not be taken for a fresh one.
if (!withKrb5) rmSync(ADDONS.krb5, { force: true });
const unixError = loadError(ADDONS.unix);
if (unixError) {
  console.error(`auditrelay: ERROR: ${unixError}`);
  unixNotBuilt('it does not load');
}
if (withKrb5) {
  const krb5Error = loadError(ADDONS.krb5);
  if (krb5Error) {
    console.error(`auditrelay: ERROR: ${krb5Error}`);
    krb5NotBuilt('it does not load; the runtime library comes from libgssapi-krb5-2');
  }
}
finish();
