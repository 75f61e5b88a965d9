/**
 * The agent's environment in the model-based tests, on 127.0.0.1 with one port per path:
 *
 * - `ModelServer`: a managed-format server whose listener can be closed and reopened on the same port
 *   without touching the connections it has (`refuse` ⇄ `accept` for the next dial), which either
 *   acknowledges every message (`ack`) or keeps them unanswered (`hold`) until the test replies
 *   (ACK, DISKFULL, DISKERROR), and which can reset a link, announce ENDING or send garbage. For
 *   transport = krb5 it leaves the agent's GSS-API token unanswered or resets the link when it arrives.
 * - `Blackhole`: a listener whose accept queue is full, so that the kernel drops every further SYN and a
 *   connect neither succeeds nor fails: the dial `hang`s until the agent's connect timeout. It lives in
 *   a worker thread whose event loop is blocked (so nothing ever accepts); the test fills the queue with
 *   connections of its own until the kernel drops one (a listen overflow in /proc/net/netstat, the socket
 *   left in SYN_SENT in /proc/net/tcp).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import { encodeReply, FrameDecoder, type WireMessage } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { pollUntil } from '../helpers/wait.js';

export const HOST = '127.0.0.1';

export interface ModelConn {
  /** 1-based, in accept order. */
  id: number;
  socket: net.Socket;
  /** Every message received on this link, in order. */
  messages: WireMessage[];
  /** Messages not answered yet (oldest first). */
  unreplied: WireMessage[];
  closed: boolean;
  /** What the server did with a transport handshake on this link (transport = krb5), as set when accepted. */
  handshake: Handshake;
  /** Bytes received while the handshake was pending (the agent's GSS-API token). */
  handshakeBytes: number;
}

/**
 * `none`: no handshake (transport = tcp), managed-format messages from the first byte. With krb5 the model
 * server never completes a GSS-API context: `silent` keeps the agent's token unanswered, `reset` resets the
 * link when it arrives.
 */
export type Handshake = 'none' | 'silent' | 'reset';

export class ModelServer {
  port = 0;
  replies: 'ack' | 'hold' = 'ack';
  /** For the links accepted from now on. */
  handshake: Handshake = 'none';
  readonly conns: ModelConn[] = [];
  /** Every MESSAGE payload received, across links, in arrival order. */
  readonly payloads: Buffer[] = [];
  #listener: net.Server | null = null;
  #listening: Promise<void> = Promise.resolve();

  /** Binds a free port and listens on it. */
  async open(): Promise<number> {
    this.listen();
    await this.#listening;
    return this.port;
  }

  get listening(): boolean {
    return this.#listener !== null;
  }

