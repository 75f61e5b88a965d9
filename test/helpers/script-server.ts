/**
 * A scriptable managed-format server for fault injection: it records every message it receives and
 * answers as the test says (ack, withhold, reset, close, ENDING, garbage). Real TCP on 127.0.0.1.
 */
import net from 'node:net';
import { encodeReply, FrameDecoder, type WireMessage } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { pollUntil } from './wait.js';

export type Reply = 'ack' | 'none' | { type: number; text?: string; seq?: number };

export interface ServerConn {
  socket: net.Socket;
  messages: WireMessage[];
  id: number;
}

export class ScriptServer {
  readonly server: net.Server;
  readonly conns: ServerConn[] = [];
  /** Every MESSAGE payload received, in arrival order, across connections. */
  readonly records: Buffer[] = [];
  heartbeats = 0;
  /** Decides the reply for each message; default: ACK. */
  reply: (msg: WireMessage, conn: ServerConn) => Reply = () => 'ack';
  port = 0;

  constructor() {
    this.server = net.createServer((socket) => this.#accept(socket));
  }

  async start(port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: '127.0.0.1', port }, () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Stops listening and drops every connection (as a crashed server would: RST). */
  async stop(): Promise<void> {
    for (const c of this.conns) c.socket.resetAndDestroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  get current(): ServerConn | undefined {
    return this.conns.at(-1);
  }

  get open(): ServerConn[] {
    return this.conns.filter((c) => !c.socket.destroyed);
  }

  /** Payloads as text, one trailing newline removed. */
  lines(): string[] {
    return this.records.map((r) => r.toString('latin1').replace(/\n$/, ''));
  }

  waitForConnections(n: number, ms = 10_000): Promise<void> {
    return pollUntil(() => this.conns.length >= n, {
      timeoutMs: ms,
      what: `${n} connection(s)`,
      diagnostics: () => `have ${this.conns.length}`,
    }).then(() => {});
  }

  waitForRecords(n: number, ms = 10_000): Promise<void> {
    return pollUntil(() => this.records.length >= n, {
      timeoutMs: ms,
      what: `${n} record(s)`,
      diagnostics: () => `have ${this.records.length}`,
    }).then(() => {});
  }

  #accept(socket: net.Socket): void {
    const conn: ServerConn = { socket, messages: [], id: this.conns.length + 1 };
    this.conns.push(conn);
    const decoder = new FrameDecoder({ maxPayload: 0xffff });
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      for (const m of decoder.push(chunk)) {
        conn.messages.push(m);
        if (m.type === MessageType.HEARTBEAT) this.heartbeats++;
        else this.records.push(m.payload);
        const r = this.reply(m, conn);
        if (socket.destroyed || r === 'none') continue;
        if (r === 'ack') socket.write(encodeReply(MessageType.ACK, m.sequence));
        else socket.write(encodeReply(r.type, r.seq ?? m.sequence, r.text));
      }
    });
  }
}
