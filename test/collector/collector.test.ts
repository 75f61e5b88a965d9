/**
 * The real Collector, in-process on 127.0.0.1 (port 0), driven by raw managed-format clients. Every rule of
 * src/collector/collector.ts is checked by its effect: log file bytes, replies, connection state, other
 * clients. Waits are event-driven or polls with a deadline; nothing sleeps and hopes.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Logger, pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import {
  Collector,
  type CollectorSettings,
  DEFAULT_COLLECTOR_SETTINGS,
} from '../../src/collector/collector.js';
import { unescapeLogLine } from '../../src/collector/sanitize.js';
import { encodeEvent, encodeHeartbeat, encodeMessage, writeHeader } from '../../src/protocol/codec.js';
import { HEADER_SIZE, MessageType } from '../../src/protocol/constants.js';
import { expectedRecords, loadCorpus } from '../helpers/corpus.js';
import { findBinary } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import { WireClient } from '../helpers/wire-client.js';

// ---------------------------------------------------------------------------------------------------------
// Fixture records

/** Every record of the fixture corpus (the forwarder delivery contract), as latin1 text: one char per byte. */
function corpusRecords(): string[] {
  return loadCorpus({ includeShared: false }).flatMap((f) =>
    expectedRecords(f.bytes).map((r) => r.toString('latin1')),
  );
}

const RECORDS = corpusRecords();
const DISTINCT = [...new Set(RECORDS)];

/** `n` corpus records, cycling through the corpus. */
function records(n: number, offset = 0): string[] {
  return Array.from({ length: n }, (_, i) => RECORDS[(offset + i) % RECORDS.length]!);
}

/** The log file content for these lines: each followed by exactly one '\n'. */
function logOf(lines: string[]): string {
  return lines.map((l) => `${l}\n`).join('');
}

/** Payload as audisp-remote sends it: the record with its trailing '\n'. */
function wire(record: string): Buffer {
  return Buffer.from(`${record}\n`, 'latin1');
}

// ---------------------------------------------------------------------------------------------------------
// Harness

interface LogEntry {
  level: number;
  msg: string;
  peer?: string;
  [k: string]: unknown;
}

interface Running {
  collector: Collector;
  port: number;
  logFile: string;
  logs: LogEntry[];
  readLog(): string;
  stopped: boolean;
  stop(): Promise<void>;
}

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  // Newest first: clients, then collectors, then mounts and directories.
  const errors: unknown[] = [];
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-collector-test-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function memoryLogger(logs: LogEntry[]): Logger {
  return pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogEntry) });
}

async function startCollector(
  overrides: Partial<CollectorSettings> = {},
  logFile = path.join(tempDir(), 'audit.log'),
): Promise<Running> {
  const logs: LogEntry[] = [];
  const settings: CollectorSettings = {
    ...DEFAULT_COLLECTOR_SETTINGS,
    host: '127.0.0.1',
    port: 0,
    maxPerAddr: 64,
    logFile,
    ...overrides,
  };
  const collector = new Collector(settings, memoryLogger(logs));
  const { port } = await collector.start();
  const running: Running = {
    collector,
    port,
    logFile,
    logs,
    readLog: () => readFileSync(logFile, 'latin1'),
    stopped: false,
    async stop() {
      if (running.stopped) return;
      running.stopped = true;
      await collector.stop();
    },
  };
  cleanups.push(() => running.stop());
  return running;
}

async function connect(running: Running, localAddress?: string): Promise<WireClient> {
  const client = await WireClient.connect({
    host: '127.0.0.1',
    port: running.port,
    ...(localAddress ? { localAddress } : {}),
  });
  cleanups.push(() => client.destroy());
  return client;
}

