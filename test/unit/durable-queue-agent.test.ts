/**
 * The durable queue under the real agent (input pump, session, connection machine) over loopback
 * TCP: a small memory window and small segments make the backlog spill to disk and be read back
 * while the link is reset; a restart of the agent on the same queue directory delivers what the
 * first one left.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let root: string;
let server: ScriptServer | undefined;
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await server?.stop();
  server = undefined;
  if (root) rmSync(root, { recursive: true, force: true });
});

async function startAgent(port: number, dir: string) {
  const { queue } = await DurableQueue.open({
    dir,
    maxBytes: 64 * 1024 * 1024,
    fsync: 'interval',
    fsyncIntervalMs: 50,
    segmentBytes: 16 * 1024,
    memoryWindow: 64,
  });
  const settings = settingsFromConfig({
    ...defaultAgentConfig(),
    remoteServer: [{ host: '127.0.0.1', port: null }],
    port,
    reconnectInitialMs: 20,
    reconnectMaxMs: 200,
    drainTimeout: 0,
  });
  const input = new PassThrough();
  const agent = new Agent(settings, { input, log: pino({ level: 'silent' }), queue });
  const done = agent.run();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    agent.stop('test end');
    input.end();
    await done.catch(() => {});
    await queue.close();
  };
  cleanups.push(stop);
  return { agent, input, done, queue, stop };
}

describe('durable queue under the agent', () => {
  it('delivers a spilled backlog in order through link resets', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-dqa-'));
    server = new ScriptServer();
    // Withhold acks at first so the backlog builds up on disk.
    let acking = false;
    server.reply = () => (acking ? 'ack' : 'none');
    const port = await server.start();
    const a = await startAgent(port, join(root, 'q'));
    const total = 3000;
    a.input.write(
      records(1, total)
        .map((l) => `${l}\n`)
        .join(''),
    );
    await pollUntil(() => a.queue.totalAppended === total || undefined, {
      timeoutMs: 10_000,
      what: 'all appended',
    });
    expect(a.queue.spilled).toBeGreaterThan(2000);
    await server.waitForConnections(1);
    acking = true;
    server.current!.socket.resetAndDestroy(); // the unacknowledged window is resent on the next link
    await pollUntil(() => server!.records.length > 1500 || undefined, {
      timeoutMs: 10_000,
      what: '1500 records',
    });
    server.current!.socket.resetAndDestroy();
    // The agent opens a third link after the second reset, whether or not the window had already sent the rest.
    await server.waitForConnections(3);
    await pollUntil(() => new Set(seqs(server!.lines())).size === total || undefined, {
      timeoutMs: 20_000,
      what: `all ${total} records`,
      diagnostics: () => `have ${new Set(seqs(server!.lines())).size}`,
    });
    const got = seqs(server.lines());
    expect(gapsAndDuplicates(got, total).lost).toEqual([]);
    // Within each connection, records arrive in queue order.
    expect(server.conns.length).toBeGreaterThanOrEqual(3);
    for (const c of server.conns) {
      const s = seqs(c.messages.filter((m) => m.payload.length > 0).map((m) => m.payload.toString('latin1')));
      expect(s.every((n, i) => i === 0 || n > s[i - 1]!)).toBe(true);
    }
    await pollUntil(() => a.queue.depth === 0 || undefined, { timeoutMs: 10_000, what: 'queue empty' });
    a.input.end();
    expect(await a.done).toBe(0);
  });

  it('a restarted agent delivers what the previous one left in the queue directory', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-dqa-'));
    server = new ScriptServer();
    server.reply = () => 'none'; // nothing is acknowledged by the first server
    const port = await server.start();
    const dir = join(root, 'q');
    const a = await startAgent(port, dir);
    a.input.write(
      records(1, 500)
        .map((l) => `${l}\n`)
        .join(''),
    );
    await pollUntil(() => a.queue.totalAppended === 500 || undefined, {
      timeoutMs: 10_000,
      what: 'all appended',
    });
    await a.stop();
    await server.stop();

    server = new ScriptServer();
    const port2 = await server.start();
    const b = await startAgent(port2, dir);
    expect(b.queue.depth).toBe(500);
    // The persisted backlog is sent without waiting for new input (upstream waits, reference §6.5).
    await server.waitForRecords(500);
    expect(seqs(server.lines())).toEqual(Array.from({ length: 500 }, (_, i) => i + 1));
  });
});
