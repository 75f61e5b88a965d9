/**
 * The data path of one open link: pipelines queued records to the server, reads every reply as it
 * arrives (a real auditd drops acks it cannot write), matches replies to requests by sequence
 * number, sends heartbeats on a timer whatever the traffic, and declares the link dead when no
 * reply arrives within the deadline. It reports link-level outcomes to the connection machine:
 *
 * - `ESTABLISHED` at the first reply the server accepts a message with (an ACK, DISKLOW, …): the
 *   session works. The first message on every link is a heartbeat (the probe; auditd answers it with an
 *   ACK and logs nothing), so an idle agent learns as soon as a busy one whether the server really talks
 *   to it, and the reply deadline covers a server that accepts the connection and then says nothing. In
 *   ascii format nothing is ever answered: the link counts as working once open.
 * - the failures (`LINK_LOST`, `REPLY_TIMEOUT`, …), `DRAINED`, and `FAULT` when an invariant broke
 *   inside the session (an exception from the queue in a socket or timer callback): the machine hands
 *   that to the supervisor instead of letting it escape as an uncaught exception.
 * - `DISK_FULL` / `DISK_ERROR` when the server refuses a record (the link stays: the machine decides), and
 *   `ACCEPTING` when it accepts one again (the first record acknowledged after a refusal).
 *
 * How many records are in flight is the window's (src/agent/window.ts): sized from the RTT of each
 * acknowledged record and the acknowledgement rate, `max_in_flight` its ceiling. A refusal closes it: every
 * record in flight is void (its reply is read and ignored: the records are sent again, in order, from the
 * oldest), and nothing more is sent until the machine asks for a probe (`probe()`: the oldest record, alone).
 * A link declared dead (no reply within the deadline) is reset, not closed (`Transport.abort`).
 *
 * Record identities (src/agent/record-ids.ts, docs/protocol.md): with `recordIds`, the probe heartbeat carries the
 * agent's hello and goes alone: records wait for its reply (one round trip per link). A reply whose text names the
 * `rid` capability (our collector) makes every record of this link a RECORD_ID message (its record number first);
 * any other reply (a real auditd's empty ACK) leaves them plain MESSAGEs, byte for byte as without identities.
 */
import type { SessionEvent } from '../../machines/connection.js';
import { FrameDecoder, writeHeader } from '../protocol/codec.js';
import {
  HEADER_SIZE,
  MAX_AUDIT_MESSAGE_LENGTH,
  MessageType,
  TypeMask,
  typeName,
} from '../protocol/constants.js';
import { parseCapabilities, RECORD_NUMBER_SIZE, writeRecordNumber } from '../protocol/record-id.js';
import type { RecordQueue } from '../queue/types.js';
import type { LinkMeter } from './link-meter.js';
import type { AgentRecordIds } from './record-ids.js';
import type { Transport } from './transport.js';
import type { FlowWindow } from './window.js';

export interface SessionOptions {
  transport: Transport;
  queue: RecordQueue;
  sequence: SequenceCounter;
  /** How many records may be in flight (kept across links: what it measured of the path stays). */
  window: FlowWindow;
  /** No reply for this long while something is in flight ⇒ the link is dead (`max_time_per_record`). */
  replyTimeoutMs: number;
  /**
   * Heartbeat period; 0 = off. When on, it also bounds the reply deadline: a link that answers nothing
   * for one heartbeat period is dead, so a dead link is declared within 2 × the period (DESIGN §1).
   */
  heartbeatMs: number;
  /** ascii format: no replies; a record counts as delivered once written. */
  ascii: boolean;
  onReply?(kind: ReplyKind, text: string): void;
  /** Counts bytes, replies and acknowledgement latencies for status and metrics (optional). */
  meter?: LinkMeter;
  /** The agent's identity and record numbers: the probe carries the hello (null: no hello, plain MESSAGEs). */
  recordIds?: AgentRecordIds | null;
  now?: () => number;
}

