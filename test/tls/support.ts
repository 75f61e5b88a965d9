/**
 * Shared pieces of the TLS suites: key files and allowed-clients files that obey upstream's rules, a small PKI made
 * with the real `openssl` command (CA, server and client certificates, an expired and a revoked one, a CRL, a
 * second CA), an in-process collector with transport = TLS and a captured log, and a raw TLS-PSK client.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  Collector,
  type CollectorSettings,
  DEFAULT_COLLECTOR_SETTINGS,
} from '../../src/collector/collector.js';
import { DEFAULT_TLS_MAX_PENDING_HANDSHAKES } from '../../src/collector/settings.js';
import type { TlsCollectorSettings } from '../../src/collector/tls.js';
import { encodeEvent, FrameDecoder, type WireMessage } from '../../src/protocol/codec.js';
import { MAX_AUDIT_MESSAGE_LENGTH } from '../../src/protocol/constants.js';
import { findBinary } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import { type LogEntry, memoryLogger, type RunningCollector } from '../krb5/support.js';

export { type LogEntry, memoryLogger, type RunningCollector, tempDir } from '../krb5/support.js';

export const OPENSSL = findBinary('openssl');

/** A fresh random key in upstream's format (hex, one line). */
export function newKeyHex(): string {
  return randomBytes(32).toString('hex');
}

/** Writes a key file with upstream's mode (0400; root-owned when the tests run as root). Returns its path. */
export function writeKey(file: string, hex = newKeyHex(), mode = 0o400): string {
  rmSync(file, { force: true });
  writeFileSync(file, `${hex}\n`, { mode: 0o600 });
  chmodSync(file, mode);
  return file;
}

export function keyOf(file: string): Buffer {
  return Buffer.from(readFileSync(file, 'latin1').trim(), 'hex');
}

/** Writes an allowed-clients file (mode 0600) from its lines. */
export function writeAcl(file: string, lines: string[]): string {
  rmSync(file, { force: true });
  writeFileSync(file, `# identity status [key=/path] [node=...] notes\n${lines.join('\n')}\n`, {
    mode: 0o600,
  });
  return file;
}

export interface Pki {
  dir: string;
  caCert: string;
  /** The server's certificate (SAN DNS:collector.test, IP:127.0.0.1) and key. */
  serverCert: string;
  serverKey: string;
  /** A client certificate per name (SAN DNS:<name>, CN <name>) and keys. */
  client(name: string, opts?: { expired?: boolean; ca?: 'main' | 'other' }): { cert: string; key: string };
  revoke(cert: string): void;
  /** (Re)writes the CRL; returns its path. */
  crl(): string;
  /** A CA nobody trusts, for "untrusted" cases. */
  otherCaCert: string;
}

function ossl(args: string[], cwd: string): void {
  execFileSync(OPENSSL!, args, {
    cwd,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, CLIENT_NAME: 'unused' },
  });
}

