/**
 * `/health` and `auditrelay status` as a monitoring check sees them, against real agent processes (the CLI, real
 * sockets, queue_dir and state_file in the test's temporary directory) and a real collector: healthy, the link
 * down past health_link_down_timeout, the queue full; HEAD on every endpoint; the collector's health.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { ExitCodes } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { collectorMetrics } from '../../src/status/metrics.js';
import { StatusServer } from '../../src/status/server.js';
import { collectorView } from '../../src/status/views.js';
import { killAll, requireBuild, runCli } from '../cli/process.js';
import { records } from '../helpers/agent-harness.js';
import { pollUntil } from '../helpers/wait.js';
import { request, type StatusAgent, startStatusAgent, waitForHealth } from './cli-agent.js';

const cleanups: (() => Promise<void> | void)[] = [];
beforeAll(requireBuild);
afterEach(async () => {
  await killAll();
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function collectorOn(port = 0): Promise<{ collector: Collector; port: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-health-log-'));
  const collector = new Collector(
    { ...DEFAULT_COLLECTOR_SETTINGS, host: '127.0.0.1', port, logFile: path.join(dir, 'audit.log') },
    silentLogger(),
  );
  const addr = await collector.start();
  cleanups.push(async () => {
    await collector.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { collector, port: addr.port };
}

/** A loopback port nothing listens on (bound, read, closed). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function agent(port: number, extra: Record<string, string | number> = {}): Promise<StatusAgent> {
  const a = await startStatusAgent(port, extra);
  cleanups.push(() => a.cleanup());
  return a;
}

const status = (url: string, json = false) => runCli(['status', '--url', url, ...(json ? ['--json'] : [])]);

describe('health of a real agent process', () => {
  it('healthy: /health 200, `status` exits 0; HEAD answers every endpoint without a body', async () => {
    const { port } = await collectorOn();
    const a = await agent(port);
    expect(await waitForHealth(a.url, 200, 'a healthy agent', /^healthy\n/)).toBe('healthy\n');
    a.write(records(1, 10));
    await pollUntil(async () => JSON.parse((await request(`${a.url}/status`)).body).recordsAcked === 10, {
      timeoutMs: 10_000,
      what: '10 records acknowledged',
    });
    const r = await status(a.url);
    expect(r.code, r.stderr).toBe(ExitCodes.OK);
    expect(r.stdout).toMatch(/^auditrelay agent\n {2}health +HEALTHY\n {2}version +\d+\.\d+\.\d+/);
    expect(r.stdout).toMatch(new RegExp(`^ {2}server +127\\.0\\.0\\.1:${port}$`, 'm'));
    const s = JSON.parse((await status(a.url, true)).stdout);
    expect(s).toMatchObject({ role: 'agent', health: { status: 'healthy', healthy: true, reasons: [] } });
    expect(Date.now() - Date.parse(s.lastAckAt)).toBeLessThan(60_000);

    for (const p of ['/', '/health', '/status', '/metrics', '/events']) {
      const [get, head] = [await request(`${a.url}${p}`), await request(`${a.url}${p}`, 'HEAD')];
      expect(head.status, p).toBe(200);
      expect(head.headers['content-type'], p).toBe(get.headers['content-type']);
      expect(head.body, p).toBe('');
      expect(get.body.length, p).toBeGreaterThan(0);
    }
    expect((await request(`${a.url}/health`, 'POST')).headers.allow).toBe('GET, HEAD');

    // Metrics: the last ACK, replies by type, the latency histogram, build_info, the health series.
    const m = (await request(`${a.url}/metrics`)).body;
    expect(m).toMatch(/^auditrelay_last_ack_timestamp_seconds [1-9]/m);
    expect(m).toMatch(/^auditrelay_replies_total\{type="ACK"\} (1[1-9]|[2-9]\d)/m); // records + heartbeats
    expect(m).toMatch(/^auditrelay_ack_latency_seconds_count 10$/m);
    expect(m).toMatch(/^auditrelay_build_info\{version="[\d.]+",node_version="[\d.]+",role="agent"\} 1$/m);
    expect(m).toMatch(/^auditrelay_healthy 1$/m);
    expect(m).toMatch(/^auditrelay_health_status\{status="healthy"\} 1$/m);
    expect(m).toMatch(/^process_cpu_seconds_total /m);
  });

  it('link down past health_link_down_timeout: /health 503 link_down, `status` exits 4; back to 200 when the server returns', async () => {
    const port = await closedPort();
    const a = await agent(port, { health_link_down_timeout: 1 });
    const body = await waitForHealth(a.url, 503, 'link_down');
    expect(body).toMatch(/^down \(unhealthy\)\nlink_down: no working link to 127\.0\.0\.1:\d+ for \d+ s/);
    expect(body).toMatch(/threshold 1 s\); last failure: dial: .*ECONNREFUSED/);
    const r = await status(a.url);
    expect(r.code, r.stderr).toBe(ExitCodes.UNHEALTHY);
    expect(r.stdout).toMatch(/^ {2}health +DOWN \(unhealthy\)\n {4}link_down: /m);
    // The state series stay when the link is down: every connection state is there, 0 or 1.
    const m = (await request(`${a.url}/metrics`)).body;
    expect(m).toMatch(/^auditrelay_state\{machine="connection",state="online\.connected"\} 0$/m);
    expect(m).toMatch(/^auditrelay_link_up 0$/m);
    expect(m).toMatch(/^auditrelay_health_reason\{code="link_down"\} 1$/m);
    expect(m).toMatch(/^auditrelay_last_ack_timestamp_seconds 0$/m);

    await collectorOn(port);
    await waitForHealth(a.url, 200, 'healthy again once the server is back', /^healthy\n$/);
    expect((await status(a.url)).code).toBe(ExitCodes.OK);
  });

  it('queue full: /health 503 queue_full, `status` exits 4 (a short outage alone stays 200)', async () => {
    const port = await closedPort();
    const a = await agent(port, { queue_depth: 5, health_link_down_timeout: 3600 });
    // The link is down, but for less than the threshold: degraded, still 200.
    expect(await waitForHealth(a.url, 200, 'a reconnecting agent')).toMatch(/^degraded\nreconnecting: /);
    a.write(records(1, 20));
    const body = await waitForHealth(a.url, 503, 'queue_full');
    expect(body).toMatch(/^degraded \(unhealthy\)\n/);
    expect(body).toMatch(
      /^queue_full: the queue is full: 5 record\(s\) queued, 100 % of 5 records, \d+ more read and held/m,
    );
    expect(body).not.toMatch(/^link_down/m);
    const r = await status(a.url);
    expect(r.code, r.stderr).toBe(ExitCodes.UNHEALTHY);
    expect(r.stdout).toMatch(/^ {4}queue_full: /m);
    const m = (await request(`${a.url}/metrics`)).body;
    expect(m).toMatch(/^auditrelay_queue_capacity_records 5$/m);
    expect(m).toMatch(/^auditrelay_queue_fill_ratio 1$/m);
    expect(m).toMatch(/^auditrelay_state\{machine="queue",state="full\.[a-z]+"\} 1$/m);

    const { collector } = await collectorOn(port);
    await pollUntil(() => collector.stats.records === 20, {
      timeoutMs: 20_000,
      what: 'the 20 records delivered',
    });
    await waitForHealth(a.url, 200, 'healthy once the queue drained', /^healthy\n$/);
    expect((await status(a.url)).code).toBe(ExitCodes.OK);
  });

  it('unreachable: `status` exits 1', async () => {
    const r = await status(`http://127.0.0.1:${await closedPort()}`);
    expect(r.code).toBe(ExitCodes.FAILURE);
  });
});

describe("the collector's health", () => {
  it('200 while it listens and writes; 503 not_listening once stopped; the series are there', async () => {
    const { collector } = await collectorOn();
    const view = collectorView(collector);
    const server = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'collector',
      status: view.status,
      health: view.health,
      registry: collectorMetrics(collector, view.health),
      log: silentLogger(),
    });
    const url = `http://127.0.0.1:${(await server.start()).port}`;
    cleanups.push(async () => {
      await server.stop();
      view.close();
    });
    expect(await waitForHealth(url, 200, 'a healthy collector', /^healthy\n$/)).toBe('healthy\n');
    const m = (await request(`${url}/metrics`)).body;
    for (const type of ['ACK', 'DISKLOW', 'DISKFULL', 'DISKERROR', 'REFUSED', 'ENDING'])
      expect(m).toMatch(new RegExp(`^auditrelay_collector_replies_total\\{type="${type}"\\} 0$`, 'm'));
    expect(m).toMatch(/^auditrelay_collector_write_errors_total 0$/m);
    expect(m).toMatch(/^auditrelay_collector_listening 1$/m);
    expect(m).toMatch(/^auditrelay_health_reason\{code="disk_full"\} 0$/m);
    const r = await runCli(['status', '--url', url]);
    expect(r.code, r.stderr).toBe(ExitCodes.OK);
    expect(r.stdout).toMatch(/^ {2}listen +127\.0\.0\.1:\d+$/m);
    await collector.stop();
    expect(await waitForHealth(url, 503, 'not_listening')).toMatch(/^down \(unhealthy\)\nnot_listening: /);
    expect((await runCli(['status', '--url', url])).code).toBe(ExitCodes.UNHEALTHY);
  });
});
