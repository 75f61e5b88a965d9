/**
 * transport = tls for the agent (audit 4.2's TLS transport, docs/tls.md): a TLS 1.3 handshake on a freshly dialled
 * TCP link, run by the connection machine's `authenticate` actor under its deadline, then a Transport over the TLS
 * socket; the managed framing inside is unchanged.
 *
 * - `tls_auth = psk` (upstream): an external pre-shared key from `tls_psk_file` under `tls_psk_identity`; the
 *   server is authenticated by knowing the key.
 * - `tls_auth = x509` (auditrelay): our certificate and key, the server's certificate checked against
 *   `tls_ca_file` (and `tls_crl_file`) and `tls_server_name` (default: remote_server).
 *
 * Keys, certificates and the CRL are read at every handshake (owner and mode checked on the open descriptor), so a
 * replaced file applies from the next connect. A failed handshake becomes one specific reason (wrong key, unknown or
 * disabled identity, protocol mismatch, a certificate problem, a server that does not speak TLS) for the machine,
 * which backs off and retries; records stay queued.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ConfigError, FileSafetyError, LinkError } from '../errors.js';
import { readOwnedFile } from '../fs/safe-files.js';
import type { Logger } from '../log.js';
import { HEADER_SIZE, MAX_AUDIT_MESSAGE_LENGTH } from '../protocol/constants.js';
import {
  alertNumber,
  alertText,
  CERT_ERRORS,
  contextOptions,
  errorCode,
  TLS13_ONLY,
  type TlsProfile,
} from '../tls/options.js';
import { loadPskFile } from '../tls/psk.js';
import { Inbox, TcpTransport, type Transport } from './transport.js';

export interface TlsAgentSettings {
  auth: 'psk' | 'x509';
  profile: TlsProfile;
  cipherSuites: readonly string[] | null;
  keyExchange: readonly string[] | null;
  pskFile: string | null;
  pskIdentity: string | null;
  caFile: string | null;
  certFile: string | null;
  keyFile: string | null;
  crlFile: string | null;
  /** The name the server's certificate must carry (tls_server_name, else remote_server). */
  serverName: string;
}

/** What a handshake needs, read from the files. */
interface Material {
  psk: Buffer | null;
  context: tls.SecureContext;
}

/** Largest PEM file read (a CA bundle can be large). */
const MAX_PEM_BYTES = 8 * 1024 * 1024;

function messageOf(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}

function readPem(file: string, key: string, rule: 'secret' | 'protected'): Buffer {
  try {
    return readOwnedFile(file, key.replace(/^tls_/, '').replace(/_file$/, ' file'), rule, MAX_PEM_BYTES);
  } catch (err) {
    if (err instanceof FileSafetyError)
      throw new ConfigError(err.message, { key, value: file }, { cause: err });
    throw err;
  }
}

/** Reads the key or certificates and builds the secure context. Throws ConfigError (what, which file, the fix). */
export function loadClientMaterial(s: TlsAgentSettings): Material {
  const base = { ...TLS13_ONLY, ...contextOptions(s) };
  if (s.auth === 'psk') {
    if (!s.pskFile || !s.pskIdentity)
      throw new ConfigError('tls_auth = psk needs tls_psk_file and tls_psk_identity', { key: 'tls_auth' });
    const psk = loadPskFile(s.pskFile, { key: 'tls_psk_file' });
    return { psk, context: tls.createSecureContext(base) };
  }
  if (!s.caFile || !s.certFile || !s.keyFile) {
    throw new ConfigError('tls_auth = x509 needs tls_ca_file, tls_cert_file and tls_key_file', {
      key: 'tls_auth',
    });
  }
  const ca = readPem(s.caFile, 'tls_ca_file', 'protected');
  const cert = readPem(s.certFile, 'tls_cert_file', 'protected');
  const key = readPem(s.keyFile, 'tls_key_file', 'secret');
  const crl = s.crlFile ? readPem(s.crlFile, 'tls_crl_file', 'protected') : null;
  try {
    return {
      psk: null,
      context: tls.createSecureContext({ ...base, ca, cert, key, ...(crl ? { crl } : {}) }),
    };
  } catch (err) {
    throw new ConfigError(
      `cannot use the certificate ${s.certFile} with the key ${s.keyFile}, the CA file ${s.caFile}${crl ? ` and the CRL ${s.crlFile}` : ''}: ${messageOf(err)} (are they PEM files, and is the key the certificate's?)`,
      { key: 'tls_cert_file', value: s.certFile },
      { cause: err },
    );
  } finally {
    key.fill(0);
  }
}

