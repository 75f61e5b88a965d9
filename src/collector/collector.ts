/**
 * An auditd-compatible receiver that no client can hang: every connection has its own decoder,
 * its own idle deadline and its own output backpressure, so one client's behaviour never delays
 * another's records. Records are acknowledged after they were written to the log (fsync policy
 * as configured), in request order; ENDING goes to every client before shutdown.
 *
 * Rules for bad input (docs/collector.md):
 * - trailing '\n': one is removed, as auditd does; the line is written with exactly one '\n'.
 * - embedded '\n' or NUL in a payload: replaced by a space, so no client can forge extra log lines
 *   (a real auditd writes them as several lines, or cuts at the NUL); logged with the peer address.
 * - bad magic or a length above `maxPayload`: the stream cannot be trusted any more; the connection
 *   is closed after the records before it were handled; logged with the peer address.
 * - a client that does not read its acks: once its unsent replies pass OUTPUT_HIGH_WATER bytes we
 *   stop reading from it until it reads; the idle deadline closes it if it never does.
 * - a client that disconnects mid-message: the partial message is dropped (it was never acked, so
 *   the client sends it again), logged at info.
 * - more than `maxPerAddr` connections from one address: the oldest is closed (a stale session from
 *   a client that vanished), so a reconnecting client is never locked out (auditd issue #33). With krb5 a
 *   connection still in its handshake goes first.
 *
 * transport = krb5 (src/collector/krb5.ts, docs/kerberos.md): each connection runs its own non-blocking GSS
 * handshake with its own deadline (handshake_timeout), so a client that sends nothing or half a token delays
 * nobody; then each token is unwrapped into the same frame decoder, each reply wrapped, and ` krb5=<principal>`
 * appended to the logged record as auditd does. A token that fails to unwrap closes the connection (auditd drops
 * it silently and leaves the client waiting for an ack).
 */
import net from 'node:net';
import type { Logger } from '../log.js';
import { encodeReply, FrameDecoder } from '../protocol/codec.js';
import { MAX_AUDIT_MESSAGE_LENGTH, MessageType } from '../protocol/constants.js';
import { Krb5Acceptor, type Krb5CollectorSettings, type Krb5ServerSession } from './krb5.js';
import { type FsyncPolicy, LogWriter } from './log-writer.js';

export const OUTPUT_HIGH_WATER = 1 << 20;

export interface CollectorSettings {
  host: string;
  port: number;
  logFile: string;
  maxPerAddr: number;
  /** Close a client that sent nothing for this long; 0 = never. */
  clientMaxIdleMs: number;
  maxPayload: number;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  listenBacklog: number;
  /** Accepted client source ports, inclusive; null = any. */
  clientPorts: [number, number] | null;
  /** transport = krb5; absent or null = tcp. */
  krb5?: Krb5CollectorSettings | null;
}

export const DEFAULT_COLLECTOR_SETTINGS: Omit<CollectorSettings, 'logFile'> = {
  host: '127.0.0.1',
  port: 60,
  maxPerAddr: 1,
  clientMaxIdleMs: 0,
  maxPayload: MAX_AUDIT_MESSAGE_LENGTH,
  fsync: 'interval',
  fsyncIntervalMs: 200,
  listenBacklog: 5,
  clientPorts: null,
};

export interface CollectorStats {
  clients: number;
  accepted: number;
  records: number;
  heartbeats: number;
  sanitized: number;
  protocolErrors: number;
  /** krb5: handshakes completed and authorised. */
  krb5Sessions: number;
  /** krb5: handshakes that failed, were refused or timed out, and tokens that failed to unwrap. */
  krb5Failures: number;
}

const SPACE = 0x20;
const NL = 0x0a;
const NEWLINE = Buffer.from('\n');
const EMPTY = Buffer.alloc(0);

class ClientSession {
  readonly decoder: FrameDecoder;
  readonly peer: string;
  readonly address: string;
  /** Replies not yet handed to the socket wait for their records' write. */
  chain: Promise<void> = Promise.resolve();
  ending = false;
  /** transport = krb5: the connection's GSS state (handshake, then wrap/unwrap). */
  krb5: Krb5ServerSession | null = null;
  /** krb5: the handshake deadline, then the end of the client's ticket. */
  krb5Timer: NodeJS.Timeout | null = null;

  constructor(
    readonly socket: net.Socket,
    maxPayload: number,
  ) {
    this.decoder = new FrameDecoder({ maxPayload });
    this.address = socket.remoteAddress ?? '?';
    this.peer = `${this.address}:${socket.remotePort}`;
  }
}

