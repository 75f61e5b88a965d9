/** Locations inside the installed package, valid both from dist/ and from the TypeScript sources. */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('auditrelay: cannot find the package root (package.json)');
    dir = up;
  }
  return dir;
}

export const PACKAGE_ROOT = findRoot();
export const DIAGRAMS_DIR = path.join(PACKAGE_ROOT, 'diagrams');
export const BIN_PATH = path.join(PACKAGE_ROOT, 'bin/auditrelay.js');
export const DEMO_CORPUS_DIR = path.join(PACKAGE_ROOT, 'test/fixtures/corpus');

let cachedVersion: string | undefined;
/** The package's version (package.json), e.g. `0.1.0`. */
export function packageVersion(): string {
  cachedVersion ??= (
    JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
  ).version;
  return cachedVersion;
}
