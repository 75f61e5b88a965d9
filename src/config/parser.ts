/**
 * Tokenizer for upstream's configuration syntax, shared by audisp-remote.conf and auditd.conf:
 *
 *   key = value [option]
 *
 * Rules, as upstream's `nv_split` (audit-userspace 3.0.9 `remote-config.c` / `auditd-config.c`) applies them:
 * - Tokens are separated by spaces. Upstream splits with `strtok(" ")` (agent) and `audit_strsplit` (auditd),
 *   both of which treat a run of spaces as one separator and ignore leading and trailing spaces, so
 *   `key  =  value ` is accepted; we do the same.
 * - Only the space is a separator: `key=value` is one token and a tab is part of a token, so upstream rejects
 *   both ("Wrong number of arguments" / "Missing equal sign"). We reject them too, saying what to write instead.
 * - A line whose first token starts with `#` is a comment; blank lines are skipped. A `#` later in the line is
 *   not a comment (upstream then sees too many tokens), so we reject it and say so.
 * - Keys and keyword values are case-insensitive; other values (paths, host names) are kept as written.
 * - Line length: upstream reads audisp-remote.conf with `fgets(buf, 128)`, so a line of more than 127
 *   characters is cut and its tail parsed as a further line; auditd.conf uses a 160-byte buffer and skips
 *   lines that do not fit (158 characters plus the newline). We reject an over-long line instead of cutting
 *   or skipping it.
 * - Control characters (C0 other than tab and CR, DEL, C1) in a line that is not a comment: upstream takes them
 *   as part of a key or value. We reject the line, and the message shows them escaped (`\x1b`), so a config
 *   file can never write raw control bytes (terminal escape sequences) to the terminal through an error.
 * - Duplicate keys: upstream has no duplicate check; every key's parser simply overwrites the earlier value,
 *   so the last occurrence wins (and for `enable_krb5` vs `transport` the order of lines matters). We return
 *   every entry in file order and the consumers apply them in that order, so the last one wins as upstream.
 */
import { ConfigError } from '../errors.js';

export interface ConfigEntry {
  /** The key, lower-cased. */
  key: string;
  /** The key as written in the file. */
  rawKey: string;
  /** The value as written (case preserved); '' when the line is `key =` with no value. */
  value: string;
  /** The optional fourth token (`exec /path/to/script`). */
  option?: string;
  /** 1-based line number. */
  line: number;
}

export interface ParseOptions {
  /** Keys accepted (lower-case). When given, any other key is an error. */
  keys?: ReadonlySet<string> | readonly string[];
  /** Longest accepted line, newline excluded. Default 127 (audisp-remote.conf). */
  maxLineLength?: number;
  /** When true, over-long comment lines are skipped instead of rejected (auditd.conf does skip them). */
  allowLongComments?: boolean;
  /** Keys that upstream knows but we do not support: key → reason, reported as an error naming the line. */
  unsupported?: Readonly<Record<string, string>>;
  /** Keys whose value is the rest of the line after "= " (words joined by one space): a list such as remote_server. */
  restOfLine?: readonly string[];
}

/** audisp-remote.conf: `char buf[128]` read with fgets. */
export const AGENT_MAX_LINE_LENGTH = 127;
/** auditd.conf: `char buf[160]`; a line needs its newline to fit, so 158 characters. */
export const AUDITD_MAX_LINE_LENGTH = 158;

