/**
 * The tail input's state file (`tail_state_file`) is written as auditd writes its files: never through a
 * symbolic link, the temporary file created exclusively, in a directory nobody else can write.
 */
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadTailState, saveTailState, type TailState } from '../../src/input/tail-state.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-tailstate-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const state: TailState = {
  version: 1,
  path: '/var/log/audit/audit.log',
  dev: '2049',
  ino: '12345',
  offset: 64,
  mtimeMs: 1,
  checkLen: 0,
  checkSha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
};

describe('tail state file', () => {
  it('never writes through a link planted at the temporary file', () => {
    const dir = join(root, 'lib');
    mkdirSync(dir, { mode: 0o700 });
    const victim = join(root, 'victim');
    writeFileSync(victim, 'precious\n');
    const file = join(dir, 'tail.state');
    symlinkSync(victim, join(dir, '.tail.state.tmp'));
    saveTailState(file, state, false);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(loadTailState(file)).toMatchObject({ state: { offset: 64 }, problem: null });
  });

  it('never replaces what a link at the state file points to', () => {
    const dir = join(root, 'lib');
    mkdirSync(dir, { mode: 0o700 });
    const victim = join(root, 'victim');
    writeFileSync(victim, 'precious\n');
    const file = join(dir, 'tail.state');
    symlinkSync(victim, file);
    saveTailState(file, state, true);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readdirSync(dir)).toEqual(['tail.state']);
  });

  it('refuses a directory others can write', () => {
    const dir = join(root, 'lib');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    expect(() => saveTailState(join(dir, 'tail.state'), state, false)).toThrow(
      /directory of tail_state_file .* is writable by others.*chmod go-w/,
    );
    expect(readdirSync(dir)).toEqual([]);
  });

  it('does not read a link or a FIFO as the state', () => {
    const dir = join(root, 'lib');
    mkdirSync(dir, { mode: 0o700 });
    const real = join(root, 'elsewhere');
    writeFileSync(real, `${JSON.stringify(state)}\n`);
    symlinkSync(real, join(dir, 'tail.state'));
    expect(loadTailState(join(dir, 'tail.state')).problem).toMatch(/is a symbolic link/);
  });
});
