/**
 * How a received record is made harmless before it becomes a line of the collector's log (docs/collector.md,
 * "What is escaped"). The rule is stated once, here, and is reversible:
 *
 * - These bytes are written as `\xHH` (two lowercase hex digits per byte):
 *   - C0 controls except TAB and GS (0x00-0x08, 0x0a-0x1c, 0x1e-0x1f): NUL, LF, CR, VT, FF, ESC (terminal escape
 *     sequences), ...; GS (0x1d) is auditd's own separator of the interpreted fields of an ENRICHED record
 *     (`log_format = ENRICHED`) and is written as received, as auditd writes it;
 *   - DEL (0x7f);
 *   - C1 controls encoded as UTF-8 (U+0080-U+009F: `c2 80`-`c2 9f`; NEL is U+0085, CSI is U+009B), every byte of
 *     the sequence;
 *   - LINE SEPARATOR and PARAGRAPH SEPARATOR (U+2028 `e2 80 a8`, U+2029 `e2 80 a9`), every byte of the sequence;
 *   - a byte 0x80-0x9f that is not part of a well-formed UTF-8 sequence (a C1 control for an 8-bit terminal).
 * - A backslash that would otherwise be read as the start of such an escape (`\` followed by `x` and two hex
 *   digits, either case) is written as `\x5c`.
 * - Every other byte is written as received.
 *
 * Reversing it: replace every `\x` followed by two hex digits by the byte they name (`unescapeLogLine`;
 * in a shell: `perl -pe 's/\\x([0-9a-fA-F]{2})/chr hex $1/ge'`). The result is the record as the client sent it
 * (minus the trailing newline that is always removed).
 *
 * Records made by auditd never contain any of these bytes (it hex-encodes untrusted strings), so they are
 * written byte for byte; auditd's tools (ausearch, aureport) read escaped lines as any other.
 */

import { isAscii } from 'node:buffer';

/** What was found, for the operator's warning (one per client and kind per interval). */
export type SanitizeKind = 'line-break' | 'nul' | 'control' | 'escape-lookalike';

export const SANITIZE_KIND_TEXT: Record<SanitizeKind, string> = {
  'line-break': 'line-break byte(s) (LF, CR, VT, FF, NEL, U+2028, U+2029)',
  nul: 'NUL byte(s)',
  control: 'terminal control byte(s) (ESC, other C0/C1 controls, DEL)',
  'escape-lookalike': 'backslash(es) that look like an escape (\\xHH)',
};

export interface SanitizeResult {
  line: Buffer;
  /** Count per kind; null when the record was written unchanged. */
  found: Partial<Record<SanitizeKind, number>> | null;
}

const BACKSLASH = 0x5c;
const TAB = 0x09;
/** Group separator: auditd's ENRICHED records put it before their interpreted fields. */
const GS = 0x1d;
const HEX = '0123456789abcdef';
/**
 * Quick tests: does the record hold anything the rule may change? The collector runs `--jitless` under systemd,
 * where a JavaScript loop over every byte, and even the regexp engine, run interpreted (about 20 MB/s); the
 * built-in string search stays native. So: a regexp for short records (its cost grows with the length), and for
 * longer ones one native search per suspect character (about 450 MB/s interpreted). Only a record that holds one
 * goes through the byte loop below.
 */
const SUSPECT = /[\x00-\x08\x0a-\x1c\x1e\x1f\x7f-\x9f\xe2]|\\x/;
const ASCII_SUSPECTS: string[] = [];
for (let c = 0; c < 0x20; c++) if (c !== TAB && c !== GS) ASCII_SUSPECTS.push(String.fromCharCode(c));
ASCII_SUSPECTS.push('\x7f', '\\x');
const HIGH_SUSPECTS: string[] = ['\xe2'];
for (let c = 0x80; c <= 0x9f; c++) HIGH_SUSPECTS.push(String.fromCharCode(c));
const SHORT = 1024;

function suspect(record: Buffer): boolean {
  const s = record.toString('latin1');
  if (record.length <= SHORT) return SUSPECT.test(s);
  for (const c of ASCII_SUSPECTS) if (s.indexOf(c) !== -1) return true;
  if (isAscii(record)) return false;
  for (const c of HIGH_SUSPECTS) if (s.indexOf(c) !== -1) return true;
  return false;
}

