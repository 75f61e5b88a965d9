/**
 * Migration from audisp-remote: imports the records left in its forward-mode queue file (`queue_file`,
 * default /var/spool/audit/remote.log) into auditrelay's queue, in the order audisp-remote would have sent
 * them, so that switching programs loses nothing that was waiting for the server.
 *
 * File format (reference §6.5, audisp/plugins/remote/queue.c; all integers big-endian):
 *   header, 32 bytes: magic (14) "\0audisp-remote" | version (u8) = 0 | reserved (u8) = 0 |
 *                     num_entries (u32) | entry_size (u32) = 12288 | queue_head (u32) | queue_length (u32)
 *   slot i (0-based) at byte (i + 1) × entry_size: the record line (with its '\n') followed by a NUL;
 *   the file is (num_entries + 1) × entry_size bytes.
 * The queued records are slots queue_head, queue_head + 1, … (modulo num_entries), queue_length of them.
 * Slots outside that range hold stale records (already sent) and are never imported.
 *
 * Rules:
 * - everything is read and checked before the first record is appended: a bad file imports nothing;
 * - the file is opened without following a link and without blocking, and read only when it is a regular file
 *   (a FIFO or a device in its place is an error, never a hang);
 * - wrong magic, an unknown version, a header that contradicts itself (head ≥ num_entries, length >
 *   num_entries, num_entries = 0, entry_size < 32 or > 1 MiB) or a file shorter than the header says (truncated)
 *   are errors (`ImportQueueError`, with `reason`); every count and length of the header is checked against the
 *   file's size before anything is allocated from it;
 * - a queued slot without a NUL terminator is skipped and reported with its slot number (as audisp-remote
 *   4.x does; 3.0.9 fails with EBADMSG on it); an empty/blank slot is skipped and reported;
 * - records go through the same framing as the agent's input (RecordSplitter: a missing '\n' is added, a
 *   record longer than `maxRecord` is split), EOE records are kept (audisp-remote never queues them);
 * - the queue refusing a record (full) stops the import with an error that says how many records were
 *   imported; `skip` resumes after them;
 * - the file is not modified (remove or move it yourself once the import succeeded), and a file that a
 *   process still has open (audisp-remote running) is refused: found through /proc/<pid>/fd.
 *
 * audisp-remote removes a record from its file only once the server acknowledged it, so the head record
 * may have reached the server already (sent, not yet acknowledged): it is imported again (at-least-once,
 * as after any reconnect).
 */
import { closeSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { FileSafetyError, QueueError } from '../errors.js';
import { errnoOf, openRegularForRead } from '../fs/safe-files.js';
import { RecordSplitter } from '../input/record-splitter.js';
import { MAX_SERVER_PAYLOAD } from '../protocol/constants.js';
import type { RecordQueue } from '../queue/types.js';
import { readExact } from '../util/read-exact.js';

export const UPSTREAM_QUEUE_MAGIC = Buffer.from('\0audisp-remote', 'latin1');
export const UPSTREAM_QUEUE_VERSION = 0;
export const UPSTREAM_ENTRY_SIZE = 12288;
export const UPSTREAM_HEADER_SIZE = 32;
/** Largest entry_size accepted (audisp-remote's is 12288; a record is at most 8970 bytes). */
export const MAX_ENTRY_SIZE = 1024 * 1024;
/** audisp-remote's default queue_file. */
export const UPSTREAM_QUEUE_FILE = '/var/spool/audit/remote.log';

export interface UpstreamQueueHeader {
  version: number;
  reserved: number;
  numEntries: number;
  entrySize: number;
  queueHead: number;
  queueLength: number;
}

export type ImportFailure =
  | 'missing'
  | 'io'
  | 'unsafe'
  | 'bad-magic'
  | 'bad-version'
  | 'bad-header'
  | 'truncated'
  | 'in-use'
  | 'queue-full';

export class ImportQueueError extends QueueError {
  readonly reason: ImportFailure;
  /** Records appended before the failure (queue-full only). */
  readonly imported: number;
  constructor(reason: ImportFailure, message: string, options?: { cause?: unknown; imported?: number }) {
    super(message, options);
    this.reason = reason;
    this.imported = options?.imported ?? 0;
  }
}

export type ImportFindingKind =
  | 'unterminated-slot'
  | 'blank-slot'
  | 'split-record'
  | 'entry-size'
  | 'file-size';

export interface ImportFinding {
  kind: ImportFindingKind;
  /** Slot number in the file (0-based, as in queue.c), for slot findings. */
  slot?: number;
  /** Position in the queue (0 = the head, the oldest record). */
  position?: number;
  message: string;
}

export interface ImportResult {
  /** Records appended to the queue. */
  imported: number;
  /** Queued slots that were not imported (unterminated, blank). */
  skipped: number;
  /** Records skipped on purpose with the `skip` option. */
  skippedByOption: number;
  /** Records found in the file (after splitting over-long ones), whether imported or not (dry run, skip). */
  records: number;
  findings: ImportFinding[];
  header: UpstreamQueueHeader;
}

export interface ImportLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface ImportOptions {
  /** Largest record (with its '\n'); longer ones are split as by the agent's input. Default 8954. */
  maxRecord?: number;
  /** Leave out the first `skip` records (after a partial import). Default 0. */
  skip?: number;
  /** Check and count only; append nothing. Default false. */
  dryRun?: boolean;
  /** Refuse a file that a running process has open (audisp-remote). Default true. */
  checkInUse?: boolean;
}

export function parseUpstreamHeader(buf: Buffer): UpstreamQueueHeader {
  return {
    version: buf.readUInt8(14),
    reserved: buf.readUInt8(15),
    numEntries: buf.readUInt32BE(16),
    entrySize: buf.readUInt32BE(20),
    queueHead: buf.readUInt32BE(24),
    queueLength: buf.readUInt32BE(28),
  };
}

/** Pids (other than ours) whose open descriptors include `file`; unreadable processes are ignored. */
export function processesWithFileOpen(file: string): number[] {
  let target: string;
  try {
    target = realpathSync(file);
  } catch {
    return [];
  }
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const p of entries) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) === target) {
          pids.push(Number(p));
          break;
        }
      } catch {
        // closed meanwhile
      }
    }
  }
  return pids;
}

/**
 * The queued slots that lie (even partly) beyond the end of a file of `size` bytes: how many, and the first ten
 * in queue order. Computed from the ranges the queue covers, never by listing up to 2^32 slots.
 */
export function missingSlots(h: UpstreamQueueHeader, size: number): { count: number; first: number[] } {
  // Slot s is complete when (s + 2) × entry_size ≤ size.
  const present = Math.max(0, Math.floor(size / h.entrySize) - 1);
  const end = h.queueHead + h.queueLength;
  const ranges: [number, number][] =
    end <= h.numEntries
      ? [[h.queueHead, end]]
      : [
          [h.queueHead, h.numEntries],
          [0, end - h.numEntries],
        ];
  let count = 0;
  const first: number[] = [];
  for (const [from, to] of ranges) {
    const start = Math.max(from, present);
    if (start >= to) continue;
    count += to - start;
    for (let s = start; s < to && first.length < 10; s++) first.push(s);
  }
  return { count, first };
}

function describe(buf: Buffer): string {
  return JSON.stringify(buf.toString('latin1'));
}

/**
 * Opens audisp-remote's queue file for reading; an ImportQueueError says why it cannot be (missing, not a
 * regular file, unreadable). The CLI calls checkUpstreamQueueFile first, so that a wrong path creates nothing.
 */
function openUpstreamQueueFile(file: string): { fd: number; size: number } {
  try {
    const { fd, stat } = openRegularForRead(file, 'queue file');
    return { fd, size: stat.size };
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT')
      throw new ImportQueueError(
        'missing',
        `${file} does not exist: nothing to import (audisp-remote keeps a queue file only with mode = forward)`,
        { cause: err },
      );
    if (err instanceof FileSafetyError && (err.cause === undefined || code === 'ELOOP' || code === 'ENXIO')) {
      // "queue file F is a FIFO; only a regular file is accepted" → say which file is wanted instead.
      const what = err.message.replace(/^queue file /, '').replace(/; only a regular file is accepted$/, '');
      throw new ImportQueueError(
        'unsafe',
        `${what}, not a regular file: give audisp-remote's queue file (its queue_file, e.g. /var/spool/audit/remote.log)`,
        { cause: err },
      );
    }
    throw new ImportQueueError('io', `cannot open ${file}: ${code}`, { cause: err });
  }
}

