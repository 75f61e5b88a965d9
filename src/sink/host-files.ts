/**
 * `auditrelay sink` with `sink_log_layout = per_host` (docs/scale-out.md, "One file per host"): each host's records
 * in `<sink_log_dir>/<name>.log`, exactly once across the sink's crashes, each host's records in the stream's order.
 *
 * Names. A host name comes from the stream (the subject token, src/jetstream/nats.ts) and is hostile input: it can
 * hold `/`, `..`, a leading dot, control bytes, invalid UTF-8, or be kilobytes long. `hostFileStem` maps its bytes to
 * a file name reversibly: ASCII letters, digits and `-` as they are, `.` as it is except first, every other byte
 * (and `_` itself) as `_` and two lower-case hex digits; the empty name is `_`. So a name never contains `/`, never
 * starts with `.` (no `.`, `..`, dot files: those are the sink's own, `.sink-cursor`), and two hosts never share a
 * file. A stem longer than MAX_STEM bytes is cut (at an escape's boundary) to STEM_PREFIX bytes and followed by
 * `~` and the SHA-256 of the host name in hex: `~` never occurs in an escaped name, so it cannot collide with one
 * (the full name is in each record's `node=`, and logged when the file is first opened). The whole file name stays
 * far below NAME_MAX (255) with `.log.NNN` rotation suffixes.
 *
 * Files. The directory must be private (checkPrivateDirectory: created 0750 when missing, owned by root or the
 * running user, not writable by group or others), each file is opened as the collector opens its log (O_NOFOLLOW,
 * created O_EXCL 0600, regular files only, torn tail cut) by its own LogStore with the collector's rotation keys
 * (max_log_file, num_logs, max_log_file_action, disk_full_action, disk_error_action). At most `maxOpen` files are
 * open; the least recently used is closed (synced) to open another, so 10,000 hosts need `maxOpen` descriptors and
 * memory for `maxOpen` stores. Per file: no space reservation (it needs a helper process per open file: free space
 * is checked before each write instead) and no space_left/admin_space_left actions (one file system, thousands of
 * files: each store would act on its own; a full disk still fails the write and runs disk_full_action).
 *
 * Exactly once. A batch of the stream spans hosts, so a crash can leave some host files written and others not.
 * - Every line ends with ` js_seq=<stream sequence>`; each host's file gets its records in stream order.
 * - `.sink-cursor` in the directory (replaced atomically, synced) says `done=D limit=L`: every message up to D is in
 *   its host's file (or was skipped as already there), and no file holds a sequence above L. After all writes of a
 *   batch are synced, D becomes the batch's last sequence. Before a batch writes a sequence above L, L is first
 *   raised to that sequence plus LIMIT_STEP (one more cursor write per LIMIT_STEP messages).
 * - At start the consumer begins at D + 1. A message of host H with sequence S ≤ L may already be in H's file (the
 *   batch the crash interrupted): when H's file is opened while such messages come, its tail (or, when empty, that
 *   of H's newest rotated file) gives H's last sequence, and messages at or below it are skipped. Above L, nothing
 *   can be in any file: no tail is read. So after a crash at most LIMIT_STEP + one batch of messages are checked
 *   against tails, nothing is lost (D only moves past synced writes), nothing is written twice, and each host's
 *   order holds (a host's messages are appended in stream order, a skipped one is one already there). A batch
 *   whose writing failed (a full disk, an unusable file) is given again: its files are asked the same way, since
 *   some of them were written and may have been closed since.
 * - Without a cursor (first start, or removed) D = 0 and L = the highest last sequence of the host files already
 *   there (each read once at start): the whole stream is read again and every host file's tail decides up to L
 *   (slow, still exactly once for the files that are there).
 *
 * Evidence: none for per-host files (an evidence store per file would be a worker, a key use and a segment chain
 * per host; with thousands of hosts that is thousands of workers or a store re-opened on every LRU miss). Use the
 * single layout with `evidence = yes` where the tamper-evident chain is needed (it keeps one chain per host
 * inside the one file), or both: two sinks with different `sink_consumer`s read the same stream.
 */
import { createHash } from 'node:crypto';
import { promises as fsp, readdirSync } from 'node:fs';
import path from 'node:path';
import { readOpenFileLimit } from '../collector/collector.js';
import { type LogManagementSettings, LogStore } from '../collector/log-store.js';
import { FileSafetyError, JetStreamUnavailableError } from '../errors.js';
import {
  checkPrivateDirectory,
  errnoOf,
  READ_FLAGS,
  readRegularFile,
  writeFileAtomic,
} from '../fs/safe-files.js';
import type { Logger } from '../log.js';

