/**
 * transport = KRB5 for the collector (audit-remote-protocol.md section 4), without auditd's denial of service
 * (section 4.4): each connection's handshake is a small state machine fed by the event loop, never a blocking read,
 * and the collector gives it its own deadline (handshake_timeout). Accepting a token is CPU-only (it never contacts
 * the KDC), so one client's handshake cannot hold up another's.
 *
 * After the handshake every token is unwrapped into plaintext managed frames for the collector's usual decoder,
 * and every reply is wrapped, one token per reply, as auditd does.
 */
import { ConfigError } from '../errors.js';
import { authorizeClient, parsePrincipal } from '../krb5/auditd.js';
import { encodeToken, MAX_HANDSHAKE_TOKEN_LENGTH, TokenDecoder } from '../krb5/framing.js';
import {
  acceptSecContext,
  acquireCredentials,
  type Credential,
  GssError,
  Krb5UnavailableError,
  loadGssapi,
  type SecurityContext,
} from '../krb5/gssapi.js';
import { checkKeytabFile, enforceKeytabRule } from '../krb5/keytab.js';
import type { Logger } from '../log.js';
import { HEADER_SIZE } from '../protocol/constants.js';

export interface Krb5CollectorSettings {
  /** krb5_principal: the service name; we are `<service>/<local host>`, clients must be `<service>/*@<realm>`. */
  service: string;
  /** krb5_key_file. */
  keyFile: string;
  /** handshake_timeout: a connection that has not completed its handshake by then is closed. */
  handshakeTimeoutMs: number;
  /** Optional allow-list of full client principals (on top of auditd's rule); null = auditd's rule only. */
  allowedPrincipals: readonly string[] | null;
  /** Append ` krb5=<client principal>` to every logged record, as auditd does. */
  appendPrincipal: boolean;
  /** Handshakes in progress at most; beyond it the oldest pending one is closed. */
  maxPendingHandshakes: number;
  /** Enforce upstream's root-owned mode 0400 rule on keyFile. Default: when running as root. */
  enforceKeyFileRule?: boolean;
  /** Replay cache (e.g. 'file2:/var/lib/auditrelay/krb5.rcache'); default: the library's. */
  rcache?: string;
}

export const DEFAULT_KRB5_COLLECTOR_SETTINGS: Omit<Krb5CollectorSettings, 'keyFile'> = {
  service: 'auditd',
  handshakeTimeoutMs: 5000,
  allowedPrincipals: null,
  appendPrincipal: true,
  maxPendingHandshakes: 1024,
};

/** Slack on top of the largest frame for wrap overhead, for the data-phase token limit. */
const WRAP_SLACK = 1024;

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The collector's acceptor credential and policy, shared by all connections. */
export class Krb5Acceptor {
  /** Replaced as a whole by reload() (the handshakes in progress keep reading it). */
  settings: Krb5CollectorSettings;
  readonly #cred: Credential;
  readonly #maxFrame: number;

  private constructor(settings: Krb5CollectorSettings, cred: Credential, maxFrame: number) {
    this.settings = settings;
    this.#cred = cred;
    this.#maxFrame = maxFrame;
  }

  /**
   * Loads the binding, checks the keytab rule and acquires the acceptor credential for `<service>@<local host>`
   * from the keytab. Throws ConfigError (the collector does not start) with what to fix.
   */
  static async open(settings: Krb5CollectorSettings, maxPayload: number, log: Logger): Promise<Krb5Acceptor> {
    try {
      loadGssapi();
    } catch (err) {
      if (err instanceof Krb5UnavailableError) {
        throw new ConfigError(err.message, { key: 'transport', value: 'KRB5' }, { cause: err });
      }
      throw err;
    }
    const { exists } = checkKeytabFile(
      settings.keyFile,
      'krb5_key_file',
      settings.enforceKeyFileRule ?? enforceKeytabRule(),
    );
    if (!exists) {
      throw new ConfigError(`the keytab ${settings.keyFile} does not exist`, {
        key: 'krb5_key_file',
        value: settings.keyFile,
        allowed: `a keytab holding ${settings.service}/<this host>@REALM (kadmin: ktadd -k ${settings.keyFile} ...)`,
      });
    }
    let cred: Credential;
    try {
      cred = await acquireCredentials({
        usage: 'accept',
        principal: settings.service,
        nameType: 'hostbased',
        keytab: settings.keyFile,
        ...(settings.rcache ? { rcache: settings.rcache } : {}),
      });
    } catch (err) {
      throw new ConfigError(
        `cannot use the keytab ${settings.keyFile} for service ${settings.service} on this host: ${messageOf(err)}`,
        { key: 'krb5_key_file', value: settings.keyFile },
        { cause: err },
      );
    }
    log.info(
      { principal: cred.name, keytab: settings.keyFile, handshakeTimeoutMs: settings.handshakeTimeoutMs },
      `Kerberos: accepting clients ${settings.service}/*@<realm> as ${cred.name}`,
    );
    return new Krb5Acceptor(settings, cred, HEADER_SIZE + maxPayload);
  }

