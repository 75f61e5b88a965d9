/**
 * A managed-format TCP proxy on loopback that injects network and server faults between an agent and a
 * server (our collector or a real auditd). It understands frames in both directions, so faults start at a
 * message boundary and the replies the client sees stay in request order.
 *
 * Modes (`setMode`): the new mode applies to every connection accepted from then on, and — except
 * `forward` — to every open connection too. A connection that met a network fault keeps it: switching back
 * to `forward` heals the path for new connections only (the agent has to notice and reconnect, which is what
 * is being tested). A server's full disk is not a fault of the connection: switching back to `forward` from
 * `diskfull`/`diskerror` heals open connections too, as a real server (auditd, our collector) answers on the
 * same connection once its disk has room again (the agent probes it on the open link: issue 16 item 3).
 *
 * | mode        | open connections                                   | new connections                        |
 * |-------------|----------------------------------------------------|----------------------------------------|
 * | `forward`   | unchanged (healed from `diskfull`/`diskerror`)     | proxied                                |
 * | `blackhole` | nothing forwarded either way, no FIN, no RST       | accepted, then silence                 |
 * | `reset`     | RST to both sides                                  | accepted, then RST                     |
 * | `close`     | FIN to both sides                                  | accepted, then FIN (as auditd's op=dup)|
 * | `stall`     | records still reach the server; replies withheld   | the same                               |
 * | `garbage`   | each server reply replaced by non-protocol bytes   | the same                               |
 * | `diskfull`  | records no longer forwarded; the proxy answers each one itself with DISKFULL (`disk full`), after the server's pending replies | the same |
 * | `diskerror` | the same with DISKERROR (`disk write error`)       | the same                               |
 *
 * `armMode(mode)` switches at the worst moment: right after records were forwarded, before their replies.
 *
 * When the server is unreachable (connect refused), the client is reset, as a client connecting
 * directly would be.
 */
import net from 'node:net';
import { encodeReply } from '../../src/protocol/codec.js';
import { HEADER_SIZE, MAGIC, MessageType } from '../../src/protocol/constants.js';
import { pollUntil } from './wait.js';

export type FaultMode =
  | 'forward'
  | 'blackhole'
  | 'reset'
  | 'close'
  | 'stall'
  | 'garbage'
  | 'diskfull'
  | 'diskerror';

/** What a client sees instead of a reply in `garbage` mode (no magic: the stream is unusable). */
export const GARBAGE_REPLY = Buffer.from('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n');

export interface FaultProxyStats {
  /** Connections accepted from clients. */
  accepted: number;
  /** Messages (records and heartbeats) forwarded to the server. */
  forwarded: number;
  /** Server replies delivered to clients. */
  replies: number;
  /** Replies the proxy produced itself (DISKFULL / DISKERROR / garbage). */
  injected: number;
  /** Replies withheld (stall) or dropped (blackhole). */
  withheld: number;
}

interface Slot {
  /** The reply to deliver; undefined while waiting for the server; null = withhold. */
  reply: Buffer | null | undefined;
  fromServer: boolean;
}

const EMPTY = Buffer.alloc(0);

class Pair {
  mode: FaultMode;
  server: net.Socket | null = null;
  serverConnected = false;
  /** Frames waiting for the upstream connection. */
  readonly pendingUp: Buffer[] = [];
  upBuf: Buffer = EMPTY;
  downBuf: Buffer = EMPTY;
  readonly order: Slot[] = [];
  done = false;

  constructor(
    readonly id: number,
    readonly client: net.Socket,
    mode: FaultMode,
  ) {
    this.mode = mode;
  }
}

export class FaultProxy {
  readonly #server: net.Server;
  readonly #pairs = new Set<Pair>();
  #mode: FaultMode = 'forward';
  #armed: { mode: FaultMode; fired: () => void } | null = null;
  #target: { host: string; port: number };
  port = 0;
  readonly stats: FaultProxyStats = { accepted: 0, forwarded: 0, replies: 0, injected: 0, withheld: 0 };
  /** Modes set so far, with the time they were set (for reports). */
  readonly history: { mode: FaultMode; at: number }[] = [];