/** Longest stem kept whole (bytes). */
export const MAX_STEM = 180;
/** Bytes of the escaped name kept before `~<sha256>` when it is longer than MAX_STEM. */
export const STEM_PREFIX = 100;
/** The cursor's name in the directory (a dot file: no host file can have it). */
export const CURSOR_FILE = '.sink-cursor';
/** How far ahead of the written sequences the cursor's limit is set. */
export const LIMIT_STEP = 10_000;
/** How often an open host file's store checks its name and free space. */
const HOUSEKEEPING_MS = 10_000;
/** Descriptors kept for everything but the host files (NATS, the cursor, the process's own). */
const FD_RESERVE = 64;

const PLAIN = /^[A-Za-z0-9-]$/;

/** A host name (its bytes) → the stem of its file name (module comment). */
export function hostFileStem(host: Uint8Array | string): string {
  const bytes = typeof host === 'string' ? Buffer.from(host, 'utf8') : Buffer.from(host);
  if (bytes.length === 0) return '_';
  let out = '';
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    const c = String.fromCharCode(b);
    out += PLAIN.test(c) || (c === '.' && i > 0) ? c : `_${b.toString(16).padStart(2, '0')}`;
  }
  if (out.length <= MAX_STEM) return out;
  let cut = STEM_PREFIX;
  // Do not cut an escape in two (`_h` or `_`): end before it.
  const under = out.lastIndexOf('_', cut - 1);
  if (under !== -1 && under > cut - 3) cut = under;
  return `${out.slice(0, cut)}~${createHash('sha256').update(bytes).digest('hex')}`;
}

/** The file of a host: `<stem>.log`. */
export function hostFileName(host: Uint8Array | string): string {
  return `${hostFileStem(host)}.log`;
}

/** The reverse of hostFileStem: the host name's bytes, or null for a hashed (long) stem or anything else. */
export function stemHost(stem: string): Buffer | null {
  if (stem === '_') return Buffer.alloc(0);
  const bytes: number[] = [];
  for (let i = 0; i < stem.length; i++) {
    const c = stem[i]!;
    if (c === '_') {
      const hex = stem.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return null;
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else if (PLAIN.test(c) || (c === '.' && i > 0)) bytes.push(c.charCodeAt(0));
    else return null;
  }
  return Buffer.from(bytes);
}

export interface Cursor {
  /** Every message up to this sequence is in its host's file. */
  done: number;
  /** No file holds a sequence above this (Infinity: unknown). */
  limit: number;
}

/** Reads `<dir>/.sink-cursor`; null when missing. A malformed cursor is refused with what to do. */
export function readCursor(dir: string): Cursor | null {
  const file = path.join(dir, CURSOR_FILE);
  let text: string;
  try {
    text = readRegularFile(file, 'sink cursor', 4096).toString('latin1');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return null;
    throw err;
  }
  const m = /^done=([0-9]{1,16}) limit=([0-9]{1,16})\n$/.exec(text);
  if (!m || Number(m[1]) > Number(m[2])) {
    throw new JetStreamUnavailableError(
      `${file} is not a sink cursor ("done=N limit=M"): remove it and start again (the sink then reads the whole stream and every host file's last js_seq= decides what is written)`,
    );
  }
  return { done: Number(m[1]), limit: Number(m[2]) };
}

/** Replaces the cursor atomically (temporary file, fsync, rename, directory fsync). */
export function writeCursor(dir: string, c: Cursor): void {
  writeFileAtomic(path.join(dir, CURSOR_FILE), `done=${c.done} limit=${c.limit}\n`, {
    mode: 0o600,
    what: 'sink cursor',
    temp: path.join(dir, `${CURSOR_FILE}.tmp`),
  });
}

/**
 * The last ` js_seq=` in the tail of `file`, else of `file.1` when `file` is empty or missing; 0 when neither has a
 * line. Reads 64 KiB, then up to `maxBytes` when the last line is longer. Never follows a symbolic link. A file
 * whose tail has lines but no `js_seq=` is not a sink's log: refused.
 */
export async function lastSeqOf(file: string, maxBytes = 1 << 20): Promise<number> {
  for (const candidate of [file, `${file}.1`]) {
    const tail = await readTail(candidate, maxBytes);
    if (tail === null || tail.trim() === '') continue;
    const matches = [...tail.matchAll(/ js_seq=([0-9]+)\n/g)];
    const last = matches[matches.length - 1];
    if (!last) {
      throw new JetStreamUnavailableError(
        `${candidate} has lines without js_seq=: it is not a log written by the sink; move it away (or choose another directory or log_file)`,
      );
    }
    return Number(last[1]);
  }
  return 0;
}

async function readTail(file: string, maxBytes: number): Promise<string | null> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, READ_FLAGS);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') {
      throw new FileSafetyError(
        `${file} is a symbolic link; it is never followed (another user could point it at any file): remove the link`,
        { cause: err },
      );
    }
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new FileSafetyError(`${file} is not a regular file; move it away`);
    for (let want = Math.min(64 * 1024, maxBytes); ; want = Math.min(want * 4, maxBytes)) {
      const length = Math.min(st.size, want);
      const buf = Buffer.alloc(length);
      await fh.read(buf, 0, length, st.size - length);
      const text = buf.toString('latin1');
      // Enough when the window holds a whole last line, or is the whole file, or is as large as allowed.
      if (length === st.size || length === maxBytes || text.slice(0, -1).includes('\n')) return text;
    }
  } finally {
    await fh.close();
  }
}

