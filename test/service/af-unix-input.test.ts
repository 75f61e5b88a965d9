/**
 * The af_unix input (src/input/af-unix.ts) against a fake plugin: a unix stream server in a temp directory
 * that behaves like auditd's af_unix plugin (one client, writes string-format lines, goes away when auditd
 * stops, comes back on a new socket). Under the real InputPump and memory queue. Waits are events or polls
 * with a deadline.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AfUnixInput, type AfUnixInputOptions } from '../../src/input/af-unix.js';
import { InputPump } from '../../src/input/input-pump.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import { records, seqs } from '../helpers/agent-harness.js';
import { pollUntil } from '../helpers/wait.js';

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

let root = '';
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

/** A stand-in for auditd's af_unix plugin: listens on `path`, keeps the client it accepted. */
class FakePlugin {
  readonly server: net.Server;
  client: net.Socket | null = null;
  readonly clients: net.Socket[] = [];
  constructor(readonly path: string) {
    this.server = net.createServer((c) => {
      this.clients.push(c);
      c.on('error', () => {});
      this.client = c;
    });
  }
  async listen(): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.path, () => resolve());
    });
    cleanups.push(() => this.stop());
    return this;
  }
  async waitForClient(n = 1): Promise<net.Socket> {
    await pollUntil(() => this.clients.length >= n, {
      timeoutMs: 10_000,
      what: `client #${n} of ${this.path}`,
    });
    return this.clients[n - 1]!;
  }
  /** auditd stops: the connection ends and the socket file is removed. */
  async stop(): Promise<void> {
    for (const c of this.clients) c.destroy();
    if (this.server.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function setup() {
  root = mkdtempSync(join(tmpdir(), 'auditrelay-afunix-'));
  return join(root, 'audispd_events');
}

function start(opts: Partial<AfUnixInputOptions> & { path: string }, capacity = 100_000) {
  const logs: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l) as LogLine) });
  const input = new AfUnixInput({ initialDelayMs: 10, maxDelayMs: 100, log, ...opts });
  cleanups.push(() => {
    input.destroy();
  });
  const queue = new MemoryQueue(capacity);
  const pump = new InputPump({
    stream: input,
    queue,
    maxRecord: 8954,
    forwardEoe: false,
    log,
    name: 'af_unix',
  });
  pump.attach(() => {});
  const got: string[] = [];
  const take = (): string[] => {
    for (let r = queue.takeNext(); r; r = queue.takeNext()) {
      got.push(r.payload.toString('latin1').replace(/\n$/, ''));
      queue.ack(r.id);
    }
    return got;
  };
  return {
    input,
    queue,
    pump,
    logs,
    take,
    async waitForRecords(n: number): Promise<string[]> {
      await pollUntil(() => take().length >= n, {
        timeoutMs: 10_000,
        what: `${n} records`,
        diagnostics: () => `have ${got.length}\n${logs.map((l) => l.msg).join('\n')}`,
      });
      return got;
    },
    warnings: () => logs.filter((l) => l.level >= 40).map((l) => l.msg),
  };
}

const text = (from: number, n: number) =>
  records(from, n)
    .map((l) => `${l}\n`)
    .join('');

