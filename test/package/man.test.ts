/**
 * The manual pages (scripts/man.ts), generated from the docs: every key the configuration loaders accept is in its
 * page, and groff renders every page without a warning (the check lintian and man(1) users would make).
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { generateManPages } from '../../scripts/man.js';
import { AGENT_KEYS } from '../../src/config/agent-config.js';
import { COLLECTOR_KEYS } from '../../src/config/collector-config.js';
import { requireOrSkip } from '../helpers/prereq.js';

const pages = generateManPages({ date: new Date(Date.UTC(2025, 0, 2)) });
const page = (file: string) => {
  const p = pages.find((x) => x.file === file);
  if (!p) throw new Error(`no page ${file}`);
  return p.roff;
};

describe('manual pages from the docs', () => {
  it('auditrelay(8), auditrelay-agent.conf(5), auditrelay-collector.conf(5)', () => {
    expect(pages.map((p) => p.file)).toEqual([
      'auditrelay.8',
      'auditrelay-agent.conf.5',
      'auditrelay-collector.conf.5',
    ]);
    expect(page('auditrelay.8')).toMatch(/^\.TH "AUDITRELAY" "8" "2025-01-02" "auditrelay \d+\.\d+\.\d+" /m);
    for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'PLUGIN MODE', 'LOGGING', 'FILES', 'SEE ALSO'])
      expect(page('auditrelay.8')).toContain(`.SH "${section}"`);
  });

  it('every agent key is in auditrelay-agent.conf(5), every collector key in auditrelay-collector.conf(5)', () => {
    const missing = (roff: string, keys: readonly string[]) =>
      keys.filter((k) => !roff.includes(`\\fB${k}\\fP`));
    expect(missing(page('auditrelay-agent.conf.5'), AGENT_KEYS)).toEqual([]);
    expect(missing(page('auditrelay-collector.conf.5'), COLLECTOR_KEYS)).toEqual([]);
  });

  it('links to other documents name their installed paths', () => {
    expect(page('auditrelay.8')).toContain('/usr/share/doc/auditrelay/docs/queue.md');
    expect(page('auditrelay.8')).not.toMatch(/[( ]docs\/[a-z-]+\.md/);
  });
});

const groff = requireOrSkip({ suite: 'manual pages rendered by groff', binaries: ['groff'] });

describe.skipIf(!groff)('manual pages rendered by groff', () => {
  for (const p of pages) {
    it(`${p.file}: no warning`, () => {
      const r = spawnSync('groff', ['-t', '-man', '-Tutf8', '-ww', '-z'], {
        input: p.roff,
        encoding: 'utf8',
      });
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    });
  }
});
