/**
 * Shared by the collector's operations tests (rotation, space, reload, hosts, evidence, audit tools): a real
 * in-process Collector on loopback with its log in a private temporary directory (and its evidence key there),
 * its log lines collected, raw managed-format clients that send numbered records and keep what each reply said,
 * and the log files of a rotated set read in order. Everything is cleaned up by `cleanup()` (afterEach).
 */
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Logger, pino } from 'pino';
import {
  Collector,
  type CollectorSettings,
  DEFAULT_COLLECTOR_SETTINGS,
} from '../../src/collector/collector.js';
import { loadSigningKey } from '../../src/evidence/keys.js';
import { parseVerifierKey } from '../../src/evidence/note.js';
import { formatProblem, verifyPath } from '../../src/evidence/verify.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { WireClient } from '../helpers/wire-client.js';

export interface LogEntry {
  level: number;
  msg: string;
  [k: string]: unknown;
}

const cleanups: (() => Promise<void> | void)[] = [];

/** Runs every cleanup, newest first (clients, collectors, mounts, directories). */
export async function cleanup(): Promise<void> {
  const errors: unknown[] = [];
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}

export function onCleanup(fn: () => Promise<void> | void): void {
  cleanups.push(fn);
}

/** A private (0700) temporary directory (in `base`, default the system's), removed at cleanup. */
export function tempDir(prefix = 'auditrelay-ops-', base = os.tmpdir()): string {
  const dir = mkdtempSync(path.join(base, prefix));
  chmodSync(dir, 0o700);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function memoryLogger(logs: LogEntry[]): Logger {
  return pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogEntry) });
}

export interface Running {
  collector: Collector;
  /** The settings it was started with (a reload passes a changed copy). */
  settings: CollectorSettings;
  port: number;
  dir: string;
  logFile: string;
  keyFile: string;
  logs: LogEntry[];
  stop(): Promise<void>;
}

/** The collector with its log (and evidence key, when evidence is on) in `dir`. */
export async function startCollector(
  overrides: Partial<CollectorSettings> = {},
  dir = tempDir(),
): Promise<Running> {
  const logs: LogEntry[] = [];
  const logFile = overrides.logFile ?? path.join(dir, 'audit.log');
  const keyFile = path.join(dir, 'keys', 'signing.key');
  const settings: CollectorSettings = {
    ...DEFAULT_COLLECTOR_SETTINGS,
    host: '127.0.0.1',
    port: 0,
    maxPerAddr: 64,
    fsync: 'never',
    ...overrides,
    logFile,
    ...(overrides.evidence ? { evidence: { ...overrides.evidence, keyFile } } : {}),
  };
  const collector = new Collector(settings, memoryLogger(logs));
  const { port } = await collector.start();
  let stopped = false;
  const running: Running = {
    collector,
    settings,
    port,
    dir,
    logFile,
    keyFile,
    logs,
    async stop() {
      if (stopped) return;
      stopped = true;
      await collector.stop();
    },
  };
  cleanups.push(() => running.stop());
  return running;
}

/** A record as auditd writes one (node name optional); `tag` makes it unique. */
export function record(tag: string, n: number, node?: string): string {
  const sec = 1_700_000_000 + Math.floor(n / 1000);
  return `${node ? `node=${node} ` : ''}type=USER_CMD msg=audit(${sec}.${String(n % 1000).padStart(3, '0')}:${n}): pid=${1000 + (n % 5000)} uid=0 auid=1000 ses=1 msg='cwd="/root" cmd=${Buffer.from(`${tag} ${n}`).toString('hex')} exe="/usr/bin/sudo" terminal=pts/0 res=success'`;
}

/** A client that sends numbered records and keeps the reply of each (by sequence number). */
export class RecordClient {
  readonly wire: WireClient;
  readonly tag: string;
  readonly node: string | undefined;
  /** Sequence number → the record sent with it. */
  readonly sent = new Map<number, string>();
  /** Sequence number → reply type. */
  readonly replies = new Map<number, number>();
  #seq = 1;
  #counted = 0;