  constructor(target: { host?: string; port: number }) {
    this.#target = { host: target.host ?? '127.0.0.1', port: target.port };
    this.#server = net.createServer({ noDelay: true }, (socket) => this.#accept(socket));
  }

  get mode(): FaultMode {
    return this.#mode;
  }

  /** Open client connections. */
  get connections(): number {
    return this.#pairs.size;
  }

  set targetPort(port: number) {
    this.#target = { ...this.#target, port };
  }

  async start(port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: '127.0.0.1', port }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Switches the fault (see the module comment for what each mode does to open and new connections). */
  setMode(mode: FaultMode): void {
    this.#mode = mode;
    this.history.push({ mode, at: Date.now() });
    if (mode === 'forward') {
      // The disk has room again: the server answers on the open connections too.
      for (const p of this.#pairs) if (p.mode === 'diskfull' || p.mode === 'diskerror') p.mode = 'forward';
      return;
    }
    for (const p of [...this.#pairs]) {
      if (p.done) continue;
      if (mode === 'reset') this.#reset(p);
      else if (mode === 'close') this.#close(p);
      else p.mode = mode;
    }
  }

  /**
   * Switches to `mode` at the worst moment: right after the proxy next forwards records to the server,
   * while they are in flight (the server may log them; their replies are still to come). Resolves when done.
   */
  armMode(mode: FaultMode): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#armed = { mode, fired: resolve };
    });
  }

  /** Resolves once `n` client connections were accepted in total. */
  waitForAccepts(n: number, timeoutMs = 10_000): Promise<void> {
    return pollUntil(() => this.stats.accepted >= n, {
      timeoutMs,
      intervalMs: 5,
      what: `${n} connection(s) accepted by the fault proxy`,
      diagnostics: () => `accepted ${this.stats.accepted}, mode ${this.#mode}`,
    }).then(() => {});
  }

  /** Stops listening and resets every connection. */
  async stop(): Promise<void> {
    for (const p of [...this.#pairs]) this.#reset(p);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: net.Socket): void {
    this.stats.accepted++;
    const pair = new Pair(this.stats.accepted, client, this.#mode);
    client.on('error', () => {});
    if (pair.mode === 'reset') {
      client.resetAndDestroy();
      return;
    }
    if (pair.mode === 'close') {
      client.end();
      client.resume();
      return;
    }
    this.#pairs.add(pair);
    client.on('data', (chunk: Buffer) => this.#fromClient(pair, chunk));
    client.on('end', () => {
      if (pair.mode === 'blackhole') return; // the FIN is lost with everything else
      pair.server?.end();
    });
    client.on('close', () => this.#finish(pair));
    if (pair.mode === 'blackhole') return;
    this.#connectUpstream(pair);
  }

  #connectUpstream(pair: Pair): void {
    const server = net.connect({ host: this.#target.host, port: this.#target.port, noDelay: true });
    pair.server = server;
    server.on('connect', () => {
      pair.serverConnected = true;
      if (pair.pendingUp.length > 0) server.write(Buffer.concat(pair.pendingUp.splice(0)));
    });
    server.on('data', (chunk: Buffer) => this.#fromServer(pair, chunk));
    server.on('end', () => {
      if (pair.done || pair.mode === 'blackhole') return;
      this.#flush(pair);
      pair.client.end();
    });
    server.on('error', () => {
      // Refused or reset: the client sees a reset, as it would without the proxy.
      if (pair.done || pair.mode === 'blackhole') return;
      this.#reset(pair);
    });
    server.on('close', () => {
      if (pair.done || pair.mode === 'blackhole') return;
      pair.client.end();
    });
  }

  #fromClient(pair: Pair, chunk: Buffer): void {
    if (pair.done || pair.mode === 'blackhole') return;
    const buf = pair.upBuf.length === 0 ? chunk : Buffer.concat([pair.upBuf, chunk]);
    let off = 0;
    const up: Buffer[] = [];
    while (buf.length - off >= HEADER_SIZE) {
      if (buf.readUInt32LE(off) !== MAGIC) {
        // Not managed format: pass the rest through untouched, with no reply bookkeeping.
        up.push(buf.subarray(off));
        off = buf.length;
        break;
      }
      const len = buf.readUInt16LE(off + 10);
      if (buf.length - off < HEADER_SIZE + len) break;
      const frame = buf.subarray(off, off + HEADER_SIZE + len);
      const seq = buf.readUInt32LE(off + 12);
      off += HEADER_SIZE + len;
      if (pair.mode === 'diskfull' || pair.mode === 'diskerror') {
        const full = pair.mode === 'diskfull';
        this.stats.injected++;
        pair.order.push({
          fromServer: false,
          reply: encodeReply(
            full ? MessageType.DISKFULL : MessageType.DISKERROR,
            seq,
            full ? 'disk full' : 'disk write error',
          ),
        });
        continue;
      }
      this.stats.forwarded++;
      up.push(frame);
      pair.order.push({ fromServer: true, reply: undefined });
    }
    pair.upBuf = off === buf.length ? EMPTY : Buffer.from(buf.subarray(off));
    if (up.length > 0) {
      const data = up.length === 1 ? Buffer.from(up[0]!) : Buffer.concat(up);
      if (pair.serverConnected) pair.server!.write(data);
      else pair.pendingUp.push(data);
    }
    this.#flush(pair);
    const armed = this.#armed;
    if (armed && up.length > 0 && pair.serverConnected) {
      this.#armed = null;
      this.setMode(armed.mode);
      armed.fired();
    }
  }

  #fromServer(pair: Pair, chunk: Buffer): void {
    if (pair.done || pair.mode === 'blackhole') {
      this.stats.withheld++;
      return;
    }
    const buf = pair.downBuf.length === 0 ? chunk : Buffer.concat([pair.downBuf, chunk]);
    let off = 0;
    while (buf.length - off >= HEADER_SIZE) {
      const len = buf.readUInt16LE(off + 10);
      if (buf.length - off < HEADER_SIZE + len) break;
      const frame = Buffer.from(buf.subarray(off, off + HEADER_SIZE + len));
      const type = buf.readUInt32LE(off + 6);
      off += HEADER_SIZE + len;
      if (type === MessageType.ENDING) {
        // Unsolicited (sequence 0): not the answer to any request.
        if (pair.mode === 'stall') this.stats.withheld++;
        else pair.client.write(frame);
        continue;
      }
      const slot = pair.order.find((s) => s.fromServer && s.reply === undefined);
      if (!slot) continue; // a reply to nothing: drop it
      if (pair.mode === 'stall') {
        this.stats.withheld++;
        slot.reply = null;
      } else if (pair.mode === 'garbage') {
        this.stats.injected++;
        slot.reply = GARBAGE_REPLY;
      } else {
        slot.reply = frame;
      }
    }
    pair.downBuf = off === buf.length ? EMPTY : Buffer.from(buf.subarray(off));
    this.#flush(pair);
  }

  /** Delivers the replies that are ready, in request order. */
  #flush(pair: Pair): void {
    const out: Buffer[] = [];
    while (pair.order.length > 0 && pair.order[0]!.reply !== undefined) {
      const { reply, fromServer } = pair.order.shift()!;
      if (!reply) continue;
      if (fromServer && reply !== GARBAGE_REPLY) this.stats.replies++;
      out.push(reply);
    }
    if (out.length > 0 && !pair.client.destroyed) pair.client.write(Buffer.concat(out));
  }

  #reset(pair: Pair): void {
    pair.done = true;
    this.#pairs.delete(pair);
    pair.client.resetAndDestroy();
    if (pair.server && !pair.server.destroyed) pair.server.resetAndDestroy();
  }

  #close(pair: Pair): void {
    pair.done = true;
    this.#pairs.delete(pair);
    pair.client.end();
    pair.server?.end();
  }

  #finish(pair: Pair): void {
    pair.done = true;
    this.#pairs.delete(pair);
    // The proxy's own clean-up: the server side goes when the client side has gone, whatever the mode.
    if (pair.server && !pair.server.destroyed) pair.server.destroy();
  }
}