/** A small PKI made with `openssl ca` (expired certificates through -startdate/-enddate, revocation, CRL). */
export function makePki(dir: string): Pki {
  mkdirSync(dir, { recursive: true });
  const makeCa = (name: string) => {
    const d = path.join(dir, name);
    mkdirSync(path.join(d, 'db'), { recursive: true });
    writeFileSync(path.join(d, 'db/index.txt'), '');
    writeFileSync(path.join(d, 'db/serial'), '1000\n');
    writeFileSync(path.join(d, 'db/crlnumber'), '1000\n');
    writeFileSync(
      path.join(d, 'ca.cnf'),
      [
        '[ca]',
        'default_ca = d',
        '[d]',
        'database = ./db/index.txt',
        'serial = ./db/serial',
        'crlnumber = ./db/crlnumber',
        'new_certs_dir = ./db',
        'certificate = ./ca.crt',
        'private_key = ./ca.key',
        'default_md = sha256',
        'policy = p',
        'default_crl_days = 30',
        'unique_subject = no',
        '[p]',
        'commonName = supplied',
        '[server]',
        'subjectAltName = DNS:collector.test,IP:127.0.0.1',
        'extendedKeyUsage = serverAuth',
        '[client]',
        `subjectAltName = DNS:$\{ENV::CLIENT_NAME}`,
        'extendedKeyUsage = clientAuth',
        '',
      ].join('\n'),
    );
    ossl(
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        'ca.key',
        '-out',
        'ca.crt',
        '-days',
        '30',
        '-subj',
        `/CN=auditrelay test ${name}`,
      ],
      d,
    );
    return d;
  };
  const main = makeCa('ca');
  const other = makeCa('other-ca');
  let n = 0;
  const issue = (
    ca: string,
    name: string,
    ext: 'server' | 'client',
    dates: string[],
  ): { cert: string; key: string } => {
    const base = path.join(dir, `${name}-${++n}`);
    execFileSync(
      OPENSSL!,
      [
        'req',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        `${base}.key`,
        '-out',
        `${base}.csr`,
        '-subj',
        `/CN=${name}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    execFileSync(
      OPENSSL!,
      [
        'ca',
        '-batch',
        '-config',
        'ca.cnf',
        '-in',
        `${base}.csr`,
        '-out',
        `${base}.crt`,
        '-extensions',
        ext,
        ...dates,
      ],
      { cwd: ca, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CLIENT_NAME: name } },
    );
    chmodSync(`${base}.key`, 0o400);
    return { cert: `${base}.crt`, key: `${base}.key` };
  };
  const server = issue(main, 'collector.test', 'server', ['-days', '10']);
  return {
    dir,
    caCert: path.join(main, 'ca.crt'),
    otherCaCert: path.join(other, 'ca.crt'),
    serverCert: server.cert,
    serverKey: server.key,
    client: (name, opts = {}) =>
      issue(
        opts.ca === 'other' ? other : main,
        name,
        'client',
        opts.expired ? ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z'] : ['-days', '10'],
      ),
    revoke: (cert) => ossl(['ca', '-batch', '-config', 'ca.cnf', '-revoke', cert], main),
    crl: () => {
      const out = path.join(dir, 'ca.crl');
      ossl(['ca', '-batch', '-config', 'ca.cnf', '-gencrl', '-out', out], main);
      return out;
    },
  };
}

export interface RunningTlsCollector extends RunningCollector {
  settings: TlsCollectorSettings;
}

export function tlsSettings(s: Partial<TlsCollectorSettings>): TlsCollectorSettings {
  return {
    auth: 'psk',
    profile: 'compatible',
    cipherSuites: null,
    keyExchange: null,
    pskFile: null,
    pskIdentity: null,
    allowedClients: null,
    caFile: null,
    certFile: null,
    keyFile: null,
    crlFile: null,
    allowedNames: null,
    handshakeTimeoutMs: 2000,
    maxPendingHandshakes: DEFAULT_TLS_MAX_PENDING_HANDSHAKES,
    ...s,
  };
}

/** Our collector in-process with transport = TLS, on a free loopback port, its log captured. */
export async function startTlsCollector(
  dir: string,
  tlsOpts: Partial<TlsCollectorSettings>,
  extra: Partial<CollectorSettings> = {},
): Promise<RunningTlsCollector> {
  const { log, entries } = memoryLogger();
  const logFile = path.join(dir, `collector-${Date.now()}-${Math.random().toString(36).slice(2)}.log`);
  const settings = tlsSettings(tlsOpts);
  const collector = new Collector(
    {
      ...DEFAULT_COLLECTOR_SETTINGS,
      port: 0,
      logFile,
      fsync: 'never',
      maxPerAddr: 64,
      listenBacklog: 1024,
      tls: settings,
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
    settings,
    lines,
    waitForLines: (n, ms = 15_000) =>
      pollUntil(() => (lines().length >= n ? lines() : undefined), {
        timeoutMs: ms,
        what: `${n} lines in the collector log`,
        diagnostics: () => `have ${lines().length}\n${entries.map((e) => e.msg).join('\n')}`,
      }),
    waitForLog: (match, ms = 15_000) =>
      pollUntil(() => entries.find((e: LogEntry) => match.test(e.msg)), {
        timeoutMs: ms,
        what: `a collector log line matching ${match}`,
        diagnostics: () => entries.map((e) => e.msg).join('\n'),
      }),
    stop: () => collector.stop(),
  };
}

export interface RawTlsOptions {
  port: number;
  /** PSK: identity and key. */
  identity?: string;
  key?: Buffer;
  /** X.509: our certificate and key, the CA that signs the server's. */
  cert?: string;
  certKey?: string;
  ca?: string;
  /** Local address to connect from (any 127.0.0.0/8 address). */
  localAddress?: string;
}

/** A TLS client speaking the managed format, for raw exchanges and timing. */
export class RawTlsClient {
  readonly replies: WireMessage[] = [];
  readonly #decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
  closed: string | null = null;
  #waiters = new Set<() => void>();
  #seq = 0;

  private constructor(readonly socket: tls.TLSSocket) {
    socket.on('data', (chunk: Buffer) => {
      this.replies.push(...this.#decoder.push(chunk));
      this.#wake();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.closed ??= err.code ?? err.message;
      this.#wake();
    });
    socket.on('close', () => {
      this.closed ??= 'closed';
      this.#wake();
    });
  }

  static connect(o: RawTlsOptions): Promise<RawTlsClient> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: o.port,
        ...(o.localAddress ? { localAddress: o.localAddress } : {}),
        minVersion: 'TLSv1.3',
        ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256',
        ...(o.key
          ? {
              pskCallback: () => ({ psk: o.key!, identity: o.identity! }),
              checkServerIdentity: () => undefined,
            }
          : {
              cert: readFileSync(o.cert!),
              key: readFileSync(o.certKey!),
              ca: readFileSync(o.ca!),
              servername: 'collector.test',
            }),
      });
      socket.once('secureConnect', () => {
        socket.off('error', reject);
        resolve(new RawTlsClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Sends one record; returns its sequence number. */
  send(text: string): number {
    const seq = ++this.#seq;
    this.socket.write(encodeEvent(seq, Buffer.from(`${text}\n`)));
    return seq;
  }

  async waitForReplies(n: number, ms = 10_000): Promise<WireMessage[]> {
    await pollUntil(
      () => {
        if (this.replies.length >= n) return true;
        if (this.closed !== null)
          throw new Error(`link closed with ${this.replies.length}/${n} replies: ${this.closed}`);
        return undefined;
      },
      { timeoutMs: ms, intervalMs: 2, what: `${n} replies` },
    );
    return this.replies;
  }

  /** Waits until the server closes the link; returns why. */
  async waitForClose(ms = 10_000): Promise<string> {
    return pollUntil(() => this.closed ?? undefined, {
      timeoutMs: ms,
      intervalMs: 5,
      what: 'the link to close',
    });
  }

  close(): void {
    this.socket.destroy();
  }

  #wake(): void {
    for (const w of this.#waiters) w();
    this.#waiters.clear();
  }
}

/** Opens a plain TCP connection and resolves once connected. */
export function rawConnect(port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    s.once('connect', () => {
      s.off('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
    s.once('error', reject);
  });
}
