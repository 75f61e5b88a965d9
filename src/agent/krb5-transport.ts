/**
 * transport = krb5 for the agent (audit-remote-protocol.md section 4): the GSS-API handshake on a freshly dialled
 * TCP link, then a Transport that wraps every outgoing managed message into one GSS token and unwraps every reply
 * token, so the session above still sees a plain managed-format byte stream.
 *
 * Credentials: a ticket-granting ticket is obtained from `krb5_key_file` for `<krb5_client_name>/<host name>`
 * (like `kinit -k`), cached, and obtained again before it runs out: at the next connect when less than
 * `renewFraction` of its lifetime (at most `renewMaxMarginMs`) is left, and proactively on a timer at that point.
 * An established link is cycled before its service ticket ends (when idle, else at the end itself), so a
 * long-running agent always reconnects with a valid ticket; upstream instead gets a new ticket on every connect.
 */
import { ConfigError, LinkError, ProtocolError } from '../errors.js';
import { AUDITD_MAX_DATA_TOKEN, KRB5_MAX_RECORD } from '../krb5/auditd.js';
import { encodeToken, MAX_HANDSHAKE_TOKEN_LENGTH, TokenDecoder } from '../krb5/framing.js';
import {
  acquireCredentials,
  type Credential,
  GssError,
  initSecContext,
  Krb5UnavailableError,
  loadGssapi,
  type SecurityContext,
} from '../krb5/gssapi.js';
import { checkKeytabFile, enforceKeytabRule } from '../krb5/keytab.js';
import type { Logger } from '../log.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import { Inbox, type Transport } from './transport.js';

export interface Krb5AgentSettings {
  /** Our principal without realm, `<krb5_client_name>/<host name>` (the default realm is appended). */
  clientPrincipal: string;
  /** The server as a host-based service name, `auditd@collector.example.org`. */
  target: string;
  /** Keytab holding clientPrincipal's key (krb5_key_file). */
  keyFile: string;
  /** Enforce upstream's root-owned mode 0400 rule on keyFile. Default: when running as root. */
  enforceKeyFileRule?: boolean;
  /** Renew a ticket when less than this fraction of its lifetime is left (0 = only once expired). Default 0.1. */
  renewFraction?: number;
  /** ... but never more than this many ms before it ends. Default 5 minutes. */
  renewMaxMarginMs?: number;
}

