/**
 * A transport carries managed-format bytes over one connection. The session sees a plain byte
 * stream either way: for tcp that is the socket; for krb5 the transport unwraps each GSS token
 * and hands over the plaintext frame.
 */
import net from 'node:net';
import { LinkError } from '../errors.js';

export interface Transport {
  /** Queues bytes for the peer; false when the caller should wait for `onDrain`. */
  write(data: Buffer): boolean;
  /** Bytes from the peer. Bytes that arrive while this is null are kept until it is set. */
  onMessage: ((chunk: Buffer) => void) | null;
  /** The link is gone (EOF, reset, error); called at most once. */
  onClose: ((reason: string) => void) | null;
  onDrain: (() => void) | null;
  readonly peer: string;
  close(): void;
  /**
   * Closes at once with a RST (SO_LINGER 0), for a link declared dead: nothing of it lingers in the kernel (no
   * FIN_WAIT retransmitting stale records to the server later, no TIME_WAIT), so its local port is free for the
   * next dial at once. Optional: a transport without it is closed.
   */
  abort?(): void;
}

export interface DialOptions {
  host: string;
  port: number;
  /** 0 = any. */
  localPort: number;
  signal: AbortSignal;
}

/**
 * TCP keepalive on every link: the first probe after this long without traffic. libuv (≥ 1.46, Node 20)
 * sets the probe interval to 1 s and the count to 10 on the same call, so a link that died while idle
 * (nothing in flight, so no reply deadline runs) is reset by the kernel (ETIMEDOUT, LINK_LOST) at most
 * KEEPALIVE_IDLE_MS + 10 × 1 s ≈ 40 s after its last traffic, heartbeats or not. A link with something
 * in flight is bounded by the reply deadline instead (max_time_per_record). test/agent/keepalive.test.ts
 * checks the socket options.
 */
export const KEEPALIVE_IDLE_MS = 30_000;

/** Errors of a dial that asked for a local port that cannot be had now (another socket holds it, or TIME_WAIT). */
const PORT_TAKEN = new Set(['EADDRINUSE', 'EADDRNOTAVAIL']);

/** The dial failed because its local port could not be bound or used for this peer. */
export function localPortTaken(err: unknown): boolean {
  const cause = (err as { cause?: NodeJS.ErrnoException } | null)?.cause;
  return typeof cause?.code === 'string' && PORT_TAKEN.has(cause.code);
}

/**
 * Opens a TCP connection (the name is resolved on every attempt, every address tried in turn). With a local
 * port, libuv binds it with SO_REUSEADDR first (a port whose last connection is gone can be bound again at
 * once); EADDRINUSE/EADDRNOTAVAIL (`localPortTaken`) say it cannot be had now.
 */
export function dialTcp(options: DialOptions): Promise<TcpTransport> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({
      host: options.host,
      port: options.port,
      ...(options.localPort > 0 ? { localPort: options.localPort } : {}),
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: KEEPALIVE_IDLE_MS,
      autoSelectFamily: true,
    });
    const onAbort = () => {
      socket.destroy();
      reject(new LinkError(`connect to ${options.host}:${options.port} abandoned`));
    };
    options.signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      options.signal.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      resolve(new TcpTransport(socket));
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      options.signal.removeEventListener('abort', onAbort);
      socket.destroy();
      const from = options.localPort > 0 ? ` from local port ${options.localPort}` : '';
      reject(
        new LinkError(
          `connect to ${options.host}:${options.port}${from} failed: ${err.code ?? err.message}`,
          {
            cause: err,
          },
        ),
      );
    });
  });
}

/**
 * Bytes that arrive before anyone listens are kept and handed over, in order, when a listener is
 * set; a close that happened meanwhile is reported then too. Shared by every transport.
 */
export class Inbox {
  #pending: Buffer[] = [];
  #listener: ((chunk: Buffer) => void) | null = null;

  get listener(): ((chunk: Buffer) => void) | null {
    return this.#listener;
  }

  deliver(chunk: Buffer): void {
    if (this.#listener) this.#listener(chunk);
    else this.#pending.push(chunk);
  }

  /** Sets the listener; delivers what is pending, then reports an earlier close through `onClose`. */
  listen(
    fn: ((chunk: Buffer) => void) | null,
    closedReason: string | null,
    onClose: ((reason: string) => void) | null,
  ): void {
    this.#listener = fn;
    if (!fn) return;
    const pending = this.#pending;
    this.#pending = [];
    for (const chunk of pending) fn(chunk);
    if (closedReason !== null) onClose?.(closedReason);
  }
}

export class TcpTransport implements Transport {
  readonly #socket: net.Socket;
  readonly #inbox = new Inbox();
  #closedReason: string | null = null;
  onClose: ((reason: string) => void) | null = null;
  onDrain: (() => void) | null = null;
  readonly peer: string;
  /** The local port of the connection. */
  readonly localPort: number | null;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.localPort = socket.localPort ?? null;
    socket.on('data', (chunk: Buffer) => this.#inbox.deliver(chunk));
    socket.on('drain', () => this.onDrain?.());
    socket.on('end', () => this.#closed('server closed the connection (EOF)'));
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.#closed(`connection error: ${err.code ?? err.message}`),
    );
    socket.on('close', () => this.#closed('connection closed'));
  }

  get onMessage(): ((chunk: Buffer) => void) | null {
    return this.#inbox.listener;
  }

  set onMessage(fn: ((chunk: Buffer) => void) | null) {
    this.#inbox.listen(fn, this.#closedReason, this.onClose);
  }

  write(data: Buffer): boolean {
    if (this.#socket.destroyed) return true; // the close is reported through onClose
    return this.#socket.write(data);
  }

  close(): void {
    this.#socket.destroy();
  }

  abort(): void {
    if (!this.#socket.destroyed) this.#socket.resetAndDestroy();
  }

  /**
   * Hands the socket over to a transport that runs on top of it (TLS): this transport stops listening to it
   * (close() still destroys it: the cleanup of a failed handshake). Bytes already received would be lost, so this
   * is for a link whose server has not spoken yet (a TLS client speaks first).
   */
  detach(): net.Socket {
    const socket = this.#socket;
    for (const event of ['data', 'drain', 'end', 'error', 'close']) socket.removeAllListeners(event);
    this.#closedReason ??= 'handed over';
    return socket;
  }

  #closed(reason: string): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    this.#socket.destroy();
    this.onClose?.(reason);
  }
}