describe('af_unix input', () => {
  it('reads records from the plugin socket', async () => {
    const path = setup();
    const plugin = await new FakePlugin(path).listen();
    const a = start({ path });
    const c = await plugin.waitForClient();
    c.write(text(1, 3));
    expect(seqs(await a.waitForRecords(3))).toEqual([1, 2, 3]);
    expect(a.input.connected).toBe(true);
    expect(a.logs.some((l) => l.msg === `connected to af_unix socket ${path}`)).toBe(true);
  });

  it('reconnects when auditd restarts (socket removed, then recreated); the queue keeps what it had', async () => {
    const path = setup();
    let plugin = await new FakePlugin(path).listen();
    const a = start({ path });
    (await plugin.waitForClient()).write(text(1, 2));
    await a.waitForRecords(2);
    const disconnected = new Promise((r) => a.input.once('disconnected', r));
    await plugin.stop();
    await disconnected;
    const failed = new Promise((r) => a.input.once('connectFailed', r));
    await failed; // ENOENT: the socket file is gone
    plugin = await new FakePlugin(path).listen();
    (await plugin.waitForClient()).write(text(3, 2));
    expect(seqs(await a.waitForRecords(4))).toEqual([1, 2, 3, 4]);
    expect(a.input.stats.connects).toBe(2);
    const w = a.warnings();
    expect(w.some((m) => /ended \(auditd stopped or restarted\?\)/.test(m))).toBe(true);
    expect(w.filter((m) => /does not exist/.test(m))).toHaveLength(1);
    expect(a.logs.some((l) => /connected to af_unix socket .* after \d+ failed attempt/.test(l.msg))).toBe(
      true,
    );
  });

  it('a missing socket at start: one clear warning, retries quietly, connects when it appears', async () => {
    const path = setup();
    const a = start({ path, initialDelayMs: 5, maxDelayMs: 20 });
    a.input.resume(); // flowing: start connecting
    await pollUntil(() => a.input.stats.failedAttempts >= 5, {
      timeoutMs: 10_000,
      what: '5 failed attempts',
    });
    const w = a.warnings();
    expect(w).toHaveLength(1);
    expect(w[0]).toContain(`af_unix socket ${path} does not exist`);
    expect(w[0]).toContain('/etc/audit/plugins.d/af_unix.conf');
    const plugin = await new FakePlugin(path).listen();
    (await plugin.waitForClient()).write(text(1, 1));
    expect(seqs(await a.waitForRecords(1))).toEqual([1]);
  });

  it('repeats the warning every reminderMs while the outage lasts', async () => {
    const path = setup();
    const a = start({ path, initialDelayMs: 5, maxDelayMs: 10, reminderMs: 50 });
    const t0 = Date.now();
    await pollUntil(() => a.warnings().length >= 2, { timeoutMs: 10_000, what: 'a reminder warning' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(50);
    expect(a.warnings()[1]).toMatch(/still cannot connect .* after \d+ attempts/);
  });

  it('a path that is not a socket: ECONNREFUSED is reported as such', async () => {
    const path = setup();
    writeFileSync(path, '');
    const a = start({ path });
    await pollUntil(() => a.warnings().length >= 1, { timeoutMs: 10_000, what: 'a warning' });
    expect(a.warnings()[0]).toMatch(/nobody accepts connections on/);
  });

  it('a record torn by the end of a connection is forwarded on its own, never joined to the next connection', async () => {
    const path = setup();
    let plugin = await new FakePlugin(path).listen();
    const a = start({ path });
    const c = await plugin.waitForClient();
    c.write(`${text(1, 1)}type=USER_CMD msg=audit(1700000000.002:2): torn`);
    await a.waitForRecords(1);
    await plugin.stop();
    plugin = await new FakePlugin(path).listen();
    (await plugin.waitForClient()).write(text(3, 1));
    const got = await a.waitForRecords(3);
    expect(got).toEqual([
      records(1, 1)[0],
      'type=USER_CMD msg=audit(1700000000.002:2): torn',
      records(3, 1)[0],
    ]);
    expect(a.input.stats.tornRecords).toBe(1);
    expect(a.warnings().some((m) => /ended inside a record/.test(m))).toBe(true);
  });

  it('backpressure: a full queue pauses the socket, so the plugin cannot write; everything arrives in order', async () => {
    const path = setup();
    const plugin = await new FakePlugin(path).listen();
    const a = start({ path, highWaterMark: 1024 }, 10);
    const c = await plugin.waitForClient();
    const total = 20_000;
    const payload = text(1, total);
    const accepted = c.write(payload);
    expect(accepted).toBe(false); // the kernel buffer cannot take 1.5 MB at once
    await pollUntil(() => a.pump.held > 0, { timeoutMs: 10_000, what: 'the queue to fill' });
    // Paused: the server's pending output stays put while nothing is taken from the queue.
    const pending = c.writableLength;
    await new Promise((r) => setTimeout(r, 50));
    expect(pending).toBeGreaterThan(0);
    expect(c.writableLength).toBe(pending);
    const got = await a.waitForRecords(total);
    expect(seqs(got)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
  });

  it('refuses the binary format with an error that says how to fix the plugin configuration', async () => {
    const path = setup();
    const plugin = await new FakePlugin(path).listen();
    const a = start({ path });
    const c = await plugin.waitForClient();
    const header = Buffer.alloc(16);
    header.writeUInt32LE(1, 0);
    header.writeUInt32LE(16, 4);
    c.write(Buffer.concat([header, Buffer.from('type=SYSCALL msg=x')]));
    await pollUntil(() => a.logs.find((l) => l.level === 50), { timeoutMs: 10_000, what: 'an error line' });
    expect(a.logs.find((l) => l.level === 50)?.msg).toMatch(/binary format.*format = string/);
    expect(a.queue.totalAppended).toBe(0);
  });

  it('close() ends the stream and stops reconnecting', async () => {
    const path = setup();
    const plugin = await new FakePlugin(path).listen();
    const a = start({ path });
    (await plugin.waitForClient()).write(text(1, 1));
    await a.waitForRecords(1);
    const ended = new Promise((r) => a.input.once('end', r));
    a.input.close();
    await ended;
    expect(a.input.connected).toBe(false);
    const attempts = a.input.stats.connects + a.input.stats.failedAttempts;
    await plugin.stop();
    await new Promise((r) => setTimeout(r, 100));
    expect(a.input.stats.connects + a.input.stats.failedAttempts).toBe(attempts);
  });
});
