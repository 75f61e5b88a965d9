/**
 * The status page in a real browser (Debian's Chromium driven by playwright-core, never a
 * downloaded browser): the highlighted state follows the link when the server goes away and when it
 * comes back. Screenshots are saved under test-artifacts/.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { silentLogger } from '../../src/log.js';
import { agentMetrics } from '../../src/status/metrics.js';
import { StatusServer } from '../../src/status/server.js';
import { records, startAgent } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';

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
});
