/**
 * `auditrelay verify`: checks log files against the evidence kept beside them (docs/evidence.md, "Verify").
 *
 * For each log file and its segment: every line's SHA-256 against the segment's entries (an edited, deleted,
 * inserted or moved record, and a truncation, with its line number), the chain and Merkle tree recomputed from the
 * entries against every signed checkpoint (so entries changed together with the log are caught too, to within
 * two checkpoints), the continuity from one segment to the next (rotation), and the latest checkpoint kept in
 * the evidence directory (and any checkpoint the caller kept elsewhere) against the tree.
 */
import { closeSync, fstatSync, lstatSync, readdirSync, readSync, statSync } from 'node:fs';
import path from 'node:path';
import { EvidenceError } from '../errors.js';
import { openRegularForRead } from '../fs/safe-files.js';
import { rotationOf, scanLines } from './log-lines.js';
import { CompactRange, HASH_BYTES, PartialTree, rootFromInclusionPath, sha256 } from './merkle.js';
import {
  type Checkpoint,
  type Note,
  noteSignedBy,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  type VerifierKey,
} from './note.js';
import {
  Chainer,
  type ParsedSegment,
  parseSegment,
  parseSegmentFileName,
  type ReplayResult,
  replaySegment,
  ZERO_HASH,
} from './segment.js';
import { LATEST_CHECKPOINT_FILE } from './writer.js';

export interface VerifyOptions {
  /** Keys trusted to sign checkpoints. None: each segment's recorded key (with a warning). */
  keys?: VerifierKey[];
  /** Checkpoint notes kept elsewhere (a witness, a SIEM): the log must contain them. */
  trustedCheckpoints?: { name: string; text: string }[];
  /** Make an inclusion proof for this line (1-based) of the log file given as PATH. */
  prove?: number;
  /** Problems listed per log file before the rest are only counted. Default 100. */
  maxProblemsPerFile?: number;
}

export interface Problem {
  file: string;
  line?: number;
  message: string;
}

export interface InclusionProof {
  format: 'auditrelay-inclusion-proof 1';
  origin: string;
  log_file: string;
  line: number;
  index: number;
  host: string;
  record?: string;
  record_base64: string;
  prev_chain: string;
  tree_size: number;
  inclusion_path: string[];
  checkpoint: string;
}

export interface VerifyReport {
  problems: Problem[];
  warnings: string[];
  /** Log files verified, records and checkpoints checked. */
  logs: number;
  records: number;
  checkpoints: number;
  lastCheckpoint: { size: number; time: string | null } | null;
  proof?: InclusionProof;
}

export function formatProblem(p: Problem): string {
  return `${p.file}${p.line !== undefined ? `:${p.line}` : ''}: ${p.message}`;
}

interface LogFile {
  file: string;
  /** 0 for the current log, N for `<log>.N`. */
  rotation: number;
  first: Buffer | null;
}

interface Segment {
  file: string;
  seg: ParsedSegment;
  log?: LogFile;
}

