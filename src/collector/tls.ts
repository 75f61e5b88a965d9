/**
 * transport = TLS for the collector (docs/tls.md): auditd 4.2.1's TLS-PSK (tls_psk_file, tls_psk_identity,
 * tls_allowed_clients in both modes) and auditrelay's mutual X.509 (tls_auth = x509).
 *
 * Each accepted TCP connection is handed to a TLS server that never listens itself (`tls.Server`, fed with
 * `emit('connection')`), so every handshake runs on the event loop without blocking anyone; the collector gives
 * each its own deadline and bounds how many are pending (src/collector/collector.ts). This module decides who is
 * let in:
 *
 * - PSK: the identity the client presents must be `tls_psk_identity` (no allowed-clients file), or enabled in
 *   `tls_allowed_clients`; its key is `tls_psk_file` (single-PSK mode) or its own `key=` file (per-identity keys).
 *   An unknown or disabled identity gets no key (the client sees handshake_failure), a wrong key fails the binder.
 *   The identity is checked again when the handshake completes (a SIGHUP may have disabled it meanwhile).
 * - X.509: the client's certificate must chain to `tls_ca_file`, not be expired or revoked (`tls_crl_file`), and,
 *   with `tls_allowed_names`, carry one of those names (SAN DNS name or CN). Its connection ends when it expires.
 *
 * `reload()` (SIGHUP) reads every file again (keys, allowed-clients file, certificates, CRL) and applies them to new
 * handshakes; the collector then asks `authorize()` about every open session and disconnects those no longer
 * allowed (as auditd 4.2.1 does for the ACL). A bad file keeps everything as it was.
 */
import type { X509Certificate } from 'node:crypto';
import type net from 'node:net';
import tls from 'node:tls';
import { ConfigError, FileSafetyError } from '../errors.js';
import { readOwnedFile } from '../fs/safe-files.js';
import type { Logger } from '../log.js';
import {
  alertNumber,
  alertText,
  CERT_ERRORS,
  contextOptions,
  errorCode,
  TLS13_ONLY,
  type TlsProfile,
} from '../tls/options.js';
import { type AllowedClients, loadAllowedClients, loadPskFile, wipeAllowedClients } from '../tls/psk.js';
import type { PeerIdentity } from './identity.js';

export interface TlsCollectorSettings {
  auth: 'psk' | 'x509';
  profile: TlsProfile;
  cipherSuites: readonly string[] | null;
  keyExchange: readonly string[] | null;
  /** Single-PSK key (tls_psk_file); optional with per-identity keys. */
  pskFile: string | null;
  /** The one identity accepted without tls_allowed_clients. */
  pskIdentity: string | null;
  allowedClients: string | null;
  caFile: string | null;
  certFile: string | null;
  keyFile: string | null;
  crlFile: string | null;
  /** Certificate names (SAN DNS or CN; `*.example.com` matches one label) allowed in; null = any the CA signed. */
  allowedNames: readonly string[] | null;
  /** handshake_timeout. */
  handshakeTimeoutMs: number;
  /** Handshakes in progress at most; beyond it the oldest pending one is closed. */
  maxPendingHandshakes: number;
}

/** What the files say, loaded together (a reload replaces all of it or nothing). */
interface Material {
  psk: Buffer | null;
  acl: AllowedClients | null;
  options: tls.TlsOptions;
}

/**
 * No TLS 1.3 session tickets: auditd 4.2 sends none (SSL_CTX_set_num_tickets 0; no resumption), and audisp-remote
 * 4.2.1 trips over one: when the ticket is already buffered when it enters its main loop, it does a blocking read
 * for a reply that never comes and drops the connection after max_time_per_record (measured: 1 run in ~6, the
 * records then wait for the next one to reconnect). Node has no public way to set the ticket count, so the
 * context's ticket callback (`enableTicketKeyCallback`, the hook Node's own tests use) declines every ticket, which
 * makes OpenSSL send none. Returns false when this Node does not have the hook (then setting OPENSSL_CONF to a file
 * with `NumTickets = 0` does the same, docs/tls.md); test/tls/agent-collector.test.ts checks that no ticket is sent.
 */