/**
 * The client side of the TLS transport: preflight at start, then one handshake per link. Settings are read at
 * every handshake (a SIGHUP that changes them re-opens the link, reload-policy.ts).
 */
export class TlsClient {
  /** The settings for server `index` of remote_server (its name), the first by default. */
  readonly #settings: (index?: number) => TlsAgentSettings;
  readonly #log: Logger;

  /**
   * Checks at start what can be checked without the network: the key or certificate files exist, obey the owner
   * and mode rule, and parse. Throws ConfigError (exit status 6) saying what to fix.
   */
  static preflight(s: TlsAgentSettings | undefined): TlsAgentSettings {
    if (!s) throw new ConfigError('transport = tls but no TLS settings were derived', { key: 'transport' });
    loadClientMaterial(s).psk?.fill(0);
    return s;
  }

  constructor(settings: (index?: number) => TlsAgentSettings | undefined, log: Logger) {
    const initial = TlsClient.preflight(settings());
    this.#settings = (index) => settings(index) ?? initial;
    this.#log = log;
  }

  /**
   * Runs the handshake on `link` (a connected TCP link) and returns the secured transport. Rejects with a
   * LinkError whose message says what went wrong and what to check.
   */
  async handshake(link: Transport, signal: AbortSignal, server = 0): Promise<TlsTransport> {
    const s = this.#settings(server);
    const peer = link.peer;
    const who = s.auth === 'psk' ? `identity ${s.pskIdentity}` : `certificate ${s.certFile}`;
    let material: Material;
    try {
      material = loadClientMaterial(s);
    } catch (err) {
      throw new LinkError(`TLS handshake with ${peer} not attempted: ${messageOf(err)}`, { cause: err });
    }
    if (!(link instanceof TcpTransport)) throw new LinkError(`TLS needs a TCP link, not ${peer}`);
    const raw = link.detach();
    const socket = tls.connect({
      socket: raw,
      secureContext: material.context,
      ...(material.psk
        ? {
            pskCallback: () => ({ psk: material.psk!, identity: s.pskIdentity! }),
            // A PSK server sends no certificate; the key authenticates it.
            checkServerIdentity: () => undefined,
          }
        : { host: s.serverName, ...(net.isIP(s.serverName) ? {} : { servername: s.serverName }) }),
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const fail = (err: Error) => {
          cleanup();
          reject(err);
        };
        const onAbort = () =>
          fail(
            new LinkError(
              'the TLS handshake did not complete within the authentication deadline (max_time_per_record)',
            ),
          );
        const onClose = () => fail(Object.assign(new Error('closed'), { code: 'ECONNRESET' }));
        const cleanup = () => {
          signal.removeEventListener('abort', onAbort);
          socket.off('error', fail);
          socket.off('close', onClose);
          socket.off('secureConnect', onSecure);
        };
        const onSecure = () => {
          cleanup();
          resolve();
        };
        signal.addEventListener('abort', onAbort, { once: true });
        socket.once('secureConnect', onSecure);
        socket.once('error', fail);
        socket.once('close', onClose);
      });
    } catch (err) {
      socket.destroy();
      raw.destroy();
      if (err instanceof LinkError) throw err;
      throw new LinkError(`TLS handshake with ${peer} as ${who} failed: ${explainHandshake(err, s)}`, {
        cause: err,
      });
    } finally {
      material.psk?.fill(0);
    }
    const cipher = socket.getCipher();
    const group = socket.getEphemeralKeyInfo?.();
    const groupName = group && 'name' in group ? group.name : undefined;
    this.#log.info(
      { server: peer, cipher: cipher.name, group: groupName, protocol: socket.getProtocol(), auth: s.auth },
      `TLS session established with ${peer} as ${who} (${socket.getProtocol()}, ${cipher.name}${groupName ? `, ${groupName}` : ''})`,
    );
    return new TlsTransport(socket, peer, s, raw);
  }
}

