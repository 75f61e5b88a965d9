/**
 * Shared pieces of the krb5 suites: an in-process collector with a captured log, keytab copies that obey the
 * root:0400 rule, a raw krb5 client built from the agent's own handshake, and a token-level tampering proxy.
 */
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { clientHandshake, type Krb5Transport } from '../../src/agent/krb5-transport.js';
import { dialTcp } from '../../src/agent/transport.js';
import {
  Collector,
  type CollectorSettings,
  DEFAULT_COLLECTOR_SETTINGS,
} from '../../src/collector/collector.js';
import { DEFAULT_KRB5_COLLECTOR_SETTINGS, type Krb5CollectorSettings } from '../../src/collector/krb5.js';
import { encodeToken, TokenDecoder } from '../../src/krb5/framing.js';
import type { Credential } from '../../src/krb5/gssapi.js';
import { FrameDecoder, type WireMessage } from '../../src/protocol/codec.js';
import { MAX_AUDIT_MESSAGE_LENGTH } from '../../src/protocol/constants.js';
import { pollUntil } from '../helpers/wait.js';

export interface LogEntry {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export function memoryLogger(): { log: pino.Logger; entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const log = pino(
    { level: 'debug' },
    { write: (line: string) => entries.push(JSON.parse(line) as LogEntry) },
  );
  return { log, entries };
}

export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Copies a keytab to `dest` with upstream's required mode (root-owned when the tests run as root). */
export function installKeytab(src: string, dest: string): string {
  rmSync(dest, { force: true });
  copyFileSync(src, dest);
  chmodSync(dest, 0o400);
  return dest;
}

export interface RunningCollector {
  collector: Collector;
  port: number;
  logFile: string;
  entries: LogEntry[];
  /** Complete lines of the collector's log file. */
  lines(): string[];
  waitForLines(n: number, ms?: number): Promise<string[]>;
  waitForLog(match: RegExp, ms?: number): Promise<LogEntry>;
  stop(): Promise<void>;
}

export async function startKrb5Collector(
  dir: string,
  krb5: Partial<Krb5CollectorSettings> & { keyFile: string },
  extra: Partial<CollectorSettings> = {},
): Promise<RunningCollector> {
  const { log, entries } = memoryLogger();
  const logFile = path.join(dir, `collector-${Date.now()}-${Math.random().toString(36).slice(2)}.log`);
  const collector = new Collector(
    {
      ...DEFAULT_COLLECTOR_SETTINGS,
      port: 0,
      logFile,
      fsync: 'never',
      maxPerAddr: 64,
      listenBacklog: 511,
      krb5: { ...DEFAULT_KRB5_COLLECTOR_SETTINGS, ...krb5 },
      ...extra,
    },
    log,
  );
  const { port } = await collector.start();
  const lines = (): string[] => {
    let text: string;
    try {
      text = readFileSync(logFile, 'latin1');
    } catch {
      return [];
    }
    const all = text.split('\n');
    all.pop();
    return all;
  };
  return {
    collector,
    port,
    logFile,
    entries,
    lines,
    waitForLines: (n, ms = 15_000) =>
      pollUntil(() => (lines().length >= n ? lines() : undefined), {
        timeoutMs: ms,
        what: `${n} lines in the collector log`,
        diagnostics: () => `have ${lines().length}\n${entries.map((e) => e.msg).join('\n')}`,
      }),
    waitForLog: (match, ms = 15_000) =>
      pollUntil(() => entries.find((e) => match.test(e.msg)), {
        timeoutMs: ms,
        what: `a collector log line matching ${match}`,
        diagnostics: () => entries.map((e) => e.msg).join('\n'),
      }),
    stop: () => collector.stop(),
  };
}

/** A krb5 client made of the agent's own parts (dialTcp + clientHandshake), for timing and raw exchanges. */
export class RawKrb5Client {
  readonly replies: WireMessage[] = [];
  readonly #decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
  closed: string | null = null;
  #waiters = new Set<() => void>();

  private constructor(readonly link: Krb5Transport) {
    link.onClose = (reason) => {
      this.closed = reason;
      this.#wake();
    };
    link.onMessage = (chunk) => {
      this.replies.push(...this.#decoder.push(chunk));
      this.#wake();
    };
  }

  static async connect(port: number, cred: Credential, target: string): Promise<RawKrb5Client> {
    const signal = AbortSignal.timeout(10_000);
    const tcp = await dialTcp({ host: '127.0.0.1', port, localPort: 0, signal });
    const link = await clientHandshake(tcp, cred, target, signal, {
      settings: { clientPrincipal: '', target, keyFile: '' },
    });
    return new RawKrb5Client(link);
  }

  send(frame: Buffer): void {
    this.link.write(frame);
  }

  async waitForReplies(n: number, ms = 10_000): Promise<WireMessage[]> {
    const deadline = Date.now() + ms;
    while (this.replies.length < n) {
      if (this.closed !== null)
        throw new Error(`link closed with ${this.replies.length}/${n} replies: ${this.closed}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.replies.length}/${n} replies`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, left);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.#waiters.add(done);
      });
    }
    return this.replies;
  }

  close(): void {
    this.link.close();
  }

  #wake(): void {
    for (const w of this.#waiters) w();
    this.#waiters.clear();
  }
}

/**
 * A TCP proxy that forwards krb5-framed tokens both ways and can corrupt one: `tamper(dir, n)` flips a byte in
 * the n-th non-empty token (counted from 1 after the handshake's tokens: the client's 2 and the server's 1).
 */
export class TokenProxy {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #rules: { dir: 'up' | 'down'; n: number; done: boolean }[] = [];
  tampered = 0;
  port = 0;

  constructor(targetPort: number) {
    this.#server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: targetPort });
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => {});
      }
      const pipe = (from: net.Socket, to: net.Socket, dir: 'up' | 'down') => {
        const decoder = new TokenDecoder({ maxTokenLength: 1 << 20 });
        let count = 0;
        from.on('data', (chunk: Buffer) => {
          for (const token of decoder.push(chunk)) {
            if (token.length > 0) count++;
            const dataIndex = count - 1; // each side sends one non-empty handshake token first
            const rule = this.#rules.find(
              (r) => r.dir === dir && !r.done && r.n === dataIndex && token.length > 0,
            );
            if (rule) {
              rule.done = true;
              this.tampered++;
              token[token.length - 20]! ^= 0x01;
            }
            to.write(encodeToken(token));
          }
        });
        from.on('close', () => to.destroy());
      };
      pipe(client, upstream, 'up');
      pipe(upstream, client, 'down');
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Corrupt the n-th data token (1 = first after the handshake) going up (client→server) or down. */
  tamper(dir: 'up' | 'down', n: number): void {
    this.#rules.push({ dir, n, done: false });
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