export function suppressSessionTickets(server: tls.Server): boolean {
  const context = (server as unknown as { _sharedCreds?: { context?: TicketHooks } })._sharedCreds?.context;
  if (!context || typeof context.enableTicketKeyCallback !== 'function') return false;
  const blank = Buffer.alloc(16);
  context.onticketkeycallback = () => [0, blank, blank, blank, blank];
  context.enableTicketKeyCallback();
  return true;
}

interface TicketHooks {
  enableTicketKeyCallback?: () => void;
  onticketkeycallback?: (name: Buffer, iv: Buffer, encrypt: boolean) => unknown[];
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

/** Reads every file the settings name; ConfigError (what, which file, the fix) on the first problem. */
function loadMaterial(s: TlsCollectorSettings, log: Logger): Material {
  const base: tls.TlsOptions = { ...TLS13_ONLY, ...contextOptions(s) };
  if (s.auth === 'x509') {
    if (!s.caFile || !s.certFile || !s.keyFile) {
      throw new ConfigError('tls_auth = x509 needs tls_ca_file, tls_cert_file and tls_key_file', {
        key: 'tls_auth',
        value: 'x509',
      });
    }
    const ca = readPem(s.caFile, 'tls_ca_file', 'protected');
    const cert = readPem(s.certFile, 'tls_cert_file', 'protected');
    const key = readPem(s.keyFile, 'tls_key_file', 'secret');
    const crl = s.crlFile ? readPem(s.crlFile, 'tls_crl_file', 'protected') : null;
    const options: tls.TlsOptions = {
      ...base,
      ca,
      cert,
      key,
      ...(crl ? { crl } : {}),
      requestCert: true,
      // Verified by OpenSSL during the handshake; the result is judged in `judge` (one log line naming the peer).
      rejectUnauthorized: false,
    };
    try {
      tls.createSecureContext(options);
    } catch (err) {
      throw new ConfigError(
        `cannot use the certificate ${s.certFile} with the key ${s.keyFile}, the CA file ${s.caFile}${crl ? ` and the CRL ${s.crlFile}` : ''}: ${messageOf(err)} (are they PEM files, and is the key the certificate's?)`,
        { key: 'tls_cert_file', value: s.certFile },
        { cause: err },
      );
    }
    return { psk: null, acl: null, options };
  }
  const acl = s.allowedClients ? loadAllowedClients(s.allowedClients) : null;
  try {
    if (acl && s.pskIdentity) {
      log.info(
        { tls_psk_identity: s.pskIdentity, tls_allowed_clients: s.allowedClients },
        'tls_psk_identity is ignored: tls_allowed_clients decides who may connect (as auditd)',
      );
    }
    if (!acl?.perIdentityKeys && !s.pskFile) {
      throw new ConfigError(
        acl
          ? `${acl.file} has no key= entries (single-PSK mode), so tls_psk_file is required`
          : 'transport = TLS requires tls_psk_file (or tls_allowed_clients with a key= file per identity)',
        {
          key: 'tls_psk_file',
          allowed: 'the absolute path of a 0400 root-owned file holding the key in hex',
        },
      );
    }
    if (!acl && !s.pskIdentity) {
      throw new ConfigError(
        'tls_psk_identity is required when tls_psk_file is set and tls_allowed_clients is not',
        { key: 'tls_psk_identity' },
      );
    }
    const psk = s.pskFile ? loadPskFile(s.pskFile, { key: 'tls_psk_file' }) : null;
    return { psk, acl, options: base };
  } catch (err) {
    wipeAllowedClients(acl);
    throw err;
  }
}

/** A handshake the acceptor runs. */
interface Pending {
  peer: string;
  done: (result: HandshakeResult) => void;
  /** Why the PSK callback refused, for the log line of the failure that follows. */
  refusal: string | null;
}

export type HandshakeResult =
  | { ok: true; socket: tls.TLSSocket; identity: PeerIdentity; expiresAt: number | null; summary: string }
  | { ok: false; reason: string };

/** The names a certificate carries: SAN DNS names, then the CN. */
export function certificateNames(cert: X509Certificate): string[] {
  const names: string[] = [];
  for (const part of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (part.startsWith('DNS:')) names.push(part.slice(4));
  }
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  if (cn && !names.includes(cn)) names.push(cn);
  return names;
}

/** Whether `name` matches an allowed-names pattern (exact, case ignored; `*.domain` = one label before domain). */
export function nameAllowed(name: string, pattern: string): boolean {
  const n = name.toLowerCase();
  const p = pattern.toLowerCase();
  if (p.startsWith('*.')) {
    const dot = n.indexOf('.');
    return dot > 0 && n.slice(dot) === p.slice(1);
  }
  return n === p;
}

export class TlsAcceptor {
  #settings: TlsCollectorSettings;
  #material: Material;
  readonly #log: Logger;
  readonly #server: tls.Server;
  readonly #pending = new Map<string, Pending>();
  readonly #identities = new WeakMap<tls.TLSSocket, string>();
  #noTickets = false;