/** Throws the ImportQueueError importQueue would throw for a file it cannot open; nothing is read. */
export function checkUpstreamQueueFile(file: string): void {
  closeSync(openUpstreamQueueFile(file).fd);
}

/**
 * Reads audisp-remote's queue file `file` and appends its queued records, oldest first, to `queue`.
 * Throws ImportQueueError (see the module comment); returns what was imported and what was found.
 */
export function importQueue(
  file: string,
  queue: RecordQueue,
  log: ImportLogger,
  options: ImportOptions = {},
): ImportResult {
  const maxRecord = options.maxRecord ?? MAX_SERVER_PAYLOAD;
  const skip = options.skip ?? 0;
  if (options.checkInUse ?? true) {
    const pids = processesWithFileOpen(file);
    if (pids.length > 0) {
      throw new ImportQueueError(
        'in-use',
        `${file} is open in process ${pids.join(', ')}: stop audisp-remote (disable its plugin in /etc/audit/plugins.d/au-remote.conf and reload auditd) before importing its queue`,
      );
    }
  }
  const { fd, size } = openUpstreamQueueFile(file);
  const findings: ImportFinding[] = [];
  const records: Buffer[] = [];
  let skipped = 0;
  let header: UpstreamQueueHeader;
  try {
    const head = readExact(fd, UPSTREAM_HEADER_SIZE, 0);
    if (head.length < UPSTREAM_HEADER_SIZE) {
      throw new ImportQueueError(
        head.length < UPSTREAM_QUEUE_MAGIC.length || !head.subarray(0, 14).equals(UPSTREAM_QUEUE_MAGIC)
          ? 'bad-magic'
          : 'truncated',
        `${file} is ${size} bytes, shorter than the ${UPSTREAM_HEADER_SIZE}-byte header of an audisp-remote queue file`,
      );
    }
    if (!head.subarray(0, 14).equals(UPSTREAM_QUEUE_MAGIC)) {
      throw new ImportQueueError(
        'bad-magic',
        `${file} is not an audisp-remote queue file: it starts with ${describe(head.subarray(0, 14))}, not "\\u0000audisp-remote"`,
      );
    }
    header = parseUpstreamHeader(head);
    const h = header;
    if (h.version !== UPSTREAM_QUEUE_VERSION) {
      throw new ImportQueueError(
        'bad-version',
        `${file}: queue file format version ${h.version} is not supported (only ${UPSTREAM_QUEUE_VERSION})`,
      );
    }
    const bad: string[] = [];
    if (h.reserved !== 0) bad.push(`reserved byte is ${h.reserved}, not 0`);
    if (h.numEntries === 0) bad.push('num_entries is 0');
    if (h.entrySize < UPSTREAM_HEADER_SIZE)
      bad.push(`entry_size ${h.entrySize} is below ${UPSTREAM_HEADER_SIZE}`);
    if (h.entrySize > MAX_ENTRY_SIZE)
      bad.push(
        `entry_size ${h.entrySize} is above ${MAX_ENTRY_SIZE} (audisp-remote uses ${UPSTREAM_ENTRY_SIZE})`,
      );
    if (h.numEntries > 0 && h.queueHead >= h.numEntries)
      bad.push(`queue_head ${h.queueHead} is not below num_entries ${h.numEntries}`);
    if (h.queueLength > h.numEntries)
      bad.push(`queue_length ${h.queueLength} exceeds num_entries ${h.numEntries}`);
    if (bad.length > 0)
      throw new ImportQueueError('bad-header', `${file}: corrupt header: ${bad.join('; ')}`);
    if (h.entrySize !== UPSTREAM_ENTRY_SIZE) {
      findings.push({
        kind: 'entry-size',
        message: `entry_size is ${h.entrySize}, audisp-remote uses ${UPSTREAM_ENTRY_SIZE}; read with ${h.entrySize}`,
      });
    }
    const expected = (h.numEntries + 1) * h.entrySize;
    // Every queued slot must lie inside the file: checked from the header's numbers, before any allocation.
    const missing = missingSlots(h, size);
    if (missing.count > 0) {
      throw new ImportQueueError(
        'truncated',
        `${file} is truncated: ${size} bytes, the header says ${expected} (${h.numEntries} slots of ${h.entrySize} bytes + header); ` +
          `queued slot(s) ${missing.first.join(', ')}${missing.count > missing.first.length ? `, … (${missing.count} in all)` : ''} lie beyond the end, nothing was imported`,
      );
    }
    const slots: number[] = [];
    for (let k = 0; k < h.queueLength; k++) slots.push((h.queueHead + k) % h.numEntries);
    if (size < expected) {
      findings.push({
        kind: 'file-size',
        message: `${file} is ${size} bytes, ${expected - size} fewer than the header says; only slots that are not queued are missing`,
      });
    } else if (size > expected) {
      findings.push({
        kind: 'file-size',
        message: `${file} is ${size} bytes, ${size - expected} more than the header says; the extra bytes are ignored`,
      });
    }
    const splitter = new RecordSplitter({
      maxRecord,
      forwardEoe: true,
      onRecord: (r) => records.push(Buffer.from(r)),
    });
    for (let k = 0; k < slots.length; k++) {
      const slot = slots[k]!;
      const bytes = readExact(fd, h.entrySize, (slot + 1) * h.entrySize);
      const nul = bytes.indexOf(0);
      if (nul === -1) {
        skipped++;
        findings.push({
          kind: 'unterminated-slot',
          slot,
          position: k,
          message: `slot ${slot} (queue position ${k}) has no NUL terminator within its ${h.entrySize} bytes: skipped`,
        });
        continue;
      }
      const line = bytes.subarray(0, nul);
      if (line.toString('latin1').trim() === '') {
        skipped++;
        findings.push({
          kind: 'blank-slot',
          slot,
          position: k,
          message: `slot ${slot} (queue position ${k}) is empty: skipped`,
        });
        continue;
      }
      const before = records.length;
      splitter.push(line[line.length - 1] === 0x0a ? line : Buffer.concat([line, Buffer.from('\n')]));
      if (records.length - before > 1) {
        findings.push({
          kind: 'split-record',
          slot,
          position: k,
          message: `slot ${slot} holds a ${line.length}-byte record, longer than ${maxRecord - 1} bytes: imported as ${records.length - before} records`,
        });
      }
    }
    splitter.end();
  } catch (err) {
    if (err instanceof ImportQueueError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new ImportQueueError('io', `cannot read ${file}: ${code ?? (err as Error).message}`, {
      cause: err,
    });
  } finally {
    closeSync(fd);
  }
  for (const f of findings) log.warn({ file, finding: f.kind, slot: f.slot }, `import: ${f.message}`);
  const toImport = records.slice(skip);
  let imported = 0;
  if (!options.dryRun) {
    for (const r of toImport) {
      if (!queue.append(r)) {
        throw new ImportQueueError(
          'queue-full',
          `the queue is full after ${imported} of ${toImport.length} record(s) from ${file}: make room (queue_max_bytes) and import again with skip = ${skip + imported}`,
          { imported },
        );
      }
      imported++;
    }
  }
  log.info(
    {
      file,
      imported,
      skipped,
      skippedByOption: Math.min(skip, records.length),
      queueLength: header.queueLength,
      dryRun: options.dryRun ?? false,
    },
    options.dryRun
      ? `import (dry run): ${toImport.length} record(s) would be imported from ${file}, ${skipped} slot(s) skipped`
      : `imported ${imported} record(s) from ${file}, ${skipped} slot(s) skipped`,
  );
  return {
    imported: options.dryRun ? 0 : imported,
    skipped,
    skippedByOption: Math.min(skip, records.length),
    records: records.length,
    findings,
    header,
  };
}