export interface HostLogsOptions {
  dir: string;
  maxOpen: number;
  management: LogManagementSettings;
  log: Logger;
}

interface Entry {
  store: LogStore;
  /** The host's last sequence in its file (0: none, or none above the cursor's limit when opened). */
  lastSeq: number;
  stem: string;
  /** The skip after a restart was logged (once per open). */
  reported: boolean;
}

/** One line of a host, for `HostLogs.write`. */
export interface HostLine {
  host: Buffer;
  seq: number;
  text: Buffer;
}

/** The host files of a directory (module comment). */
export class HostLogs {
  readonly #o: HostLogsOptions;
  readonly #log: Logger;
  /** Open stores, least recently used first (Map order). */
  readonly #open = new Map<string, Entry>();
  /**
   * Up to which sequence a host file may already hold what it is given: the cursor's limit at start (a batch the
   * crash interrupted), raised to a batch's last sequence when writing it failed (it is given again, and a file
   * closed in between must be asked). Beyond it no tail is read.
   */
  #horizon = 0;
  /** sink_max_open_logs, lowered to what the descriptor limit leaves (start). */
  #maxOpen: number;
  #cursor: Cursor = { done: 0, limit: 0 };
  /** Files opened since start, closed to make room (counters for the progress log and tests). */
  opened = 0;
  evicted = 0;
  skipped = 0;

  constructor(o: HostLogsOptions) {
    this.#o = o;
    this.#log = o.log;
    this.#maxOpen = o.maxOpen;
  }

  get cursor(): Cursor {
    return { ...this.#cursor };
  }

  get openFiles(): number {
    return this.#open.size;
  }

  /**
   * Checks (creates) the directory and reads the cursor; returns the sequence the sink goes on after. Without a
   * cursor, the limit is the highest last sequence of the host files already there (each file's tail read once).
   */
  async start(): Promise<number> {
    const { dir } = this.#o;
    checkPrivateDirectory(dir, { what: 'sink_log_dir', create: true, mode: 0o750 });
    const limit = readOpenFileLimit();
    if (limit !== null && this.#o.maxOpen + FD_RESERVE > limit) {
      this.#maxOpen = Math.max(1, limit - FD_RESERVE);
      this.#log.warn(
        { maxOpenLogs: this.#o.maxOpen, openFileLimit: limit },
        `sink_max_open_logs = ${this.#o.maxOpen} needs more descriptors than the limit of ${limit} allows: at most ${this.#maxOpen} host files are kept open; raise LimitNOFILE (systemd) or ulimit -n`,
      );
    }
    const c = readCursor(dir);
    if (c) {
      this.#cursor = c;
      this.#horizon = c.limit;
      return c.done;
    }
    const files = new Set<string>();
    for (const n of readdirSync(dir)) {
      if (n.startsWith('.')) continue;
      if (n.endsWith('.log')) files.add(n);
      else if (n.endsWith('.log.1')) files.add(n.slice(0, -2));
    }
    let highest = 0;
    for (const n of files) highest = Math.max(highest, await lastSeqOf(path.join(dir, n)));
    this.#cursor = { done: 0, limit: highest };
    this.#horizon = highest;
    if (files.size > 0) {
      this.#log.warn(
        { dir, files: files.size, limit: highest },
        `sink: ${dir} has ${files.size} host file(s) but no ${CURSOR_FILE}: reading the whole stream again; up to stream sequence ${highest}, each host file's last js_seq= decides what is written`,
      );
    }
    return 0;
  }

  /**
   * Writes the lines of one batch (stream order; `top` is the batch's last sequence) into their hosts' files, then
   * moves the cursor to `top`. All or nothing per host file; on an error the promise rejects and the same batch can
   * be given again (lines already written are skipped).
   */
  async write(lines: HostLine[], top: number): Promise<{ written: number; skipped: number }> {
    try {
      return await this.#write(lines, top);
    } catch (err) {
      this.#horizon = Math.max(this.#horizon, top);
      throw err;
    }
  }