  /** Loads every file; throws ConfigError (the collector does not start) saying what to fix. */
  static open(settings: TlsCollectorSettings, log: Logger): TlsAcceptor {
    return new TlsAcceptor(settings, loadMaterial(settings, log), log);
  }

  private constructor(settings: TlsCollectorSettings, material: Material, log: Logger) {
    this.#settings = settings;
    this.#material = material;
    this.#log = log;
    this.#server = tls.createServer({
      ...material.options,
      ...(settings.auth === 'psk'
        ? { pskCallback: (socket: tls.TLSSocket, identity: string) => this.#pskKey(socket, identity) }
        : {}),
    });
    this.#noTickets = suppressSessionTickets(this.#server);
    if (!this.#noTickets) {
      log.warn(
        'TLS: this Node cannot be stopped from sending session tickets; audisp-remote 4.2.1 may then stall after connecting: set OPENSSL_CONF to a file with NumTickets = 0 (docs/tls.md)',
      );
    }
    this.#server.on('secureConnection', (socket: tls.TLSSocket) => this.#secure(socket));
    this.#server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => this.#failed(err, socket));
    log.info(
      {
        auth: settings.auth,
        profile: settings.profile,
        ciphers: material.options.ciphers,
        groups: material.options.ecdhCurve ?? 'OpenSSL default',
        ...(settings.auth === 'psk'
          ? {
              mode: material.acl
                ? material.acl.perIdentityKeys
                  ? 'per-identity keys'
                  : 'single PSK'
                : 'one identity',
              identities: material.acl
                ? [...material.acl.entries.values()].filter((e) => e.enabled).length
                : 1,
            }
          : {
              ca: settings.caFile,
              cert: settings.certFile,
              crl: settings.crlFile,
              allowedNames: settings.allowedNames,
            }),
        handshakeTimeoutMs: settings.handshakeTimeoutMs,
        maxPendingHandshakes: settings.maxPendingHandshakes,
      },
      `TLS: accepting clients with ${settings.auth === 'psk' ? 'pre-shared keys' : 'X.509 certificates'} (TLS 1.3)`,
    );
  }

  get settings(): TlsCollectorSettings {
    return this.#settings;
  }