/** Resolves once a log entry matches; rejects with the collected log after the deadline. */
async function waitForLog(
  running: Running,
  match: (e: LogEntry) => boolean,
  deadlineMs: number,
  what: string,
) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const found = running.logs.find(match);
    if (found) return found;
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${deadlineMs} ms waiting for log entry: ${what}\n` +
          running.logs.map((e) => JSON.stringify(e)).join('\n'),
      );
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Sends records with sequence numbers from `firstSeq` in one write and waits for all their acks. */
async function sendAndAck(client: WireClient, lines: string[], firstSeq: number, deadlineMs = 10_000) {
  const before = client.replies.length;
  await client.sendRecords(lines.map((l, i) => ({ seq: firstSeq + i, payload: wire(l) })));
  const replies = await client.waitForReplies(before + lines.length, deadlineMs);
  return replies.slice(before);
}

function expectAcks(replies: { type: number; sequence: number }[], seqs: number[]) {
  expect(replies.map((r) => [r.type, r.sequence])).toEqual(seqs.map((s) => [MessageType.ACK, s]));
}

const seqRange = (first: number, n: number) => Array.from({ length: n }, (_, i) => first + i);

// ---------------------------------------------------------------------------------------------------------

describe('collector: records and acknowledgements', () => {
  it('acks every record in order with its sequence number; a heartbeat is acked and not logged', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const lines = records(20);
    const frames = [
      ...lines.slice(0, 10).map((l, i) => encodeEvent(2 + i, wire(l))),
      encodeHeartbeat(12),
      ...lines.slice(10).map((l, i) => encodeEvent(13 + i, wire(l))),
    ];
    await client.write(Buffer.concat(frames));
    const replies = await client.waitForReplies(21, 10_000);
    expectAcks(replies, seqRange(2, 21));
    expect(replies.every((r) => r.payload.length === 0)).toBe(true);
    expect(c.readLog()).toBe(logOf(lines));
    // A heartbeat alone (nothing else pending) is acked too.
    await client.sendHeartbeat(99);
    expectAcks((await client.waitForReplies(22, 5000)).slice(21), [99]);
    expect(c.readLog()).toBe(logOf(lines));
    expect(c.collector.stats).toMatchObject({ records: 20, heartbeats: 2 });
    expect(client.closed).toBe(false);
  });

  it('acks 10,000 pipelined messages on one connection in order and logs them in order', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const lines = records(10_000);
    await client.write(Buffer.concat(lines.map((l, i) => encodeEvent(1000 + i, wire(l)))));
    const replies = await client.waitForReplies(10_000, 30_000);
    expectAcks(replies, seqRange(1000, 10_000));
    expect(c.readLog()).toBe(logOf(lines));
    expect(client.replies.length).toBe(10_000);
  });

  it('removes exactly one trailing newline: with and without it the record is one line', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const [a, b] = DISTINCT;
    await client.sendRecords([
      { seq: 1, payload: Buffer.from(`${a}\n`, 'latin1') },
      { seq: 2, payload: Buffer.from(b!, 'latin1') },
    ]);
    expectAcks(await client.waitForReplies(2, 5000), [1, 2]);
    expect(c.readLog()).toBe(`${a}\n${b}\n`);
  });

  it('treats an unknown type and non-zero versions as a record (as auditd)', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const [a, b] = DISTINCT;
    const odd = encodeMessage(0x1234, 7, wire(a!));
    odd[4] = 3; // header_version
    odd[5] = 9; // message_version
    await client.write(Buffer.concat([odd, encodeEvent(8, wire(b!))]));
    expectAcks(await client.waitForReplies(2, 5000), [7, 8]);
    expect(c.readLog()).toBe(logOf([a!, b!]));
  });

  it('accepts any fragmentation: one byte per write', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const lines = records(5, 3);
    const bytes = Buffer.concat([
      ...lines.slice(0, 3).map((l, i) => encodeEvent(10 + i, wire(l))),
      encodeHeartbeat(13),
      ...lines.slice(3).map((l, i) => encodeEvent(14 + i, wire(l))),
    ]);
    for (let i = 0; i < bytes.length; i++) await client.write(bytes.subarray(i, i + 1));
    expectAcks(await client.waitForReplies(6, 10_000), seqRange(10, 6));
    expect(c.readLog()).toBe(logOf(lines));
  });

  it('accepts several messages per chunk and chunks cutting through headers and payloads', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const lines = records(40, 7);
    const bytes = Buffer.concat(lines.map((l, i) => encodeEvent(i + 1, wire(l))));
    // Chunk sizes 1, 7, 16, 17, 100, 1000, ... so that cuts fall everywhere, including inside the magic.
    const sizes = [1, 7, 16, 17, 3, 100, 1000, 2, 15, 4096];
    let off = 0;
    for (let i = 0; off < bytes.length; i++) {
      const n = sizes[i % sizes.length]!;
      await client.write(bytes.subarray(off, off + n));
      off += n;
    }
    expectAcks(await client.waitForReplies(40, 10_000), seqRange(1, 40));
    expect(c.readLog()).toBe(logOf(lines));
  });
});

describe('collector: bad input', () => {
  it('escapes embedded newlines and NULs as \\xHH (one line, reversible) and warns once per client and kind', async () => {
    const c = await startCollector();
    const client = await connect(c);
    const [a, b] = DISTINCT;
    // A forged second line (log injection) and a NUL (auditd would cut the record there).
    const injected = Buffer.from(
      `${a}\nnode=forged type=USER_LOGIN msg=audit(1.2:3): res=success\0 tail\n`,
      'latin1',
    );
    const twoNewlines = Buffer.from(`${b}\n\n`, 'latin1');
    await client.sendRecords([
      { seq: 5, payload: injected },
      { seq: 6, payload: twoNewlines },
    ]);
    expectAcks(await client.waitForReplies(2, 5000), [5, 6]);
    expect(c.readLog()).toBe(
      `${a}\\x0anode=forged type=USER_LOGIN msg=audit(1.2:3): res=success\\x00 tail\n` +
        // Only one trailing '\n' is removed; the other one is embedded and escaped.
        `${b}\\x0a\n`,
    );
    // The rule is reversible: unescaping gives back what the client sent (minus the trailing newline).
    const [l1, l2] = c.readLog().split('\n');
    expect(unescapeLogLine(Buffer.from(l1!, 'latin1'))).toEqual(injected.subarray(0, -1));
    expect(unescapeLogLine(Buffer.from(l2!, 'latin1'))).toEqual(twoNewlines.subarray(0, -1));
    // One warning per client and kind (line break, NUL), not one per record: the second record's line break is
    // counted, and reported when the client disconnects.
    const warnings = () => c.logs.filter((e) => e.level === 40 && e.msg.includes('written as \\xHH escapes'));
    expect(warnings().map((w) => w.kind)).toEqual(['line-break', 'nul']);
    for (const w of warnings()) {
      expect(w.peer).toBe(client.peer);
      expect(w.msg).toContain(client.peer);
    }
    expect(c.collector.stats.sanitized).toBe(2);
    expect(client.closed).toBe(false);
    client.end();
    const summary = await waitForLog(c, (e) => e.msg.includes('1 more record(s)'), 5000, 'the count');
    expect([summary.peer, summary.kind, summary.count]).toEqual([client.peer, 'line-break', 1]);
  });

  it('bad magic: closes the connection after logging and acking the records before it; others unaffected', async () => {
    const c = await startCollector();
    const good = await connect(c);
    const bad = await connect(c);
    const lines = records(9, 11);
    const [g1, g2, b1, b2, b3, g3, g4] = [
      lines.slice(0, 2),
      lines.slice(2, 4),
      lines[4]!,
      lines[5]!,
      lines[6]!,
      lines.slice(7, 8),
      lines.slice(8, 9),
    ];
    expectAcks(await sendAndAck(good, g1, 1), [1, 2]);
    // Two good records, 16 bytes of garbage, then a good record that must not be processed: all in one write.
    const garbage = Buffer.from('GARBAGE-NOT-MAGIC'.slice(0, HEADER_SIZE));
    await bad.write(
      Buffer.concat([
        encodeEvent(100, wire(b1)),
        encodeEvent(101, wire(b2)),
        garbage,
        encodeEvent(102, wire(b3)),
      ]),
    );
    await bad.waitForClose(5000);
    expectAcks(bad.replies, [100, 101]);
    // The good client, before and after: all acked, connection intact.
    expectAcks(await sendAndAck(good, g2, 3), [3, 4]);
    expectAcks(await sendAndAck(good, [...g3, ...g4], 5), [5, 6]);
    expect(good.closed).toBe(false);
    expect(c.readLog()).toBe(logOf([...g1, b1, b2, ...g2, ...g3, ...g4]));
    const w = await waitForLog(
      c,
      (e) => e.level === 40 && e.msg.includes('protocol error'),
      2000,
      'protocol error',
    );
    expect(w.peer).toBe(bad.peer);
    expect(w.msg).toContain(bad.peer);
    expect(w.msg).toContain('bad magic');
    expect(c.collector.stats.protocolErrors).toBe(1);
  });

  it('bad magic as the very first bytes (an ascii-format client): closed, nothing logged, no reply', async () => {
    const c = await startCollector();
    const client = await connect(c);
    await client.write(wire(RECORDS[0]!));
    await client.waitForClose(5000);
    expect(client.replies).toEqual([]);
    expect(c.readLog()).toBe('');
    await waitForLog(c, (e) => e.level === 40 && e.peer === client.peer, 2000, 'protocol error warning');
  });

  it('length above maxPayload: earlier records handled, then closed and logged with the peer', async () => {
    const maxPayload = 300;
    const c = await startCollector({ maxPayload });
    const client = await connect(c);
    const other = await connect(c);
    const short = DISTINCT.filter((r) => r.length + 1 < maxPayload);
    const [a, b] = short;
    const exact = Buffer.alloc(maxPayload, 'x'.charCodeAt(0));
    const tooLong = encodeEvent(3, Buffer.alloc(maxPayload + 1, 'y'.charCodeAt(0)));
    await client.write(
      Buffer.concat([encodeEvent(1, wire(a!)), encodeEvent(2, exact), tooLong, encodeEvent(4, wire(b!))]),
    );
    await client.waitForClose(5000);
    expectAcks(client.replies, [1, 2]);
    expectAcks(await sendAndAck(other, [b!], 50), [50]);
    expect(c.readLog()).toBe(logOf([a!, exact.toString('latin1'), b!]));
    const w = await waitForLog(
      c,
      (e) => e.level === 40 && e.msg.includes('exceeds the limit'),
      2000,
      'length error',
    );
    expect(w.peer).toBe(client.peer);
    expect(w.msg).toContain(client.peer);
    expect(w.msg).toContain(`${maxPayload + 1}`);
  });

  it('a header announcing an oversized length is rejected before its payload arrives', async () => {
    const c = await startCollector({ maxPayload: 1000 });
    const client = await connect(c);
    const header = Buffer.alloc(HEADER_SIZE);
    writeHeader(header, 0, MessageType.MESSAGE, 9, 60_000);
    await client.write(header);
    await client.waitForClose(5000);
    expect(client.replies).toEqual([]);
    expect(c.readLog()).toBe('');
  });

  it('a client that disconnects mid-message: the partial message is not logged, nothing else is affected', async () => {
    const c = await startCollector();
    const other = await connect(c);
    const quitter = await connect(c);
    const lines = records(6, 20);
    const full = encodeEvent(1, wire(lines[0]!));
    const partial = encodeEvent(2, wire(lines[1]!)).subarray(0, HEADER_SIZE + 10);
    await quitter.write(Buffer.concat([full, partial]));
    expectAcks(await quitter.waitForReplies(1, 5000), [1]);
    quitter.end();
    await quitter.waitForClose(5000);
    const dropped = await waitForLog(c, (e) => e.msg.includes('mid-message'), 5000, 'mid-message disconnect');
    expect(dropped.peer).toBe(quitter.peer);
    expect(dropped.bytes).toBe(HEADER_SIZE + 10);
    // A client that leaves inside a header (fewer than 16 bytes) is handled the same way.
    const quitter2 = await connect(c);
    await quitter2.write(encodeEvent(7, wire(lines[2]!)).subarray(0, 9));
    quitter2.destroy();
    await waitForLog(
      c,
      (e) => e.msg.includes('mid-message') && e.peer === quitter2.peer,
      5000,
      'second quitter',
    );
    expectAcks(await sendAndAck(other, lines.slice(3), 10), [10, 11, 12]);
    expect(c.readLog()).toBe(logOf([lines[0]!, ...lines.slice(3)]));
    expect(other.closed).toBe(false);
  });

  it('a client that never reads its acks does not delay another client; it resumes once it reads', async () => {
    const c = await startCollector();
    const stuck = await connect(c);
    const good = await connect(c);
    stuck.pause();
    const stuckLines = records(3, 30);
    // Heartbeats are acked but not logged: 16 bytes in, 16 bytes of ack out. 1M of them (16 MB of acks) is far
    // more than the kernel buffers can hold, so the collector's own output buffer passes OUTPUT_HIGH_WATER.
    const HEARTBEATS = 1_000_000;
    const burst = Buffer.alloc(HEARTBEATS * HEADER_SIZE);
    for (let i = 0; i < HEARTBEATS; i++) encodeHeartbeat(1000 + i).copy(burst, i * HEADER_SIZE);
    stuck.socket.write(Buffer.concat(stuckLines.map((l, i) => encodeEvent(1 + i, wire(l)))));
    stuck.socket.write(burst);
    const paused = await waitForLog(
      c,
      (e) => e.level === 40 && e.msg.includes('not reading its acknowledgements'),
      30_000,
      'the collector pausing the stuck client',
    );
    expect(paused.peer).toBe(stuck.peer);

    // While the first client is stuck, the second one's records are logged and acked promptly.
    const goodLines = records(200, 50);
    const t0 = Date.now();
    expectAcks(await sendAndAck(good, goodLines.slice(0, 100), 1, 5000), seqRange(1, 100));
    expectAcks(await sendAndAck(good, goodLines.slice(100), 101, 5000), seqRange(101, 100));
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(c.readLog()).toBe(logOf([...stuckLines, ...goodLines]));
    expect(stuck.replies.length).toBe(0);
    expect(stuck.closed).toBe(false);

    // Once it reads, it gets every ack, in order, and nothing was lost.
    stuck.resume();
    const replies = await stuck.waitForReplies(3 + HEARTBEATS, 60_000);
    expect(
      replies.every((r, i) => r.type === MessageType.ACK && r.sequence === (i < 3 ? 1 + i : 997 + i)),
    ).toBe(true);
    expect(c.collector.stats.heartbeats).toBe(HEARTBEATS);
    expect(c.readLog()).toBe(logOf([...stuckLines, ...goodLines]));
  });
  it('a client that never reads its acks is closed by the idle limit', async () => {
    // Built before connecting: building it may take longer than the idle limit.
    const burst = Buffer.concat(Array.from({ length: 1_000_000 }, (_, i) => encodeHeartbeat(i + 1)));
    const c = await startCollector({ clientMaxIdleMs: 500 });
    const stuck = await connect(c);
    stuck.pause();
    stuck.socket.write(burst);
    await waitForLog(c, (e) => e.msg.includes('not reading its acknowledgements'), 30_000, 'pause');
    const closed = await waitForLog(c, (e) => e.msg.includes('idle for 500 ms'), 10_000, 'idle close');
    expect(closed.peer).toBe(stuck.peer);
    await waitForLog(c, (e) => e.msg === 'client disconnected' && e.peer === stuck.peer, 5000, 'disconnect');
    expect(c.collector.stats.clients).toBe(0);
  });
});

describe('collector: connections', () => {
  it('a live session is never closed for a new connection from its address: admitted beside it once, then refused', async () => {
    const c = await startCollector({ maxPerAddr: 1, staleAfterMs: 60_000 });
    const lines = records(8, 40);
    const live = await connect(c);
    expectAcks(await sendAndAck(live, [lines[0]!], 1), [1]);
    // A reconnecting client (or a second one at that address) is admitted beside the live session...
    const second = await connect(c);
    expectAcks(await sendAndAck(second, [lines[1]!], 1), [1]);
    await waitForLog(c, (e) => e.peer === second.peer && e.msg.includes('admitted beside'), 2000, 'beside');
    // ...but while both are alive, a third is refused (closed at once, nothing read), with the reason.
    const third = await connect(c);
    await third.waitForClose(5000);
    const refused = await waitForLog(
      c,
      (e) => e.level === 40 && e.msg.includes('refused connection'),
      2000,
      'refusal',
    );
    expect(refused.peer).toBe(third.peer);
    expect(refused.msg).toContain('tcp_max_per_addr = 1');
    expect(c.collector.stats.refusedSameAddress).toBe(1);
    // The live sessions were never touched.
    expectAcks(await sendAndAck(live, [lines[2]!], 2), [2]);
    expectAcks(await sendAndAck(second, [lines[3]!], 2), [2]);
    expect(live.closed || second.closed).toBe(false);
    // Another source address has its own allowance.
    const elsewhere = await connect(c, '127.0.0.2');
    expectAcks(await sendAndAck(elsewhere, [lines[4]!], 1), [1]);
    expect(c.readLog()).toBe(logOf(lines.slice(0, 5)));
  });

  it('a connection that never sent anything does not count as alive: the next one from its address replaces it', async () => {
    const c = await startCollector({ maxPerAddr: 1, staleAfterMs: 60_000 });
    const live = await connect(c);
    expectAcks(await sendAndAck(live, [RECORDS[0]!], 1), [1]);
    const silent = await connect(c); // admitted beside the live one
    await waitForLog(c, (e) => e.peer === silent.peer && e.msg.includes('admitted beside'), 2000, 'beside');
    const next = await connect(c);
    await silent.waitForClose(5000);
    const w = await waitForLog(c, (e) => e.replaced === silent.peer, 2000, 'replaced');
    expect(w.msg).toContain('has sent nothing since it connected');
    expectAcks(await sendAndAck(next, [RECORDS[1]!], 1), [1]);
    expect(live.closed).toBe(false);
  });

  it('the default maxPerAddr = 1: a reconnecting client replaces its silent old session (auditd issue #33)', async () => {
    const c = await startCollector({ maxPerAddr: 1, staleAfterMs: 300 });
    const [a, b] = DISTINCT;
    const stale = await connect(c);
    expectAcks(await sendAndAck(stale, [a!], 2), [2]);
    const quietSince = Date.now();
    // The old session stays open but silent (its client vanished without FIN) for longer than staleAfterMs.
    await pollUntil(() => Date.now() - quietSince > 400, { timeoutMs: 5000, what: 'the staleness window' });
    const fresh = await connect(c);
    expectAcks(await sendAndAck(fresh, [b!], 3), [3]);
    await stale.waitForClose(5000);
    const w = await waitForLog(c, (e) => e.replaced === stale.peer, 2000, 'replace');
    expect(w.peer).toBe(fresh.peer);
    expect(w.msg).toMatch(/has been silent for \d+\.\d s with nothing pending/);
    expect(c.readLog()).toBe(logOf([a!, b!]));
  });

  it('clientMaxIdleMs: an idle client is closed (no ENDING); an active one is not', async () => {
    const c = await startCollector({ clientMaxIdleMs: 200 });
    const idle = await connect(c);
    expectAcks(await sendAndAck(idle, [RECORDS[0]!], 1), [1]);
    const lastActivity = Date.now();
    await idle.waitForClose(5000);
    expect(Date.now() - lastActivity).toBeGreaterThanOrEqual(150);
    expect(idle.replies).toHaveLength(1);
    const w = await waitForLog(c, (e) => e.msg.includes('idle for 200 ms'), 2000, 'idle close');
    expect(w.peer).toBe(idle.peer);
    expect(c.readLog()).toBe(logOf([RECORDS[0]!]));
  });

  it('clientMaxIdleMs: traffic keeps a client open past the idle limit', async () => {
    const c = await startCollector({ clientMaxIdleMs: 600 });
    const busy = await connect(c);
    const start = Date.now();
    let seq = 1;
    // Heartbeats every ~50 ms for well over the idle limit.
    while (Date.now() - start < 1500) {
      await busy.sendHeartbeat(seq);
      await busy.waitForReplies(seq, 2000);
      seq++;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(busy.closed).toBe(false);
    expectAcks(busy.replies, seqRange(1, seq - 1));
  });

  it('stop(): each client gets ENDING (seq 0) after the acks of everything it sent, then the connection closes', async () => {
    const c = await startCollector();
    const a = await connect(c);
    const b = await connect(c);
    const linesA = records(500, 60);
    const linesB = records(300, 70);
    expectAcks(await sendAndAck(a, linesA, 1), seqRange(1, 500));
    expectAcks(await sendAndAck(b, linesB, 1), seqRange(1, 300));
    await c.stop();
    await a.waitForClose(5000);
    await b.waitForClose(5000);
    for (const [client, n] of [
      [a, 500],
      [b, 300],
    ] as const) {
      expect(client.replies).toHaveLength(n + 1);
      const ending = client.replies[n]!;
      expect([ending.type, ending.sequence, ending.payload.length]).toEqual([MessageType.ENDING, 0, 0]);
    }
    expect(c.readLog()).toBe(logOf([...linesA, ...linesB]));
    // Nobody is listening any more.
    await expect(WireClient.connect({ host: '127.0.0.1', port: c.port })).rejects.toThrow(/ECONNREFUSED/);
  });

  it('stop() during a pipelined burst: acks then ENDING, and the log holds exactly the acked records', async () => {
    const c = await startCollector();
    const clients = [await connect(c), await connect(c)];
    const lines = [records(5000, 1), records(5000, 2)];
    for (let k = 0; k < 2; k++) {
      clients[k]!.socket.write(Buffer.concat(lines[k]!.map((l, i) => encodeEvent(1 + i, wire(l)))));
    }
    // Stop as soon as the collector has acked something from each client, i.e. in the middle of the bursts.
    await Promise.all(clients.map((cl) => cl.waitForReplies(1, 10_000)));
    const t0 = Date.now();
    const stopping = c.stop();
    // Records sent after stop() began are never read, logged or acked (the clients would send them again).
    for (const [k, cl] of clients.entries()) {
      cl.socket.write(Buffer.concat(lines[k]!.slice(0, 50).map((l, i) => encodeEvent(900_000 + i, wire(l)))));
    }
    await stopping;
    const stopMs = Date.now() - t0;
    await Promise.all(clients.map((cl) => cl.waitForClose(5000)));
    const acked: string[][] = [];
    for (let k = 0; k < 2; k++) {
      const replies = clients[k]!.replies;
      const ending = replies.at(-1)!;
      expect([ending.type, ending.sequence]).toEqual([MessageType.ENDING, 0]);
      const acks = replies.slice(0, -1);
      expectAcks(acks, seqRange(1, acks.length));
      acked.push(lines[k]!.slice(0, acks.length));
    }
    // Every acked record is in the log, in each client's order, and nothing else.
    const logged = c.readLog().split('\n').slice(0, -1);
    expect(logged).toHaveLength(acked[0]!.length + acked[1]!.length);
    // Corpus lines repeat, so check that the log is an interleaving of the two acked sequences.
    expect(mergeIsInterleaving(logged, acked[0]!, acked[1]!)).toBe(true);
    // The clients close as soon as they got ENDING; stop() does not wait for its 2 s fallback timer.
    expect(stopMs).toBeLessThan(1500);
  });
});

/** True when `merged` is an interleaving of `x` and `y` (each kept in order). Dynamic programming on prefixes. */
function mergeIsInterleaving(merged: string[], x: string[], y: string[]): boolean {
  if (merged.length !== x.length + y.length) return false;
  // reachable[j] = merged[0..i+j) can be formed from x[0..i) and y[0..j)
  let reachable = new Uint8Array(y.length + 1);
  reachable[0] = 1;
  for (let j = 1; j <= y.length; j++) reachable[j] = reachable[j - 1]! && merged[j - 1] === y[j - 1] ? 1 : 0;
  for (let i = 1; i <= x.length; i++) {
    const next = new Uint8Array(y.length + 1);
    next[0] = reachable[0]! && merged[i - 1] === x[i - 1] ? 1 : 0;
    for (let j = 1; j <= y.length; j++) {
      const m = merged[i + j - 1];
      next[j] = (reachable[j]! && m === x[i - 1]) || (next[j - 1]! && m === y[j - 1]) ? 1 : 0;
    }
    reachable = next;
  }
  return reachable[y.length] === 1;
}

describe('collector: log write failures', () => {
  it('DISKFULL: a full file system gives DISKFULL replies ("disk full"), never an ACK for an unwritten record', async () => {
    const dir = tempDir();
    const mnt = path.join(dir, 'mnt');
    mkdirSync(mnt);
    try {
      // mode=0700: the collector refuses a log directory that others can write (a tmpfs root is 1777 by default).
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8k,mode=0700', 'tmpfs', mnt], { stdio: 'pipe' });
    } catch (err) {
      console.warn(
        `\n!!! SKIPPED the DISKFULL test: cannot mount a tmpfs (${(err as Error).message.split('\n')[0]}).\n` +
          '!!! It needs root (CAP_SYS_ADMIN) on Linux.\n',
      );
      return;
    }
    cleanups.push(() => {
      execFileSync('umount', [mnt], { stdio: 'pipe' });
    });
    const c = await startCollector({ fsync: 'never' }, path.join(mnt, 'audit.log'));
    const client = await connect(c);
    const lines = DISTINCT.filter((r) => r.length > 100 && r.length < 400);
    const acked: string[] = [];
    let seq = 1;
    let rejected: { type: number; sequence: number; payload: Buffer } | undefined;
    // One record at a time until the file system is full (8 KiB: a few dozen records).
    for (let i = 0; i < 200 && !rejected; i++) {
      const line = lines[i % lines.length]!;
      const [reply] = await sendAndAck(client, [line], seq);
      expect(reply!.sequence).toBe(seq);
      if (reply!.type === MessageType.ACK) acked.push(line);
      else rejected = reply;
      seq++;
    }
    expect(rejected, 'the file system never filled up').toBeDefined();
    expect(rejected!.type).toBe(MessageType.DISKFULL);
    expect(rejected!.payload.toString()).toBe('disk full');
    expect(acked.length).toBeGreaterThan(5);
    // While the condition lasts every record is refused, each with its own sequence number; the link stays up.
    const more = await sendAndAck(client, lines.slice(0, 3), 1000);
    expect(more.map((r) => [r.type, r.sequence])).toEqual(
      seqRange(1000, 3).map((s) => [MessageType.DISKFULL, s]),
    );
    // A heartbeat still gets a plain ACK (nothing to write).
    await client.sendHeartbeat(2000);
    const [hb] = (await client.waitForReplies(client.replies.length + 1, 5000)).slice(-1);
    expect([hb!.type, hb!.sequence]).toEqual([MessageType.ACK, 2000]);
    expect(client.closed).toBe(false);
    await waitForLog(c, (e) => e.level === 40 && e.error === 'ENOSPC', 2000, 'ENOSPC');
    // Every acked record is in the log, whole, and the log holds nothing else (no half-written record).
    expect(c.readLog()).toBe(logOf(acked));
    // Once there is room again, records are acked and appended as whole lines.
    execFileSync('mount', ['-o', 'remount,size=1m', mnt], { stdio: 'pipe' });
    const after = lines.slice(0, 2);
    expectAcks(await sendAndAck(client, after, 3000), [3000, 3001]);
    expect(c.readLog()).toBe(logOf([...acked, ...after]));
  });

  it('DISKERROR: a write error other than "full" gives DISKERROR replies ("disk write error")', async () => {
    // EFBIG from the kernel: the process's file size limit (RLIMIT_FSIZE, set with prlimit on this test process;
    // Node ignores SIGXFSZ, so the write fails with EFBIG instead of killing it).
    const prlimit = findBinary('prlimit');
    if (!prlimit) {
      console.warn('\n!!! SKIPPED the DISKERROR test: prlimit (util-linux) is not installed.\n');
      return;
    }
    const c = await startCollector({ fsync: 'never' });
    const client = await connect(c);
    const [a, b] = DISTINCT;
    expectAcks(await sendAndAck(client, [a!], 1), [1]);
    const size = c.readLog().length;
    execFileSync(prlimit, ['--pid', String(process.pid), `--fsize=${size + 10}:unlimited`]);
    cleanups.push(() => {
      execFileSync(prlimit, ['--pid', String(process.pid), '--fsize=unlimited:unlimited']);
    });
    const replies = await sendAndAck(client, [b!, a!], 2);
    expect(replies.map((r) => [r.type, r.sequence, r.payload.toString()])).toEqual([
      [MessageType.DISKERROR, 2, 'disk write error'],
      [MessageType.DISKERROR, 3, 'disk write error'],
    ]);
    expect(client.closed).toBe(false);
    await waitForLog(c, (e) => e.level === 40 && e.error === 'EFBIG', 2000, 'EFBIG');
    // Nothing of the failed batch stays in the log.
    expect(c.readLog()).toBe(logOf([a!]));
  });
});
