/**
 * Splits a byte stream into lines ('\n'; a final line without one still counts) with a bound on line length: a
 * longer line is skipped whole (reported with its number and size), so memory stays bounded on any input.
 */

export interface LineSplitterOptions {
  /** Longest line kept, in bytes without the '\n'. */
  maxLineBytes: number;
  onLine(line: Buffer, lineNo: number): void;
  onTooLong?(lineNo: number, bytes: number): void;
}

export class LineSplitter {
  readonly #o: LineSplitterOptions;
  #parts: Buffer[] = [];
  #partBytes = 0;
  /** Bytes of the current line dropped because it is too long (0: not dropping). */
  #dropping = 0;
  #lineNo = 1;

  constructor(options: LineSplitterOptions) {
    this.#o = options;
  }

  /** Number of the line being read (1-based). */
  get lineNo(): number {
    return this.#lineNo;
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      this.#take(chunk.subarray(start, end));
      if (nl < 0) return;
      this.#endLine();
      start = nl + 1;
    }
  }

  /** End of input: a last line without '\n' is a line. */
  end(): void {
    if (this.#partBytes > 0 || this.#dropping > 0) this.#endLine();
  }

  #take(piece: Buffer): void {
    if (piece.length === 0) return;
    if (this.#dropping > 0) {
      this.#dropping += piece.length;
      return;
    }
    if (this.#partBytes + piece.length > this.#o.maxLineBytes) {
      this.#dropping = this.#partBytes + piece.length;
      this.#parts = [];
      this.#partBytes = 0;
      return;
    }
    this.#parts.push(piece);
    this.#partBytes += piece.length;
  }

  #endLine(): void {
    const n = this.#lineNo++;
    if (this.#dropping > 0) {
      this.#o.onTooLong?.(n, this.#dropping);
      this.#dropping = 0;
      return;
    }
    const line = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#partBytes);
    this.#parts = [];
    this.#partBytes = 0;
    this.#o.onLine(line, n);
  }
}
