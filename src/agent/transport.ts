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
}

export interface DialOptions {
  host: string;
  port: number;
  /** 0 = any. */
  localPort: number;
  signal: AbortSignal;
}

/** Opens a TCP connection (the name is resolved on every attempt, every address tried in turn). */
export function dialTcp(options: DialOptions): Promise<TcpTransport> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({
      host: options.host,
      port: options.port,
      ...(options.localPort > 0 ? { localPort: options.localPort } : {}),
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: 30_000,
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
      reject(new LinkError(`connect to ${options.host}:${options.port} failed: ${err.code ?? err.message}`));
    });
  });
}

export class TcpTransport implements Transport {
  readonly #socket: net.Socket;
  #pending: Buffer[] = [];
  #onMessage: ((chunk: Buffer) => void) | null = null;
  #closedReason: string | null = null;
  onClose: ((reason: string) => void) | null = null;
  onDrain: (() => void) | null = null;
  readonly peer: string;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.on('data', (chunk: Buffer) => {
      if (this.#onMessage) this.#onMessage(chunk);
      else this.#pending.push(chunk);
    });
    socket.on('drain', () => this.onDrain?.());
    socket.on('end', () => this.#closed('server closed the connection (EOF)'));
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.#closed(`connection error: ${err.code ?? err.message}`),
    );
    socket.on('close', () => this.#closed('connection closed'));
  }

  get onMessage(): ((chunk: Buffer) => void) | null {
    return this.#onMessage;
  }

  set onMessage(fn: ((chunk: Buffer) => void) | null) {
    this.#onMessage = fn;
    if (fn && this.#pending.length > 0) {
      const pending = this.#pending;
      this.#pending = [];
      for (const chunk of pending) fn(chunk);
    }
    // A close that happened before anyone listened is reported now.
    if (fn && this.#closedReason !== null) this.onClose?.(this.#closedReason);
  }

  write(data: Buffer): boolean {
    if (this.#socket.destroyed) return true; // the close is reported through onClose
    return this.#socket.write(data);
  }

  close(): void {
    this.#socket.destroy();
  }

  #closed(reason: string): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    this.#socket.destroy();
    this.onClose?.(reason);
  }
}
