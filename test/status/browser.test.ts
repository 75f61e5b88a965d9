/**
 * The status page in a real browser (Debian's Chromium driven by playwright-core, never a
 * downloaded browser): the highlighted state follows the link when the server goes away and when it
 * comes back; the verdict at the top of a real agent process's page (healthy, down, no answer once the
 * process is gone), with the queue's flips folded; the collector's page. Screenshots are saved under
 * test-artifacts/ (git-ignored; CI keeps them as artifacts).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { silentLogger } from '../../src/log.js';
import { agentMetrics, collectorMetrics } from '../../src/status/metrics.js';
import { StatusServer } from '../../src/status/server.js';
import { collectorView } from '../../src/status/views.js';
import { killAll, requireBuild } from '../cli/process.js';
import { records, startAgent } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import { startStatusAgent } from './cli-agent.js';

const CHROMIUM = findBinary('chromium') ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');
const available = requireOrSkip({
  suite: 'status page in a real browser (Debian chromium)',
  binaries: [CHROMIUM],
  files: [path.join(REPO_ROOT, 'diagrams/connection.svg')],
});

describe.skipIf(!available)('status page in Chromium', () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await killAll();
  });

  it('highlights the live connection state as the server goes away and comes back', async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const logFile = path.join(ARTIFACTS, 'browser-collector.log');
    const settings = { ...DEFAULT_COLLECTOR_SETTINGS, port: 0, logFile, maxPerAddr: 4 };
    let collector = new Collector(settings, silentLogger());
    const { port } = await collector.start();
    const agent = startAgent(port, { reconnectInitialMs: 300, reconnectMaxMs: 600 });
    const status = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'agent',
      status: () => ({ ...agent.agent.status() }),
      registry: agentMetrics({
        status: () => agent.agent.status(),
        states: () => agent.agent.observer.states,
      }),
      observer: agent.agent.observer,
      log: silentLogger(),
    });
    const { port: statusPort } = await status.start();
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    try {
      await page.goto(`http://127.0.0.1:${statusPort}/`);
      const active = () =>
        page.evaluate(() => [...document.querySelectorAll('#machine-connection g.active')].map((g) => g.id));
      await page.waitForFunction(() => document.body.dataset.connection === 'online.connected');
      await page.waitForFunction(() =>
        document.getElementById('state-connection.online.connected')?.classList.contains('active'),
      );
      expect(await active()).toEqual(['state-connection.online', 'state-connection.online.connected']);
      agent.write(records(1, 10));
      await page.waitForFunction(() => document.getElementById('v-recordsAcked')?.textContent === '10');
      await page.screenshot({ path: path.join(ARTIFACTS, 'status-1-connected.png'), fullPage: true });

      // The server goes away (ENDING): the page leaves `online.connected`.
      await collector.stop();
      await page.waitForFunction(() => document.body.dataset.connection !== 'online.connected');
      const away = await active();
      expect(away.some((id) => /state-connection\.(backoff|connecting)$/.test(id))).toBe(true);
      expect(away).not.toContain('state-connection.online.connected');
      await page.waitForFunction(() =>
        /ENDING|refused|ECONNREFUSED/i.test(document.getElementById('errors')?.textContent ?? ''),
      );
      await page.screenshot({ path: path.join(ARTIFACTS, 'status-2-server-away.png'), fullPage: true });

      // It comes back on the same port: the page returns to `online.connected` by itself.
      collector = new Collector({ ...settings, port }, silentLogger());
      await collector.start();
      await page.waitForFunction(() => document.body.dataset.connection === 'online.connected');
      expect(await active()).toEqual(['state-connection.online', 'state-connection.online.connected']);
      await page.screenshot({ path: path.join(ARTIFACTS, 'status-3-back.png'), fullPage: true });
    } finally {
      await page.close();
      await status.stop();
      agent.input.end();
      await agent.done;
      await collector.stop();
    }
  });

  it("reads in one second: a real agent's page healthy, down, then NO ANSWER when the process is gone", async () => {
    requireBuild();
    mkdirSync(ARTIFACTS, { recursive: true });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-page-'));
    const collector = new Collector(
      { ...DEFAULT_COLLECTOR_SETTINGS, host: '127.0.0.1', port: 0, logFile: path.join(dir, 'audit.log') },
      silentLogger(),
    );
    const { port } = await collector.start();
    const agent = await startStatusAgent(port, { health_link_down_timeout: 2 });
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    try {
      await page.goto(`${agent.url}/`);
      await page.waitForFunction(() => document.body.dataset.health === 'healthy');
      agent.write(records(1, 300));
      await page.waitForFunction(() => document.getElementById('v-recordsAcked')?.textContent === '300');
      await page.waitForFunction(() => document.getElementById('v-lastAck')?.textContent?.endsWith(' ago'));
      const top = await page.evaluate(() => ({
        verdict: document.getElementById('verdict')?.textContent,
        server: document.getElementById('v-server')?.textContent,
        version: document.getElementById('v-version')?.textContent,
        // The queue flipped empty ⇄ holding at every record: one line, not 600.
        queueRows: [...document.querySelectorAll('#transitions tr')].filter((r) =>
          r.textContent?.includes('queue'),
        ).length,
      }));
      expect(top).toMatchObject({ verdict: 'HEALTHY', server: `127.0.0.1:${port}` });
      expect(top.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(top.queueRows).toBeLessThanOrEqual(2);
      await page.screenshot({ path: path.join(ARTIFACTS, 'agent-healthy.png') });

      // The server goes away: degraded while it reconnects, then DOWN past health_link_down_timeout (2 s), with
      // the reason and the latest error above the fold.
      await collector.stop();
      await page.waitForFunction(() => document.body.dataset.health === 'down', null, { timeout: 20_000 });
      const down = await page.evaluate(() => ({
        reasons: document.getElementById('reasons')?.textContent ?? '',
        firstError: document.querySelector('#errors tr')?.textContent ?? '',
        errorsTop: document.getElementById('errors')!.getBoundingClientRect().top,
      }));
      expect(down.reasons).toMatch(/link_down: no working link to 127\.0\.0\.1:\d+ for \d+ s/);
      expect(down.firstError).toMatch(/ENDING|ECONNREFUSED|refused/i);
      expect(down.errorsTop).toBeLessThan(900);
      await page.screenshot({ path: path.join(ARTIFACTS, 'agent-down.png') });

      // The process is gone: the page says so instead of showing the last status as if it were current.
      process.kill(agent.proc.pid, 'SIGKILL');
      await page.waitForFunction(() => document.body.dataset.health === 'stale', null, { timeout: 20_000 });
      expect(await page.textContent('#verdict')).toBe('NO ANSWER');
      expect(await page.textContent('#reasons')).toMatch(/has not answered for \d+ s/);
      await page.screenshot({ path: path.join(ARTIFACTS, 'agent-no-answer.png') });
    } finally {
      await page.close();
      await killAll();
      await collector.stop();
      agent.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the collector's page: listening address, records/s, log state, hosts", async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-page-'));
    const collector = new Collector(
      { ...DEFAULT_COLLECTOR_SETTINGS, host: '127.0.0.1', port: 0, logFile: path.join(dir, 'audit.log') },
      silentLogger(),
    );
    const { port } = await collector.start();
    const view = collectorView(collector);
    const status = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'collector',
      status: view.status,
      eventStatus: view.eventStatus,
      health: view.health,
      registry: collectorMetrics(collector, view.health),
      log: silentLogger(),
    });
    const { port: statusPort } = await status.start();
    const agent = startAgent(port);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    try {
      agent.write(records(1, 50));
      await pollUntil(() => collector.stats.records === 50, {
        timeoutMs: 10_000,
        what: '50 records written',
      });
      await page.goto(`http://127.0.0.1:${statusPort}/`);
      await page.waitForFunction(() => document.getElementById('v-records')?.textContent === '50');
      await page.waitForFunction(() => document.querySelectorAll('#hosts tr').length >= 2);
      expect(await page.textContent('#verdict')).toBe('HEALTHY');
      expect(await page.textContent('#v-listen')).toBe(`127.0.0.1:${port}`);
      expect(await page.textContent('#v-logState')).toBe('writing');
      await page.screenshot({ path: path.join(ARTIFACTS, 'collector.png') });
    } finally {
      await page.close();
      await status.stop();
      view.close();
      agent.input.end();
      await agent.done;
      await collector.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