export function verifyPath(target: string, options: VerifyOptions = {}): VerifyReport {
  const report: VerifyReport = {
    problems: [],
    warnings: [],
    logs: 0,
    records: 0,
    checkpoints: 0,
    lastCheckpoint: null,
  };
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(target);
  } catch (err) {
    throw new EvidenceError(`cannot verify ${target}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
      cause: err,
    });
  }
  if (st.isSymbolicLink()) {
    throw new EvidenceError(`cannot verify ${target}: it is a symbolic link; give the real path`);
  }
  if (options.prove !== undefined && !st.isFile()) {
    throw new EvidenceError('--prove needs a log file as PATH, not a directory');
  }
  if (st.isDirectory()) {
    const abs = path.resolve(target);
    if (abs.endsWith('.evidence')) {
      verifySet(abs.slice(0, -'.evidence'.length), null, options, report);
      return report;
    }
    const bases = readdirSync(abs)
      .filter((n) => n.endsWith('.evidence'))
      .filter((n) => statSync(path.join(abs, n)).isDirectory())
      .sort();
    if (bases.length === 0) {
      report.problems.push({
        file: abs,
        message: 'no evidence here (no LOG.evidence directory beside any log)',
      });
    }
    for (const b of bases) verifySet(path.join(abs, b.slice(0, -'.evidence'.length)), null, options, report);
    return report;
  }
  if (!st.isFile()) throw new EvidenceError(`cannot verify ${target}: not a regular file or a directory`);
  const abs = path.resolve(target);
  verifySet(baseOf(abs), abs, options, report);
  return report;
}

function verifySet(base: string, only: string | null, options: VerifyOptions, report: VerifyReport): void {
  const dir = `${base}.evidence`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    report.problems.push({ file: only ?? base, message: `no evidence directory ${dir}` });
    return;
  }
  const logs = findLogs(base);
  const segments: Segment[] = [];
  for (const name of names) {
    if (parseSegmentFileName(name) === null) continue;
    const file = path.join(dir, name);
    try {
      segments.push({ file, seg: parseSegment(file, readWhole(file, 'evidence file')) });
    } catch (err) {
      report.problems.push({ file, message: (err as Error).message });
    }
  }
  segments.sort((a, b) => a.seg.header.start - b.seg.header.start);
  bind(segments, logs);
  const newest = segments[segments.length - 1];
  const checkSegments = only ? segments.filter((s) => s.log?.file === only) : segments;
  if (only) {
    if (!logs.some((l) => l.file === only)) {
      report.problems.push({ file: only, message: 'not a log file of this set (expected LOG or LOG.N)' });
      return;
    }
    if (checkSegments.length === 0) {
      report.problems.push({
        file: only,
        line: 1,
        message: `no evidence matches this log (its first records are in no segment of ${dir}): replaced, or edited from its first record`,
      });
      return;
    }
  } else {
    for (const l of logs) {
      if (!segments.some((s) => s.log === l)) {
        report.problems.push({
          file: l.file,
          line: 1,
          message: `no evidence matches this log (its first records are in no segment of ${dir}): replaced, or edited from its first record`,
        });
      }
    }
  }
  const keys = options.keys ?? [];
  if (keys.length === 0) {
    report.warnings.push(
      `${dir}: signatures checked against the key recorded beside the log; pass --key (see \`auditrelay pubkey\`) to check them against a key you keep elsewhere`,
    );
  }
  // Sizes at which a root is needed: the latest checkpoint beside the log, and the caller's own checkpoints.
  const external: { name: string; note: Note; cp: Checkpoint }[] = [];
  const latest = readLatest(dir, report);
  if (latest) external.push({ name: path.join(dir, LATEST_CHECKPOINT_FILE), ...latest });
  for (const t of options.trustedCheckpoints ?? []) {
    const r = parseSignedCheckpoint(t.text);
    if (typeof r === 'string') report.problems.push({ file: t.name, message: r });
    else external.push({ name: t.name, ...r });
  }
  const rootsAt = new Set(external.map((e) => e.cp.size));
  const chainer = new Chainer();
  const bound = segments.filter((x) => x.log);
  const oldestBound = bound.length > 0 ? bound[0]!.seg.header.start : Number.POSITIVE_INFINITY;
  let prev: { s: Segment; replay: ReplayResult } | null = null;
  const roots = new Map<number, Buffer>();
  let total = 0;
  for (const s of segments) {
    const checking = checkSegments.includes(s);
    const proving = checking && options.prove !== undefined && s.log?.file === only;
    const replay = replaySegment(s.seg, chainer, proving, rootsAt);
    for (const [k, v] of replay.roots) roots.set(k, v);
    total = Math.max(total, replay.tree.size);
    if (checking) {
      const rotatedOut = !s.log && s !== newest && s.seg.header.start < oldestBound;
      checkSegment(s, replay, prev, s === newest, rotatedOut, keys, options, report, proving);
    }
    prev = { s, replay };
  }
  // Checkpoints kept outside the segments: the tree must contain them.
  for (const e of external) {
    if (!signedByAny(e.note, keys, segments)) {
      report.problems.push({
        file: e.name,
        message: 'checkpoint signature does not verify with the trusted key',
      });
      continue;
    }
    if (e.cp.size > total) {
      report.problems.push({
        file: e.name,
        message: `checkpoint covers ${e.cp.size} records but the evidence holds only ${total}: records ${total}..${e.cp.size - 1} were removed (log and evidence truncated)`,
      });
    } else {
      const root = roots.get(e.cp.size);
      if (root && !root.equals(e.cp.root)) {
        report.problems.push({
          file: e.name,
          message: `checkpoint over ${e.cp.size} records does not match the evidence: records before index ${e.cp.size} were changed`,
        });
      } else if (!root) {
        report.warnings.push(
          `${e.name}: its tree size ${e.cp.size} is in no segment kept here; not compared`,
        );
      }
    }
  }
}

