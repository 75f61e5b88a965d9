/**
 * Audit-log corpus for tests.
 *
 * - test/fixtures/corpus/*.log: the Apache-2.0 subset (beats_*, golibaudit_*), committed, always available.
 * - ../shared/corpus/*.log (relative to the repository root; override with AUDITRELAY_SHARED_CORPUS): the full
 *   shared corpus including GPL files that must not be committed here (laurel_*, audit-userspace_*). Used when present.
 *
 * `expectedRecords` is the delivery contract for a forwarder (what must reach the collector, byte-exact, in order).
 * `audispRemote309Records` is what the real audisp-remote 3.0.9 forwards, which differs in a few corner cases.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

/** The repository root: the same from test/helpers and from its compiled copy (dist/test/helpers, for bench/). */
export const REPO_ROOT = PACKAGE_ROOT;
export const FIXTURE_CORPUS_DIR = path.join(REPO_ROOT, 'test', 'fixtures', 'corpus');
export const SHARED_CORPUS_DIR =
  process.env.AUDITRELAY_SHARED_CORPUS ?? path.resolve(REPO_ROOT, '../shared/corpus');

function logFilesIn(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => name.endsWith('.log'))
    .sort()
    .map((name) => path.join(dir, name));
}

/** True when the shared corpus directory (with the GPL files) is present. */
export function hasSharedCorpus(): boolean {
  return logFilesIn(SHARED_CORPUS_DIR).length > 0;
}

/**
 * Absolute paths of corpus files: every fixture, plus (with includeShared, when the directory exists) the shared
 * files that are not already fixtures (i.e. the GPL ones). Fixtures first, each group sorted by name.
 */
export function corpusFiles(opts: { includeShared: boolean }): string[] {
  const fixtures = logFilesIn(FIXTURE_CORPUS_DIR);
  if (!opts.includeShared) return fixtures;
  const fixtureNames = new Set(fixtures.map((f) => path.basename(f)));
  const shared = logFilesIn(SHARED_CORPUS_DIR).filter((f) => !fixtureNames.has(path.basename(f)));
  return [...fixtures, ...shared];
}

/**
 * Splits on '\n' only (a '\r' stays part of the line). A final line without '\n' is a line; the empty string after a
 * final '\n' is not.
 */
export function splitLines(buffer: Buffer): Buffer[] {
  const lines: Buffer[] = [];
  let start = 0;
  for (let nl = buffer.indexOf(0x0a, start); nl >= 0; nl = buffer.indexOf(0x0a, start)) {
    lines.push(buffer.subarray(start, nl));
    start = nl + 1;
  }
  if (start < buffer.length) lines.push(buffer.subarray(start));
  return lines;
}

/**
 * The complete lines of a log file that may still be written to (a last line without '\n' is left out),
 * without their '\n'; an empty list while the file does not exist.
 */
export function readCompleteLines(file: string): Buffer[] {
  let buffer: Buffer;
  try {
    buffer = readFileSync(file);
  } catch {
    return [];
  }
  const end = buffer.lastIndexOf(0x0a);
  return end < 0 ? [] : splitLines(buffer.subarray(0, end + 1));
}

const EOE = Buffer.from('type=EOE');
const WHITESPACE = new Set([0x20, 0x09, 0x0d, 0x0b, 0x0c]);

/** Empty, or only ASCII whitespace (space, \t, \r, \v, \f). */
export function isBlankLine(line: Buffer): boolean {
  return line.every((b) => WHITESPACE.has(b));
}

/**
 * EOE rule of the delivery contract: the first token, or the second token (after the first space, e.g. behind a
 * `node=` prefix), starts with `type=EOE`.
 */
export function isEoeRecord(line: Buffer): boolean {
  if (line.subarray(0, EOE.length).equals(EOE)) return true;
  const space = line.indexOf(0x20);
  return space >= 0 && line.subarray(space + 1, space + 1 + EOE.length).equals(EOE);
}

/**
 * The records a forwarder must deliver from a corpus file, byte-exact and in order: split on '\n' (a final line
 * without '\n' still counts), blank lines dropped, EOE records dropped (audisp-remote does not forward them);
 * everything else unchanged (no trimming, no charset handling: 0x1D, non-ASCII, '\r', trailing spaces are kept).
 */
export function expectedRecords(buffer: Buffer): Buffer[] {
  return splitLines(buffer).filter((line) => !isBlankLine(line) && !isEoeRecord(line));
}

/** Longest line (without '\n') audisp-remote 3.0.9 reads as one line; longer lines are split into chunks. */
export const AUDISP_REMOTE_MAX_LINE = 8968;

/**
 * Exact 3.0.9 audisp-remote filter for one line read from stdin (audisp-remote.c main loop), i.e. whether it is
 * queued and sent: a line starting with 't' is dropped iff it starts with `type=EOE`; any other line is dropped when
 * it has no space ("malformed", this includes the empty line) or when the text after its first space starts with
 * `type=EOE`.
 */
export function audispRemote309Forwards(line: Buffer): boolean {
  if (line.length > AUDISP_REMOTE_MAX_LINE) {
    throw new Error(`line of ${line.length} bytes: audisp-remote would split it into chunks (not modelled)`);
  }
  if (line[0] === 0x74 /* 't' */) return !line.subarray(0, EOE.length).equals(EOE);
  const space = line.indexOf(0x20);
  if (space < 0) return false;
  return !line.subarray(space + 1, space + 1 + EOE.length).equals(EOE);
}

/**
 * What the real audisp-remote 3.0.9 forwards when every line of `buffer` is written to it followed by '\n'
 * (feed it `splitLines` output, not the raw file: a final line without '\n' is never forwarded by it).
 * Differences from expectedRecords: a line without any space that does not start with 't' (e.g. a lone `#`) is
 * dropped; a whitespace-only line containing a space is forwarded; `t... type=EOE` is forwarded.
 */
export function audispRemote309Records(buffer: Buffer): Buffer[] {
  return splitLines(buffer).filter(audispRemote309Forwards);
}

export interface CorpusFile {
  path: string;
  name: string;
  source: 'fixture' | 'shared';
  bytes: Buffer;
}

/** corpusFiles() with their contents. */
export function loadCorpus(opts: { includeShared: boolean }): CorpusFile[] {
  return corpusFiles(opts).map((p) => ({
    path: p,
    name: path.basename(p),
    source: path.dirname(p) === FIXTURE_CORPUS_DIR ? 'fixture' : 'shared',
    bytes: readFileSync(p),
  }));
}