  /**
   * A reloaded configuration: handshake_timeout, krb5_allowed_principals and krb5_append_principal apply to the
   * next handshake and record; the service and the keytab stay (a restart changes them). Returns what changed.
   */
  reload(next: Krb5CollectorSettings): string[] {
    const cur = this.settings;
    const changed: string[] = [];
    if (cur.handshakeTimeoutMs !== next.handshakeTimeoutMs) changed.push('krb5HandshakeTimeout');
    if (JSON.stringify(cur.allowedPrincipals) !== JSON.stringify(next.allowedPrincipals))
      changed.push('krb5AllowedPrincipals');
    if (cur.appendPrincipal !== next.appendPrincipal) changed.push('krb5AppendPrincipal');
    this.settings = {
      ...cur,
      handshakeTimeoutMs: next.handshakeTimeoutMs,
      allowedPrincipals: next.allowedPrincipals,
      appendPrincipal: next.appendPrincipal,
    };
    return changed;
  }

  session(peer: string): Krb5ServerSession {
    return new Krb5ServerSession(this, this.#cred, peer, this.#maxFrame + WRAP_SLACK);
  }

  dispose(): void {
    this.#cred.dispose();
  }
}

/** What one chunk of input produced. */
export interface Krb5Input {
  /** Bytes to send to the client (handshake tokens), in order. */
  send: Buffer[];
  /** Unwrapped plaintext (managed frames), in order. */
  plaintext: Buffer[];
  /** Set on the chunk that completed the handshake and authorised the client. */
  established: string | null;
  /** The connection must be closed (after handling `plaintext`): why, for the log. */
  failure: string | null;
  /** The failure happened during the handshake (nothing of the client's was accepted). */
  duringHandshake: boolean;
}

/** One client connection's Kerberos state: handshake, then unwrap/wrap. */
export class Krb5ServerSession {
  readonly #acceptor: Krb5Acceptor;
  readonly #cred: Credential;
  readonly #decoder = new TokenDecoder({ maxTokenLength: MAX_HANDSHAKE_TOKEN_LENGTH });
  readonly #dataTokenLimit: number;
  readonly peer: string;
  #ctx: SecurityContext | undefined;
  #principal: string | null = null;
  #failed = false;

  constructor(acceptor: Krb5Acceptor, cred: Credential, peer: string, dataTokenLimit: number) {
    this.#acceptor = acceptor;
    this.#cred = cred;
    this.peer = peer;
    this.#dataTokenLimit = dataTokenLimit;
  }

  /** The authorised client principal once established. */
  get principal(): string | null {
    return this.#principal;
  }

  get established(): boolean {
    return this.#principal !== null;
  }

  /** Bytes of an incomplete token held. */
  get pendingBytes(): number {
    return this.#decoder.bufferedBytes;
  }

  /** Seconds until the client's ticket (plus the acceptor's clock skew allowance) ends; Infinity before. */
  lifetimeMs(): number {
    return this.#ctx?.complete ? this.#ctx.lifetime() * 1000 : Number.POSITIVE_INFINITY;
  }

  receive(chunk: Buffer): Krb5Input {
    const out: Krb5Input = {
      send: [],
      plaintext: [],
      established: null,
      failure: null,
      duringHandshake: false,
    };
    if (this.#failed) return out;
    let tokens: Buffer[];
    try {
      tokens = this.#decoder.push(chunk);
    } catch (err) {
      return this.#fail(out, `${messageOf(err)}`);
    }
    for (const token of tokens) {
      if (this.#principal === null) {
        if (token.length === 0) continue; // auditd's client sends an empty token first
        this.#handshakeStep(token, out);
        if (out.failure) return out;
      } else {
        if (token.length === 0) continue;
        let data: Buffer;
        try {
          data = this.#ctx!.unwrap(token).data;
        } catch (err) {
          return this.#fail(out, `a message from ${this.#principal} failed to unwrap: ${messageOf(err)}`);
        }
        out.plaintext.push(data);
      }
    }
    return out;
  }

  /** One reply (header + text) as a framed wrapped token. */
  wrap(frame: Buffer): Buffer {
    return encodeToken(this.#ctx!.wrap(frame));
  }

  dispose(): void {
    this.#failed = true;
    if (this.#ctx && !this.#ctx.disposed) this.#ctx.dispose();
  }

  #handshakeStep(token: Buffer, out: Krb5Input): void {
    let step: ReturnType<typeof acceptSecContext>;
    try {
      step = acceptSecContext(this.#cred, token, this.#ctx);
    } catch (err) {
      // The mechanism's KRB-ERROR (e.g. "key version not available") lets the client print the cause.
      if (err instanceof GssError && err.token && err.token.length > 0) out.send.push(encodeToken(err.token));
      this.#fail(out, `Kerberos handshake failed: ${messageOf(err)}`);
      return;
    }
    this.#ctx = step.context;
    if (!step.complete) {
      if (step.token.length > 0) out.send.push(encodeToken(step.token));
      return;
    }
    const client = step.sourceName ?? '?';
    const local = parsePrincipal(step.context.localName());
    const settings = this.#acceptor.settings;
    const refusal = authorizeClient(client, {
      service: settings.service,
      realm: local?.realm ?? '',
      allowed: settings.allowedPrincipals,
    });
    if (refusal !== null) {
      // No AP-REP: the client sees the connection close during its handshake.
      this.#fail(out, refusal);
      return;
    }
    if (step.token.length > 0) out.send.push(encodeToken(step.token));
    this.#principal = client;
    this.#decoder.maxTokenLength = this.#dataTokenLimit;
    out.established = client;
  }

  #fail(out: Krb5Input, reason: string): Krb5Input {
    this.#failed = true;
    out.failure = reason;
    out.duringHandshake = this.#principal === null;
    return out;
  }
}