/** The reason of a failed handshake, as specific as the alert or the error allows (module comment). */
export function explainHandshake(err: unknown, s: TlsAgentSettings): string {
  const code = errorCode(err);
  const alert = alertNumber(err);
  const id = s.pskIdentity;
  if (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    /socket disconnected before secure/i.test(messageOf(err))
  ) {
    return (
      'the server closed the connection during the TLS handshake: either it does not speak TLS on this port ' +
      '(a server with transport = TCP, such as auditd 3.0.9, closes on the first bytes it cannot read) or it dropped ' +
      'the handshake (its deadline, too many pending handshakes); its log says which'
    );
  }
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') {
    return 'the server answered with bytes that are not TLS: it is not configured with transport = TLS';
  }
  if (alert === 70 || code === 'ERR_SSL_UNSUPPORTED_PROTOCOL' || code === 'ERR_SSL_NO_PROTOCOLS_AVAILABLE') {
    return `protocol mismatch: the server does not accept TLS 1.3 (${alert ? alertText(alert) : code}); audit's TLS transport is TLS 1.3 only`;
  }
  if (s.auth === 'psk') {
    if (alert === 51 || alert === 47 || alert === 20) {
      return `the server did not accept our key for identity ${id} (${alertText(alert)}): ${s.pskFile} holds another key than the server has for ${id} (single-PSK mode: its tls_psk_file; per-identity keys: the key= file of ${id} in its tls_allowed_clients)`;
    }
    if (alert === 80 || alert === 115) {
      return `the server refused identity ${id} (${alertText(alert)}; auditd 4.2 sends it for an identity it does not know or has disabled): enable ${id} in the server's tls_allowed_clients, or set tls_psk_identity to the identity the server expects`;
    }
    if (alert === 40) {
      return `the server refused identity ${id}, or shares no cipher suite or key exchange group with us (${alertText(alert)}): check that ${id} is enabled in the server's tls_allowed_clients (or is its tls_psk_identity), and tls_cipher_suites / tls_key_exchange`;
    }
  } else {
    if (code in CERT_ERRORS) {
      const what =
        code === 'ERR_TLS_CERT_ALTNAME_INVALID'
          ? `does not name ${s.serverName} (tls_server_name)`
          : CERT_ERRORS[code];
      return `the server's certificate ${what} (${code}${code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? `: ${messageOf(err)}` : ''}); checked against ${s.caFile}${s.crlFile ? ` and ${s.crlFile}` : ''}`;
    }
    const refused: Record<number, string> = {
      42: 'it found it bad',
      43: 'its type is not supported',
      44: 'it is revoked',
      45: 'it has expired',
      46: 'it could not be checked',
      48: 'it is not signed by a CA the server trusts',
      49: 'access denied',
      116: 'none was sent',
    };
    if (alert !== null && alert in refused) {
      return `the server refused our certificate ${s.certFile}: ${refused[alert]} (${alertText(alert)}); its log names the reason`;
    }
    if (alert === 40) {
      return `no cipher suite or key exchange group in common with the server (${alertText(alert)}): check tls_cipher_suites / tls_key_exchange`;
    }
  }
  if (alert !== null) return `${alertText(alert)} from the server (${messageOf(err)})`;
  return `${code ? `${code}: ` : ''}${messageOf(err)}`;
}

/** The reason a TLS link closed, from the error or the lack of one. */
function closeReason(err: Error | null, received: number, s: TlsAgentSettings): string {
  if (err) {
    const alert = alertNumber(err);
    if (alert !== null) {
      const hint =
        s.auth === 'x509' && [42, 43, 44, 45, 46, 48, 49, 116].includes(alert)
          ? `: the server refused our certificate ${s.certFile}`
          : '';
      return `TLS link failed: ${alertText(alert)} from the server${hint}`;
    }
    return `TLS link failed: ${errorCode(err) || messageOf(err)}`;
  }
  if (received === 0) {
    return s.auth === 'x509'
      ? `the server closed the TLS link right after the handshake, before answering anything: it did not accept our certificate ${s.certFile} (expired, revoked, from a CA it does not trust, or a name it does not allow); its log names the reason`
      : `the server closed the TLS link right after the handshake, before answering anything: identity ${s.pskIdentity} is not (or no longer) enabled there; its log names the reason`;
  }
  return 'server closed the connection (EOF)';
}