/** Parses the text of a config file into entries, in file order. Throws ConfigError on the first bad line. */
export function parseConfigText(text: string, file: string, opts: ParseOptions = {}): ConfigEntry[] {
  const maxLen = opts.maxLineLength ?? AGENT_MAX_LINE_LENGTH;
  const keys = opts.keys === undefined ? undefined : new Set(opts.keys);
  const entries: ConfigEntry[] = [];
  const lines = text.split('\n');
  // A trailing newline does not start another line.
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();

  lines.forEach((raw, index) => {
    const line = index + 1;
    const tokens = raw.split(' ').filter((t) => t !== '');
    const isComment = tokens.length > 0 && tokens[0]!.startsWith('#');
    if (raw.length > maxLen) {
      if (isComment && opts.allowLongComments) return;
      throw new ConfigError(
        `line is ${raw.length} characters long; upstream reads at most ${maxLen} per line and would misread it`,
        { file, line, allowed: `at most ${maxLen} characters per line` },
      );
    }
    if (tokens.length === 0 || isComment) return;
    if (/^[ \t]*$/.test(raw)) return;
    const control = CONTROL_RE.exec(raw);
    if (control) {
      throw new ConfigError(
        `control character ${escapeControls(control[0])} at column ${control.index + 1}: upstream would take it as part of a key or value; remove it (the line reads: ${escapeControls(raw)})`,
        { file, line },
      );
    }
    if (raw.includes('\r')) {
      throw new ConfigError(
        'carriage return in line (DOS line endings); upstream would treat it as part of the value; ' +
          'convert the file to Unix line endings',
        { file, line },
      );
    }
    const first = tokens[0]!;
    if (raw.includes('\t')) {
      const guess = first.replace(/^\t+/, '').split(/[\t=]/)[0] ?? '';
      throw new ConfigError(
        `tab character in line; upstream separates tokens with spaces only: write "${guess || 'key'} = value"`,
        { file, line, key: guess ? guess.toLowerCase() : undefined },
      );
    }
    if (tokens[1] !== '=') {
      const eq = first.indexOf('=');
      const key = (eq >= 0 ? first.slice(0, eq) : first).toLowerCase();
      if (key === '') throw new ConfigError('no key before "="; expected "key = value"', { file, line });
      // What follows the key, with any "=" glued to either side removed: "port=60", "port= 60", "port =60".
      const rest = [eq >= 0 ? first.slice(eq + 1) : '', ...tokens.slice(1)]
        .filter((t) => t !== '')
        .map((t, i) => (i === 0 && eq < 0 && t.startsWith('=') ? t.slice(1) : t))
        .filter((t) => t !== '');
      const value = rest[0] ?? '';
      const written = `${key} = ${rest.join(' ') || 'value'}`;
      if (eq >= 0 || tokens[1]?.startsWith('=')) {
        throw new ConfigError(
          `"=" must have a space on each side (upstream rejects "key=value"): write "${written}"`,
          { file, line, key, value },
        );
      }
      throw new ConfigError(`missing "=" after the key: write "${written}"`, { file, line, key, value });
    }
    const key = first.toLowerCase();
    if (opts.restOfLine?.includes(key) && tokens.length > 3) {
      if (keys && !keys.has(key)) throw new ConfigError(`unknown key "${first}"`, { file, line, key });
      entries.push({ key, rawKey: first, value: tokens.slice(2).join(' '), line });
      return;
    }
    if (tokens.length > 4) {
      const hashAt = tokens.findIndex((t, i) => i > 0 && t.startsWith('#'));
      const hint =
        hashAt > 0 ? '; comments must be on a line of their own (a "#" after a value is not a comment)' : '';
      throw new ConfigError(`too many words in line; expected "key = value [option]"${hint}`, {
        file,
        line,
        key,
      });
    }
    const unsupported =
      opts.unsupported && Object.hasOwn(opts.unsupported, key) ? opts.unsupported[key] : undefined;
    if (unsupported !== undefined) {
      throw new ConfigError(unsupported, { file, line, key, value: tokens[2] ?? '' });
    }
    if (keys && !keys.has(key)) {
      const suggestion = closestKey(key, keys);
      throw new ConfigError(`unknown key "${first}"${suggestion ? `; did you mean "${suggestion}"?` : ''}`, {
        file,
        line,
        key,
        allowed: [...keys].join(', '),
      });
    }
    const entry: ConfigEntry = { key, rawKey: first, value: tokens[2] ?? '', line };
    if (tokens[3] !== undefined) entry.option = tokens[3];
    entries.push(entry);
  });
  return entries;
}

/** C0 controls except tab and CR (those have their own messages), DEL and C1 controls. */
const CONTROL_RE = /[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f-\x9f]/;
const CONTROL_RE_ALL = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;

/** `text` with every control character (C0 but tab, DEL, C1) written as `\xHH`, safe to print on a terminal. */
export function escapeControls(text: string): string {
  return text.replace(CONTROL_RE_ALL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function closestKey(key: string, keys: ReadonlySet<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of keys) {
    const d = editDistance(key, candidate);
    if (d < bestDistance) {
      bestDistance = d;
      best = candidate;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 4)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}