export class Collector {
  readonly #s: CollectorSettings;
  readonly #log: Logger;
  readonly #writer: LogWriter;
  readonly #server: net.Server;
  readonly #sessions = new Set<ClientSession>();
  /** krb5 connections still in their handshake, oldest first. */
  readonly #handshaking = new Set<ClientSession>();
  #krb5: Krb5Acceptor | null = null;
  #closing = false;
  readonly stats: CollectorStats = {
    clients: 0,
    accepted: 0,
    records: 0,
    heartbeats: 0,
    sanitized: 0,
    protocolErrors: 0,
    krb5Sessions: 0,
    krb5Failures: 0,
  };

  constructor(settings: CollectorSettings, log: Logger) {
    this.#s = settings;
    this.#log = log;
    this.#writer = new LogWriter({
      path: settings.logFile,
      fsync: settings.fsync,
      fsyncIntervalMs: settings.fsyncIntervalMs,
    });
    this.#server = net.createServer({ noDelay: true, keepAlive: true }, (socket) => this.#accept(socket));
  }

  /** Opens the log and listens; resolves with the bound address. */
  async start(): Promise<{ host: string; port: number }> {
    // krb5: the keytab and the binding are checked before anything else (a ConfigError stops the start).
    if (this.#s.krb5) this.#krb5 = await Krb5Acceptor.open(this.#s.krb5, this.#s.maxPayload, this.#log);
    await this.#writer.open();
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#s.host, port: this.#s.port, backlog: this.#s.listenBacklog }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const addr = this.#server.address() as net.AddressInfo;
    this.#log.info({ address: addr.address, port: addr.port, log: this.#s.logFile }, 'collector listening');
    return { host: addr.address, port: addr.port };
  }

  /** Sends ENDING to every client after its pending replies, closes everything, flushes the log. */
  async stop(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await Promise.all([...this.#sessions].map((s) => this.#end(s)));
    await closed;
    this.#krb5?.dispose();
    await this.#writer.close();
    this.#log.info(this.stats, 'collector stopped');
  }

  #accept(socket: net.Socket): void {
    const session = new ClientSession(socket, this.#s.maxPayload);
    const { peer } = session;
    if (this.#closing) {
      socket.destroy();
      return;
    }
    const ports = this.#s.clientPorts;
    const port = socket.remotePort ?? 0;
    if (ports && (port < ports[0] || port > ports[1])) {
      this.#log.warn(
        { peer },
        `connection from ${peer} rejected: source port outside ${ports[0]}-${ports[1]}`,
      );
      socket.destroy();
      return;
    }
    const same = [...this.#sessions].filter((s) => s.address === session.address);
    if (same.length >= this.#s.maxPerAddr) {
      // An unauthenticated (krb5 handshake) connection never pushes out an authenticated one.
      const oldest = same.find((s) => this.#handshaking.has(s)) ?? same[0]!;
      this.#log.warn(
        { peer, replaced: oldest.peer, maxPerAddr: this.#s.maxPerAddr },
        `more than ${this.#s.maxPerAddr} connection(s) from ${session.address}: closing the oldest (${oldest.peer}) as stale`,
      );
      oldest.socket.destroy();
      this.#sessions.delete(oldest);
      this.#handshaking.delete(oldest);
    }
    if (this.#krb5) this.#startHandshake(session);
    this.#sessions.add(session);
    this.stats.accepted++;
    this.stats.clients = this.#sessions.size;
    this.#log.info({ peer }, 'client connected');
    if (this.#s.clientMaxIdleMs > 0) {
      socket.setTimeout(this.#s.clientMaxIdleMs, () => {
        this.#log.info({ peer }, `client ${peer} idle for ${this.#s.clientMaxIdleMs} ms: closing`);
        socket.destroy();
      });
    }
    socket.on('data', (chunk: Buffer) => this.#onData(session, chunk));
    socket.on('drain', () => {
      if (!session.ending) socket.resume();
    });
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.#log.info({ peer, error: err.code ?? err.message }, `client ${peer} connection error`),
    );
    socket.on('close', () => {
      this.#sessions.delete(session);
      this.#handshaking.delete(session);
      if (session.krb5Timer) clearTimeout(session.krb5Timer);
      session.krb5?.dispose();
      this.stats.clients = this.#sessions.size;
      if (session.decoder.pendingBytes > 0) {
        this.#log.info(
          { peer, bytes: session.decoder.pendingBytes },
          `client ${peer} disconnected mid-message: ${session.decoder.pendingBytes} byte(s) dropped (never acknowledged)`,
        );
      }
      this.#log.info({ peer }, 'client disconnected');
    });
  }

  /** krb5: its own deadline, and a bound on handshakes in progress (the oldest pending one goes first). */
  #startHandshake(session: ClientSession): void {
    const krb5 = this.#krb5!;
    const { peer, socket } = session;
    const limit = krb5.settings.maxPendingHandshakes;
    if (this.#handshaking.size >= limit) {
      const oldest = this.#handshaking.values().next().value!;
      this.stats.krb5Failures++;
      this.#log.warn(
        { peer: oldest.peer, pending: this.#handshaking.size },
        `${limit} Kerberos handshakes in progress: closing the oldest (${oldest.peer})`,
      );
      this.#handshaking.delete(oldest);
      oldest.socket.destroy();
    }
    session.krb5 = krb5.session(peer);
    this.#handshaking.add(session);
    const timeoutMs = krb5.settings.handshakeTimeoutMs;
    session.krb5Timer = setTimeout(() => {
      session.krb5Timer = null;
      if (session.krb5?.established || socket.destroyed) return;
      this.stats.krb5Failures++;
      this.#log.warn(
        { peer, bytes: session.krb5?.pendingBytes ?? 0, timeoutMs },
        `client ${peer} did not complete its Kerberos handshake within ${timeoutMs} ms: closing`,
      );
      socket.destroy();
    }, timeoutMs);
  }

  #onData(session: ClientSession, chunk: Buffer): void {
    if (session.krb5) this.#onKrb5Data(session, session.krb5, chunk);
    else this.#onPlain(session, chunk);
  }

  #onKrb5Data(session: ClientSession, krb5: Krb5ServerSession, chunk: Buffer): void {
    const { socket, peer } = session;
    const r = krb5.receive(chunk);
    if (r.send.length > 0 && !socket.destroyed) socket.write(Buffer.concat(r.send));
    if (r.established !== null) {
      this.#handshaking.delete(session);
      if (session.krb5Timer) clearTimeout(session.krb5Timer);
      session.krb5Timer = null;
      this.stats.krb5Sessions++;
      this.#log.info({ peer, principal: r.established }, `client ${peer} authenticated as ${r.established}`);
      // The session ends with the client's ticket (the acceptor adds its clock-skew allowance): the client
      // reconnects with a fresh one. Plain close, not ENDING, which would mean "server shutting down".
      const lifetimeMs = krb5.lifetimeMs();
      if (Number.isFinite(lifetimeMs)) {
        session.krb5Timer = setTimeout(
          () => {
            this.#log.info(
              { peer, principal: r.established },
              `the Kerberos ticket of ${r.established} (${peer}) has expired: closing its connection`,
            );
            socket.pause();
            void session.chain.then(() => socket.destroy());
          },
          Math.min(2 ** 31 - 1, lifetimeMs),
        );
        session.krb5Timer.unref();
      }
    }
    for (const plaintext of r.plaintext) this.#onPlain(session, plaintext);
    if (r.failure !== null) {
      this.stats.krb5Failures++;
      if (r.duringHandshake) {
        this.#log.warn({ peer, error: r.failure }, `Kerberos: refused client ${peer}: ${r.failure}`);
        // Whatever the mechanism wants the client to know (a KRB-ERROR) goes out first.
        socket.destroySoon();
      } else {
        this.#log.warn(
          { peer, principal: krb5.principal, error: r.failure },
          `Kerberos: ${r.failure} (client ${peer}); closing the connection, the client sends unacknowledged records again`,
        );
        socket.pause();
        void session.chain.then(() => socket.destroy());
      }
    }
  }

  #onPlain(session: ClientSession, chunk: Buffer): void {
    const { socket, peer } = session;
    const messages = session.decoder.push(chunk);
    const lines: Buffer[] = [];
    const replies: Buffer[] = [];
    for (const m of messages) {
      if (m.type === MessageType.HEARTBEAT) {
        this.stats.heartbeats++;
        replies.push(encodeReply(MessageType.ACK, m.sequence));
        continue;
      }
      // Every other type is a record, as in auditd.
      lines.push(this.#line(m.payload, peer, session.krb5?.principal ?? null), NEWLINE);
      replies.push(encodeReply(MessageType.ACK, m.sequence));
    }
    const error = session.decoder.error;
    if (messages.length > 0) {
      const records = lines.length / 2;
      const written = this.#writer.append(lines);
      session.chain = session.chain.then(() =>
        written.then(
          () => {
            this.stats.records += records;
            this.#reply(session, replies);
          },
          (err: NodeJS.ErrnoException) => {
            const full = err.code === 'ENOSPC' || err.code === 'EDQUOT';
            this.#log.error(
              { peer, error: err.code ?? err.message },
              'log write failed; replying with an error',
            );
            this.#reply(
              session,
              replies.map((r) =>
                encodeReply(
                  full ? MessageType.DISKFULL : MessageType.DISKERROR,
                  r.readUInt32LE(12),
                  full ? 'disk full' : 'disk write error',
                ),
              ),
            );
          },
        ),
      );
    }
    if (error) {
      this.stats.protocolErrors++;
      this.#log.warn(
        { peer, error: error.message },
        `protocol error from ${peer}: ${error.message}; closing the connection`,
      );
      socket.pause();
      void session.chain.then(() => socket.destroy());
    }
  }

  /**
   * The record as it goes into the log: one trailing '\n' removed (krb5: all of them, as auditd), embedded '\n'
   * and NUL made spaces; krb5 appends ` krb5=<client principal>` as auditd does (unless turned off).
   */
  #line(payload: Buffer, peer: string, principal: string | null): Buffer {
    let end = payload.length;
    if (end > 0 && payload[end - 1] === NL) end--;
    while (principal !== null && end > 0 && payload[end - 1] === NL) end--;
    let line = end === payload.length ? payload : payload.subarray(0, end);
    let replaced = 0;
    for (let i = line.indexOf(NL); i !== -1; i = line.indexOf(NL, i + 1)) replaced++;
    for (let i = line.indexOf(0); i !== -1; i = line.indexOf(0, i + 1)) replaced++;
    if (replaced > 0) {
      line = Buffer.from(line);
      for (let i = 0; i < line.length; i++) if (line[i] === NL || line[i] === 0) line[i] = SPACE;
      this.stats.sanitized++;
      this.#log.warn(
        { peer, count: replaced },
        `record from ${peer} contains ${replaced} embedded newline/NUL byte(s): replaced by spaces so it stays one log line`,
      );
    }
    if (principal !== null && this.#s.krb5?.appendPrincipal !== false) {
      return Buffer.concat([line, Buffer.from(` krb5=${principal}`)]);
    }
    return line;
  }

  #reply(session: ClientSession, replies: Buffer[]): void {
    const { socket } = session;
    if (socket.destroyed || replies.length === 0) return;
    const wire = this.#wire(session, replies);
    if (socket.destroyed) return;
    socket.write(wire);
    if (socket.writableLength > OUTPUT_HIGH_WATER && !socket.isPaused()) {
      // The client is not reading its replies: stop reading its records until it does.
      this.#log.warn(
        { peer: session.peer },
        `client ${session.peer} is not reading its acknowledgements: paused`,
      );
      socket.pause();
    }
  }

  /** Replies as they go on the wire: as they are, or (krb5) one wrapped token each. */
  #wire(session: ClientSession, replies: Buffer[]): Buffer {
    const { krb5 } = session;
    if (!krb5) return replies.length === 1 ? replies[0]! : Buffer.concat(replies);
    try {
      return Buffer.concat(replies.map((r) => krb5.wrap(r)));
    } catch (err) {
      this.#log.error({ peer: session.peer, error: (err as Error).message }, 'cannot wrap a reply: closing');
      session.socket.destroy();
      return EMPTY;
    }
  }

  async #end(session: ClientSession): Promise<void> {
    if (session.krb5 && !session.krb5.established) {
      // No security context yet: nothing can be said to this client.
      session.socket.destroy();
      return;
    }
    session.ending = true;
    session.socket.pause();
    await session.chain;
    const { socket } = session;
    if (socket.destroyed) return;
    await new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      socket.end(this.#wire(session, [encodeReply(MessageType.ENDING, 0)]));
      // Read and drop what the client still sends (never logged, never acked): a paused socket with unread
      // input would never see the client's FIN, so the close would always wait for the timer below.
      socket.removeAllListeners('data');
      socket.resume();
      // A client that never reads cannot hold up shutdown.
      setTimeout(() => socket.destroy(), 2000).unref();
    });
  }
}