/** The log set a file belongs to: the longest BASE with a BASE.evidence directory beside it that names it. */
function baseOf(file: string): string {
  const dir = path.dirname(file);
  const name = path.basename(file);
  const bases = readdirSync(dir)
    .filter((n) => n.endsWith('.evidence'))
    .map((n) => n.slice(0, -'.evidence'.length))
    .filter((b) => rotationOf(b, name) !== null)
    .sort((a, b) => b.length - a.length);
  return path.join(dir, bases[0] ?? name.replace(/\.\d+$/, ''));
}

/** `<base>`, `<base>.N` and other rotated names in base's directory, oldest first. */
function findLogs(base: string): LogFile[] {
  const dir = path.dirname(base);
  const name = path.basename(base);
  const logs: LogFile[] = [];
  for (const n of readdirSync(dir)) {
    const rotation = rotationOf(name, n);
    if (rotation === null) continue;
    const file = path.join(dir, n);
    if (!lstatSync(file).isFile()) continue;
    logs.push({ file, rotation, first: firstDigests(file, 1)[0] ?? null });
  }
  return logs.sort((a, b) => b.rotation - a.rotation || a.file.localeCompare(b.file));
}

/** Pairs segments with log files: by the first record, else by any of the first 64, else by rotation order. */
function bind(segments: Segment[], logs: LogFile[]): void {
  const used = new Set<LogFile>();
  const firstDigest = (s: Segment) => (s.seg.count > 0 ? s.seg.digests.subarray(0, HASH_BYTES) : null);
  for (const s of segments) {
    const d = firstDigest(s);
    if (!d) continue;
    const l = logs.find((x) => !used.has(x) && x.first?.equals(d));
    if (l) {
      s.log = l;
      used.add(l);
    }
  }
  const k = 64;
  for (const s of segments) {
    if (s.log || s.seg.count === 0) continue;
    const mine = new Set<string>();
    for (let i = 0; i < Math.min(k, s.seg.count); i++) {
      mine.add(s.seg.digests.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES).toString('base64'));
    }
    const l = logs.find(
      (x) => !used.has(x) && firstDigests(x.file, k).some((d) => mine.has(d.toString('base64'))),
    );
    if (l) {
      s.log = l;
      used.add(l);
    }
  }
  // An empty newest segment belongs to the current log (created at rotation, nothing written yet).
  const newest = segments[segments.length - 1];
  const current = logs.find((l) => l.rotation === 0);
  if (
    newest &&
    !newest.log &&
    current &&
    !used.has(current) &&
    (newest.seg.count === 0 || current.first === null)
  ) {
    newest.log = current;
    used.add(current);
  }
}