  /** Handshakes started and not finished. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Runs the server side of the handshake on `raw` (just accepted); `done` is called exactly once, unless the
   * caller destroys `raw` first (its deadline, the pending cap) and calls `abandon`.
   */
  handshake(raw: net.Socket, peer: string, done: (result: HandshakeResult) => void): void {
    const key = `${raw.remoteAddress}:${raw.remotePort}`;
    const pending: Pending = { peer, done, refusal: null };
    this.#pending.set(key, pending);
    raw.once('close', () => {
      if (this.#pending.get(key) !== pending) return;
      this.#pending.delete(key);
      done({ ok: false, reason: 'the client closed the connection during the TLS handshake' });
    });
    this.#server.emit('connection', raw);
  }

  /** The caller gave up on the handshake of `raw` (it destroyed the socket). */
  abandon(raw: net.Socket): void {
    const key = `${raw.remoteAddress}:${raw.remotePort}`;
    this.#pending.delete(key);
  }

  /**
   * Whether `identity` (of an open session) is still allowed under the current files; the reason when not.
   * Certificates are judged at their handshake (and their expiry); here only tls_allowed_names.
   */
  authorize(identity: PeerIdentity): string | null {
    if (identity.kind === 'tls-psk') return this.#pskRefusal(identity.name);
    if (identity.kind === 'x509') {
      const allowed = this.#settings.allowedNames;
      if (allowed && !allowed.some((p) => nameAllowed(identity.name, p))) {
        return `certificate name ${identity.name} is no longer in tls_allowed_names`;
      }
    }
    return null;
  }

  /**
   * SIGHUP: reads every file again and applies them to the next handshakes. tls_auth cannot change (a restart).
   * Throws ConfigError and keeps everything as it was when a file is bad. `trustChanged`: the CA file or the CRL
   * changed, so certificates accepted before must be judged again (OpenSSL judges a certificate only during its
   * handshake: the collector then closes its X.509 sessions and pending handshakes, and each client is checked
   * against the new files when it reconnects).
   */
  reload(next: TlsCollectorSettings): { trustChanged: boolean } {
    if (next.auth !== this.#settings.auth) {
      throw new ConfigError(
        `tls_auth changed from ${this.#settings.auth} to ${next.auth}: that needs a restart`,
        {
          key: 'tls_auth',
          value: next.auth,
        },
      );
    }
    const material = loadMaterial(next, this.#log);
    this.#server.setSecureContext(material.options);
    // A new context: no tickets from it either.
    if (this.#noTickets) suppressSessionTickets(this.#server);
    const old = this.#material;
    this.#material = material;
    this.#settings = next;
    old.psk?.fill(0);
    wipeAllowedClients(old.acl);
    const same = (a: unknown, b: unknown) =>
      a === b || (Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b));
    return {
      trustChanged:
        !same(old.options.ca, material.options.ca) || !same(old.options.crl, material.options.crl),
    };
  }

  dispose(): void {
    this.#material.psk?.fill(0);
    wipeAllowedClients(this.#material.acl);
  }

  #pendingOf(socket: tls.TLSSocket): Pending | undefined {
    return this.#pending.get(`${socket.remoteAddress}:${socket.remotePort}`);
  }

  /** Why a PSK identity is refused now, or null. */
  #pskRefusal(identity: string): string | null {
    const { acl } = this.#material;
    if (acl) {
      const entry = acl.entries.get(identity);
      if (!entry) return `unknown identity "${identity}" (not in ${acl.file})`;
      if (!entry.enabled) return `identity "${identity}" is disabled in ${acl.file}`;
      return null;
    }
    return identity === this.#settings.pskIdentity
      ? null
      : `identity "${identity}" is not the expected tls_psk_identity "${this.#settings.pskIdentity}"`;
  }

  #pskKey(socket: tls.TLSSocket, identity: string): Buffer | null {
    const pending = this.#pendingOf(socket);
    const refusal = this.#pskRefusal(identity);
    if (refusal !== null) {
      if (pending) pending.refusal = refusal;
      return null;
    }
    this.#identities.set(socket, identity);
    const { acl, psk } = this.#material;
    const key = acl?.perIdentityKeys ? acl.entries.get(identity)!.key : psk;
    return key ? Buffer.from(key) : null;
  }

