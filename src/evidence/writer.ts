/**
 * Keeps the evidence beside one log file (docs/evidence.md): a hash chain per host and a Merkle tree over every
 * record, in side files under `<log>.evidence/`, and a signed checkpoint every `checkpointIntervalMs`, at rotation
 * and at close. The log itself is never written or changed here.
 *
 * The log writer (collector, sink) drives it:
 *   - `EvidenceWriter.open()` at start, before the first write to the log: loads (or creates) the key, finds the
 *     newest segment, and brings it level with the log — records the log has but the chain has not (the process
 *     was killed between the two writes) are chained by re-reading the log (`R` entries), a torn last entry is cut,
 *     a log shorter than its evidence is recorded (`x`), a rotation interrupted by a crash is completed;
 *   - `append(host, bytes)` after each successful write to the log, with exactly the bytes written (whole lines), in
 *     the same order;
 *   - `rotate()` after the last write to the old log file and before the first write to the new one (whatever did
 *     the renaming: the collector itself, or logrotate);
 *   - `close()` at a clean stop, after the last write.
 * Every call is synchronous. A failed side-file write never throws into the log writer: the records are in the
 * log, so the writer falls behind (`status().lagging`) and catches up by re-reading the log later. A rotation
 * whose steps fail (the old log's last records, its checkpoint, the new segment's file: a full disk) is finished
 * later the same way, from the old log's still-open descriptor. While behind, a new attempt is made at most every
 * RETRY_MS (appends in between only note that the log is ahead), so a full disk costs neither a re-read of the log
 * per write nor a log line per write.
 */

import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  constants as fsConstants,
  fstatSync,
  fsync,
  ftruncateSync,
  lstatSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { EvidenceError } from '../errors.js';
import {
  checkPrivateDirectory,
  createExclusive,
  openAppendNoFollow,
  openRegularForRead,
  writeFileAtomic,
} from '../fs/safe-files.js';
import { DEFAULT_KEY_FILE, loadSigningKey, type SigningKey } from './keys.js';
import { firstLineDigest, hostFromLine, rotationOf, scanLines } from './log-lines.js';
import { CompactRange, HASH_BYTES, sha256 } from './merkle.js';
import { formatCheckpoint, signNote } from './note.js';
import {
  Chainer,
  checkpointLine,
  formatHeader,
  hostLine,
  lostLine,
  parseSegment,
  parseSegmentFileName,
  recordLine,
  replaySegment,
  segmentFileName,
  ZERO_HASH,
} from './segment.js';

/** Host that records are attributed to once `maxHosts` hosts are known (memory stays bounded). */
export const OTHER_HOST = '(other)';
export const LATEST_CHECKPOINT_FILE = 'checkpoint';
/** After a failed side-file write, the next attempt to catch up is made no sooner than this (ms). */
export const RETRY_MS = 1000;

export interface EvidenceLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface EvidenceWriterOptions {
  /** The log file (its current name; rotated files are `<log>.1`, `<log>.2`... as auditd names them). */
  logFile: string;
  /** Signing key; created (0400, private directory) when missing. Default /var/lib/auditrelay/evidence/signing.key. */
  keyFile?: string;
  /** Key name for a key created now. Default auditrelay-<host name>. */
  keyName?: string;
  /** Checkpoint origin line. Default `<host name>/auditrelay<absolute log path>`; kept from the segment after. */
  origin?: string;
  /** Seconds between checkpoints, in ms; 0: only at rotation and close. Default 10,000. */
  checkpointIntervalMs?: number;
  /** Host of records chained by re-reading the log. Default: the `node=` prefix, else '-'. */
  rereadHost?: (line: Buffer) => string;
  /** Distinct hosts kept; records of further hosts are chained as `(other)`. Default 1,000,000. */
  maxHosts?: number;
  log?: EvidenceLogger;
  now?: () => Date;
}

export interface EvidenceStatus {
  /** Records in the tree (all segments, lost ones included). */
  records: number;
  segmentStart: number;
  segmentFile: string;
  /** Tree size of the last checkpoint written (0 when none). */
  checkpointSize: number;
  checkpointTime: string | null;
  /**
   * A side file could not be written (records, or a rotation's steps): the records are chained from the log later
   * (tried at most every RETRY_MS).
   */
  lagging: boolean;
  /** Records chained by re-reading the log since open (crash recovery, write errors). */
  reread: number;
  lastError: string | null;
}

