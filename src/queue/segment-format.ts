/**
 * The durable queue's on-disk format (docs/queue.md): segment files of framed records, the ack cursor
 * file, and the scanner that verifies a segment and resynchronises after corrupt bytes.
 *
 * All integers are little-endian. A 64-bit id is stored as two u32 halves (low, high); ids above
 * 2^53 - 1 are treated as corrupt.
 *
 *   segment header (32 bytes)  magic "AUDRQSEG" | u32 version = 1 | u32 header size = 32 | u64 first id |
 *                              u32 reserved = 0 | u32 crc32 of bytes 0..27
 *   record (16 + n bytes)      u32 crc32 of bytes 4..(16 + n - 1) | u32 n | u64 id | n bytes of payload
 *   ack cursor (24 bytes)      magic "AUDRQACK" | u32 version = 1 | u64 last acknowledged id |
 *                              u32 crc32 of bytes 0..19
 */
import { crc32 } from 'node:zlib';
import { type FileOps, nodeFileOps } from '../fs/safe-files.js';

export const SEGMENT_MAGIC = Buffer.from('AUDRQSEG', 'latin1');
export const ACK_MAGIC = Buffer.from('AUDRQACK', 'latin1');
export const FORMAT_VERSION = 1;
export const SEGMENT_HEADER_SIZE = 32;
export const RECORD_HEADER_SIZE = 16;
export const ACK_FILE_SIZE = 24;
/** Largest payload the queue stores (an audit record is at most 8970 bytes); a larger length is corruption. */
export const MAX_PAYLOAD = 16 * 1024 * 1024;

const U32 = 0x1_0000_0000;
const MAX_HIGH = Math.floor(Number.MAX_SAFE_INTEGER / U32);
/** The highest record id (2^53 - 1): an id above it is corruption on disk and is never given out. */
export const MAX_ID = Number.MAX_SAFE_INTEGER;
/**
 * A segment name only raises the next id while it claims less than this (2^52: 142 years at a million records a
 * second). A stray file named near 2^53 would otherwise leave too few ids to use (records beyond 2^53 - 1 cannot
 * be stored); it is set aside like any unusable file and its name ignored.
 */
export const MAX_NAMED_ID = 2 ** 52;

export const SEGMENT_NAME_RE = /^seg-(\d{20})\.log$/;

export function segmentName(firstId: number): string {
  return `seg-${String(firstId).padStart(20, '0')}.log`;
}

export function writeId(buf: Buffer, off: number, id: number): void {
  buf.writeUInt32LE(id % U32, off);
  buf.writeUInt32LE(Math.floor(id / U32), off + 4);
}

/** The id at `off`, or -1 when it does not fit in a safe integer. */
export function readId(buf: Buffer, off: number): number {
  const high = buf.readUInt32LE(off + 4);
  if (high > MAX_HIGH) return -1;
  const id = high * U32 + buf.readUInt32LE(off);
  return id > Number.MAX_SAFE_INTEGER ? -1 : id;
}

export function encodeSegmentHeader(firstId: number): Buffer {
  const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
  SEGMENT_MAGIC.copy(h, 0);
  h.writeUInt32LE(FORMAT_VERSION, 8);
  h.writeUInt32LE(SEGMENT_HEADER_SIZE, 12);
  writeId(h, 16, firstId);
  h.writeUInt32LE(crc32(h.subarray(0, 28)), 28);
  return h;
}

/** The first id of a segment, or the reason its header is unusable. */
export function decodeSegmentHeader(h: Buffer): { firstId: number } | { reason: string } {
  if (h.length < SEGMENT_HEADER_SIZE)
    return { reason: `shorter than the ${SEGMENT_HEADER_SIZE}-byte header` };
  if (!h.subarray(0, 8).equals(SEGMENT_MAGIC)) return { reason: 'wrong magic (not a queue segment)' };
  if (h.readUInt32LE(28) !== crc32(h.subarray(0, 28))) return { reason: 'header checksum mismatch' };
  const version = h.readUInt32LE(8);
  if (version !== FORMAT_VERSION) return { reason: `unsupported format version ${version}` };
  if (h.readUInt32LE(12) !== SEGMENT_HEADER_SIZE) return { reason: 'unexpected header size' };
  const firstId = readId(h, 16);
  if (firstId < 1) return { reason: 'invalid first id' };
  return { firstId };
}