  private constructor(wire: WireClient, tag: string, node: string | undefined) {
    this.wire = wire;
    this.tag = tag;
    this.node = node;
  }

  static async connect(
    port: number,
    tag: string,
    options: { node?: string; localAddress?: string } = {},
  ): Promise<RecordClient> {
    const wire = await WireClient.connect({
      host: '127.0.0.1',
      port,
      ...(options.localAddress ? { localAddress: options.localAddress } : {}),
    });
    cleanups.push(() => wire.destroy());
    return new RecordClient(wire, tag, options.node);
  }

  /** Sends `n` records in one write; resolves when each has its reply. */
  async send(n: number, deadlineMs = 30_000): Promise<number[]> {
    const frames: Buffer[] = [];
    const seqs: number[] = [];
    for (let i = 0; i < n; i++) {
      const seq = ++this.#seq;
      const line = record(this.tag, seq, this.node);
      this.sent.set(seq, line);
      seqs.push(seq);
      frames.push(encodeEvent(seq, Buffer.from(`${line}\n`)));
    }
    await this.wire.write(Buffer.concat(frames));
    const last = seqs[seqs.length - 1]!;
    await this.wire.waitUntil(
      () => {
        this.#collect();
        return this.replies.has(last);
      },
      deadlineMs,
      `the reply to record ${last} of ${this.tag}`,
    );
    return seqs.map((s) => this.replies.get(s)!);
  }

  #collect(): void {
    for (; this.#counted < this.wire.replies.length; this.#counted++) {
      const r = this.wire.replies[this.#counted]!;
      if (r.type !== MessageType.ENDING) this.replies.set(r.sequence, r.type);
    }
  }

  /** Records answered with ACK or DISKLOW (written), in order of sending. */
  written(): string[] {
    this.#collect();
    return [...this.sent]
      .filter(([seq]) => {
        const t = this.replies.get(seq);
        return t === MessageType.ACK || t === MessageType.DISKLOW;
      })
      .map(([, line]) => line);
  }
}

/** The log files of `logFile`'s set, oldest first: LOG.N … LOG.1, then LOG (and other names given). */
export function logSet(logFile: string): string[] {
  const dir = path.dirname(logFile);
  const base = path.basename(logFile);
  const rotated = readdirSync(dir)
    .map((n) => ({ n, m: new RegExp(`^${base.replace(/\./g, '\\.')}\\.(\\d+)$`).exec(n) }))
    .filter((x) => x.m)
    .sort((a, b) => Number(b.m![1]) - Number(a.m![1]))
    .map((x) => path.join(dir, x.n));
  return existsSync(logFile) ? [...rotated, logFile] : rotated;
}

/** The lines of these files, in order (each file must end with a newline). */
export function linesOf(files: string[]): string[] {
  const out: string[] = [];
  for (const f of files) {
    const text = readFileSync(f, 'latin1');
    if (text.length > 0 && !text.endsWith('\n')) throw new Error(`${f} does not end with a newline`);
    out.push(...text.split('\n').slice(0, -1));
  }
  return out;
}

/** `verify` of a log set with the collector's key trusted; the problems as verify prints them. */
export function verifyLogs(
  target: string,
  keyFile: string,
): { lines: string[]; records: number; warnings: string[] } {
  const key = parseVerifierKey(loadSigningKey({ file: keyFile, create: false }).verifier.text);
  if (typeof key === 'string') throw new Error(key);
  const r = verifyPath(target, { keys: [key] });
  return { lines: r.problems.map(formatProblem), records: r.records, warnings: r.warnings };
}

/** Counts of each line in `lines`. */
export function counts(lines: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const l of lines) m.set(l, (m.get(l) ?? 0) + 1);
  return m;
}