export const DEFAULT_RENEW_FRACTION = 0.1;
export const DEFAULT_RENEW_MAX_MARGIN_MS = 5 * 60_000;
/** Longest timer Node can arm. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const EMPTY = Buffer.alloc(0);

/** How long before its end a ticket of `lifetimeMs` is renewed. */
export function renewMarginMs(lifetimeMs: number, s: Krb5AgentSettings): number {
  const fraction = s.renewFraction ?? DEFAULT_RENEW_FRACTION;
  if (!(fraction > 0) || !Number.isFinite(lifetimeMs)) return 0;
  return Math.min(lifetimeMs * fraction, s.renewMaxMarginMs ?? DEFAULT_RENEW_MAX_MARGIN_MS);
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What an operator should check, by the library's message. */
const HINTS: [RegExp, (s: Krb5AgentSettings) => string][] = [
  [
    /Key version is not available|kvno .* not found/i,
    (s) => `the server's keytab does not hold the current key of ${s.target}: export it again on the server`,
  ],
  [
    /The ticket isn't for us|Wrong principal in request/i,
    (s) =>
      `the server holds no key for ${s.target}: wrong server, or krb5_principal does not name the server's principal`,
  ],
  [
    /Server .* not found in Kerberos database/i,
    (s) => `${s.target} does not exist in the realm: check krb5_principal`,
  ],
  [
    /Clock skew too great/i,
    () => 'the clocks of this host, the KDC and the server differ by more than 5 minutes',
  ],
];

/** MIT's "Ticket expired" (KRB5KRB_AP_ERR_TKT_EXPIRED) from gss_init_sec_context. */
function isTicketExpired(err: unknown): boolean {
  return err instanceof GssError && /ticket expired/i.test(err.minorText);
}

/**
 * Obtains and renews the agent's Kerberos credentials and runs the handshake on each new link. One per agent;
 * `dispose()` stops its timer and releases the credentials.
 */
export class Krb5Client {
  /** The settings for server `index` of remote_server (its target principal), the first by default. */
  readonly #settings: (index?: number) => Krb5AgentSettings;
  readonly #log: Logger;
  #cred: Credential | null = null;
  #credFor = '';
  #acquiring: Promise<Credential> | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** Replaced credentials, released once no handshake uses them. */
  #retired: Credential[] = [];
  #handshakes = 0;
  #disposed = false;
  /** Tickets obtained so far (for status and tests). */
  acquisitions = 0;

  /**
   * Checks at start-up what can be checked without the network: the binding loads, the keytab (if present) obeys
   * the ownership rule. Throws ConfigError (exit status 6), whose message says what to install or to fix.
   */
  static preflight(s: Krb5AgentSettings | undefined, log: Logger): Krb5AgentSettings {
    if (!s)
      throw new ConfigError('transport = krb5 but no Kerberos settings were derived', { key: 'transport' });
    try {
      loadGssapi();
    } catch (err) {
      if (err instanceof Krb5UnavailableError) {
        throw new ConfigError(err.message, { key: 'transport', value: 'krb5' }, { cause: err });
      }
      throw err;
    }
    const { exists } = checkKeytabFile(
      s.keyFile,
      'krb5_key_file',
      s.enforceKeyFileRule ?? enforceKeytabRule(),
    );
    if (!exists) {
      log.warn(
        { keytab: s.keyFile, principal: s.clientPrincipal },
        `krb5_key_file ${s.keyFile} does not exist: connections fail until it holds the key of ${s.clientPrincipal}`,
      );
    }
    return s;
  }

  /** `settings` is read at every use, so a reloaded configuration applies from the next connect. */
  constructor(settings: (index?: number) => Krb5AgentSettings | undefined, log: Logger) {
    const initial = Krb5Client.preflight(settings(), log);
    this.#settings = (index) => settings(index) ?? initial;
    this.#log = log;
  }

  /** The current credential when it has more than its renewal margin left, else a new one. */
  async credential(): Promise<Credential> {
    const s = this.#settings();
    const key = JSON.stringify([s.clientPrincipal, s.keyFile]);
    const cred = this.#cred;
    if (cred && !cred.disposed && this.#credFor === key && this.#fresh(cred, s)) return cred;
    return this.#acquire(s, key);
  }

  /** Forgets the current credential: the next connect obtains a new ticket. */
  invalidate(): void {
    if (this.#cred) this.#retire(this.#cred);
    this.#cred = null;
  }

  /**
   * Runs the client side of the handshake on `link` (already connected) and returns the secured transport.
   * Rejects with a LinkError/ConfigError whose message says what went wrong and what to check.
   */
  async handshake(link: Transport, signal: AbortSignal, server = 0): Promise<Krb5Transport> {
    const s = this.#settings(server);
    this.#handshakes++;
    try {
      let cred = await this.credential();
      if (signal.aborted)
        throw new LinkError('Kerberos handshake abandoned: the authentication deadline passed');
      let secured: Krb5Transport;
      try {
        secured = await clientHandshake(link, cred, s.target, signal, this.#transportOptions(s));
      } catch (err) {
        if (!isTicketExpired(err) || signal.aborted) throw err;
        // Our ticket ran out although its recorded lifetime said otherwise (clock change): get a new one, once.
        this.#log.warn({ principal: cred.name }, 'Kerberos ticket expired early: obtaining a new one');
        this.invalidate();
        cred = await this.credential();
        secured = await clientHandshake(link, cred, s.target, signal, this.#transportOptions(s));
      }
      // A host-based name whose realm came from a referral displays as 'auditd/host@'.
      const server = secured.serverPrincipal.replace(/@$/, '');
      this.#log.info(
        { server: link.peer, serverPrincipal: server, principal: cred.name },
        `Kerberos session established with ${server} as ${cred.name}`,
      );
      // A service ticket that cannot outlive the renewal margin: take a new TGT next time.
      if (secured.lifetimeMs <= renewMarginMs(cred.lifetime * 1000, s)) this.invalidate();
      return secured;
    } catch (err) {
      throw this.#explain(err, s, link.peer);
    } finally {
      this.#handshakes--;
      this.#releaseRetired();
    }
  }

  dispose(): void {
    this.#disposed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#cred) this.#retire(this.#cred);
    this.#cred = null;
    this.#releaseRetired();
  }

  #transportOptions(s: Krb5AgentSettings): Krb5TransportOptions {
    return { settings: s, log: this.#log };
  }

  #fresh(cred: Credential, s: Krb5AgentSettings): boolean {
    return cred.expiresAt - Date.now() > renewMarginMs(cred.lifetime * 1000, s);
  }

  #acquire(s: Krb5AgentSettings, key: string): Promise<Credential> {
    if (this.#acquiring) return this.#acquiring;
    const run = async (): Promise<Credential> => {
      checkKeytabFile(s.keyFile, 'krb5_key_file', s.enforceKeyFileRule ?? enforceKeytabRule());
      let cred: Credential;
      try {
        cred = await acquireCredentials({
          usage: 'initiate',
          principal: s.clientPrincipal,
          keytab: s.keyFile,
        });
      } catch (err) {
        throw new LinkError(
          `cannot obtain a Kerberos ticket for ${s.clientPrincipal} from ${s.keyFile}: ${messageOf(err)}`,
          { cause: err },
        );
      }
      if (this.#disposed) {
        cred.dispose();
        throw new LinkError('the agent is stopping');
      }
      if (this.#cred) this.#retire(this.#cred);
      this.#cred = cred;
      this.#credFor = key;
      this.acquisitions++;
      this.#log.info(
        {
          principal: cred.name,
          keytab: s.keyFile,
          lifetimeS: cred.lifetime,
          expires: new Date(cred.expiresAt).toISOString(),
        },
        `Kerberos ticket obtained for ${cred.name} from ${s.keyFile} (valid ${cred.lifetime} s)`,
      );
      this.#schedule(cred, s);
      return cred;
    };
    this.#acquiring = run().finally(() => {
      this.#acquiring = null;
      this.#releaseRetired();
    });
    return this.#acquiring;
  }

  /** Proactive renewal: at the start of the renewal margin, whether or not a link is up. */
  #schedule(cred: Credential, s: Krb5AgentSettings, retryMs?: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const margin = renewMarginMs(cred.lifetime * 1000, s);
    if (this.#disposed || margin <= 0) return;
    const due = retryMs ?? cred.expiresAt - margin - Date.now();
    this.#timer = setTimeout(
      () => {
        this.#timer = null;
        if (this.#disposed || cred !== this.#cred) return;
        const current = this.#settings();
        this.#acquire(current, JSON.stringify([current.clientPrincipal, current.keyFile])).catch((err) => {
          const left = Math.max(0, cred.expiresAt - Date.now());
          const retry = Math.min(60_000, Math.max(1000, left / 4));
          this.#log.warn(
            { error: messageOf(err), expiresInMs: left, retryMs: retry },
            'renewing the Kerberos ticket failed; trying again (and at the next connect)',
          );
          if (cred === this.#cred) this.#schedule(cred, current, retry);
        });
      },
      Math.min(MAX_TIMER_MS, Math.max(0, due)),
    );
    this.#timer.unref();
  }

  #retire(cred: Credential): void {
    if (!this.#retired.includes(cred)) this.#retired.push(cred);
  }

  #releaseRetired(): void {
    if (this.#handshakes > 0 || this.#acquiring) return;
    for (const c of this.#retired.splice(0)) if (c !== this.#cred && !c.disposed) c.dispose();
  }

  #explain(err: unknown, s: Krb5AgentSettings, peer: string): Error {
    if (err instanceof ConfigError) return err;
    const what = `Kerberos handshake with ${peer} as ${s.clientPrincipal} for ${s.target} failed`;
    const text = messageOf(err);
    const hint = HINTS.find(([re]) => re.test(text))?.[1](s);
    return new LinkError(`${what}: ${text}${hint ? ` (${hint})` : ''}`, { cause: err });
  }
}

