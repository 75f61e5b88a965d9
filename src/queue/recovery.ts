/**
 * The durable queue's start-up: reads the ack cursor, verifies every segment record by record, repairs what it
 * can (truncates a torn tail, steps over corrupt bytes, rewrites an unusable header in front of intact records)
 * and sets aside what it cannot (`*.corrupt`), reporting each case as a finding. docs/queue.md, "Start-up".
 *
 * Files are opened without following links and only when they are regular files (a FIFO planted as a segment
 * or as the cursor cannot hang the start). An I/O error (EIO, EACCES, …) fails the open and changes nothing,
 * so a passing fault never costs a record; a file that is unfit (not a queue file, damaged beyond its records)
 * is set aside.
 */
import { join } from 'node:path';
import { QueueError } from '../errors.js';
import {
  describeFileKind,
  errnoOf,
  type FileOps,
  openRegularForUpdate,
  writeFully,
} from '../fs/safe-files.js';
import { ACK_TMP, asideNote, isUnusableFile, loadAckCursor, moveAside } from './ack-cursor.js';
import {
  ChunkReader,
  decodeSegmentHeader,
  encodeSegmentHeader,
  FORMAT_VERSION,
  MAX_NAMED_ID,
  SEGMENT_HEADER_SIZE,
  SEGMENT_MAGIC,
  SEGMENT_NAME_RE,
  type Segment,
  type SegmentScan,
  scanSegment,
} from './segment-format.js';

export type QueueFindingKind =
  | 'stale-lock'
  | 'corrupt-ack-cursor'
  | 'empty-segment'
  | 'bad-segment'
  | 'salvaged-segment'
  | 'torn-tail'
  | 'corrupt-record';

/** Something `open()` found and repaired or set aside; also logged (warn) by `open()`. */
export interface QueueFinding {
  kind: QueueFindingKind;
  /** The file concerned (absolute path). */
  file: string;
  /** Byte offset in the file where the bad bytes start. */
  offset?: number;
  /** Byte offset where intact data resumes (corrupt-record) or where the file ended (torn-tail). */
  end?: number;
  /** Bytes skipped or truncated. */
  bytes?: number;
  /** Records lost, when the gap in ids tells (corrupt-record); records kept (salvaged-segment). */
  records?: number;
  /** Where a file unfit for use was moved (`*.corrupt`). */
  movedTo?: string;
  /** One line for the log. */
  message: string;
}

export interface RecoveredState {
  segs: Segment[];
  acked: number;
  nextId: number;
  unacked: number;
  unackedBytes: number;
  readStart: { seg: Segment; pos: number } | null;
}

const SCAN_CHUNK = 1024 * 1024;

function ioError(what: string, path: string, err: unknown): QueueError {
  return new QueueError(
    `cannot read ${what} ${path}: ${errnoOf(err)}; nothing was changed, the queue is not opened (retry, or move the file away if the disk is failing)`,
    { cause: err },
  );
}

/** Reads the cursor and verifies every segment; repairs torn tails; sets aside unusable files. */
export function recover(dir: string, fs: FileOps, findings: QueueFinding[]): RecoveredState {
  const acked = loadAckCursor(dir, fs, findings);
  try {
    fs.unlinkSync(join(dir, ACK_TMP));
  } catch {
    // none left over
  }
  const state: RecoveredState = { segs: [], acked, nextId: 0, unacked: 0, unackedBytes: 0, readStart: null };
  let lastId = 0;
  let highestNamed = 0;
  const names = fs
    .readdirSync(dir)
    .filter((n) => SEGMENT_NAME_RE.test(n))
    .sort();
  for (const [i, name] of names.entries()) {
    const namedId = Number(SEGMENT_NAME_RE.exec(name)![1]);
    if (Number.isSafeInteger(namedId) && namedId < MAX_NAMED_ID)
      highestNamed = Math.max(highestNamed, namedId);
    const seg = verifySegment(join(dir, name), namedId, i === names.length - 1, lastId, state, fs, findings);
    if (seg) {
      lastId = seg.lastId;
      state.segs.push(seg);
    }
  }
  // Segments every record of which was acknowledged before the restart go now.
  while (state.segs[0] && state.segs[0].lastId <= acked) {
    try {
      fs.unlinkSync(state.segs.shift()!.path);
    } catch {
      // its records are all acknowledged: it is ignored, and deleted by a later open()
    }
  }
  // Above every id a (plausible) segment name claims, so a new segment never collides with a file left behind.
  state.nextId = Math.max(acked, lastId, highestNamed) + 1;
  return state;
}

