import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';

const doc = readFileSync(path.resolve(import.meta.dirname, '../../docs/errors.md'), 'utf8');

describe('error docs', () => {
  it('documents every error code, and no code that does not exist', () => {
    const codes = Object.values(errors.ErrorCodes);
    for (const code of codes) expect(doc).toContain(`\`${code}\``);
    const documented = [...doc.matchAll(/`(AR_[A-Z_]+)`/g)].map((m) => m[1]);
    expect(new Set(documented)).toEqual(new Set(codes));
  });

  it('documents every exit status', () => {
    for (const status of Object.values(errors.ExitCodes))
      expect(doc).toMatch(new RegExp(`^\\| ${status} \\|`, 'm'));
  });

  it('gives each error class its code and name', () => {
    const e = new errors.ConfigError('bad value', { file: '/f', line: 3, key: 'port', allowed: '1..65535' });
    expect(e.code).toBe('AR_CONFIG');
    expect(e.name).toBe('ConfigError');
    expect(e.message).toBe('/f:3: port: bad value (allowed: 1..65535)');
    expect(new errors.ProtocolError('x').code).toBe('AR_PROTOCOL');
  });
});