  async #write(lines: HostLine[], top: number): Promise<{ written: number; skipped: number }> {
    if (top > this.#cursor.limit) {
      this.#cursor = { done: this.#cursor.done, limit: top + LIMIT_STEP };
      writeCursor(this.#o.dir, this.#cursor);
    }
    const byHost = new Map<string, { host: Buffer; lines: HostLine[] }>();
    for (const l of lines) {
      const stem = hostFileStem(l.host);
      let g = byHost.get(stem);
      if (!g) {
        g = { host: l.host, lines: [] };
        byHost.set(stem, g);
      }
      g.lines.push(l);
    }
    let written = 0;
    let skipped = 0;
    const groups = [...byHost.entries()];
    // At most maxOpen hosts at a time: the stores of one chunk stay open until their writes are done.
    for (let i = 0; i < groups.length; i += this.#maxOpen) {
      const chunk = groups.slice(i, i + this.#maxOpen);
      const keep = new Set(chunk.map(([stem]) => stem));
      // Opened one at a time (each may close the least recently used), then written side by side.
      const entries: Entry[] = [];
      for (const [stem, g] of chunk) entries.push(await this.#entry(stem, g.host, g.lines[0]!.seq, keep));
      const results = await Promise.all(
        chunk.map(async ([, g], k) => {
          const e = entries[k]!;
          const todo = g.lines.filter((l) => l.seq > e.lastSeq);
          const skip = g.lines.length - todo.length;
          if (skip > 0 && !e.reported) {
            e.reported = true;
            this.#log.info(
              { file: e.store.path, lastSeq: e.lastSeq, skipped: skip },
              `sink: ${e.store.path} already has up to stream sequence ${e.lastSeq} (written before a restart): ${skip} record(s) not written again`,
            );
          }
          if (todo.length > 0) {
            await e.store.write(Buffer.concat(todo.map((l) => l.text)), []);
            e.lastSeq = todo[todo.length - 1]!.seq;
          }
          return [todo.length, skip] as const;
        }),
      );
      for (const [w, s] of results) {
        written += w;
        skipped += s;
      }
    }
    this.skipped += skipped;
    this.#cursor = { done: top, limit: this.#cursor.limit };
    writeCursor(this.#o.dir, this.#cursor);
    return { written, skipped };
  }

  /** The open store of a host (opened, and the LRU one closed, when needed). */
  async #entry(stem: string, host: Buffer, firstSeq: number, keep: Set<string>): Promise<Entry> {
    const had = this.#open.get(stem);
    if (had) {
      this.#open.delete(stem);
      this.#open.set(stem, had);
      return had;
    }
    while (this.#open.size >= this.#maxOpen) {
      const victim = [...this.#open.keys()].find((k) => !keep.has(k));
      if (victim === undefined) break;
      const v = this.#open.get(victim)!;
      this.#open.delete(victim);
      this.evicted++;
      await v.store.close();
    }
    const file = path.join(this.#o.dir, `${stem}.log`);
    const store = new LogStore({
      path: file,
      fsync: 'always',
      fsyncIntervalMs: 200,
      log: this.#log,
      maxTornTailBytes: 2 << 20,
      management: {
        ...this.#o.management,
        spaceLeft: { mib: 0 },
        adminSpaceLeft: { mib: 0 },
        // Each open store looks for a renamed file and a full disk on its own timer: with hundreds open, every
        // 10 s rather than every second.
        checkIntervalMs: HOUSEKEEPING_MS,
      },
      evidence: null,
      writerHooks: { noReserve: true },
    });
    await store.open();
    // Only a message at or below the horizon can already be in the file (module comment).
    let lastSeq = 0;
    try {
      if (firstSeq <= this.#horizon) lastSeq = await lastSeqOf(file);
    } catch (err) {
      await store.close();
      throw err;
    }
    const e: Entry = { store, lastSeq, stem, reported: false };
    this.#open.set(stem, e);
    this.opened++;
    if (store.writer.size === 0 && (stem.includes('~') || !/^[A-Za-z0-9.-]*$/.test(stem))) {
      this.#log.info(
        { file, host: JSON.stringify(host.toString('latin1')) },
        `sink: host ${JSON.stringify(host.toString('utf8').slice(0, 200))} is written to ${file}`,
      );
    }
    return e;
  }

  /** Closes every open file (synced). */
  async close(): Promise<void> {
    const entries = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(entries.map((e) => e.store.close()));
  }
}