export interface Krb5TransportOptions {
  /** For the renewal margin. */
  settings: Krb5AgentSettings;
  log?: Logger;
}

/**
 * The client side of auditd's handshake on a connected link: an empty token, the AP-REQ, then the server's
 * tokens until the context is complete (mutual authentication). Returns the secured transport; the link's
 * listeners are taken over.
 */
export async function clientHandshake(
  link: Transport,
  cred: Credential,
  target: string,
  signal: AbortSignal,
  options: Krb5TransportOptions,
): Promise<Krb5Transport> {
  const decoder = new TokenDecoder({ maxTokenLength: MAX_HANDSHAKE_TOKEN_LENGTH });
  const inbox: Buffer[] = [];
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  let sentTicket = false;
  const fail = (err: Error): void => {
    failure ??= err;
    wake?.();
  };
  link.onClose = (reason) => {
    fail(
      new LinkError(
        sentTicket
          ? `the server closed the connection after receiving our ticket (${reason}): it did not accept it. ` +
              `Either our principal is not authorised there (it wants <its krb5_principal>/<host>@<its realm>), ` +
              `or it has no current key for ${target} (wrong server, or a stale keytab); its log says which`
          : `the connection was lost during the Kerberos handshake (${reason})`,
      ),
    );
  };
  link.onDrain = null;
  link.onMessage = (chunk) => {
    try {
      inbox.push(...decoder.push(chunk));
    } catch (err) {
      fail(new ProtocolError(`bad Kerberos token from the server: ${messageOf(err)}`));
    }
    wake?.();
  };
  const onAbort = () =>
    fail(
      new LinkError('Kerberos handshake abandoned: the authentication deadline (max_time_per_record) passed'),
    );
  signal.addEventListener('abort', onAbort, { once: true });
  const next = async (): Promise<Buffer> => {
    for (;;) {
      // Tokens first: a KRB-ERROR followed by EOF explains more than the EOF.
      const token = inbox.shift();
      if (token !== undefined) {
        if (token.length > 0) return token;
        continue;
      }
      if (failure) throw failure;
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = null;
    }
  };
  let context: SecurityContext | undefined;
  try {
    // The first step fetches the service ticket (KDC errors surface here); the empty token goes out with the
    // AP-REQ, so a failed first step leaves the link untouched.
    let step = await initSecContext(cred, target, null);
    context = step.context;
    if (failure) throw failure;
    link.write(Buffer.concat([encodeToken(EMPTY), encodeToken(step.token)]));
    sentTicket = true;
    while (!step.complete) {
      const token = await next();
      step = await initSecContext(cred, target, token, context);
      if (step.token.length > 0) link.write(encodeToken(step.token));
    }
    if (failure) throw failure;
    const flags = context.flags();
    if (!flags.mutual || !flags.confidentiality) {
      throw new LinkError(
        `the Kerberos context lacks ${flags.mutual ? 'confidentiality' : 'mutual authentication'}; refusing it`,
      );
    }
    link.onMessage = null;
    link.onClose = null;
    const secured = new Krb5Transport(link, context, decoder, inbox.splice(0), options);
    context = undefined;
    return secured;
  } finally {
    signal.removeEventListener('abort', onAbort);
    context?.dispose();
  }
}