function firstDigests(file: string, n: number): Buffer[] {
  const out: Buffer[] = [];
  let fd: number;
  try {
    fd = openRegularForRead(file, 'log file').fd;
  } catch {
    return out;
  }
  try {
    const buf = Buffer.alloc(Math.min(fstatSync(fd).size, 2 * 1024 * 1024));
    const got = readSync(fd, buf, 0, buf.length, 0);
    let start = 0;
    const data = buf.subarray(0, got);
    for (let nl = data.indexOf(0x0a); nl >= 0 && out.length < n; nl = data.indexOf(0x0a, start)) {
      out.push(sha256(data.subarray(start, nl)));
      start = nl + 1;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function readWhole(file: string, what: string): Buffer {
  const { fd, stat } = openRegularForRead(file, what);
  try {
    const buf = Buffer.alloc(stat.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

function readLatest(dir: string, report: VerifyReport): { note: Note; cp: Checkpoint } | null {
  const file = path.join(dir, LATEST_CHECKPOINT_FILE);
  let text: string;
  try {
    text = readWhole(file, 'latest checkpoint').toString('utf8');
  } catch (err) {
    if ((err as { cause?: NodeJS.ErrnoException }).cause?.code !== 'ENOENT') {
      report.problems.push({ file, message: (err as Error).message });
    }
    return null;
  }
  const r = parseSignedCheckpoint(text);
  if (typeof r === 'string') {
    report.problems.push({ file, message: r });
    return null;
  }
  return r;
}

function parseSignedCheckpoint(text: string): { note: Note; cp: Checkpoint } | string {
  const note = parseNote(text);
  if (typeof note === 'string') return note;
  const cp = parseCheckpoint(note.body);
  if (typeof cp === 'string') return cp;
  return { note, cp };
}

function signedByAny(note: Note, keys: VerifierKey[], segments: Segment[]): boolean {
  const candidates = keys.length > 0 ? keys : recordedKeys(segments);
  return candidates.some((k) => noteSignedBy(note, k));
}

function recordedKeys(segments: Segment[]): VerifierKey[] {
  const out: VerifierKey[] = [];
  for (const s of segments) {
    const k = parseVerifierKey(s.seg.header.key);
    if (typeof k !== 'string' && !out.some((o) => o.text === k.text)) out.push(k);
  }
  return out;
}

function checkpointTime(cp: Checkpoint): string | null {
  const ext = cp.extensions.find((e) => e.startsWith('time '));
  return ext ? ext.slice(5) : null;
}

/** Checks one segment: its entries, checkpoints and continuity, then its log against it. */
function checkSegment(
  s: Segment,
  replay: ReplayResult,
  prev: { s: Segment; replay: ReplayResult } | null,
  active: boolean,
  rotatedOut: boolean,
  keys: VerifierKey[],
  options: VerifyOptions,
  report: VerifyReport,
  proving: boolean,
): void {
  const { seg } = s;
  const start = seg.header.start;
  const end = start + seg.count;
  report.records += seg.count;
  for (const [line, what] of seg.malformed) report.problems.push({ file: s.file, line, message: what });
  for (const [line, ref] of replay.undeclared) {
    report.problems.push({
      file: s.file,
      line,
      message: `entry of host #${ref}, which is not declared before it`,
    });
  }
  // Continuity with the previous segment.
  if (prev) {
    const pend = prev.s.seg.header.start + prev.s.seg.count;
    if (pend !== start) {
      report.problems.push({
        file: s.file,
        message: `starts at record index ${start} but the segment before ends at ${pend}: ${pend < start ? 'evidence for the records between is missing' : 'segments overlap'}`,
      });
    } else {
      const f = prev.replay.tree.hashes;
      if (f.length !== seg.header.frontier.length || f.some((h, i) => !h.equals(seg.header.frontier[i]!))) {
        report.problems.push({
          file: s.file,
          message: 'its tree does not continue the previous segment (frontier differs): evidence replaced',
        });
      }
      for (const m of seg.markers) {
        if (m.kind !== 'host') continue;
        const expected = prev.replay.heads.get(m.host) ?? ZERO_HASH;
        if (!expected.equals(m.prev)) {
          report.problems.push({
            file: s.file,
            line: m.line,
            message: `the chain of host ${m.host} does not continue from the previous segment`,
          });
        }
      }
    }
  }
  // Checkpoints.
  const trusted = keys.length > 0 ? keys : [];
  let headerKey: VerifierKey | null = null;
  if (trusted.length === 0) {
    const k = parseVerifierKey(seg.header.key);
    if (typeof k === 'string') report.problems.push({ file: s.file, line: 3, message: k });
    else headerKey = k;
  }
  const verifyWith = trusted.length > 0 ? trusted : headerKey ? [headerKey] : [];
  let signedUpTo = start;
  let signedTime: string | null = null;
  for (const c of replay.checkpoints) {
    report.checkpoints++;
    const parsed = parseSignedCheckpoint(c.note);
    if (typeof parsed === 'string') {
      report.problems.push({ file: s.file, line: c.line, message: `checkpoint: ${parsed}` });
      continue;
    }
    const { note, cp } = parsed;
    if (!verifyWith.some((k) => noteSignedBy(note, k))) {
      report.problems.push({
        file: s.file,
        line: c.line,
        message: `checkpoint signature does not verify with ${trusted.length > 0 ? 'the trusted key' : 'the key recorded in the segment'}`,
      });
      continue;
    }
    if (cp.origin !== seg.header.origin) {
      report.problems.push({
        file: s.file,
        line: c.line,
        message: `checkpoint of another log (origin ${cp.origin})`,
      });
      continue;
    }
    if (cp.size > c.position || cp.size < start) {
      report.problems.push({
        file: s.file,
        line: c.line,
        message: `checkpoint claims ${cp.size} records but stands after record ${c.position} of a segment starting at ${start}: moved or forged`,
      });
      continue;
    }
    if (!c.root || !cp.root.equals(c.root)) {
      const from = Math.min(signedUpTo, cp.size);
      report.problems.push({
        file: s.file,
        line: c.line,
        message: `signed checkpoint over ${cp.size} records does not match the evidence: entries between record index ${from} and ${cp.size - 1} were changed${s.log ? ` (${path.basename(s.log.file)} lines ${from - start + 1}..${cp.size - start})` : ''}`,
      });
      continue;
    }
    if (cp.size < signedUpTo) continue; // an older checkpoint written late: consistent, nothing new
    signedUpTo = cp.size;
    signedTime = checkpointTime(cp);
    if (!report.lastCheckpoint || cp.size >= report.lastCheckpoint.size) {
      report.lastCheckpoint = { size: cp.size, time: signedTime };
    }
  }
  if (seg.count > 0 && signedUpTo < end) {
    if (active) {
      report.warnings.push(
        `${s.file}: the last ${end - signedUpTo} record(s) are not covered by a checkpoint yet${signedTime ? ` (last checkpoint ${signedTime})` : ''}; one is written every interval, at rotation and at a clean stop`,
      );
    } else {
      report.problems.push({
        file: s.file,
        message: `no signed checkpoint covers record index ${signedUpTo}..${end - 1} (the evidence of a rotated log always ends with one): removed or altered`,
      });
    }
  }
  if (seg.tornBytes > 0) {
    const text = `incomplete last entry (${seg.tornBytes} bytes): the writer was killed while writing it`;
    if (active) report.warnings.push(`${s.file}: ${text}; it is cut at the next start`);
    else report.problems.push({ file: s.file, message: text });
  }
  const rereads = seg.reread.reduce((n, x) => n + x, 0);
  if (rereads > 0) {
    report.warnings.push(
      `${s.file}: ${rereads} record(s) were chained by re-reading the log (after a crash, a write error, or from before evidence was on); their host is taken from node=`,
    );
  }
  if (!s.log) {
    if (rotatedOut) {
      report.warnings.push(
        `${s.file}: records ${start}..${end - 1}: their log file is no longer here (rotated out); not checked`,
      );
    } else {
      report.problems.push({
        file: s.file,
        message: `records ${start}..${end - 1}: no log file matches this evidence: the log was deleted, renamed or replaced`,
      });
    }
    return;
  }
  report.logs++;
  compareLog(s, replay, active, options, report, proving);
}

/** Diff of the log's lines against the segment's record digests, with the lost (x) records taken out. */
function compareLog(
  s: Segment,
  replay: ReplayResult,
  active: boolean,
  options: VerifyOptions,
  report: VerifyReport,
  proving: boolean,
): void {
  const { seg } = s;
  const log = s.log!;
  const start = seg.header.start;
  const max = options.maxProblemsPerFile ?? 100;
  const problems: Problem[] = [];
  const add = (line: number | undefined, message: string) => problems.push({ file: log.file, line, message });
  // Records that have a line: all but those an `x` entry declared lost (the log was found shorter at a restart).
  const hasLine = new Uint8Array(seg.count).fill(1);
  for (const m of seg.markers) {
    if (m.kind !== 'lost') continue;
    let left = m.count;
    const unsigned: number[] = [];
    for (let i = m.at - 1; i >= 0 && left > 0; i--) {
      if (!hasLine[i]) continue;
      hasLine[i] = 0;
      left--;
      const index = start + i;
      if (replay.checkpoints.some((c) => c.line < m.line && c.size > index)) {
        add(
          undefined,
          `record index ${index} was signed in a checkpoint but is missing from the log: removed`,
        );
      } else unsigned.push(index);
    }
    if (unsigned.length > 0) {
      report.warnings.push(
        `${log.file}: ${unsigned.length} record(s) (index ${unsigned[unsigned.length - 1]}..${unsigned[0]}) were missing from the log at a restart and had not been signed: written just before an unclean shutdown and lost with the page cache`,
      );
    }
  }
  const entries: number[] = [];
  for (let i = 0; i < seg.count; i++) if (hasLine[i]) entries.push(i);
  const digestOf = (i: number) => seg.digests.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
  // Digests of the log's complete lines.
  const { fd } = openRegularForRead(log.file, 'log file');
  const lineDigests = new DigestList();
  const lineTexts = new Map<number, Buffer>();
  let scan: { lines: number; end: number; tail: number };
  try {
    scan = scanLines(fd, 0, (line, index) => {
      lineDigests.push(sha256(line));
      if (proving && index === options.prove! - 1) lineTexts.set(index, Buffer.from(line));
    });
  } finally {
    closeSync(fd);
  }
  const n = entries.length;
  const m = lineDigests.length;
  const ld = lineDigests.buffer;
  let p = 0;
  while (
    p < n &&
    p < m &&
    seg.digests.compare(
      ld,
      p * HASH_BYTES,
      (p + 1) * HASH_BYTES,
      entries[p]! * HASH_BYTES,
      (entries[p]! + 1) * HASH_BYTES,
    ) === 0
  ) {
    p++;
  }
  /** Line (0-based) → entry position in `entries`, for lines in place. */
  const inPlace = new Map<number, number>();
  for (let i = 0; i < p; i++) inPlace.set(i, i);
  let truncated = false;
  if (p < n || p < m) {
    const r = diffMiddle(entries, digestOf, ld, m, p, start, scan.tail > 0, active, add, inPlace);
    truncated = r.truncated;
    if (r.unchainedTail > 0) {
      report.warnings.push(
        `${log.file}:${m - r.unchainedTail + 1}: the last ${r.unchainedTail} record(s) are not chained yet (the collector is writing them, or was killed and chains them when it starts again)`,
      );
    }
  }
  if (scan.tail > 0 && !truncated) {
    const text = `incomplete last line (${scan.tail} bytes, no newline)`;
    if (active) report.warnings.push(`${log.file}:${m + 1}: ${text}: being written, or cut by a crash`);
    else add(m + 1, text);
  }
  problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
  report.problems.push(...problems.slice(0, max));
  if (problems.length > max) {
    report.problems.push({
      file: log.file,
      message: `… and ${problems.length - max} more problems in this file`,
    });
  }
  if (proving) report.proof = makeProof(s, replay, entries, inPlace, options.prove!, lineTexts, report);
}

/**
 * The part after the common prefix: each line is matched to the first unused entry with its digest; the longest
 * increasing run of matches is in place, other matched lines were moved; between two in-place pairs, unmatched
 * lines and entries pair up as changed records, the rest are inserted or deleted.
 */
function diffMiddle(
  entries: number[],
  digestOf: (i: number) => Buffer,
  lines: Buffer,
  m: number,
  p: number,
  start: number,
  tornTail: boolean,
  active: boolean,
  add: (line: number | undefined, message: string) => void,
  inPlace: Map<number, number>,
): { truncated: boolean; unchainedTail: number } {
  const result = { truncated: false, unchainedTail: 0 };
  const n = entries.length;
  const byDigest = new Map<string, number[]>();
  for (let e = p; e < n; e++) {
    const key = digestOf(entries[e]!).toString('latin1');
    const list = byDigest.get(key);
    if (list) list.push(e);
    else byDigest.set(key, [e]);
  }
  const matched = new Int32Array(m).fill(-1);
  const entryMatched = new Uint8Array(n);
  for (let l = p; l < m; l++) {
    const list = byDigest.get(lines.toString('latin1', l * HASH_BYTES, (l + 1) * HASH_BYTES));
    if (list && list.length > 0) {
      const e = list.shift()!;
      matched[l] = e;
      entryMatched[e] = 1;
    }
  }
  // Longest increasing subsequence of matched entry positions, in line order.
  const seqLines: number[] = [];
  for (let l = p; l < m; l++) if (matched[l]! >= 0) seqLines.push(l);
  const tails: number[] = [];
  const prevIdx = new Int32Array(seqLines.length).fill(-1);
  for (let k = 0; k < seqLines.length; k++) {
    const v = matched[seqLines[k]!]!;
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (matched[seqLines[tails[mid]!]!]! < v) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) prevIdx[k] = tails[lo - 1]!;
    tails[lo] = k;
  }
  const lis = new Set<number>();
  for (let k = tails.length > 0 ? tails[tails.length - 1]! : -1; k >= 0; k = prevIdx[k]!)
    lis.add(seqLines[k]!);
  for (const l of lis) inPlace.set(l, matched[l]!);
  // Moved records.
  for (const l of seqLines) {
    if (lis.has(l)) continue;
    const e = matched[l]!;
    add(
      l + 1,
      `record out of order: it is record index ${start + entries[e]!}, which belongs at line ${e + 1}`,
    );
  }
  // Gaps between in-place pairs.
  const anchors: [number, number][] = [
    [p - 1, p - 1],
    ...[...lis].sort((a, b) => a - b).map((l) => [l, matched[l]!] as [number, number]),
  ];
  anchors.push([m, n]);
  for (let a = 0; a + 1 < anchors.length; a++) {
    const [l0, e0] = anchors[a]!;
    const [l1, e1] = anchors[a + 1]!;
    const gapLines: number[] = [];
    for (let l = l0 + 1; l < l1; l++) if (matched[l]! < 0) gapLines.push(l);
    const gapEntries: number[] = [];
    for (let e = e0 + 1; e < e1; e++) if (!entryMatched[e]) gapEntries.push(e);
    const last = a + 2 === anchors.length;
    const pairs = Math.min(gapLines.length, gapEntries.length);
    for (let k = 0; k < pairs; k++) {
      add(
        gapLines[k]! + 1,
        `record changed: it does not match record index ${start + entries[gapEntries[k]!]!} of the evidence`,
      );
    }
    const extraLines = gapLines.slice(pairs);
    const extraEntries = gapEntries.slice(pairs);
    if (last && extraEntries.length > 0 && l1 === m && extraLines.length === 0) {
      // Entries beyond the end of the log: truncated.
      result.truncated = true;
      const first = extraEntries[0]!;
      const at = m + 1;
      const cut = tornTail ? ' (the last line is cut short inside a record)' : '';
      add(
        at,
        `log truncated: ${extraEntries.length} record(s) from here on are missing (record index ${start + entries[first]!}..${start + entries[extraEntries[extraEntries.length - 1]!]!})${cut}`,
      );
    } else {
      for (const e of extraEntries) {
        add(
          l1 + 1 > m ? m + 1 : l1 + 1,
          `record deleted before this line: record index ${start + entries[e]!} is missing`,
        );
      }
    }
    if (last && extraLines.length > 0 && gapEntries.length === 0 && active) {
      // Records the writer has not chained yet (written after its last entry): not a problem on a live log.
      result.unchainedTail = extraLines.length;
      continue;
    }
    for (const l of extraLines) add(l + 1, 'record inserted: it is not in the evidence');
  }
  return result;
}

function makeProof(
  s: Segment,
  replay: ReplayResult,
  entries: number[],
  inPlace: Map<number, number>,
  line: number,
  texts: Map<number, Buffer>,
  report: VerifyReport,
): InclusionProof | undefined {
  const fail = (message: string) => {
    report.problems.push({ file: s.log!.file, line, message: `cannot prove inclusion: ${message}` });
    return undefined;
  };
  const pos = inPlace.get(line - 1);
  const text = texts.get(line - 1);
  if (pos === undefined || text === undefined)
    return fail('this line is not a record of the evidence (see the problems above)');
  const i = entries[pos]!;
  const start = s.seg.header.start;
  const index = start + i;
  const cp = replay.checkpoints.find(
    (c) => c.size > index && typeof parseSignedCheckpoint(c.note) !== 'string',
  );
  if (!cp) return fail(`record index ${index} is not covered by a checkpoint yet; wait for the next one`);
  const leaves = replay.leaves!;
  const tree = new PartialTree(new CompactRange(start, s.seg.header.frontier), cp.size, (k) =>
    leaves.subarray((k - start) * HASH_BYTES, (k - start + 1) * HASH_BYTES),
  );
  const ref = s.seg.refs[i]!;
  const host = replay.hosts.get(ref) ?? `#${ref}`;
  const utf8 = text.toString('utf8');
  return {
    format: 'auditrelay-inclusion-proof 1',
    origin: s.seg.header.origin,
    log_file: s.log!.file,
    line,
    index,
    host,
    ...(Buffer.from(utf8, 'utf8').equals(text) ? { record: utf8 } : {}),
    record_base64: text.toString('base64'),
    prev_chain: replay.prevs!.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES).toString('base64'),
    tree_size: cp.size,
    inclusion_path: tree.inclusionPath(index, cp.size).map((h) => h.toString('base64')),
    checkpoint: cp.note,
  };
}

/** Checks an inclusion proof on its own (no log needed). Returns the problems (none: the proof holds). */
export function verifyInclusionProof(proof: unknown, keys: VerifierKey[]): string[] {
  const p = proof as Partial<InclusionProof>;
  if (p?.format !== 'auditrelay-inclusion-proof 1') return ['not an auditrelay inclusion proof (format)'];
  const bad: string[] = [];
  const b64 = (v: unknown, what: string) => {
    const b = typeof v === 'string' ? Buffer.from(v, 'base64') : Buffer.alloc(0);
    if (b.length !== HASH_BYTES) bad.push(`${what} is not a base64 SHA-256`);
    return b;
  };
  const prevChain = b64(p.prev_chain, 'prev_chain');
  const path = Array.isArray(p.inclusion_path)
    ? p.inclusion_path.map((h, k) => b64(h, `inclusion_path[${k}]`))
    : [];
  if (typeof p.record_base64 !== 'string' || typeof p.host !== 'string')
    bad.push('record_base64 or host missing');
  if (typeof p.checkpoint !== 'string') bad.push('checkpoint missing');
  if (bad.length > 0) return bad;
  const parsed = parseSignedCheckpoint(p.checkpoint!);
  if (typeof parsed === 'string') return [`checkpoint: ${parsed}`];
  if (keys.length === 0) return ['no key given to check the checkpoint signature with (--key)'];
  if (!keys.some((k) => noteSignedBy(parsed.note, k)))
    return ['checkpoint signature does not verify with the key'];
  if (parsed.cp.size !== p.tree_size)
    return [`tree_size ${p.tree_size} is not the checkpoint's ${parsed.cp.size}`];
  const leaf = new Chainer().leaf(prevChain, p.host!, sha256(Buffer.from(p.record_base64!, 'base64')));
  const root = rootFromInclusionPath(p.index ?? -1, p.tree_size ?? 0, leaf, path);
  if (!root?.equals(parsed.cp.root)) {
    return ['the record, its host and prev_chain do not lead to the signed root: the proof does not hold'];
  }
  return [];
}

/** SHA-256 digests in one growing buffer (32 bytes a line instead of a Buffer object each). */
class DigestList {
  buffer = Buffer.alloc(64 * 1024 * HASH_BYTES);
  length = 0;

  push(d: Buffer): void {
    if ((this.length + 1) * HASH_BYTES > this.buffer.length) {
      const bigger = Buffer.alloc(this.buffer.length * 2);
      this.buffer.copy(bigger);
      this.buffer = bigger;
    }
    d.copy(this.buffer, this.length * HASH_BYTES);
    this.length++;
  }
}
