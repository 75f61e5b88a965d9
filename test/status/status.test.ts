/**
 * The status listener: /status JSON, /metrics in Prometheus text format whose counters move when
 * records flow, /events, and the page.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { silentLogger } from '../../src/log.js';
import { agentMachineStates, agentMetrics, collectorMetrics } from '../../src/status/metrics.js';
import { MAX_EVENT_CLIENTS, StatusServer } from '../../src/status/server.js';
import { type RunningAgent, records, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer | undefined;
let agent: RunningAgent | undefined;
let status: StatusServer | undefined;

afterEach(async () => {
  await status?.stop();
  agent?.input.end();
  await agent?.done;
  await server?.stop();
  status = agent = server = undefined;
});

/** Parses Prometheus text exposition format 0.0.4 strictly enough to catch malformed output. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        expect(['counter', 'gauge', 'histogram', 'summary', 'untyped'], `line ${i + 1}`).toContain(meta[3]);
        types.set(meta[2]!, meta[3]!);
      }
      continue;
    }
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)$/.exec(
        line,
      );
    expect(m, `line ${i + 1} is not a valid sample: ${line}`).not.toBeNull();
    const name = m![1]!;
    const family = types.has(name) ? name : name.replace(/_(total|sum|count|bucket)$/, '');
    expect(types.has(family) || types.has(name), `sample ${name} without # TYPE`).toBe(true);
    samples.set(`${name}${m![2] ?? ''}`, Number(m![3]));
  }
  return samples;
}

async function startAll() {
  server = new ScriptServer();
  agent = startAgent(await server.start());
  const a = agent;
  status = new StatusServer({
    host: '127.0.0.1',
    port: 0,
    role: 'agent',
    status: () => ({ ...a.agent.status() }),
    registry: agentMetrics({ status: () => a.agent.status(), states: () => a.agent.observer.states }),
    observer: a.agent.observer,
    log: silentLogger(),
  });
  const { port } = await status.start();
  return `http://127.0.0.1:${port}`;
}

describe('status listener', () => {
  it('serves /metrics in Prometheus text format, and its counters move when records flow', async () => {
    const base = await startAll();
    await agent!.waitForState('online.connected');
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const before = parsePrometheus(await res.text());
    expect(before.get('auditrelay_records_acked_total')).toBe(0);
    expect(before.get('auditrelay_state{machine="connection",state="online.connected"}')).toBe(1);
    agent!.write(records(1, 25));
    await server!.waitForRecords(25);
    await pollUntil(() => agent!.agent.queue.depth === 0, { timeoutMs: 5000, what: 'acks' });
    const after = parsePrometheus(await (await fetch(`${base}/metrics`)).text());
    expect(after.get('auditrelay_records_queued_total')).toBe(25);
    expect(after.get('auditrelay_records_acked_total')).toBe(25);
    expect(after.get('auditrelay_connects_total')).toBe(1);
    expect(after.get('auditrelay_queue_records')).toBe(0);
  });

  it('follows the Prometheus conventions, and keeps every state series when the link drops', async () => {
    server = new ScriptServer();
    agent = startAgent(await server.start());
    const a = agent;
    const registry = agentMetrics({
      status: () => a.agent.status(),
      states: () => a.agent.observer.states,
      meter: a.agent.meter,
    });
    await agent.waitForState('online.connected');
    const text = await registry.metrics();
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
    for (const [name, type] of types) {
      if (!name.startsWith('auditrelay_')) continue;
      if (type === 'counter') expect(name, name).toMatch(/_total$/);
      else expect(name, name).not.toMatch(/_total$/);
      // Base units only: no milliseconds, no kilobytes.
      expect(name, name).not.toMatch(/_(ms|milliseconds|kb|kilobytes|percent)(_|$)/);
    }
    expect(types.get('auditrelay_ack_latency_seconds')).toBe('histogram');
    expect(types.get('auditrelay_build_info')).toBe('gauge');
    expect(types.has('process_cpu_seconds_total')).toBe(true);
    const series = (t: string) => [...t.matchAll(/^auditrelay_state\{([^}]*)\} ([01])$/gm)];
    const up = series(text);
    const known = [...agentMachineStates().values()].flat().length;
    expect(up).toHaveLength(known);
    expect(up.filter((m) => m[2] === '1')).toHaveLength(3); // one current state per machine
    // The server goes away for good: the link cannot come back while the series are read.
    await server.stop();
    server = undefined;
    await pollUntil(() => !a.agent.connectionState().startsWith('online'), {
      timeoutMs: 10_000,
      what: 'the link down',
    });
    const down = series(await registry.metrics());
    expect(down.map((m) => m[1])).toEqual(up.map((m) => m[1]));
    expect(down.find((m) => m[1] === 'machine="connection",state="online.connected"')?.[2]).toBe('0');
  });

  it('serves /status as JSON with the machines, transitions and errors', async () => {
    const base = await startAll();
    await agent!.waitForState('online.connected');
    server!.current!.socket.resetAndDestroy();
    await server!.waitForConnections(2);
    await agent!.waitForState('online.connected');
    const s = (await (await fetch(`${base}/status`)).json()) as Record<string, unknown>;
    expect(s.role).toBe('agent');
    expect(s.states).toEqual({ reader: 'reading', queue: 'empty', connection: 'online.connected' });
    expect((s.transitions as { to: string }[]).map((t) => t.to)).toContain('backoff');
    expect((s.errors as { source: string; message: string }[])[0]).toMatchObject({ source: 'connection' });
    expect(s.connects).toBe(2);
  });

  it('streams transitions as server-sent events and serves a page with the diagrams', async () => {
    const base = await startAll();
    const page = await (await fetch(`${base}/`)).text();
    expect(page).toMatch(/id="state(-|&#45;)connection\.online\.connected"/);
    expect(page).toContain("new EventSource('/events')");
    const ctrl = new AbortController();
    const res = await fetch(`${base}/events`, { signal: ctrl.signal });
    const reader = res.body!.getReader();
    let text = '';
    await agent!.waitForState('online.connected');
    server!.current!.socket.resetAndDestroy();
    await pollUntil(
      async () => {
        const { value } = await reader.read();
        text += new TextDecoder().decode(value);
        return /event: transition\ndata: \{[^\n]*"to":"backoff"/.test(text);
      },
      { timeoutMs: 10_000, what: 'a transition event to backoff' },
    );
    ctrl.abort();
    expect(text.startsWith('event: status\n')).toBe(true);
  });

  it("serves the collector's /metrics and /status, whose counters move when records arrive", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-status-'));
    const collector = new Collector(
      { ...DEFAULT_COLLECTOR_SETTINGS, port: 0, logFile: path.join(dir, 'log') },
      silentLogger(),
    );
    const { port } = await collector.start();
    const cs = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'collector',
      status: () => ({ ...collector.stats }),
      registry: collectorMetrics(collector),
      log: silentLogger(),
    });
    const base = `http://127.0.0.1:${(await cs.start()).port}`;
    try {
      const before = parsePrometheus(await (await fetch(`${base}/metrics`)).text());
      expect(before.get('auditrelay_collector_records_total')).toBe(0);
      agent = startAgent(port);
      agent.write(records(1, 7));
      await pollUntil(() => collector.stats.records === 7, { timeoutMs: 10_000, what: '7 records written' });
      const after = parsePrometheus(await (await fetch(`${base}/metrics`)).text());
      expect(after.get('auditrelay_collector_records_total')).toBe(7);
      expect(after.get('auditrelay_collector_clients')).toBe(1);
      const s = (await (await fetch(`${base}/status`)).json()) as Record<string, unknown>;
      expect(s).toMatchObject({ role: 'collector', records: 7, clients: 1 });
    } finally {
      await cs.stop();
      agent?.input.end();
      await agent?.done;
      agent = undefined;
      await collector.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('answers unknown paths and methods clearly', async () => {
    const base = await startAll();
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    expect((await fetch(`${base}/status`, { method: 'POST' })).status).toBe(405);
  });

  it('refuses a request whose Host header is not this listener (DNS rebinding), answers its own names', async () => {
    const base = await startAll();
    const port = Number(new URL(base).port);
    const get = (host: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port, path: '/status', headers: { host } }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            body += d;
          });
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        });
        req.on('error', reject);
      });
    const rebound = await get(`attacker.example:${port}`);
    expect(rebound.status).toBe(421);
    expect(rebound.body).toContain('Host header');
    expect(rebound.body).not.toContain('role');
    for (const ok of [
      `127.0.0.1:${port}`,
      `localhost:${port}`,
      `[::1]:${port}`,
      `${os.hostname()}:${port}`,
    ]) {
      expect((await get(ok)).status, ok).toBe(200);
    }
    expect(status!.refused.host).toBe(1);
  });

  it('caps event streams, and closes one whose client does not read', { timeout: 150_000 }, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-status-'));
    const big = 'x'.repeat(128 * 1024);
    status = new StatusServer({
      host: '127.0.0.1',
      port: 0,
      role: 'collector',
      status: () => ({ big }),
      registry: collectorMetrics({ stats: { records: 0 } as never }),
      log: silentLogger(),
      pushIntervalMs: 25,
      eventHighWater: 16 * 1024,
      eventMaxSkipped: 3,
    });
    const { port } = await status.start();
    const socks: net.Socket[] = [];
    try {
      // 300 clients that ask for /events and never read: MAX_EVENT_CLIENTS get a stream, the others a 503 or,
      // beyond the listener's connection cap, no connection.
      for (let i = 0; i < 300; i++) {
        const s = net.connect({ host: '127.0.0.1', port });
        s.on('error', () => {});
        s.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
        s.pause();
        socks.push(s);
      }
      await pollUntil(() => status!.refused.events + status!.refused.connections + MAX_EVENT_CLIENTS >= 300, {
        timeoutMs: 60_000,
        what: 'the streams over the cap to be refused',
        diagnostics: () => JSON.stringify(status!.refused),
      });
      expect(status!.refused.events + status!.refused.connections).toBe(300 - MAX_EVENT_CLIENTS);
      expect(status!.refused.events).toBeGreaterThan(0);
      // Those that never read fill their buffers, skip updates, and are closed.
      await pollUntil(() => status!.refused.slowEvents === MAX_EVENT_CLIENTS, {
        timeoutMs: 60_000,
        what: 'the streams that do not read to be closed',
        diagnostics: () => JSON.stringify(status!.refused),
      });
    } finally {
      for (const s of socks) s.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('warns when bound beyond loopback', async () => {
    const logs: { level: number; msg: string }[] = [];
    const { pino } = await import('pino');
    status = new StatusServer({
      host: '0.0.0.0',
      port: 0,
      role: 'collector',
      status: () => ({}),
      registry: collectorMetrics({ stats: { records: 0 } as never }),
      log: pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) }),
    });
    await status.start();
    expect(logs.find((l) => l.level === 40)?.msg).toMatch(/beyond loopback: anyone who can reach it/);
  });
});
