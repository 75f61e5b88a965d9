/**
 * Encoder and streaming decoder for the managed format, and the ascii format.
 * The decoder accepts any fragmentation and any number of messages per chunk.
 */
import { ProtocolError } from '../errors.js';
import { HEADER_SIZE, MAGIC, MAX_WIRE_PAYLOAD, MessageType } from './constants.js';

export interface WireMessage {
  type: number;
  sequence: number;
  payload: Buffer;
  headerVersion: number;
  messageVersion: number;
}

/** Writes a 16-byte header into `target` at `offset`. */
export function writeHeader(
  target: Buffer,
  offset: number,
  type: number,
  sequence: number,
  length: number,
): void {
  if (length > MAX_WIRE_PAYLOAD) {
    throw new ProtocolError(`payload of ${length} bytes does not fit the 16-bit length field`);
  }
  target.writeUInt32LE(MAGIC, offset);
  target[offset + 4] = 0;
  target[offset + 5] = 0;
  target.writeUInt32LE(type >>> 0, offset + 6);
  target.writeUInt16LE(length, offset + 10);
  target.writeUInt32LE(sequence >>> 0, offset + 12);
}

/** One complete frame (header + payload) in a fresh buffer. */
export function encodeMessage(type: number, sequence: number, payload: Buffer = EMPTY): Buffer {
  const frame = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  writeHeader(frame, 0, type, sequence, payload.length);
  payload.copy(frame, HEADER_SIZE);
  return frame;
}

export function encodeEvent(sequence: number, payload: Buffer): Buffer {
  return encodeMessage(MessageType.MESSAGE, sequence, payload);
}

export function encodeHeartbeat(sequence: number): Buffer {
  return encodeMessage(MessageType.HEARTBEAT, sequence);
}

export function encodeReply(type: number, sequence: number, text?: string): Buffer {
  return encodeMessage(type, sequence, text ? Buffer.from(text, 'latin1') : EMPTY);
}

const EMPTY = Buffer.alloc(0);

export interface DecoderOptions {
  /** Largest payload accepted; a larger length field is a protocol error. */
  maxPayload: number;
}

/**
 * Streaming decoder. `push(chunk)` returns every message completed by the chunk. On a protocol
 * violation it returns the messages before the bad bytes and sets `error`; the stream has then lost
 * sync and the decoder returns nothing more.
 */
export class FrameDecoder {
  #buf: Buffer = EMPTY;
  /** Bytes consumed so far, for error offsets. */
  #consumed = 0;
  error: ProtocolError | null = null;
  readonly #maxPayload: number;

  constructor(options: DecoderOptions) {
    this.#maxPayload = options.maxPayload;
  }

  /** Bytes received but not yet part of a complete message. */
  get pendingBytes(): number {
    return this.#buf.length;
  }

  push(chunk: Buffer): WireMessage[] {
    if (this.error) return [];
    const buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const out: WireMessage[] = [];
    let off = 0;
    while (buf.length - off >= 4) {
      const magic = buf.readUInt32LE(off);
      if (magic !== MAGIC) {
        this.#fail(
          `bad magic 0x${magic.toString(16).padStart(8, '0')} at stream offset ${this.#consumed + off} (expected 0xff0000fe)${tlsHint(buf, off, this.#consumed + off)}`,
        );
        return out;
      }
      if (buf.length - off < HEADER_SIZE) break;
      const length = buf.readUInt16LE(off + 10);
      if (length > this.#maxPayload) {
        this.#fail(
          `message length ${length} at stream offset ${this.#consumed + off} exceeds the limit of ${this.#maxPayload} bytes`,
        );
        return out;
      }
      if (buf.length - off < HEADER_SIZE + length) break;
      out.push({
        headerVersion: buf[off + 4]!,
        messageVersion: buf[off + 5]!,
        type: buf.readUInt32LE(off + 6),
        sequence: buf.readUInt32LE(off + 12),
        // Copy: the caller may keep the payload after the chunk's memory is reused.
        payload:
          length === 0 ? EMPTY : Buffer.from(buf.subarray(off + HEADER_SIZE, off + HEADER_SIZE + length)),
      });
      off += HEADER_SIZE + length;
    }
    this.#consumed += off;
    this.#buf = off === buf.length ? EMPTY : Buffer.from(buf.subarray(off));
    return out;
  }

  #fail(message: string): void {
    this.error = new ProtocolError(message);
    this.#buf = EMPTY;
  }
}

/** The ascii format: the record line with its newline, nothing else, no replies. */
export function encodeAscii(payload: Buffer): Buffer {
  if (payload.length > 0 && payload[payload.length - 1] === 0x0a) return payload;
  return Buffer.concat([payload, NEWLINE]);
}

const NEWLINE = Buffer.from('\n');

/**
 * A TLS record where a managed message was expected: a handshake record (0x16) from a client, an alert (0x15) from a
 * server, both with version 0x03 0x0X. Says which side speaks TLS, as the plain "bad magic" would not.
 */
function tlsHint(buf: Buffer, off: number, streamOffset: number): string {
  if (streamOffset !== 0 || buf.length - off < 3 || buf[off + 1] !== 0x03 || buf[off + 2]! > 0x04) return '';
  if (buf[off] === 0x16)
    return ': this is a TLS handshake; the peer uses transport = tls and this side does not';
  if (buf[off] === 0x15) return ': this is a TLS alert; the peer expects transport = tls';
  return '';
}
