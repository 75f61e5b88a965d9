import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  configKeyName,
  keepRestartKeys,
  RELOAD_POLICY,
  type ReloadPolicy,
  reloadPlan,
} from '../../src/agent/reload-policy.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';

describe('reload policy', () => {
  it('sorts the changed keys by what applying them takes', () => {
    const prev = defaultAgentConfig();
    const next = {
      ...prev,
      reconnectMaxMs: 1000,
      maxInFlight: 64,
      queueDir: '/elsewhere',
      logLevel: 'debug' as const,
    };
    expect(reloadPlan(prev, next)).toEqual({
      live: ['reconnect_max_ms', 'log_level'],
      relink: ['max_in_flight'],
      restart: ['queue_dir'],
    });
    const applied = keepRestartKeys(prev, next);
    expect(applied).toEqual({ ...next, queueDir: prev.queueDir });
  });

  it('is the list in docs/configuration.md', () => {
    const doc = readFileSync(path.resolve(import.meta.dirname, '../../docs/configuration.md'), 'utf8');
    const block = doc.slice(
      doc.indexOf('<!-- reload-policy:begin -->'),
      doc.indexOf('<!-- reload-policy:end -->'),
    );
    const documented: Record<string, ReloadPolicy> = {};
    for (const m of block.matchAll(/^- \*\*(live|relink|restart)\*\*[^:]*: (.*)$/gm)) {
      for (const k of m[2]!.matchAll(/`([a-z0-9_]+)`/g)) documented[k[1]!] = m[1] as ReloadPolicy;
    }
    const table = Object.fromEntries(Object.entries(RELOAD_POLICY).map(([k, v]) => [configKeyName(k), v]));
    expect(documented).toEqual(table);
  });
});
