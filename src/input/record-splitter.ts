/**
 * Frames plugin string-format input (one record per line) into record payloads.
 *
 * Rules (docs/input-rules.md):
 * - A record is the bytes up to and including '\n'; a final line without '\n' at EOF is a record
 *   and gets its '\n' added.
 * - Bytes are passed through as they are: invalid UTF-8, 0x1D (ENRICHED separator) and other
 *   non-ASCII bytes are never decoded or changed.
 * - NUL bytes are replaced by a space (a real auditd would cut the record at the NUL); counted.
 * - Blank lines (empty, or only white space) carry nothing and are dropped; counted.
 * - EOE records (the line or its second token starts with `type=EOE`) are dropped unless `forwardEoe`,
 *   as audisp-remote does (auditd does not log them).
 * - A line longer than `maxRecord` bytes (newline included) is split into consecutive records of
 *   at most `maxRecord` bytes, each ending in '\n'; counted and reported, never cut silently.
 */

export interface SplitterOptions {
  /** Largest record in bytes including its '\n'. */
  maxRecord: number;
  forwardEoe: boolean;
  onRecord(payload: Buffer): void;
  onDiscard?(reason: DiscardReason, detail: { line: number; bytes: number }): void;
  onAdjust?(reason: AdjustReason, detail: { line: number; bytes: number; count: number }): void;
}

export type DiscardReason = 'blank' | 'eoe';
export type AdjustReason = 'nul-replaced' | 'split';

const NL = 0x0a;
const SPACE = 0x20;

export class RecordSplitter {
  readonly #opt: SplitterOptions;
  /** Parts of the current line seen so far (kept shorter than maxRecord). */
  #parts: Buffer[] = [];
  #partBytes = 0;
  /** The current line was already split at least once. */
  #splitting = false;
  /** 1-based number of the line being read. */
  #line = 1;
  readonly stats = { records: 0, blank: 0, eoe: 0, nulReplaced: 0, splitLines: 0 };

  constructor(options: SplitterOptions) {
    if (options.maxRecord < 2) throw new RangeError('maxRecord must be at least 2');
    this.#opt = options;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(NL, start);
      const end = nl === -1 ? chunk.length : nl + 1;
      this.#append(chunk.subarray(start, end), nl !== -1);
      start = end;
    }
  }

  /** End of input: a final line without a newline is still a record. */
  end(): void {
    if (this.#partBytes > 0) this.#finishLine(Buffer.from('\n'));
  }

  #append(piece: Buffer, complete: boolean): void {
    const limit = this.#opt.maxRecord - 1; // room for the '\n'
    // Emit full-size parts of an over-long line as they arrive, so memory stays bounded.
    let rest = piece;
    while (this.#partBytes + rest.length - (complete ? 1 : 0) > limit) {
      const take = limit - this.#partBytes;
      this.#parts.push(rest.subarray(0, take));
      this.#partBytes += take;
      rest = rest.subarray(take);
      if (!this.#splitting) this.stats.splitLines++;
      this.#splitting = true;
      this.#emit(Buffer.concat([...this.#parts, Buffer.from('\n')]));
      this.#parts = [];
      this.#partBytes = 0;
    }
    if (complete) {
      this.#finishLine(rest);
    } else if (rest.length > 0) {
      // Copy: the chunk's memory may be reused by the stream.
      this.#parts.push(Buffer.from(rest));
      this.#partBytes += rest.length;
    }
  }

  /** `tail` ends with '\n' (or is the '\n' added at EOF). */
  #finishLine(tail: Buffer): void {
    const line = this.#parts.length === 0 ? tail : Buffer.concat([...this.#parts, tail]);
    this.#parts = [];
    this.#partBytes = 0;
    const wasSplit = this.#splitting;
    this.#splitting = false;
    const lineNo = this.#line++;
    if (line.length === 1 || (!wasSplit && isBlank(line))) {
      // Blank (empty or only spaces, tabs, CR), or the empty remainder of a line split exactly at the limit.
      if (!wasSplit) {
        this.stats.blank++;
        this.#opt.onDiscard?.('blank', { line: lineNo, bytes: 0 });
      }
      return;
    }
    if (!wasSplit && !this.#opt.forwardEoe && isEoe(line)) {
      this.stats.eoe++;
      this.#opt.onDiscard?.('eoe', { line: lineNo, bytes: line.length });
      return;
    }
    if (wasSplit) this.#opt.onAdjust?.('split', { line: lineNo, bytes: line.length, count: 1 });
    this.#emit(line, lineNo);
  }

  /** `lineNo`: the input line the record comes from (default: the line being read). */
  #emit(record: Buffer, lineNo = this.#line): void {
    let nul = record.indexOf(0);
    if (nul !== -1) {
      let count = 0;
      while (nul !== -1) {
        record[nul] = SPACE;
        count++;
        nul = record.indexOf(0, nul + 1);
      }
      this.stats.nulReplaced += count;
      this.#opt.onAdjust?.('nul-replaced', { line: lineNo, bytes: record.length, count });
    }
    this.stats.records++;
    this.#opt.onRecord(record);
  }
}

const TYPE_EOE = Buffer.from('type=EOE');

/** audisp-remote's filter: the line, or its second token (after `node=…`), starts with `type=EOE`. */
export function isEoe(line: Buffer): boolean {
  if (startsWithEoe(line, 0)) return true;
  const sp = line.indexOf(SPACE);
  return sp !== -1 && startsWithEoe(line, sp + 1);
}

function startsWithEoe(line: Buffer, at: number): boolean {
  return (
    line.length - at >= TYPE_EOE.length &&
    line.compare(TYPE_EOE, 0, TYPE_EOE.length, at, at + TYPE_EOE.length) === 0
  );
}

/** Only white space (space, \t, \r, \v, \f) before the final '\n'. */
function isBlank(line: Buffer): boolean {
  for (let i = 0; i < line.length - 1; i++) {
    const b = line[i]!;
    if (b !== SPACE && (b < 0x09 || b > 0x0d)) return false;
  }
  return true;
}