export type ReplyKind = 'ack' | 'disk-low' | 'generic-error' | 'generic-warning';

/** Process-wide sequence numbers: never 0 (ENDING uses 0), wrap at 2^32. */
export class SequenceCounter {
  #value = 0;
  next(): number {
    this.#value = this.#value >= 0xffffffff ? 1 : this.#value + 1;
    return this.#value;
  }
}

interface InFlight {
  seq: number;
  /** Queue id, 0 for a heartbeat, VOID for a record in flight when the server refused one. */
  id: number;
  /** When it was written (ms, `now()`). */
  sentAt: number;
  bytes: number;
}

const HEARTBEAT = 0;
/** A record whose reply no longer counts: it is sent again after a refusal. */
const VOID = -1;
/** The probe heartbeat that carries the hello: its reply says whether the server takes record identities. */
const HELLO = -2;
const NOTHING = Buffer.alloc(0);

export class Session {
  readonly #o: SessionOptions;
  readonly #now: () => number;
  #send: ((event: SessionEvent) => void) | null = null;
  readonly #inflight: InFlight[] = [];
  #inflightHead = 0;
  /** Time of the last reply, or of the first send after an idle period. */
  #progressAt = 0;
  #draining = false;
  #blocked = false;
  #ended = false;
  /** The server has accepted a message on this link. */
  #established = false;
  /** Records in flight (the window counts records; a heartbeat does not take a record's place). */
  #records = 0;
  /** Payload bytes of those records. */
  #bytes = 0;
  #timers: NodeJS.Timeout[] = [];
  /** Records being gathered for one write. */
  readonly #out: { payloads: Buffer[]; seqs: number[]; types: number[]; rids: number[] } = {
    payloads: [],
    seqs: [],
    types: [],
    rids: [],
  };
  /** The hello went out and its reply has not come yet: records wait for it. */
  #awaitingHello = false;
  /** The server announced `rid`: records go as RECORD_ID messages on this link. */
  #rid = false;
  /** The probe heartbeat is still to be sent: it goes first, in the same write as the first records. */
  #probe = false;
  /** min(replyTimeoutMs, heartbeatMs) with heartbeats on, else replyTimeoutMs. */
  readonly #deadlineMs: number;
  readonly #deadlineSource: string;
  readonly #decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });

  constructor(options: SessionOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    const heartbeats = options.heartbeatMs > 0 && !options.ascii;
    const byHeartbeat = heartbeats && options.heartbeatMs < options.replyTimeoutMs;
    this.#deadlineMs = byHeartbeat ? options.heartbeatMs : options.replyTimeoutMs;
    this.#deadlineSource = byHeartbeat ? 'heartbeat_timeout' : 'max_time_per_record';
  }

  get inFlight(): number {
    return this.#inflight.length - this.#inflightHead;
  }

  /** Records the window allows in flight now (0 while the server refuses records). */
  get window(): number {
    return this.#o.window.size;
  }

  /** Starts the data path; `sendBack` receives the session's outcome events. */
  start(sendBack: (event: SessionEvent) => void): void {
    this.#send = sendBack;
    this.#guarded(() => {
      const { transport, queue, ascii } = this.#o;
      // Everything not acknowledged on the previous link is sent again, in order.
      queue.rewind();
      this.#o.window.restart(this.#now());
      transport.onClose = (reason) => this.#finish({ type: 'LINK_LOST', reason });
      transport.onDrain = () =>
        this.#guarded(() => {
          this.#blocked = false;
          this.#pump();
        });
      // Last: setting onMessage delivers bytes (or a close) that arrived before the session started.
      transport.onMessage = (frame) => this.#guarded(() => this.#onFrame(frame));
      if (this.#ended) return;
      queue.on('readable', this.#pump);
      if (this.#o.heartbeatMs > 0 && !ascii) {
        this.#timers.push(setInterval(() => this.#guarded(() => this.#sendHeartbeat()), this.#o.heartbeatMs));
      }
      if (!ascii) {
        const check = Math.max(10, Math.min(1000, Math.floor(this.#deadlineMs / 4)));
        this.#timers.push(setInterval(() => this.#guarded(() => this.#checkDeadline()), check));
      }
      // The probe: the first message on every managed link, so its answer says the session works.
      if (ascii) this.#establish();
      else this.#probe = true;
      this.#pump();
    });
  }

  /** From the machine: report DRAINED once nothing is left. */
  drain(): void {
    this.#guarded(() => {
      this.#draining = true;
      this.#checkDrained();
    });
  }

  /**
   * From the machine, while the server refuses records: send the oldest record alone (unless a record is
   * still in flight: one probe at a time).
   */
  probe(): void {
    this.#guarded(() => {
      if (this.#ended || this.#records > 0) return;
      this.#o.window.probe();
      this.#fill();
    });
  }

  /** Stops timers and listeners; the caller closes the transport. */
  stop(): void {
    this.#ended = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    this.#o.queue.off('readable', this.#pump);
    const { transport } = this.#o;
    transport.onMessage = null;
    transport.onClose = null;
    transport.onDrain = null;
  }

  #finish(event: SessionEvent): void {
    if (this.#ended) return;
    this.stop();
    this.#send?.(event);
  }

  /** Runs `fn`; an exception (a broken invariant, e.g. of the queue) ends the session with FAULT. */
  #guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#finish({ type: 'FAULT', reason: err instanceof Error ? err.message : String(err) });
    }
  }

  /** The first accepted reply: the session works. */
  #establish(): void {
    if (this.#established || this.#ended) return;
    this.#established = true;
    this.#send?.({ type: 'ESTABLISHED' });
  }

  readonly #pump = (): void => this.#guarded(() => this.#fill());

  #fill(): void {
    if (this.#ended || this.#blocked) return;
    const { queue, sequence, window, ascii } = this.#o;
    // Acknowledgements are made crash-safe before more records go out, so what a restart after a crash
    // sends again is at most one window.
    if (window.allows(this.#records, this.#bytes) && queue.unsent > 0) queue.flushAcks();
    const out = this.#out;
    const now = this.#now();
    let total = 0;
    if (this.#probe) {
      this.#probe = false;
      const seq = sequence.next();
      if (this.inFlight === 0) this.#progressAt = now;
      const hello = this.#o.recordIds?.hello ?? null;
      this.#inflight.push({ seq, id: hello ? HELLO : HEARTBEAT, sentAt: now, bytes: 0 });
      out.payloads.push(hello ?? NOTHING);
      out.seqs.push(seq);
      out.types.push(MessageType.HEARTBEAT);
      out.rids.push(0);
      total += HEADER_SIZE + (hello?.length ?? 0);
      this.#awaitingHello = hello !== null;
    }
    const rid = this.#rid ? this.#o.recordIds : null;
    while (!this.#awaitingHello && window.allows(this.#records, this.#bytes)) {
      const rec = queue.takeNext();
      if (!rec) break;
      const seq = sequence.next();
      if (!ascii && this.inFlight === 0) this.#progressAt = now;
      this.#records++;
      this.#bytes += rec.payload.length;
      window.sent(this.#records);
      this.#inflight.push({ seq, id: rec.id, sentAt: now, bytes: rec.payload.length });
      out.payloads.push(rec.payload);
      out.seqs.push(seq);
      if (rid) {
        out.types.push(MessageType.RECORD_ID);
        out.rids.push(rid.seqOf(rec.id));
        total += HEADER_SIZE + RECORD_NUMBER_SIZE + rec.payload.length;
      } else {
        out.types.push(MessageType.MESSAGE);
        out.rids.push(0);
        total += (ascii ? 0 : HEADER_SIZE) + rec.payload.length;
      }
      // Write in batches of about 256 KiB so a large backlog does not build one huge buffer.
      if (total >= 262_144) {
        this.#write(total);
        total = 0;
        if (this.#blocked) break;
      }
    }
    if (out.payloads.length > 0) this.#write(total);
    // More to send than the window allows: the window is what limits (it may grow).
    if (!this.#blocked && !window.refused && !this.#awaitingHello && queue.unsent > 0) window.limited();
    if (ascii) this.#ackAllWritten();
    this.#checkDrained();
  }

  /** Writes the records collected in #out (framed, unless ascii) with one write. */
  #write(total: number): void {
    const { payloads, seqs, types, rids } = this.#out;
    let data: Buffer;
    if (this.#o.ascii) {
      data = payloads.length === 1 ? payloads[0]! : Buffer.concat(payloads, total);
    } else {
      data = Buffer.allocUnsafe(total);
      let off = 0;
      for (let i = 0; i < payloads.length; i++) {
        const p = payloads[i]!;
        if (types[i] === MessageType.RECORD_ID) {
          writeHeader(data, off, MessageType.RECORD_ID, seqs[i]!, RECORD_NUMBER_SIZE + p.length);
          writeRecordNumber(data, off + HEADER_SIZE, rids[i]!);
          p.copy(data, off + HEADER_SIZE + RECORD_NUMBER_SIZE);
          off += HEADER_SIZE + RECORD_NUMBER_SIZE + p.length;
          continue;
        }
        writeHeader(data, off, types[i]!, seqs[i]!, p.length);
        p.copy(data, off + HEADER_SIZE);
        off += HEADER_SIZE + p.length;
      }
    }
    payloads.length = 0;
    seqs.length = 0;
    types.length = 0;
    this.#o.meter?.sent(data.length);
    rids.length = 0;
    if (!this.#o.transport.write(data)) this.#blocked = true;
  }

  /** ascii: nothing comes back, so a record handed to the socket counts as delivered. */
  #ackAllWritten(): void {
    while (this.inFlight > 0) {
      const f = this.#inflight[this.#inflightHead++]!;
      this.#records--;
      this.#bytes -= f.bytes;
      this.#o.queue.ack(f.id);
      this.#o.meter?.acked(0);
    }
    this.#compact();
  }

  #sendHeartbeat(): void {
    if (this.#ended) return;
    const seq = this.#o.sequence.next();
    const frame = Buffer.allocUnsafe(HEADER_SIZE);
    writeHeader(frame, 0, MessageType.HEARTBEAT, seq, 0);
    const now = this.#now();
    if (this.inFlight === 0) this.#progressAt = now;
    this.#inflight.push({ seq, id: HEARTBEAT, sentAt: now, bytes: 0 });
    this.#o.meter?.sent(frame.length);
    if (!this.#o.transport.write(frame)) this.#blocked = true;
  }

  #checkDeadline(): void {
    if (this.#ended || this.inFlight === 0) return;
    const waited = this.#now() - this.#progressAt;
    if (waited >= this.#deadlineMs) {
      // Dead: reset it, so that nothing of it lingers (stale records retransmitted to the server later) and
      // its local port is free for the next dial at once.
      this.#o.transport.abort?.();
      this.#finish({
        type: 'REPLY_TIMEOUT',
        reason: `no reply for ${waited} ms with ${this.inFlight} message(s) in flight (deadline ${this.#deadlineMs} ms, ${this.#deadlineSource})`,
      });
    }
  }

  #onFrame(chunk: Buffer): void {
    if (this.#ended) return;
    const messages = this.#decoder.push(chunk);
    const { queue, window, meter } = this.#o;
    meter?.received(chunk.length);
    let replied = false;
    for (const m of messages) {
      if (this.#ended) return;
      meter?.reply(typeName(m.type));
      if (m.type === MessageType.ENDING) {
        this.#finish({ type: 'REMOTE_ENDING' });
        return;
      }
      const head = this.#inflight[this.#inflightHead];
      if (!head) {
        this.#finish({
          type: 'PROTOCOL_ERROR',
          reason: `unsolicited ${typeName(m.type)} reply with sequence ${m.sequence}`,
        });
        return;
      }
      if (m.sequence !== head.seq) {
        // The server dropped a reply it could not write (auditd does, when its socket is full).
        window.sequenceGap(this.#now());
        this.#finish({
          type: 'PROTOCOL_ERROR',
          reason: `reply sequence ${m.sequence} does not match the oldest request ${head.seq}`,
        });
        return;
      }
      this.#inflightHead++;
      replied = true;
      if (head.id === VOID) continue; // sent again after a refusal; its reply no longer counts
      const text = m.payload.toString('latin1');
      if (head.id === HELLO) {
        // The hello's reply: our collector names its capabilities, auditd answers an empty ACK.
        this.#awaitingHello = false;
        this.#rid = m.type === MessageType.ACK && parseCapabilities(text).includes('rid');
        head.id = HEARTBEAT;
      }
      if (m.type === MessageType.DISKFULL || m.type === MessageType.DISKERROR) {
        this.#refused(head);
        const detail = text ? `: ${text}` : '';
        this.#send?.(
          m.type === MessageType.DISKFULL
            ? { type: 'DISK_FULL', reason: `server replied DISKFULL${detail}` }
            : { type: 'DISK_ERROR', reason: `server replied DISKERROR${detail}` },
        );
        if (this.#ended) return;
        continue;
      }
      // Accepted: ACK, DISKLOW (written, but the server is low on space), and, as upstream, any other reply
      // (an unknown FATAL or WARN reply runs the generic action; the record is done).
      this.#establish();
      if (head.id !== HEARTBEAT) {
        this.#records--;
        this.#bytes -= head.bytes;
        queue.ack(head.id);
        const now = this.#now();
        meter?.acked(now - head.sentAt);
        if (window.acked(now, now - head.sentAt)) this.#send?.({ type: 'ACCEPTING' });
        if (this.#ended) return;
      }
      if (m.type === MessageType.ACK) continue;
      if (m.type === MessageType.DISKLOW) this.#o.onReply?.('disk-low', text);
      else if (m.type & TypeMask.FATAL) this.#o.onReply?.('generic-error', `${typeName(m.type)} ${text}`);
      else if (m.type & TypeMask.WARN) this.#o.onReply?.('generic-warning', `${typeName(m.type)} ${text}`);
    }
    if (replied) this.#progressAt = this.#now();
    if (this.#decoder.error) {
      this.#finish({
        type: 'PROTOCOL_ERROR',
        reason: `bad reply from the server: ${this.#decoder.error.message}`,
      });
      return;
    }
    this.#compact();
    if (this.#records <= window.refillAt) this.#fill();
  }

  /**
   * The server refused a record (DISKFULL, DISKERROR): it and every record still in flight are sent again, in
   * order, once it accepts; their replies no longer count. Nothing more goes out until a probe.
   */
  #refused(head: InFlight): void {
    this.#establish();
    for (let i = this.#inflightHead; i < this.#inflight.length; i++) {
      const f = this.#inflight[i]!;
      if (f.id > HEARTBEAT) f.id = VOID;
    }
    if (head.id > HEARTBEAT) head.id = VOID;
    this.#records = 0;
    this.#bytes = 0;
    // The window closes first: rewinding announces the records as readable again (synchronously, to #pump),
    // and an open window would send them all at once instead of the probe alone.
    this.#o.window.refuse();
    this.#o.queue.rewind();
  }

  #compact(): void {
    if (this.#inflightHead > 1024 && this.#inflightHead * 2 > this.#inflight.length) {
      this.#inflight.splice(0, this.#inflightHead);
      this.#inflightHead = 0;
    }
  }

  #checkDrained(): void {
    if (this.#draining && !this.#ended && this.inFlight === 0 && this.#o.queue.depth === 0) {
      this.#finish({ type: 'DRAINED' });
    }
  }
}
