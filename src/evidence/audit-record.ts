/**
 * One audit record line, as auditd writes it (RAW or ENRICHED `log_format`) or as a plugin receives it:
 *
 *     [node=NODE ]type=TYPE msg=audit(SECONDS.MILLIS:SERIAL): BODY[\x1D ENRICHED]
 *
 * `parseHeader` is the cheap part (node, type, time stamp) that grouping needs for every record; `parseBody`
 * splits the body into fields and is done once per record when its event is written out. Nothing here throws on
 * bad input: a line that is not a record gives `null`, a body that does not follow the usual `name=value` shape
 * keeps its other words in `text` (docs/events.md, "Records").
 */

export interface RecordHeader {
  /** The `node=` prefix (the host auditd's `name_format` put there), or null. */
  node: string | null;
  /** The record type as written (`SYSCALL`, `UNKNOWN[1329]`). */
  type: string;
  /** `SECONDS.MILLIS:SERIAL` exactly as written. */
  stamp: string;
  seconds: number;
  millis: number;
  serial: number;
  /** Offset of the body (after `): `) in the line. */
  bodyStart: number;
}

const MAX_SECONDS = 8_640_000_000; // Date's range ends at 8.64e15 ms.

/** Splits off the header; null when the line is not an audit record (no `type=` or no `msg=audit(...)` stamp). */
export function parseHeader(line: string): RecordHeader | null {
  let p = 0;
  let node: string | null = null;
  if (line.startsWith('node=')) {
    const sp = line.indexOf(' ', 5);
    if (sp < 0) return null;
    node = line.slice(5, sp);
    p = sp + 1;
  }
  if (!line.startsWith('type=', p)) return null;
  const typeEnd = line.indexOf(' ', p + 5);
  if (typeEnd < 0) return null;
  const type = line.slice(p + 5, typeEnd);
  if (type.length === 0) return null;
  p = typeEnd + 1;
  if (!line.startsWith('msg=audit(', p)) return null;
  const open = p + 10;
  const close = line.indexOf(')', open);
  if (close < 0 || close - open > 40) return null;
  const stamp = line.slice(open, close);
  const m = /^(\d{1,16})\.(\d{1,3}):(\d{1,20})$/.exec(stamp);
  if (!m) return null;
  const seconds = Number(m[1]);
  const serial = Number(m[3]);
  if (seconds > MAX_SECONDS || !Number.isSafeInteger(serial)) return null;
  // auditd prints the milliseconds with three digits; be lenient with fewer.
  const millis = Number(m[2]!.padEnd(3, '0'));
  let bodyStart = close + 1;
  if (line[bodyStart] === ':') bodyStart++;
  if (line[bodyStart] === ' ') bodyStart++;
  return { node, type, stamp, seconds, millis, serial, bodyStart };
}

/**
 * The fields of a record body (docs/events.md, "Records"). Plain objects (JSON.stringify is much faster on them than
 * on prototype-less ones); a field named `__proto__` is defined as an own property (see setField), and presence is
 * tested with Object.hasOwn, so no name can reach the prototype.
 */
export interface RecordBody {
  /** name → value, in the order of the line; quotes removed, hex-encoded values decoded. */
  fields: Record<string, string>;
  /** name → original hex text, for each value that was hex-encoded in the line (`msg.NAME` for fields of msg). */
  hex?: Record<string, string>;
  /** Fields inside a userspace record's `msg='...'`. */
  msg?: Record<string, string>;
  /** Words of msg='...' that are not name=value. */
  msgText?: string;
  /** Words of the body that are not name=value (`avc: denied { read write } for`). */
  text?: string;
  /** A name that appears again: [name, value] of each later occurrence. */
  dup?: [string, string][];
  /** The ENRICHED part (after 0x1D): interpreted fields added by auditd. */
  enriched?: Record<string, string>;
  /** Decoded bytes of hex values kept for argument assembly (EXECVE aN / aN[i], proctitle). */
  bytes?: Map<string, Buffer>;
}

/**
 * Names whose value the kernel or libaudit writes either in double quotes or, when it contains a space, a quote,
 * a control character or a byte above 0x7e, hex-encoded (audit_log_untrustedstring, audit_encode_nv_string).
 * Only unquoted values of these names (and EXECVE's aN, aN[i]) are decoded; other fields are often hex numbers.
 */
const ENCODED_NAMES = new Set([
  'acct',
  'cgroup',
  'cmd',
  'comm',
  'cwd',
  'data',
  'device',
  'dir',
  'exe',
  'file',
  'fstype',
  'grp',
  'img-ctx',
  'key',
  'name',
  'name2',
  'new-chardev',
  'new-disk',
  'new-fs',
  'new_group',
  'ocomm',
  'old-chardev',
  'old-disk',
  'old-fs',
  'path',
  'peer',
  'proctitle',
  'profile',
  'root_dir',
  'srcname',
  'sw',
  'target',
  'vm',
  'vm-ctx',
  'watch',
]);