const fdatasyncAsync = promisify(fdatasync);
const fsyncAsync = promisify(fsync);

const silentLog: EvidenceLogger = { info() {}, warn() {}, error() {} };

export class EvidenceWriter {
  readonly logFile: string;
  readonly dir: string;
  readonly #key: SigningKey;
  readonly #log: EvidenceLogger;
  readonly #now: () => Date;
  readonly #rereadHost: (line: Buffer) => string;
  readonly #maxHosts: number;
  readonly #chainer = new Chainer();
  #origin: string;
  #tree = new CompactRange();
  /** Chain head of every known host. */
  #heads = new Map<string, Buffer>();
  /** Host → ref declared in the current segment. */
  #refs = new Map<string, number>();
  #nextRef = 1;
  #segStart = 0;
  #segFile = '';
  #segFd = -1;
  #segBytes = 0;
  /** Records of the current segment whose line is in the log (= lines of the log chained so far). */
  #chainedLines = 0;
  /** Offset in the log just after the last chained line. */
  #logOffset = 0;
  #logFd = -1;
  #lagging = false;
  /** rotate() was called and its steps are not all done yet (#finishRotation). */
  #rotating = false;
  /** Records were appended to the new log while the rotation waited: chained from it once it is done. */
  #newLogAhead = false;
  /** Date.now() before which no new attempt to catch up is made (after a failure). */
  #retryAt = 0;
  #checkpointSize = 0;
  #checkpointTime: string | null = null;
  #reread = 0;
  #lastError: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  /** Changes when the segment changes (rotate, close): a checkpoint begun before it is dropped. */
  #generation = 0;
  #checkpointing = false;
  /** Tree size of the note in LOG.evidence/checkpoint. */
  #latestSize = 0;
  #lastScan: { lines: number; end: number } = { lines: 0, end: 0 };

  private constructor(o: EvidenceWriterOptions, key: SigningKey) {
    this.logFile = path.resolve(o.logFile);
    this.dir = `${this.logFile}.evidence`;
    this.#key = key;
    this.#log = o.log ?? silentLog;
    this.#now = o.now ?? (() => new Date());
    this.#rereadHost = o.rereadHost ?? hostFromLine;
    this.#maxHosts = o.maxHosts ?? 1_000_000;
    this.#origin = o.origin ?? `${os.hostname()}/auditrelay${this.logFile}`;
  }

  /** Opens (creating on first start) the evidence of `logFile` and brings it level with the log. */
  static open(options: EvidenceWriterOptions): EvidenceWriter {
    const key = loadSigningKey({
      file: options.keyFile ?? DEFAULT_KEY_FILE,
      create: true,
      ...(options.keyName ? { name: options.keyName } : {}),
    });
    const w = new EvidenceWriter(options, key);
    if (key.created)
      w.#log.info({ keyFile: key.file, key: key.verifier.text }, 'evidence signing key created');
    checkPrivateDirectory(path.dirname(w.logFile), { what: 'log directory' });
    checkPrivateDirectory(w.dir, { what: 'evidence directory', create: true, mode: 0o700 });
    w.#resume();
    const interval = options.checkpointIntervalMs ?? 10_000;
    if (interval > 0) {
      w.#timer = setInterval(() => void w.#checkpointInBackground(), interval);
      w.#timer.unref();
    }
    return w;
  }

  get verifierKey(): string {
    return this.#key.verifier.text;
  }

  status(): EvidenceStatus {
    return {
      records: this.#tree.size,
      segmentStart: this.#segStart,
      segmentFile: this.#segFile,
      checkpointSize: this.#checkpointSize,
      checkpointTime: this.#checkpointTime,
      lagging: this.#lagging || this.#rotating,
      reread: this.#reread,
      lastError: this.#lastError,
    };
  }

