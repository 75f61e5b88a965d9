/**
 * Value parsers shared by the agent and collector configs. Each takes a parsed entry and the file name and
 * either returns the typed value or throws a ConfigError naming file:line, key, the bad value and what is allowed.
 */
import { isIP } from 'node:net';
import { ConfigError } from '../errors.js';
import type { ConfigEntry } from './parser.js';

/** INT_MAX, upstream's upper bound for most counters and times. */
export const INT_MAX = 2_147_483_647;

export function fail(entry: ConfigEntry, file: string, message: string, allowed?: string): never {
  throw new ConfigError(message, {
    file,
    line: entry.line,
    key: entry.key,
    value: entry.value,
    ...(allowed !== undefined ? { allowed } : {}),
  });
}

/** Upstream's keys take no fourth token except the failure actions (for `exec /path`). */
export function noOption(entry: ConfigEntry, file: string): void {
  if (entry.option !== undefined) {
    fail(
      entry,
      file,
      `unexpected extra word "${entry.option}" after the value "${entry.value}"`,
      `"${entry.key} = value" with nothing after the value`,
    );
  }
}

/** Rejects `key =` with no value. */
export function requireValue(entry: ConfigEntry, file: string, allowed: string): string {
  if (entry.value === '') fail(entry, file, 'missing value after "="', allowed);
  return entry.value;
}

/** A decimal integer in [min, max]; digits only, as upstream's parse_uint (no sign, no hex, no suffix). */
export function parseIntInRange(entry: ConfigEntry, file: string, min: number, max: number): number {
  const range = `${min}..${max}`;
  const v = requireValue(entry, file, `a decimal integer in ${range}`);
  noOption(entry, file);
  if (!/^[0-9]+$/.test(v)) fail(entry, file, `"${v}" is not a decimal integer`, range);
  const n = v.replace(/^0+(?=[0-9])/, '').length > 16 ? Number.POSITIVE_INFINITY : Number(v);
  if (n < min || n > max) fail(entry, file, `${v} is out of range`, range);
  return n;
}

/** One of a fixed set of case-insensitive keywords; returns the lower-case keyword. */
export function parseKeyword<const T extends string>(
  entry: ConfigEntry,
  file: string,
  words: readonly T[],
): T {
  const allowed = words.join(', ');
  const v = requireValue(entry, file, allowed);
  noOption(entry, file);
  const found = words.find((w) => w === v.toLowerCase());
  if (found === undefined) fail(entry, file, `unknown value "${v}"`, allowed);
  return found;
}

export function parseYesNo(entry: ConfigEntry, file: string): boolean {
  return parseKeyword(entry, file, ['yes', 'no'] as const) === 'yes';
}

export function parseAbsolutePath(entry: ConfigEntry, file: string): string {
  const v = requireValue(entry, file, 'an absolute path');
  noOption(entry, file);
  if (!v.startsWith('/')) fail(entry, file, `"${v}" is not an absolute path`, 'an absolute path');
  return v;
}

export function parseNonEmptyString(entry: ConfigEntry, file: string, what: string): string {
  const v = requireValue(entry, file, what);
  noOption(entry, file);
  return v;
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** Bytes, with an optional binary suffix K, M or G (case-insensitive). */
export function parseByteSize(entry: ConfigEntry, file: string, min: number, max: number): number {
  const range = `${formatByteSize(min)}..${formatByteSize(max)} bytes; a plain number or one with a suffix K, M or G (powers of 1024)`;
  const v = requireValue(entry, file, range);
  noOption(entry, file);
  const m = /^([0-9]+)([kKmMgG]?)$/.exec(v);
  if (!m) fail(entry, file, `"${v}" is not a size`, range);
  const digits = m[1]!.replace(/^0+(?=[0-9])/, '');
  const n = digits.length > 16 ? Number.POSITIVE_INFINITY : Number(digits) * SIZE_UNITS[m[2]!.toLowerCase()]!;
  if (n < min || n > max) fail(entry, file, `${v} is out of range`, range);
  return n;
}

/** The shortest exact spelling of a byte count: 1073741824 → 1G, 1536 → 1536, 2048 → 2K. */
export function formatByteSize(n: number): string {
  for (const [suffix, unit] of [
    ['G', 1024 ** 3],
    ['M', 1024 ** 2],
    ['K', 1024],
  ] as const) {
    if (n >= unit && n % unit === 0) return `${n / unit}${suffix}`;
  }
  return String(n);
}

export interface HostPort {
  host: string;
  port: number;
}

const HOSTNAME_RE =
  /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$/;

/** True for an IPv4/IPv6 literal (IPv6 without brackets) or a syntactically valid host name. */
export function isHostOrAddress(host: string): boolean {
  return isIP(host) !== 0 || HOSTNAME_RE.test(host);
}

/**
 * Parses `HOST:PORT`, `[IPV6]:PORT`. Returns an error message (a sentence without location) or the value.
 * Port range is [minPort, 65535].
 */
export function parseHostPort(text: string, minPort = 0): HostPort | string {
  const example = 'HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60';
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) return `"${text}" has "[" without "]"; expected ${example}`;
    host = text.slice(1, close);
    if (isIP(host) !== 6) return `"${host}" inside [] is not an IPv6 address; expected ${example}`;
    if (text[close + 1] !== ':') return `"${text}" has no ":PORT" after "]"; expected ${example}`;
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return `"${text}" has no ":PORT"; expected ${example}`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return `IPv6 address in "${text}" must be in brackets: [${host}]:${portText}`;
    if (host === '') return `"${text}" has no host before ":"; expected ${example} (0.0.0.0 or [::] for all)`;
    if (!isHostOrAddress(host)) return `"${host}" is not a valid host name or address; expected ${example}`;
  }
  if (!/^[0-9]+$/.test(portText)) return `port "${portText}" in "${text}" is not a decimal integer`;
  const port = portText.length > 5 ? Number.POSITIVE_INFINITY : Number(portText);
  if (port < minPort || port > 65535)
    return `port ${portText} in "${text}" is out of range ${minPort}..65535`;
  return { host, port };
}

/** Formats a HostPort back to the `HOST:PORT` / `[IPV6]:PORT` syntax. */
export function formatHostPort(hp: HostPort): string {
  return isIP(hp.host) === 6 ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** `status_listen`: empty or `off` = disabled, else HOST:PORT (port 0 = pick a free port). */
export function parseStatusListen(entry: ConfigEntry, file: string): HostPort | null {
  noOption(entry, file);
  if (entry.value === '' || entry.value.toLowerCase() === 'off') return null;
  const r = parseHostPort(entry.value);
  if (typeof r === 'string') fail(entry, file, r, 'empty or "off" (disabled), or HOST:PORT / [IPV6]:PORT');
  return r;
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