  /**
   * Listens on the port (0 = pick one). Binding happens in the next tick (the address is a literal, so the
   * lookup is skipped), before any timer can fire: callable from a synchronous hook.
   */
  listen(): Promise<void> {
    if (this.#listener) throw new Error('already listening');
    const listener = net.createServer((socket) => this.#accept(socket));
    this.#listener = listener;
    this.#listening = new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen({ host: HOST, port: this.port }, () => {
        this.port = (listener.address() as net.AddressInfo).port;
        resolve();
      });
    });
    return this.#listening;
  }

  /** The listen started last has completed (rejects if it failed). */
  whenListening(): Promise<void> {
    return this.#listening;
  }

  /** Stops accepting (synchronously: the listening socket is closed now); open links are kept. */
  closeListener(): void {
    this.#listener?.close();
    this.#listener = null;
  }

  get current(): ModelConn | undefined {
    return this.conns.at(-1);
  }

  /** Answers every held message on `conn` with ACK, in order, and acknowledges from now on. */
  release(conn = this.current): void {
    this.replies = 'ack';
    if (!conn) return;
    while (conn.unreplied.length > 0) this.reply(conn, MessageType.ACK);
  }

  /** Answers the oldest unanswered message on `conn`. */
  reply(conn: ModelConn, type: number, text?: string): WireMessage {
    const m = conn.unreplied.shift();
    if (!m) throw new Error(`link ${conn.id} has no unanswered message`);
    if (!conn.socket.destroyed) conn.socket.write(encodeReply(type, m.sequence, text));
    return m;
  }

  /** RST, as a crashed server or a middlebox would. */
  reset(conn: ModelConn): void {
    conn.socket.resetAndDestroy();
  }

  /** ENDING (type 0x40000001, sequence 0): the server is shutting down. */
  ending(conn: ModelConn): void {
    conn.socket.write(encodeReply(MessageType.ENDING, 0));
  }

  /** Bytes that are not a reply (bad magic). */
  garbage(conn: ModelConn): void {
    conn.socket.write(Buffer.from('this is not a reply\n', 'latin1'));
  }

  async shutdown(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    this.closeListener();
  }

  #accept(socket: net.Socket): void {
    const conn: ModelConn = {
      id: this.conns.length + 1,
      socket,
      messages: [],
      unreplied: [],
      closed: false,
      handshake: this.handshake,
      handshakeBytes: 0,
    };
    this.conns.push(conn);
    const decoder = new FrameDecoder({ maxPayload: 0xffff });
    socket.on('error', () => {});
    socket.on('close', () => {
      conn.closed = true;
    });
    socket.on('data', (chunk: Buffer) => {
      if (conn.handshake !== 'none') {
        conn.handshakeBytes += chunk.length;
        if (conn.handshake === 'reset') socket.resetAndDestroy();
        return;
      }
      for (const m of decoder.push(chunk)) {
        conn.messages.push(m);
        if (m.type === MessageType.MESSAGE) this.payloads.push(m.payload);
        if (socket.destroyed) continue;
        if (this.replies === 'ack' && conn.unreplied.length === 0) {
          socket.write(encodeReply(MessageType.ACK, m.sequence));
        } else conn.unreplied.push(m);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// /proc/net/tcp

interface TcpRow {
  local: string;
  remote: string;
  state: number;
}

function tcpRows(): TcpRow[] {
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length > 4)
    .map((f) => {
      return {
        local: f[1]!,
        remote: f[2]!,
        state: Number.parseInt(f[3]!, 16),
      };
    });
}

const loopback = (port: number) => `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
const TCP_SYN_SENT = 0x02;

/** Sockets on this host in SYN_SENT towards 127.0.0.1:port (a dial whose SYN went unanswered). */
export function synSentTo(port: number): number {
  return tcpRows().filter((r) => r.remote === loopback(port) && r.state === TCP_SYN_SENT).length;
}

/** SYNs dropped because a listener's accept queue was full (this network namespace, since boot). */
function listenOverflows(): number {
  const rows = readFileSync('/proc/net/netstat', 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('TcpExt:'))
    .map((l) => l.trim().split(/\s+/));
  const [names, values] = rows;
  const i = names?.indexOf('ListenOverflows') ?? -1;
  if (!names || !values || i < 0) throw new Error('no TcpExt ListenOverflows in /proc/net/netstat');
  return Number(values[i]);
}

// ---------------------------------------------------------------------------------------------------------
// Blackhole

const BLACKHOLE_WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const server = net.createServer();
server.on('error', (err) => parentPort.postMessage({ error: err.message }));
server.listen({ host: '${HOST}', port: workerData.port, backlog: 1 }, () => {
  parentPort.postMessage({ listening: server.address().port });
  // Blocks this thread's event loop: nothing accepts, the kernel's accept queue fills up and stays full.
  Atomics.wait(new Int32Array(workerData.flag), 0, 0);
  server.close(() => parentPort.postMessage({ closed: true }));
});
`;

export class Blackhole {
  readonly port: number;
  readonly #worker: Worker;
  readonly #flag: Int32Array;
  readonly #fillers: net.Socket[] = [];
  #closed = false;

  private constructor(port: number, worker: Worker, flag: Int32Array) {
    this.port = port;
    this.#worker = worker;
    this.#flag = flag;
  }

  /** A listener on `port` that completes no further handshake. */
  static async open(port: number): Promise<Blackhole> {
    const shared = new SharedArrayBuffer(4);
    const worker = new Worker(BLACKHOLE_WORKER, { eval: true, workerData: { port, flag: shared } });
    const first = await new Promise<{ listening?: number; error?: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    if (first.error) {
      await worker.terminate();
      throw new Error(`blackhole on port ${port}: ${first.error}`);
    }
    const hole = new Blackhole(port, worker, new Int32Array(shared));
    await hole.#fill();
    return hole;
  }

  /**
   * Connects until one connection does not complete: its SYN was dropped (the kernel counts a listen
   * overflow, and the socket stays in SYN_SENT). That connection is abandoned; the others stay queued.
   */
  async #fill(): Promise<void> {
    for (let i = 0; i < 16; i++) {
      const overflows = listenOverflows();
      const socket = net.connect({ host: HOST, port: this.port });
      socket.on('error', () => {});
      let connected = false;
      socket.once('connect', () => {
        connected = true;
      });
      const outcome = await pollUntil(
        () => (connected ? 'queued' : listenOverflows() > overflows && synSentTo(this.port) > 0 && 'dropped'),
        {
          timeoutMs: 5_000,
          intervalMs: 2,
          what: `connection ${i + 1} to the blackhole to complete or be dropped`,
        },
      );
      if (outcome === 'queued') {
        this.#fillers.push(socket);
        continue;
      }
      socket.destroy();
      await pollUntil(() => synSentTo(this.port) === 0, {
        timeoutMs: 2_000,
        what: 'the dropped probe to go',
      });
      return;
    }
    throw new Error('blackhole: the accept queue never filled up');
  }

  /** Closes the listener (the queued connections are reset) and frees the port. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#fillers) s.destroy();
    const closed = new Promise<void>((resolve) => {
      this.#worker.on('message', (m: { closed?: boolean }) => {
        if (m.closed) resolve();
      });
    });
    Atomics.store(this.#flag, 0, 1);
    Atomics.notify(this.#flag, 0);
    await closed;
    await this.#worker.terminate();
  }
}
