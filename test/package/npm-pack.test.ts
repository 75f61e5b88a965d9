/**
 * The npm tarball (package.json "files"): it carries the documentation (docs/, which the man pages and the status
 * page's links name) and the sources of both native bindings, which `npm install` builds on the target.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';

it('npm pack includes docs/ and the native sources', () => {
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const r = spawnSync(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
  });
  expect(r.status, r.stderr).toBe(0);
  const files = new Set(
    (JSON.parse(r.stdout) as [{ files: { path: string }[] }])[0].files.map((f) => f.path),
  );
  const docs = readdirSync(path.join(REPO_ROOT, 'docs')).filter((f) => f.endsWith('.md'));
  expect(docs.filter((d) => !files.has(`docs/${d}`))).toEqual([]);
  expect(files.has('docs/schema/event-v1.schema.json')).toBe(true);
  for (const f of [
    'native/binding.gyp',
    'native/gssapi.cc',
    'native/unix.cc',
    'scripts/build-native.mjs',
    'packaging/auditrelay-plugin',
  ])
    expect(files.has(f), f).toBe(true);
});
