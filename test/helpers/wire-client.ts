/**
 * A tiny raw managed-format client for tests: it connects, writes whatever bytes it is given (valid frames
 * or garbage) and collects the server's replies with the real FrameDecoder. Every wait is bounded by a
 * deadline and driven by socket events, never by a fixed sleep.
 */
import net from 'node:net';
import {
  encodeEvent,
  encodeHeartbeat,
  encodeMessage,
  FrameDecoder,
  type WireMessage,
} from '../../src/protocol/codec.js';
import { MAX_AUDIT_MESSAGE_LENGTH } from '../../src/protocol/constants.js';

export { encodeEvent, encodeHeartbeat, encodeMessage };

export interface WireClientOptions {
  host: string;
  port: number;
  /** Source address to bind (e.g. 127.0.0.2 to appear as another host on loopback). */
  localAddress?: string;
  /** Give up connecting after this long. Default 5000 ms. */
  connectTimeoutMs?: number;
}

export class WireClient {
  readonly socket: net.Socket;
  /** Replies received so far, in arrival order. */
  readonly replies: WireMessage[] = [];
  readonly decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
  /** Set once the socket has closed (by either side). */
  closed = false;
  /** True once the server's FIN (or a reset) was seen. */
  ended = false;
  /** The last socket error (ECONNRESET, EPIPE, ...), if any. */
  error: NodeJS.ErrnoException | null = null;
  /** Local address and port of the connection, for log assertions (kept after the socket closed). */
  localAddress = '';
  localPort = 0;
  #waiters = new Set<() => void>();

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.replies.push(...this.decoder.push(chunk));
      this.#wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.#wake();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error = err;
      this.#wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.ended = true;
      this.#wake();
    });
  }

  static connect(options: WireClientOptions): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({
        host: options.host,
        port: options.port,
        noDelay: true,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
      });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${options.host}:${options.port} timed out`));
      }, options.connectTimeoutMs ?? 5000);
      const onError = (err: Error) => {
        clearTimeout(timer);
        reject(err);
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        const client = new WireClient(socket);
        client.localAddress = socket.localAddress ?? '';
        client.localPort = socket.localPort ?? 0;
        resolve(client);
      });
    });
  }

  /** `address:port` as the server sees this client. */
  get peer(): string {
    return `${this.localAddress}:${this.localPort}`;
  }

  /** Writes raw bytes; resolves when they were handed to the kernel (or rejects on a write error). */
  write(bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(bytes, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Writes one MESSAGE frame per payload, all in one write. */
  sendRecords(records: { seq: number; payload: Buffer | string }[]): Promise<void> {
    return this.write(
      Buffer.concat(
        records.map((r) =>
          encodeEvent(r.seq, typeof r.payload === 'string' ? Buffer.from(r.payload) : r.payload),
        ),
      ),
    );
  }

  sendHeartbeat(seq: number): Promise<void> {
    return this.write(encodeHeartbeat(seq));
  }

  /** Resolves once `predicate()` holds; rejects with `what` and the client's state when `deadlineMs` passes. */
  waitUntil(predicate: () => boolean, deadlineMs: number, what: string): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `timed out after ${deadlineMs} ms waiting for ${what} ` +
              `(replies=${this.replies.length}, ended=${this.ended}, closed=${this.closed}, ` +
              `error=${this.error?.code ?? 'none'}, decoderError=${this.decoder.error?.message ?? 'none'})`,
          ),
        );
      }, deadlineMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  /** Waits until at least `n` replies arrived in total; returns the first `n`. */
  async waitForReplies(n: number, deadlineMs: number): Promise<WireMessage[]> {
    await this.waitUntil(() => this.replies.length >= n, deadlineMs, `${n} replies`);
    return this.replies.slice(0, n);
  }

  /**
   * Waits until the connection is fully closed: by the server (FIN, to which the socket answers with its own,
   * or a reset) or by us.
   */
  async waitForClose(deadlineMs: number): Promise<void> {
    await this.waitUntil(() => this.closed, deadlineMs, 'the connection to close');
  }

  /** Stops reading replies (the kernel buffers fill, then the server's output backs up). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** Closes our side gracefully (FIN). */
  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }
}