/** Verifies one segment file; returns it when it holds intact records, else deletes or sets it aside. */
function verifySegment(
  path: string,
  namedId: number,
  isLast: boolean,
  lastId: number,
  state: RecoveredState,
  fs: FileOps,
  findings: QueueFinding[],
): Segment | null {
  const setAside = (kind: 'bad-segment' | 'empty-segment', reason: string): null => {
    const movedTo = moveAside(path, fs);
    findings.push({
      kind,
      file: path,
      movedTo,
      message:
        kind === 'empty-segment'
          ? `segment ${path} is empty, ${asideNote(movedTo)}`
          : `segment ${path} is unusable (${reason}), ${asideNote(movedTo)}`,
    });
    return null;
  };
  let fd: number;
  let size: number;
  try {
    const st = fs.lstatSync(path);
    if (!st.isFile()) return setAside('bad-segment', `${describeFileKind(st)}, not a regular file`);
    ({
      fd,
      stat: { size },
    } = openRegularForUpdate(path, 'segment', fs));
  } catch (err) {
    if (isUnusableFile(err)) return setAside('bad-segment', (err as Error).message);
    throw ioError('segment', path, err);
  }
  let result: Segment | null = null;
  let drop: 'delete' | 'aside' | null = null;
  let reason = '';
  try {
    if (size === 0) {
      drop = 'aside';
      reason = 'empty';
    } else {
      const head = readHead(fd, size, fs, path);
      const h = decodeSegmentHeader(head);
      let salvaged = false;
      let firstId: number;
      if (!('reason' in h) && h.firstId === namedId) {
        firstId = h.firstId;
      } else if (
        'reason' in h &&
        damagedHeader(head) &&
        Number.isSafeInteger(namedId) &&
        namedId > lastId &&
        namedId < MAX_NAMED_ID
      ) {
        // The header is damaged but the name still says where the ids start: keep the intact records behind it.
        firstId = namedId;
        salvaged = true;
        reason = h.reason;
      } else {
        firstId = 0;
        reason = 'reason' in h ? h.reason : `its header says first id ${h.firstId}`;
      }
      if (firstId === 0) {
        drop = 'aside';
      } else {
        const seg: Segment = { firstId, path, size, lastId: 0, skips: [] };
        let scan: SegmentScan;
        try {
          scan = scanSegment(
            new ChunkReader(fd, size, SCAN_CHUNK, false, fs),
            firstId,
            lastId,
            (id, pos, length) => {
              if (id <= state.acked) return;
              state.unacked++;
              state.unackedBytes += length;
              if (!state.readStart) state.readStart = { seg, pos };
            },
          );
        } catch (err) {
          throw ioError('segment', path, err);
        }
        if (salvaged && scan.count === 0) {
          drop = 'aside';
        } else {
          if (salvaged) salvageHeader(fd, firstId, path, scan.count, fs, findings, reason);
          reportScan(seg, scan, isLast, fd, fs, findings);
          seg.lastId = scan.lastId;
          seg.skips = scan.skips;
          if (scan.count === 0)
            drop = 'delete'; // header only: nothing in it
          else result = seg;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  if (drop === 'delete') {
    try {
      fs.unlinkSync(path);
    } catch {
      // holds no record: ignored, and removed by a later open()
    }
  } else if (drop === 'aside') {
    setAside(reason === 'empty' ? 'empty-segment' : 'bad-segment', reason);
  }
  return result;
}

/**
 * A header worth salvaging behind: zeroed (a block lost by the file system after a crash), or with the right
 * magic and damage elsewhere (flipped bits). Another magic, or another format version, is another kind of file:
 * set aside, never read as records.
 */
function damagedHeader(head: Buffer): boolean {
  if (head.length < SEGMENT_HEADER_SIZE) return false;
  if (head.every((byte) => byte === 0)) return true;
  return head.subarray(0, 8).equals(SEGMENT_MAGIC) && head.readUInt32LE(8) === FORMAT_VERSION;
}

function readHead(fd: number, size: number, fs: FileOps, path: string): Buffer {
  const head = Buffer.alloc(Math.min(SEGMENT_HEADER_SIZE, size));
  try {
    let got = 0;
    while (got < head.length) {
      const n = fs.readSync(fd, head, got, head.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return head.subarray(0, got);
  } catch (err) {
    throw ioError('segment', path, err);
  }
}

/** Rewrites the header of a segment whose records were salvaged; reported whether the rewrite worked or not. */
function salvageHeader(
  fd: number,
  firstId: number,
  path: string,
  records: number,
  fs: FileOps,
  findings: QueueFinding[],
  reason: string,
): void {
  let note = 'header rewritten';
  try {
    writeFully(fd, encodeSegmentHeader(firstId), 0, fs);
    fs.fdatasyncSync(fd);
  } catch (err) {
    note = `the header could not be rewritten (${errnoOf(err)}): salvaged again at the next start`;
  }
  findings.push({
    kind: 'salvaged-segment',
    file: path,
    records,
    message: `segment ${path}: its header is unusable (${reason}); ${records} intact record(s) kept (ids from ${firstId}, as its name says), ${note}`,
  });
}

/** Findings for corrupt ranges and a torn tail; truncates the tail (a failure leaves it, ignored). */
function reportScan(
  seg: Segment,
  scan: SegmentScan,
  isLast: boolean,
  fd: number,
  fs: FileOps,
  findings: QueueFinding[],
): void {
  const path = seg.path;
  for (const s of scan.skips) {
    findings.push({
      kind: 'corrupt-record',
      file: path,
      offset: s.at,
      end: s.to,
      bytes: s.to - s.at,
      records: s.records,
      message:
        `corrupt bytes ${s.at}..${s.to} in ${path} skipped (${s.records} record(s) lost); ` +
        'the intact records after them are kept',
    });
  }
  if (scan.tailAt === null) return;
  const size = seg.size;
  let note = 'truncated';
  try {
    fs.ftruncateSync(fd, scan.tailAt);
  } catch (err) {
    note = `not truncated (${errnoOf(err)}): ignored, and looked at again at the next start`;
  }
  findings.push({
    kind: 'torn-tail',
    file: path,
    offset: scan.tailAt,
    end: size,
    bytes: size - scan.tailAt,
    message:
      `${isLast ? 'torn tail' : 'unreadable end'} of ${path}: bytes ${scan.tailAt}..${size} ` +
      `hold no intact record, ${note}`,
  });
  seg.size = scan.tailAt;
}
