/**
 * The service-mode inputs under the real Agent (input pump, durable queue, session) against a scripted
 * managed-format server on loopback:
 * - tail: audit.log rotated (rename + create) several times and the agent restarted in between; every
 *   record arrives exactly once, in order;
 * - af_unix: the plugin goes away and comes back; what was sent on either connection arrives, in order.
 * Real timers (poll 20 ms, fs.watch on), waits with deadlines.
 */
import { appendFileSync, mkdtempSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';
import { AfUnixInput } from '../../src/input/af-unix.js';
import { TailInput } from '../../src/input/tail.js';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let root = '';
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

const silent = pino({ level: 'silent' });
const text = (from: number, n: number) =>
  records(from, n)
    .map((l) => `${l}\n`)
    .join('');

async function startServer(): Promise<ScriptServer> {
  const server = new ScriptServer();
  await server.start();
  cleanups.push(() => server.stop());
  return server;
}

/** An agent on `input` with a durable queue in `dir`; stop() = SIGTERM path: stop reading, drain, close. */
async function startAgent(input: Readable & { close(): void }, port: number, dir: string) {
  const { queue } = await DurableQueue.open({
    dir,
    maxBytes: 16 * 1024 * 1024,
    fsync: 'never',
    fsyncIntervalMs: 200,
  });
  const settings = settingsFromConfig({
    ...defaultAgentConfig(),
    remoteServer: [{ host: '127.0.0.1', port: null }],
    port,
    reconnectInitialMs: 20,
    reconnectMaxMs: 200,
    drainTimeout: 5,
  });
  const agent = new Agent(settings, { input, log: silent, queue });
  const done = agent.run();
  let stopped = false;
  const stop = async (): Promise<number> => {
    if (stopped) return -1;
    stopped = true;
    agent.stop('test');
    input.close();
    const code = await done;
    await queue.close();
    return code;
  };
  cleanups.push(() => void stop());
  return { agent, queue, stop };
}

describe('service mode under the agent', () => {
  it('tail: rotations and an agent restart lose nothing and send nothing twice', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-svc-'));
    const log = join(root, 'audit.log');
    const stateFile = join(root, 'tail.json');
    const server = await startServer();
    const tail = () =>
      new TailInput({
        path: log,
        stateFile,
        log: silent,
        pollIntervalMs: 20,
        rotateWaitMs: 200,
        startAt: 'beginning',
      });
    writeFileSync(log, text(1, 50));
    let a = await startAgent(tail(), server.port, join(root, 'q'));
    const waitFor = (n: number) =>
      pollUntil(() => server.records.length >= n, {
        timeoutMs: 20_000,
        what: `${n} records at the server`,
        diagnostics: () => `have ${server.records.length}`,
      });
    await waitFor(50);
    appendFileSync(log, text(51, 50));
    renameSync(log, `${log}.1`); // auditd's rotation: rename, then a new file
    writeFileSync(log, text(101, 50));
    await waitFor(150);
    expect(await a.stop()).toBe(0);
    // While stopped: more records, and two more rotations (the file it was reading ends up as .2).
    appendFileSync(log, text(151, 25));
    renameSync(`${log}.1`, `${log}.2`);
    renameSync(log, `${log}.1`);
    writeFileSync(log, text(176, 25));
    renameSync(`${log}.1`, `${log}.3.tmp`);
    renameSync(`${log}.2`, `${log}.3`);
    renameSync(`${log}.3.tmp`, `${log}.2`);
    renameSync(log, `${log}.1`);
    writeFileSync(log, text(201, 25));
    a = await startAgent(tail(), server.port, join(root, 'q'));
    await waitFor(225);
    appendFileSync(log, text(226, 25));
    await waitFor(250);
    expect(await a.stop()).toBe(0);
    const got = seqs(server.lines());
    expect(gapsAndDuplicates(got, 250)).toEqual({ lost: [], duplicates: 0 });
    expect(got).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
  });

  it('af_unix: the plugin goes away and comes back; both connections are forwarded in order', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-svc-'));
    const sock = join(root, 'audispd_events');
    const server = await startServer();
    const clients: net.Socket[] = [];
    const plugin = async () => {
      const s = net.createServer((c) => {
        c.on('error', () => {});
        clients.push(c);
      });
      await new Promise<void>((resolve) => s.listen(sock, () => resolve()));
      return s;
    };
    let p = await plugin();
    const input = new AfUnixInput({ path: sock, log: silent, initialDelayMs: 10, maxDelayMs: 100 });
    const a = await startAgent(input, server.port, join(root, 'q'));
    await pollUntil(() => clients.length === 1, { timeoutMs: 10_000, what: 'the agent to connect' });
    clients[0]!.end(text(1, 100)); // then auditd stops
    await new Promise<void>((resolve) => p.close(() => resolve()));
    await pollUntil(() => server.records.length >= 100, { timeoutMs: 20_000, what: '100 records' });
    try {
      unlinkSync(sock);
    } catch {
      // already removed by close()
    }
    p = await plugin();
    cleanups.push(() => new Promise<void>((resolve) => p.close(() => resolve())));
    await pollUntil(() => clients.length === 2, { timeoutMs: 10_000, what: 'the agent to reconnect' });
    clients[1]!.write(text(101, 100));
    await pollUntil(() => server.records.length >= 200, { timeoutMs: 20_000, what: '200 records' });
    expect(await a.stop()).toBe(0);
    expect(seqs(server.lines())).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    for (const c of clients) c.destroy();
  });
});