  #finish(socket: tls.TLSSocket, result: HandshakeResult): void {
    const key = `${socket.remoteAddress}:${socket.remotePort}`;
    const pending = this.#pending.get(key);
    if (!pending) {
      if (!result.ok) socket.destroy();
      return;
    }
    this.#pending.delete(key);
    if (!result.ok) socket.destroy();
    pending.done(result);
  }

  #secure(socket: tls.TLSSocket): void {
    const protocol = socket.getProtocol();
    const cipher = socket.getCipher().name;
    const group = socket.getEphemeralKeyInfo?.();
    const summary = `${protocol}, ${cipher}${group && 'name' in group && group.name ? `, ${group.name}` : ''}`;
    if (this.#settings.auth === 'psk') {
      const identity = this.#identities.get(socket);
      const refusal = identity === undefined ? 'no PSK identity was agreed' : this.#pskRefusal(identity);
      if (refusal !== null || identity === undefined) {
        this.#finish(socket, { ok: false, reason: `refused after the handshake: ${refusal}` });
        return;
      }
      const nodes = this.#material.acl?.entries.get(identity)?.nodes ?? [];
      this.#finish(socket, {
        ok: true,
        socket,
        identity: { kind: 'tls-psk', name: identity, ...(nodes.length > 0 ? { nodes } : {}) },
        expiresAt: null,
        summary,
      });
      return;
    }
    if (socket.isSessionReused()) {
      // Only a ticket could resume an X.509 session (none are issued); its certificate was judged against older
      // files, so it is refused: the client makes a full handshake.
      this.#finish(socket, {
        ok: false,
        reason: 'session resumption is not accepted: a full handshake is required',
      });
      return;
    }
    const cert = socket.getPeerX509Certificate();
    if (!cert) {
      this.#finish(socket, { ok: false, reason: 'the client sent no certificate' });
      return;
    }
    const names = certificateNames(cert);
    const describe = `certificate "${cert.subject.replace(/\n/g, ', ')}" (serial ${cert.serialNumber}, issuer "${cert.issuer.replace(/\n/g, ', ')}")`;
    if (!socket.authorized) {
      const code = String(socket.authorizationError ?? 'unknown');
      const what = CERT_ERRORS[code] ?? `was not accepted (${code})`;
      const when =
        code === 'CERT_HAS_EXPIRED'
          ? ` on ${cert.validTo}`
          : code === 'CERT_NOT_YET_VALID'
            ? ` until ${cert.validFrom}`
            : '';
      this.#finish(socket, { ok: false, reason: `its ${describe} ${what}${when} (${code})` });
      return;
    }
    const allowed = this.#settings.allowedNames;
    const name = allowed ? names.find((n) => allowed.some((p) => nameAllowed(n, p))) : names[0];
    if (name === undefined) {
      this.#finish(socket, {
        ok: false,
        reason: allowed
          ? `its ${describe} names ${names.join(', ') || 'nothing'}, none of which is in tls_allowed_names`
          : `its ${describe} carries no SAN DNS name and no CN`,
      });
      return;
    }
    const expiresAt = Date.parse(cert.validTo);
    this.#finish(socket, {
      ok: true,
      socket,
      identity: { kind: 'x509', name, nodes: names },
      expiresAt: Number.isFinite(expiresAt) ? expiresAt : null,
      summary,
    });
  }

  #failed(err: Error, socket: tls.TLSSocket): void {
    const pending = this.#pendingOf(socket);
    if (!pending) return; // abandoned by the caller, or closed (reported through the raw socket's close)
    this.#finish(socket, { ok: false, reason: this.#explain(err, pending) });
  }

  /** The collector's view of a failed handshake (one log line names the peer and this). */
  #explain(err: Error, pending: Pending): string {
    const code = errorCode(err);
    const alert = alertNumber(err);
    if (pending.refusal !== null) return pending.refusal;
    if (code === 'ERR_SSL_BINDER_DOES_NOT_VERIFY') {
      return "wrong key: the client's pre-shared key is not the one this collector has for its identity (binder does not verify)";
    }
    if (
      code === 'ERR_SSL_WRONG_VERSION_NUMBER' ||
      code === 'ERR_SSL_HTTP_REQUEST' ||
      code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG'
    ) {
      return 'the client does not speak TLS (it sent bytes that are not a TLS record): is it configured with transport = tcp?';
    }
    if (code === 'ERR_SSL_UNSUPPORTED_PROTOCOL' || alert === 70) {
      return "protocol mismatch: the client does not offer TLS 1.3 (audit's TLS transport is TLS 1.3 only)";
    }
    if (code === 'ERR_SSL_NO_SHARED_CIPHER') return 'no cipher suite in common with the client';
    if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') {
      return 'the client sent no certificate (tls_auth = x509 needs one): is it configured with tls_auth = psk?';
    }
    if (code === 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM' && this.#settings.auth === 'psk') {
      return 'the client offered no pre-shared key (is it configured with tls_auth = x509?) or only a hash this key cannot use';
    }
    if (code === 'ECONNRESET') return 'the client closed the connection during the TLS handshake';
    if (alert !== null && this.#settings.auth === 'x509' && alert >= 42 && alert <= 48) {
      return `the client refused this collector's certificate ${this.#settings.certFile} (${alertText(alert)}): check its tls_ca_file and tls_server_name`;
    }
    if (alert !== null) return `the client ended the handshake with ${alertText(alert)}`;
    return `TLS handshake failed: ${code ? `${code}: ` : ''}${messageOf(err)}`;
  }
}