/** One framed record; the payload is `frame.subarray(RECORD_HEADER_SIZE)`. */
export function encodeRecord(id: number, payload: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(RECORD_HEADER_SIZE + payload.length);
  encodeRecordInto(frame, 0, id, payload);
  return frame;
}

/** Writes one framed record into `target` at `offset`; returns its size. */
export function encodeRecordInto(target: Buffer, offset: number, id: number, payload: Buffer): number {
  const end = offset + RECORD_HEADER_SIZE + payload.length;
  target.writeUInt32LE(payload.length, offset + 4);
  writeId(target, offset + 8, id);
  payload.copy(target, offset + RECORD_HEADER_SIZE);
  target.writeUInt32LE(crc32(target.subarray(offset + 4, end)), offset);
  return end - offset;
}

export function encodeAck(acked: number): Buffer {
  const b = Buffer.alloc(ACK_FILE_SIZE);
  ACK_MAGIC.copy(b, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  writeId(b, 12, acked);
  b.writeUInt32LE(crc32(b.subarray(0, 20)), 20);
  return b;
}

export function decodeAck(b: Buffer): { acked: number } | { reason: string } {
  if (b.length !== ACK_FILE_SIZE) return { reason: `${b.length} bytes instead of ${ACK_FILE_SIZE}` };
  if (!b.subarray(0, 8).equals(ACK_MAGIC)) return { reason: 'wrong magic' };
  if (b.readUInt32LE(20) !== crc32(b.subarray(0, 20))) return { reason: 'checksum mismatch' };
  if (b.readUInt32LE(8) !== FORMAT_VERSION) return { reason: `unsupported version ${b.readUInt32LE(8)}` };
  const acked = readId(b, 12);
  if (acked < 0) return { reason: 'invalid id' };
  return { acked };
}

/**
 * Reads a file through a cached chunk. `at(pos, len)` makes bytes [pos, pos + len) available in `buf`
 * and returns their index there, or -1 when they lie past `size`. With `retain`, every read allocates
 * a new buffer, so slices handed out stay valid; otherwise one scratch buffer is reused.
 */
export class ChunkReader {
  buf: Buffer = Buffer.alloc(0);
  #start = 0;
  #end = 0;
  readonly #fd: number;
  readonly #chunk: number;
  readonly #retain: boolean;
  readonly #ops: FileOps;
  size: number;

  constructor(fd: number, size: number, chunk: number, retain: boolean, ops: FileOps = nodeFileOps) {
    this.#fd = fd;
    this.size = size;
    this.#chunk = chunk;
    this.#retain = retain;
    this.#ops = ops;
  }

  at(pos: number, len: number): number {
    if (pos >= this.#start && pos + len <= this.#end) return pos - this.#start;
    if (pos + len > this.size) return -1;
    const want = Math.min(Math.max(len, this.#chunk), this.size - pos);
    if (this.#retain || this.buf.length < want) {
      this.buf = Buffer.allocUnsafeSlow(this.#retain ? want : Math.max(want, this.#chunk));
    }
    let got = 0;
    while (got < want) {
      const n = this.#ops.readSync(this.#fd, this.buf, got, want - got, pos + got);
      if (n === 0) {
        // The file is shorter than we were told: treat as unreadable from here.
        this.#start = this.#end = 0;
        this.size = pos + got;
        return -1;
      }
      got += n;
    }
    this.#start = pos;
    this.#end = pos + want;
    return 0;
  }

  /** Forget the cached chunk (the file changed under it). */
  invalidate(): void {
    this.#start = this.#end = 0;
  }
}

/** Result of checking one record position. */
export interface RecordView {
  id: number;
  /** Payload length. */
  length: number;
  /** Index of the frame in `reader.buf` (valid until the next `at()`). */
  index: number;
}

/**
 * Whether an intact record starts at `pos`: plausible length, id in (minExclusive, maxId], checksum.
 * Fills `out` and returns true when it does.
 */
export function checkRecord(
  r: ChunkReader,
  pos: number,
  minExclusive: number,
  maxId: number,
  out: RecordView,
): boolean {
  let i = r.at(pos, RECORD_HEADER_SIZE);
  if (i < 0) return false;
  const length = r.buf.readUInt32LE(i + 4);
  if (length > MAX_PAYLOAD || pos + RECORD_HEADER_SIZE + length > r.size) return false;
  const id = readId(r.buf, i + 8);
  if (id <= minExclusive || id > maxId) return false;
  i = r.at(pos, RECORD_HEADER_SIZE + length);
  if (i < 0) return false;
  if (crc32(r.buf.subarray(i + 4, i + RECORD_HEADER_SIZE + length)) !== r.buf.readUInt32LE(i)) return false;
  out.id = id;
  out.length = length;
  out.index = i;
  return true;
}

/** The next position ≥ `from` where an intact record starts, or -1. */
export function resync(
  r: ChunkReader,
  from: number,
  minExclusive: number,
  maxId: number,
  out: RecordView,
): number {
  for (let p = from; p + RECORD_HEADER_SIZE <= r.size; p++) {
    if (checkRecord(r, p, minExclusive, maxId, out)) return p;
  }
  return -1;
}

/** Corrupt bytes [at, to) inside a segment, followed by an intact record at `to`. */
export interface Skip {
  at: number;
  to: number;
  /** Records lost, from the gap in ids (ids are consecutive inside a segment). */
  records: number;
}

/** A segment file as the queue knows it (recovery builds them, the writer appends to the newest). */
export interface Segment {
  firstId: number;
  path: string;
  /** End of the intact records: where the next record goes (active segment) or where reading stops. */
  size: number;
  /** Id of the last intact record (firstId - 1 while there is none). */
  lastId: number;
  /** Corrupt byte ranges to step over when reading. */
  skips: Skip[];
}

export interface SegmentScan {
  /** Id of the last intact record, or `minExclusive` when there is none. */
  lastId: number;
  count: number;
  skips: Skip[];
  /** Start of bytes at the end of the file with no intact record after them (a torn tail), or null. */
  tailAt: number | null;
}

/** Highest id a segment of `size` bytes starting at `firstId` can hold. */
export function maxIdFor(firstId: number, size: number): number {
  return firstId - 1 + Math.max(0, Math.floor((size - SEGMENT_HEADER_SIZE) / RECORD_HEADER_SIZE));
}

/**
 * Walks every record of a segment from its header on, verifying each, and calls `onRecord` for the
 * intact ones. Corrupt bytes followed by an intact record become a Skip; corrupt bytes up to the end
 * of the file are the tail (the caller truncates).
 */
export function scanSegment(
  r: ChunkReader,
  firstId: number,
  minExclusive: number,
  onRecord: (id: number, pos: number, length: number) => void,
): SegmentScan {
  const maxId = maxIdFor(firstId, r.size);
  const view: RecordView = { id: 0, length: 0, index: 0 };
  const skips: Skip[] = [];
  let last = Math.max(minExclusive, firstId - 1);
  let count = 0;
  let pos = SEGMENT_HEADER_SIZE;
  let tailAt: number | null = null;
  while (pos < r.size) {
    if (checkRecord(r, pos, last, maxId, view)) {
      onRecord(view.id, pos, view.length);
      last = view.id;
      count++;
      pos += RECORD_HEADER_SIZE + view.length;
      continue;
    }
    const next = resync(r, pos + 1, last, maxId, view);
    if (next < 0) {
      tailAt = pos;
      break;
    }
    skips.push({ at: pos, to: next, records: view.id - last - 1 });
    pos = next;
  }
  return { lastId: last, count, skips, tailAt };
}