const HEX = /^(?:[0-9A-F]{2})+$/;
const EXECVE_ARG = /^a\d+(?:\[\d+\])?$/;

/** The ENRICHED separator (ASCII GS). */
export const ENRICHED_SEPARATOR = '\x1d';

export function parseBody(line: string, header: RecordHeader): RecordBody {
  const gs = line.indexOf(ENRICHED_SEPARATOR, header.bodyStart);
  const bodyText = gs < 0 ? line.slice(header.bodyStart) : line.slice(header.bodyStart, gs);
  const body: RecordBody = { fields: {} };
  const isExecve = header.type === 'EXECVE';
  const text: string[] = [];
  scan(bodyText, (name, value, quote) => {
    if (name === null) {
      text.push(value);
      return;
    }
    if (quote === "'" && name === 'msg') {
      if (body.msg === undefined) {
        const msgText: string[] = [];
        const msg: Record<string, string> = {};
        scan(value, (n, v, q) => {
          if (n === null) msgText.push(v);
          else if (!Object.hasOwn(msg, n))
            setField(msg, n, decodeIfEncoded(body, `msg.${n}`, n, v, q, false));
        });
        body.msg = msg;
        if (msgText.length > 0) body.msgText = msgText.join(' ');
        return;
      }
    }
    const decoded = decodeIfEncoded(body, name, name, value, quote, isExecve);
    if (!Object.hasOwn(body.fields, name)) setField(body.fields, name, decoded);
    else if (body.dup) body.dup.push([name, decoded]);
    else body.dup = [[name, decoded]];
  });
  if (text.length > 0) body.text = text.join(' ');
  if (gs >= 0) {
    const enriched: Record<string, string> = {};
    scan(line.slice(gs + 1), (name, value) => {
      if (name !== null && !Object.hasOwn(enriched, name)) setField(enriched, name, value);
    });
    body.enriched = enriched;
  }
  return body;
}

/** obj[name] = value, as an own data property even for `__proto__`. */
export function setField(obj: Record<string, string>, name: string, value: string): void {
  if (name === '__proto__') {
    Object.defineProperty(obj, name, { value, enumerable: true, writable: true, configurable: true });
  } else {
    obj[name] = value;
  }
}

function decodeIfEncoded(
  body: RecordBody,
  hexKey: string,
  name: string,
  value: string,
  quote: string,
  isExecve: boolean,
): string {
  if (quote !== '' || value.length === 0) return value;
  const execArg = isExecve && EXECVE_ARG.test(name);
  if (!execArg && !ENCODED_NAMES.has(name)) return value;
  if (!HEX.test(value)) return value;
  const bytes = Buffer.from(value, 'hex');
  body.hex ??= {};
  setField(body.hex, hexKey, value);
  if (execArg || name === 'proctitle') {
    body.bytes ??= new Map();
    body.bytes.set(name, bytes);
  }
  return bytes.toString('utf8');
}

/**
 * Calls `each(name, value, quote)` for every `name=value` of `s` (quote: `"`, `'`, `{` or '' for none) and
 * `each(null, word, '')` for every other word. A value in double or single quotes runs to the next such quote
 * (auditd never escapes inside them); a value starting with `{` runs to the next `}` (ENRICHED `SADDR={ ... }`).
 */
function scan(s: string, each: (name: string | null, value: string, quote: string) => void): void {
  const n = s.length;
  let p = 0;
  while (p < n) {
    while (p < n && s.charCodeAt(p) === 0x20) p++;
    if (p >= n) break;
    const start = p;
    while (p < n) {
      const c = s.charCodeAt(p);
      if (c === 0x3d /* = */ || c === 0x20) break;
      p++;
    }
    if (p >= n || s.charCodeAt(p) === 0x20 || p === start) {
      // A word without '=' (or starting with '='): up to the next space.
      while (p < n && s.charCodeAt(p) !== 0x20) p++;
      each(null, s.slice(start, p), '');
      continue;
    }
    const name = s.slice(start, p);
    p++; // '='
    const q = s[p];
    if (q === '"' || q === "'") {
      const end = s.indexOf(q, p + 1);
      if (end < 0) {
        each(name, s.slice(p + 1), q);
        return;
      }
      each(name, s.slice(p + 1, end), q);
      p = end + 1;
    } else if (q === '{') {
      const end = s.indexOf('}', p + 1);
      const stop = end < 0 ? n : end + 1;
      each(name, s.slice(p, stop), '{');
      p = stop;
    } else {
      const end = s.indexOf(' ', p);
      const stop = end < 0 ? n : end;
      each(name, s.slice(p, stop), '');
      p = stop;
    }
  }
}