/**
 * Plaintext of one TLS record at most: auditd's read buffer (MAX_AUDIT_MESSAGE_LENGTH). auditd 4.2.1 reads its TLS
 * clients with `SSL_read` into that buffer and, when the bytes it got end in the middle of a message, waits for the
 * socket to become readable again, even when the rest of the message is already decrypted inside OpenSSL: at the
 * end of a burst of pipelined messages the last ones then wait until the client sends something else (measured:
 * our agent's reply deadline expired and it resent them, as duplicates). So every TLS record we send holds whole
 * messages and fits that buffer, and one record is written at a time (Node would otherwise join queued writes into
 * one large SSL_write, which OpenSSL cuts into 16 KiB records wherever the 16 KiB fall).
 */
export const TLS_RECORD_PLAINTEXT = MAX_AUDIT_MESSAGE_LENGTH;
/** Bytes queued in the transport before write() asks the session to wait for onDrain. */
const QUEUE_HIGH_WATER = 256 * 1024;

/** A secured link: managed frames written (record by record, see TLS_RECORD_PLAINTEXT) and read over TLS. */
export class TlsTransport implements Transport {
  readonly #socket: tls.TLSSocket;
  readonly #inbox = new Inbox();
  #closedReason: string | null = null;
  #received = 0;
  /** Whole messages not yet written, oldest first. */
  readonly #queue: Buffer[] = [];
  #queued = 0;
  /** The start of a message whose rest has not been written to us yet. */
  #partial: Buffer | null = null;
  #writing = false;
  #wantDrain = false;
  onClose: ((reason: string) => void) | null = null;
  onDrain: (() => void) | null = null;
  readonly peer: string;

  /** The TCP socket under the TLS one: a dead link is reset on it (`abort`). */
  readonly #raw: net.Socket;

  constructor(socket: tls.TLSSocket, peer: string, settings: TlsAgentSettings, raw: net.Socket) {
    this.#socket = socket;
    this.#raw = raw;
    this.peer = peer;
    let error: Error | null = null;
    socket.on('data', (chunk: Buffer) => {
      this.#received += chunk.length;
      this.#inbox.deliver(chunk);
    });
    socket.on('error', (err: Error) => {
      error ??= err;
      this.#closed(closeReason(err, this.#received, settings));
    });
    socket.on('end', () => this.#closed(closeReason(error, this.#received, settings)));
    socket.on('close', () => this.#closed(closeReason(error, this.#received, settings)));
  }

  get onMessage(): ((chunk: Buffer) => void) | null {
    return this.#inbox.listener;
  }

  set onMessage(fn: ((chunk: Buffer) => void) | null) {
    this.#inbox.listen(fn, this.#closedReason, this.onClose);
  }

  write(data: Buffer): boolean {
    if (this.#socket.destroyed || this.#closedReason !== null) return true; // reported through onClose
    const buf = this.#partial ? Buffer.concat([this.#partial, data]) : data;
    let off = 0;
    while (buf.length - off >= HEADER_SIZE) {
      const end = off + HEADER_SIZE + buf.readUInt16LE(off + 10);
      if (end > buf.length) break;
      this.#queue.push(buf.subarray(off, end));
      this.#queued += end - off;
      off = end;
    }
    this.#partial = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
    this.#flush();
    if (this.#queued < QUEUE_HIGH_WATER) return true;
    this.#wantDrain = true;
    return false;
  }

  /** Writes the next record: whole messages, at most TLS_RECORD_PLAINTEXT bytes (one message if longer). */
  #flush(): void {
    if (this.#writing || this.#queue.length === 0 || this.#socket.destroyed) return;
    let bytes = 0;
    let count = 0;
    while (
      count < this.#queue.length &&
      (count === 0 || bytes + this.#queue[count]!.length <= TLS_RECORD_PLAINTEXT)
    ) {
      bytes += this.#queue[count]!.length;
      count++;
    }
    const parts = this.#queue.splice(0, count);
    this.#writing = true;
    this.#socket.write(count === 1 ? parts[0]! : Buffer.concat(parts, bytes), (err) => {
      this.#writing = false;
      this.#queued -= bytes;
      if (err) return; // the close is reported through onClose
      this.#flush();
      if (this.#wantDrain && this.#queued < QUEUE_HIGH_WATER / 2) {
        this.#wantDrain = false;
        this.onDrain?.();
      }
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  /** A dead link: reset, so that nothing of it lingers and its local port is free for the next dial at once. */
  abort(): void {
    if (!this.#raw.destroyed) this.#raw.resetAndDestroy();
    this.#socket.destroy();
  }

  #closed(reason: string): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    this.#socket.destroy();
    this.onClose?.(reason);
  }
}