  /**
   * Chains `data`, exactly the bytes just written to the log: one or more complete lines, each attributed to
   * `host` (the collector's identity of the sender; until records carry one, the record's node= or the peer).
   */
  append(host: string, data: Buffer): void {
    if (this.#closed) throw new EvidenceError('evidence writer is closed');
    if (data.length === 0) return;
    if (data[data.length - 1] !== 0x0a)
      throw new RangeError('append() takes whole lines ending with a newline');
    if (this.#lagging || this.#rotating) {
      // These records are already in the log: catching up chains them from there (now, or on a later call).
      if (this.#rotating) this.#newLogAhead = true;
      this.#recover(false);
      return;
    }
    if (!this.#ensureLogFd()) return;
    const lines: Buffer[] = [];
    let start = 0;
    for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, start)) {
      lines.push(data.subarray(start, nl));
      start = nl + 1;
    }
    this.#chain(
      lines.map((l) => [host, l]),
      false,
      data.length,
    );
  }

  /** Writes a checkpoint now when records were added since the last one. Returns whether one was written. */
  checkpoint(): boolean {
    if (this.#closed) return false;
    this.#recover(true);
    return this.#tryCheckpoint();
  }

  /**
   * The log was rotated (renamed away; the next write goes to a new file at `logFile`): checkpoints the old log
   * and starts a new segment. Call it after the last write to the old file and before the first to the new one.
   * When a step cannot be written now, the rotation is finished later (module comment).
   */
  rotate(): void {
    if (this.#closed) throw new EvidenceError('evidence writer is closed');
    this.#generation++;
    if (this.#rotating && !this.#finishRotation()) {
      // Two rotations while the side files could not be written: the log in between is reachable by name no more.
      this.#log.error(
        { log: this.logFile },
        `evidence: the log was rotated again before the previous rotation's evidence could be written (${this.#lastError}); the records of the log in between are not chained (verify reports them)`,
      );
      this.#rotating = false;
      this.#lagging = false;
      this.#newLogAhead = false;
      this.#closeFd('log');
      this.#logOffset = 0;
      this.#chainedLines = 0;
    }
    this.#rotating = true;
    this.#finishRotation();
  }

  /** Clean stop: a final checkpoint (so that a truncated tail is caught), then closes the files. */
  close(): void {
    if (this.#closed) return;
    if (this.#timer) clearInterval(this.#timer);
    this.#recover(true);
    this.#generation++;
    this.#tryCheckpoint();
    this.#closed = true;
    this.#closeFd('seg');
    this.#closeFd('log');
  }

  /**
   * Catches up with the log: finishes a pending rotation, then chains what the log has beyond the chain. Without
   * `force`, nothing is tried before #retryAt (set by each failure). Returns whether the writer is level with the log.
   */
  #recover(force: boolean): boolean {
    if (!this.#lagging && !this.#rotating) return true;
    if (!force && Date.now() < this.#retryAt) return false;
    return (!this.#rotating || this.#finishRotation()) && (!this.#lagging || this.#catchUp());
  }

  /**
   * The steps of a rotation, each done once: the old log's last records (re-read from its descriptor, which still
   * reads the renamed file), its checkpoint, the new segment. False when one could not be written (tried again).
   */
  #finishRotation(): boolean {
    if (this.#lagging && this.#logFd >= 0 && !this.#catchUp()) return false;
    this.#tryCheckpoint(); // without it, verify reports the old segment's last records as not signed
    try {
      this.#startSegment();
    } catch (err) {
      this.#fail("the new log's evidence segment not started; tried again later", err);
      return false;
    }
    // Records of the new log appended while the rotation waited are chained from it.
    this.#lagging = this.#newLogAhead;
    this.#newLogAhead = false;
    this.#rotating = false;
    this.#prune();
    return true;
  }

  #tryCheckpoint(): boolean {
    try {
      return this.#writeCheckpoint();
    } catch (err) {
      this.#fail('checkpoint not written', err);
      return false;
    }
  }

  // --- chaining ------------------------------------------------------------------------------------------------

  /** Chains records and writes their entries; on a write error nothing of it is kept and the writer lags. */
  #chain(records: [string, Buffer][], reread: boolean, logBytes: number): boolean {
    const tree = this.#tree.clone();
    const undoHeads: [string, Buffer | undefined][] = [];
    const newRefs: string[] = [];
    let text = '';
    for (const [h, line] of records) {
      let host = h;
      if (!this.#heads.has(host) && this.#heads.size >= this.#maxHosts) host = OTHER_HOST;
      let ref = this.#refs.get(host);
      const prev = this.#heads.get(host);
      if (ref === undefined) {
        ref = this.#nextRef + newRefs.length;
        newRefs.push(host);
        this.#refs.set(host, ref);
        text += hostLine(ref, prev ?? ZERO_HASH, host);
      }
      const digest = sha256(line);
      const leaf = this.#chainer.leaf(prev ?? ZERO_HASH, host, digest);
      undoHeads.push([host, prev]);
      this.#heads.set(host, leaf);
      tree.append(leaf);
      text += recordLine(ref, digest, reread);
    }
    try {
      this.#writeSegment(text);
    } catch (err) {
      for (let i = undoHeads.length - 1; i >= 0; i--) {
        const [host, prev] = undoHeads[i]!;
        if (prev === undefined) this.#heads.delete(host);
        else this.#heads.set(host, prev);
      }
      for (const host of newRefs) this.#refs.delete(host);
      this.#lagging = true;
      this.#fail(
        'evidence entries not written; the records stay in the log and are chained from it later',
        err,
      );
      return false;
    }
    this.#nextRef += newRefs.length;
    this.#tree = tree;
    this.#chainedLines += records.length;
    this.#logOffset += logBytes;
    if (reread) this.#reread += records.length;
    return true;
  }

  /** Chains the log's complete lines after the last chained one (re-read: attributed by rereadHost). */
  #catchUp(): boolean {
    if (!this.#ensureLogFd()) return false;
    let chained = 0;
    try {
      chained = this.#rereadFrom(this.#logOffset, 0);
    } catch (err) {
      this.#fail('cannot re-read the log to catch up', err);
      return false;
    }
    if (chained < 0) return false;
    if (chained > 0) {
      this.#log.warn(
        { records: chained, log: this.logFile },
        'evidence: records chained by re-reading the log',
      );
    }
    this.#lagging = false;
    return true;
  }

  /**
   * Chains, in batches, the complete lines of the log from `offset` on after skipping `skip` of them. Returns the
   * number chained, or -1 when a side-file write failed (the writer then lags). Sets #logOffset to the first of
   * them (or to the end of the last complete line when there is none).
   */
  #rereadFrom(offset: number, skip: number): number {
    let batch: [string, Buffer][] = [];
    let batchBytes = 0;
    let chained = 0;
    let failed = false;
    let positioned = false;
    const flush = () => {
      if (batch.length === 0 || failed) return;
      if (this.#chain(batch, true, batchBytes)) chained += batch.length;
      else failed = true;
      batch = [];
      batchBytes = 0;
    };
    const scan = scanLines(
      this.#logFd,
      offset,
      (line, _index, at) => {
        if (failed) return;
        if (!positioned) {
          this.#logOffset = at;
          positioned = true;
        }
        batch.push([this.#rereadHost(line), Buffer.from(line)]);
        batchBytes += line.length + 1;
        if (batch.length >= 4096 || batchBytes >= 8 * 1024 * 1024) flush();
      },
      { skip },
    );
    flush();
    if (!positioned) this.#logOffset = scan.end;
    this.#lastScan = scan;
    return failed ? -1 : chained;
  }

  #writeSegment(text: string): void {
    const buf = Buffer.from(text, 'utf8');
    let off = 0;
    try {
      while (off < buf.length) off += writeSync(this.#segFd, buf, off, buf.length - off);
    } catch (err) {
      if (off > 0) {
        try {
          ftruncateSync(this.#segFd, this.#segBytes);
        } catch {
          // the torn entry is cut at the next open
        }
      }
      throw err;
    }
    this.#segBytes += buf.length;
  }

  #writeCheckpoint(): boolean {
    const size = this.#tree.size;
    if (size === 0 || size <= this.#checkpointSize) return false;
    // The checkpoint vouches that the log holds these records: make the log and the entries durable first.
    if (this.#logFd >= 0) fdatasyncSync(this.#logFd);
    fdatasyncSync(this.#segFd);
    const note = this.#sign(size, this.#tree.root());
    this.#writeSegment(checkpointLine(note));
    fdatasyncSync(this.#segFd);
    writeFileAtomic(path.join(this.dir, LATEST_CHECKPOINT_FILE), note, {
      mode: 0o600,
      what: 'latest checkpoint',
    });
    this.#latestSize = size;
    return true;
  }

  #sign(size: number, root: Buffer): string {
    const time = this.#now().toISOString();
    const body = formatCheckpoint({ origin: this.#origin, size, root, extensions: [`time ${time}`] });
    this.#checkpointSize = size;
    this.#checkpointTime = time;
    return signNote(body, this.#key.name, this.#key.privateKey, this.#key.publicKey);
  }

  /**
   * The timer's checkpoint: the same steps, but the fsyncs run in libuv's thread pool so that the log writer's event
   * loop never waits for the disk. Records appended meanwhile stand before the entry; the note says its size.
   */
  async #checkpointInBackground(): Promise<void> {
    if (this.#closed || this.#checkpointing) return;
    if (!this.#recover(false) && this.#rotating) return;
    const size = this.#tree.size;
    if (size === 0 || size <= this.#checkpointSize) return;
    this.#checkpointing = true;
    const gen = this.#generation;
    const root = this.#tree.root();
    const current = () => gen === this.#generation && !this.#closed;
    try {
      if (this.#logFd >= 0) await fdatasyncAsync(this.#logFd);
      await fdatasyncAsync(this.#segFd);
      if (!current() || size <= this.#checkpointSize) return;
      const note = this.#sign(size, root);
      this.#writeSegment(checkpointLine(note));
      await fdatasyncAsync(this.#segFd);
      if (!current()) return;
      await this.#writeLatestInBackground(note, size, current);
    } catch (err) {
      if (current()) this.#fail('checkpoint not written', err);
    } finally {
      this.#checkpointing = false;
    }
  }

  /** LOG.evidence/checkpoint replaced atomically (exclusive temporary file, fsync, rename), off the event loop. */
  async #writeLatestInBackground(note: string, size: number, current: () => boolean): Promise<void> {
    const file = path.join(this.dir, LATEST_CHECKPOINT_FILE);
    const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    const fd = createExclusive(tmp, 0o600, 'temporary file for the latest checkpoint');
    try {
      const buf = Buffer.from(note, 'utf8');
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
      await fsyncAsync(fd);
    } finally {
      closeSync(fd);
    }
    if (!current() || size < this.#latestSize) {
      unlinkSync(tmp);
      return;
    }
    renameSync(tmp, file);
    this.#latestSize = size;
    const dirFd = openSync(this.dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
    try {
      await fsyncAsync(dirFd);
    } catch {
      // some filesystems cannot fsync a directory
    } finally {
      closeSync(dirFd);
    }
  }

  // --- files ---------------------------------------------------------------------------------------------------

  /** Opens the current log for reading (fsync before checkpoints, re-reading); false when it is not there yet. */
  #ensureLogFd(): boolean {
    if (this.#logFd >= 0) return true;
    try {
      this.#logFd = openRegularForRead(this.logFile, 'log file').fd;
      return true;
    } catch (err) {
      this.#lagging = true;
      this.#fail('cannot open the log file for reading', err);
      return false;
    }
  }

  #closeFd(which: 'seg' | 'log'): void {
    const fd = which === 'seg' ? this.#segFd : this.#logFd;
    if (fd < 0) return;
    try {
      closeSync(fd);
    } catch {
      // nothing to do
    }
    if (which === 'seg') this.#segFd = -1;
    else this.#logFd = -1;
  }

  /**
   * A new segment for the next log file, starting where the tree is, declaring every known host's head. Nothing
   * changes when its file cannot be written (the caller tries again).
   */
  #startSegment(): void {
    const start = this.#tree.size;
    if (this.#segFd < 0 || start !== this.#segStart) {
      const file = path.join(this.dir, segmentFileName(start));
      let exists = true;
      try {
        lstatSync(file);
      } catch {
        exists = false;
      }
      if (exists) throw new EvidenceError(`evidence file ${file} already exists; it is never overwritten`);
      const refs = new Map<string, number>();
      let text = formatHeader({
        origin: this.#origin,
        key: this.#key.verifier.text,
        start,
        frontier: [...this.#tree.hashes],
        created: this.#now().toISOString(),
      });
      for (const [host, head] of this.#heads) {
        refs.set(host, refs.size + 1);
        text += hostLine(refs.size, head, host);
      }
      writeFileAtomic(file, text, { mode: 0o600, what: 'evidence file' });
      const previous = this.#segFd;
      try {
        this.#openSegment(file);
      } catch (err) {
        try {
          unlinkSync(file); // not begun: the next attempt writes it again
        } catch {
          // it stays; the next attempt says it exists
        }
        throw err;
      }
      if (previous >= 0) {
        try {
          closeSync(previous);
        } catch {
          // nothing to do
        }
      }
      this.#refs = refs;
      this.#nextRef = refs.size + 1;
      this.#segStart = start;
    }
    // else: no record in the current one: it goes on
    this.#closeFd('log');
    this.#logOffset = 0;
    this.#chainedLines = 0;
  }

  #openSegment(file: string): void {
    const { fd, stat } = openAppendNoFollow(file, 0o600, 'evidence file');
    this.#segFd = fd;
    this.#segFile = file;
    this.#segBytes = stat.size;
  }

  /** Segments of this log, oldest first. */
  #segments(): { start: number; file: string }[] {
    return readdirSync(this.dir)
      .map((name) => ({ start: parseSegmentFileName(name), file: path.join(this.dir, name) }))
      .filter((s): s is { start: number; file: string } => s.start !== null)
      .sort((a, b) => a.start - b.start);
  }

  /** At start: the newest segment, level with the log (docs/evidence.md, "Crashes"). */
  #resume(): void {
    const segments = this.#segments();
    if (segments.length === 0) {
      this.#startSegment();
      this.#adoptLog();
      return;
    }
    const newest = segments[segments.length - 1]!;
    const { fd } = openRegularForRead(newest.file, 'evidence file');
    let data: Buffer;
    try {
      const size = fstatSync(fd).size;
      data = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const n = readSync(fd, data, off, size - off, off);
        if (n === 0) break;
        off += n;
      }
    } finally {
      closeSync(fd);
    }
    const seg = parseSegment(newest.file, data);
    const replay = replaySegment(seg, this.#chainer);
    if (seg.malformed.length > 0 || replay.undeclared.length > 0) {
      const [line, what] = seg.malformed[0] ?? [replay.undeclared[0]![0], 'undeclared host'];
      throw new EvidenceError(
        `evidence file ${newest.file}:${line}: ${what}; the chain cannot go on from it. Run \`auditrelay verify ${this.logFile}\`, then move ${this.dir} aside to start a new chain`,
      );
    }
    this.#origin = seg.header.origin;
    this.#tree = replay.tree;
    this.#heads = replay.heads;
    this.#refs = new Map([...replay.hosts].map(([ref, host]) => [host, ref]));
    this.#nextRef = Math.max(0, ...replay.hosts.keys()) + 1;
    this.#segStart = seg.header.start;
    const lost = seg.markers.reduce((n, m) => n + (m.kind === 'lost' ? m.count : 0), 0);
    this.#chainedLines = seg.count - lost;
    this.#checkpointSize = Math.max(0, ...replay.checkpoints.map((c) => c.size));
    this.#openSegment(newest.file);
    if (seg.tornBytes > 0) {
      // Killed while writing an entry: the entry is incomplete (unsigned); cut it, the record is re-read below.
      ftruncateSync(this.#segFd, seg.completeBytes);
      this.#segBytes = seg.completeBytes;
      this.#log.warn(
        { file: newest.file, bytes: seg.tornBytes },
        'evidence: incomplete last entry cut (crash)',
      );
    }
    if (seg.count === 0) {
      this.#adoptLog();
      return;
    }
    const first = seg.digests.subarray(0, HASH_BYTES);
    if (this.#logStartsWith(this.logFile, first)) {
      this.#adoptLog();
      return;
    }
    const rotated = `${this.logFile}.1`;
    if (this.#logStartsWith(rotated, first)) {
      // Rotated (renamed to .1) but the process died before rotate(): finish the old segment from that file.
      this.#log.warn({ log: rotated }, 'evidence: finishing a rotation interrupted by a crash');
      this.#logFd = openRegularForRead(rotated, 'rotated log file').fd;
      this.#levelWithLog();
      this.#writeCheckpoint();
    } else {
      this.#writeCheckpoint(); // signs the entries as they are; the log is not vouched for
      this.#log.error(
        { log: this.logFile, evidence: newest.file },
        `evidence: the log does not begin with the records of its evidence (replaced or edited?); a new segment starts: run \`auditrelay verify ${this.logFile}\``,
      );
    }
    this.#startSegment();
    this.#adoptLog();
  }

  /** True when `file` exists and its first line has this digest. */
  #logStartsWith(file: string, digest: Buffer): boolean {
    let fd: number;
    try {
      fd = openRegularForRead(file, 'log file').fd;
    } catch {
      return false;
    }
    try {
      return firstLineDigest(fd)?.equals(digest) ?? false;
    } finally {
      closeSync(fd);
    }
  }

  /** Opens the current log (if it exists) and chains what it has beyond the segment's records. */
  #adoptLog(): void {
    this.#closeFd('log');
    try {
      this.#logFd = openRegularForRead(this.logFile, 'log file').fd;
    } catch (err) {
      if ((err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT') return; // created by the first write
      throw err;
    }
    this.#levelWithLog();
  }

  /** The log behind #logFd against the segment: chain lines it has beyond, or record those it lost. */
  #levelWithLog(): void {
    const expected = this.#chainedLines;
    const chained = this.#rereadFrom(0, expected);
    if (chained < 0)
      throw new EvidenceError(`cannot write evidence file ${this.#segFile}: ${this.#lastError}`);
    const lines = this.#lastScan.lines;
    if (lines < expected) {
      // The log is shorter than its evidence: only possible after a power loss with a lazy fsync (or tampering:
      // verify tells them apart by the checkpoints). Recorded, so that the next records line up.
      const lostCount = expected - lines;
      this.#writeSegment(lostLine(lostCount));
      this.#chainedLines = lines;
      this.#logOffset = this.#lastScan.end;
      this.#log.error(
        { log: this.logFile, lost: lostCount },
        'evidence: the log has fewer records than its evidence (lost in a crash, or removed); recorded for verify',
      );
      return;
    }
    if (chained > 0) {
      this.#log.warn(
        { records: chained, log: this.logFile },
        'evidence: records the chain did not have (written before a crash or before evidence was on) chained by re-reading the log',
      );
    }
  }

  /** Removes segments older than the oldest one whose log file is still there. */
  #prune(): void {
    try {
      const base = path.basename(this.logFile);
      const logDir = path.dirname(this.logFile);
      const logs = readdirSync(logDir).filter((n) => rotationOf(base, n) !== null);
      const firsts: Buffer[] = [];
      for (const name of logs) {
        let fd: number;
        try {
          fd = openRegularForRead(path.join(logDir, name), 'log file').fd;
        } catch {
          continue;
        }
        try {
          const d = firstLineDigest(fd);
          if (d) firsts.push(d);
        } finally {
          closeSync(fd);
        }
      }
      const segments = this.#segments().filter((s) => s.start < this.#segStart);
      let oldestBound = -1;
      for (let i = 0; i < segments.length && oldestBound < 0; i++) {
        const d = readFirstDigest(segments[i]!.file);
        if (d && firsts.some((f) => f.equals(d))) oldestBound = i;
      }
      if (oldestBound <= 0) return;
      for (const s of segments.slice(0, oldestBound)) {
        unlinkSync(s.file);
        this.#log.info({ file: s.file }, 'evidence: segment of a log no longer present removed');
      }
    } catch (err) {
      this.#fail('old evidence segments not pruned', err);
    }
  }

  #fail(what: string, err: unknown): void {
    // An errno code says it all; our own errors (AR_… codes) say what and where in their message.
    const e = err as NodeJS.ErrnoException | undefined;
    const message = `${what}: ${e?.code && !e.code.startsWith('AR_') ? e.code : (e?.message ?? String(err))}`;
    this.#lastError = message;
    this.#retryAt = Date.now() + RETRY_MS;
    this.#log.error({ log: this.logFile }, `evidence: ${message}`);
  }
}

/** Digest of a segment's first record entry, without reading the whole file. */
function readFirstDigest(file: string): Buffer | null {
  let fd: number;
  try {
    fd = openRegularForRead(file, 'evidence file').fd;
  } catch {
    return null;
  }
  try {
    const buf = Buffer.alloc(Math.min(fstatSync(fd).size, 4 * 1024 * 1024));
    const n = readSync(fd, buf, 0, buf.length, 0);
    const m = /\n[rR] \d+ ([A-Za-z0-9+/]{43}=)\n/.exec(buf.subarray(0, n).toString('utf8'));
    return m ? Buffer.from(m[1]!, 'base64') : null;
  } finally {
    closeSync(fd);
  }
}