/**
 * A secured link: write() takes managed frames (any number, whole or split) and sends each as one wrapped token;
 * reply tokens are unwrapped and handed to onMessage as plaintext. Cycles itself before the service ticket ends.
 */
export class Krb5Transport implements Transport {
  readonly peer: string;
  /** The server's principal as the context reports it. */
  readonly serverPrincipal: string;
  /** Remaining lifetime of the context (service ticket) when established. */
  readonly lifetimeMs: number;
  readonly #inner: Transport;
  readonly #ctx: SecurityContext;
  readonly #decoder: TokenDecoder;
  readonly #log: Logger | undefined;
  #out: Buffer = EMPTY;
  readonly #inbox = new Inbox();
  #closedReason: string | null = null;
  #closing = false;
  /** Messages sent whose reply has not come back. */
  #outstanding = 0;
  /** Set when the ticket nears its end: close as soon as nothing is outstanding. */
  #rotate: string | null = null;
  #timers: NodeJS.Timeout[] = [];
  #warnedSize = false;
  onClose: ((reason: string) => void) | null = null;
  onDrain: (() => void) | null = null;

  constructor(
    inner: Transport,
    ctx: SecurityContext,
    decoder: TokenDecoder,
    leftover: Buffer[],
    options: Krb5TransportOptions,
  ) {
    this.#inner = inner;
    this.#ctx = ctx;
    this.#decoder = decoder;
    this.#log = options.log;
    this.peer = inner.peer;
    this.serverPrincipal = ctx.peerName();
    this.lifetimeMs = ctx.lifetime() * 1000;
    const limit = ctx.wrapSizeLimit(AUDITD_MAX_DATA_TOKEN);
    if (limit < HEADER_SIZE + KRB5_MAX_RECORD) {
      this.#log?.warn(
        { limit },
        'this Kerberos encryption type adds more than the expected overhead: the longest records may not fit auditd',
      );
      this.#warnedSize = true;
    }
    const margin = renewMarginMs(this.lifetimeMs, options.settings);
    const soft = this.lifetimeMs - margin;
    const arm = (ms: number, fn: () => void) => {
      const t = setTimeout(fn, Math.min(MAX_TIMER_MS, Math.max(0, ms)));
      t.unref();
      this.#timers.push(t);
    };
    if (margin > 0) {
      arm(soft, () => {
        this.#rotate = `the Kerberos service ticket for ${this.serverPrincipal} ends in ${Math.round(margin / 1000)} s: reconnecting with a fresh ticket`;
        if (this.#outstanding === 0) this.#fail(this.#rotate);
      });
    }
    arm(this.lifetimeMs, () =>
      this.#fail(
        `the Kerberos service ticket for ${this.serverPrincipal} has expired: reconnecting with a fresh ticket`,
      ),
    );
    inner.onClose = (reason) => this.#fail(reason);
    inner.onDrain = () => this.onDrain?.();
    inner.onMessage = (chunk) => this.#onBytes(chunk);
    for (const token of leftover) this.#onToken(token);
  }

  get onMessage(): ((chunk: Buffer) => void) | null {
    return this.#inbox.listener;
  }

  set onMessage(fn: ((chunk: Buffer) => void) | null) {
    this.#inbox.listen(fn, this.#closedReason, this.onClose);
  }

  write(data: Buffer): boolean {
    if (this.#closedReason !== null || this.#closing) return true; // the close is reported through onClose
    const buf = this.#out.length > 0 ? Buffer.concat([this.#out, data]) : data;
    const tokens: Buffer[] = [];
    let offset = 0;
    while (buf.length - offset >= HEADER_SIZE) {
      const end = offset + HEADER_SIZE + buf.readUInt16LE(offset + 10);
      if (end > buf.length) break;
      let token: Buffer;
      try {
        token = this.#ctx.wrap(buf.subarray(offset, end));
      } catch (err) {
        this.#fail(`cannot wrap a message for the server: ${messageOf(err)}`);
        return true;
      }
      if (token.length > AUDITD_MAX_DATA_TOKEN && !this.#warnedSize) {
        this.#warnedSize = true;
        this.#log?.warn({ bytes: token.length }, 'a wrapped message is longer than auditd can take');
      }
      tokens.push(encodeToken(token));
      this.#outstanding++;
      offset = end;
    }
    this.#out = offset < buf.length ? Buffer.from(buf.subarray(offset)) : EMPTY;
    if (tokens.length === 0) return true;
    return this.#inner.write(tokens.length === 1 ? tokens[0]! : Buffer.concat(tokens));
  }

  close(): void {
    this.#closing = true;
    this.#stopTimers();
    this.#inner.close();
    if (!this.#ctx.disposed) this.#ctx.dispose();
  }

  #onBytes(chunk: Buffer): void {
    let tokens: Buffer[];
    try {
      tokens = this.#decoder.push(chunk);
    } catch (err) {
      this.#fail(`bad Kerberos token from the server: ${messageOf(err)}`);
      return;
    }
    for (const token of tokens) {
      if (this.#closedReason !== null) return;
      this.#onToken(token);
    }
  }

  #onToken(token: Buffer): void {
    if (token.length === 0) return;
    let data: Buffer;
    try {
      data = this.#ctx.unwrap(token).data;
    } catch (err) {
      this.#fail(
        `a reply from the server failed to unwrap (${messageOf(err)}); closing the link, unacknowledged records are sent again`,
      );
      return;
    }
    if (this.#outstanding > 0) this.#outstanding--;
    this.#inbox.deliver(data);
    if (this.#rotate !== null && this.#outstanding === 0 && this.#closedReason === null)
      this.#fail(this.#rotate);
  }

  #stopTimers(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }

  #fail(reason: string): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    this.#stopTimers();
    this.#inner.onMessage = null;
    this.#inner.onClose = null;
    this.#inner.onDrain = null;
    this.#inner.close();
    if (!this.#ctx.disposed) this.#ctx.dispose();
    this.onClose?.(reason);
  }
}