function isHex(b: number | undefined): boolean {
  return (
    b !== undefined && ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66))
  );
}

function lineBreakC0(b: number): boolean {
  return b === 0x0a || b === 0x0b || b === 0x0c || b === 0x0d;
}

/** Length of the well-formed UTF-8 sequence starting at `i` (0 if there is none), and its code point. */
function utf8At(buf: Buffer, i: number): { len: number; cp: number } {
  const b0 = buf[i]!;
  let len: number;
  let cp: number;
  let min: number;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    len = 2;
    cp = b0 & 0x1f;
    min = 0x80;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    len = 3;
    cp = b0 & 0x0f;
    min = 0x800;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    len = 4;
    cp = b0 & 0x07;
    min = 0x10000;
  } else {
    return { len: 0, cp: 0 };
  }
  if (i + len > buf.length) return { len: 0, cp: 0 };
  for (let k = 1; k < len; k++) {
    const c = buf[i + k]!;
    if ((c & 0xc0) !== 0x80) return { len: 0, cp: 0 };
    cp = (cp << 6) | (c & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return { len: 0, cp: 0 };
  return { len, cp };
}

/** Applies the rule above to `record` (the payload without its trailing newline). */
export function sanitizeRecord(record: Buffer): SanitizeResult {
  if (!suspect(record)) return { line: record, found: null };
  let out: number[] | null = null;
  const found: Partial<Record<SanitizeKind, number>> = {};
  const count = (k: SanitizeKind) => {
    found[k] = (found[k] ?? 0) + 1;
  };
  const put = (b: number) => {
    out!.push(BACKSLASH, 0x78, HEX.charCodeAt(b >> 4), HEX.charCodeAt(b & 15));
  };
  /** From the first change on, bytes are copied into `out`. */
  const start = (upTo: number) => {
    if (out === null) {
      out = [];
      for (let k = 0; k < upTo; k++) out.push(record[k]!);
    }
  };
  let i = 0;
  while (i < record.length) {
    const b = record[i]!;
    if (b < 0x20 && b !== TAB && b !== GS) {
      start(i);
      count(b === 0 ? 'nul' : lineBreakC0(b) ? 'line-break' : 'control');
      put(b);
      i++;
      continue;
    }
    if (b === 0x7f) {
      start(i);
      count('control');
      put(b);
      i++;
      continue;
    }
    if (b === BACKSLASH && record[i + 1] === 0x78 && isHex(record[i + 2]) && isHex(record[i + 3])) {
      start(i);
      count('escape-lookalike');
      put(b);
      i++;
      continue;
    }
    if (b >= 0x80) {
      const { len, cp } = utf8At(record, i);
      if (len > 0) {
        const c1 = cp >= 0x80 && cp <= 0x9f;
        if (c1 || cp === 0x2028 || cp === 0x2029) {
          start(i);
          count(cp === 0x85 || cp === 0x2028 || cp === 0x2029 ? 'line-break' : 'control');
          for (let k = 0; k < len; k++) put(record[i + k]!);
        } else if (out !== null) {
          for (let k = 0; k < len; k++) (out as number[]).push(record[i + k]!);
        }
        i += len;
        continue;
      }
      if (b <= 0x9f) {
        start(i);
        count(b === 0x85 ? 'line-break' : 'control');
        put(b);
        i++;
        continue;
      }
    }
    if (out !== null) (out as number[]).push(b);
    i++;
  }
  if (out === null) return { line: record, found: null };
  return { line: Buffer.from(out as number[]), found };
}

/** The inverse of sanitizeRecord: every `\xHH` back to its byte. */
export function unescapeLogLine(line: Buffer): Buffer {
  if (line.indexOf(BACKSLASH) === -1) return line;
  const out: number[] = [];
  for (let i = 0; i < line.length; i++) {
    const b = line[i]!;
    if (b === BACKSLASH && line[i + 1] === 0x78 && isHex(line[i + 2]) && isHex(line[i + 3])) {
      out.push(Number.parseInt(String.fromCharCode(line[i + 2]!, line[i + 3]!), 16));
      i += 3;
    } else {
      out.push(b);
    }
  }
  return Buffer.from(out);
}
