/**
 * TLS pre-shared keys as audit 4.2 defines them (autls-psk.c, autls-acl.c; auditd.conf(5), audisp-remote.conf(5)):
 *
 * - a key file holds the key as hex on its first line (`openssl rand -hex 32`), at least 32 bytes (64 hex
 *   digits), at most 255 bytes (the 512-byte line buffer); it is a regular file owned by root with mode 0400,
 *   never read through a symlink;
 * - an identity is 1..255 printable ASCII bytes without spaces (0x21-0x7e);
 * - the allowed-clients file (`tls_allowed_clients`) lists `identity enabled|disabled [notes]`, one per line, `#`
 *   comments; per-identity key mode adds `key=/absolute/path` (all entries or none); root-owned, not writable by
 *   group or others. auditrelay also reads `node=NAME[,NAME...]` after the status: the host names whose records
 *   that identity may send (docs/tls.md, "Host identity"); upstream takes such a word as a note.
 *
 * Every refusal is a ConfigError naming the file (and line), what is wrong and what to do.
 */
import { timingSafeEqual } from 'node:crypto';
import { ConfigError, FileSafetyError } from '../errors.js';
import { readOwnedFile } from '../fs/safe-files.js';

/** Longest identity (bytes), as upstream (AUTLS_PSK_IDENTITY_MAX). */
export const PSK_IDENTITY_MAX = 255;
/** Shortest key (bytes), as upstream. */
export const PSK_MIN_BYTES = 32;
/** Longest key line upstream reads (its buffer is 512 bytes). */
const PSK_MAX_HEX = 510;
/** Upstream reads the ACL with a 512-byte line buffer. */
const ACL_MAX_LINE = 510;
/** Far above any real allowed-clients file. */
const ACL_MAX_BYTES = 4 * 1024 * 1024;

/** Why `id` is not a valid identity, or null (upstream's autls_validate_psk_identity). */
export function pskIdentityProblem(id: string): string | null {
  const bytes = Buffer.from(id, 'utf8');
  if (bytes.length === 0) return 'the PSK identity is empty';
  if (bytes.length > PSK_IDENTITY_MAX)
    return `the PSK identity is ${bytes.length} bytes long, more than ${PSK_IDENTITY_MAX}`;
  const bad = bytes.findIndex((b) => b < 0x21 || b > 0x7e);
  if (bad >= 0) {
    return `the PSK identity contains byte 0x${bytes[bad]!.toString(16).padStart(2, '0')} at position ${bad}; only printable ASCII without spaces (0x21-0x7e) is allowed`;
  }
  return null;
}

export const PSK_IDENTITY_ALLOWED = `1..${PSK_IDENTITY_MAX} printable ASCII characters without spaces (0x21-0x7e)`;

/** Where a key file is named, for messages. */
export interface KeySource {
  /** The configuration key or file line that names it (`tls_psk_file`, `/etc/audit/tls-clients:3 key=`). */
  key: string;
  /** Enforce the owner/mode rule (default: always; the running user counts as root when not root). */
  enforce?: boolean;
}

/**
 * The key in a key file, as upstream decodes it: the first line, trailing CR/LF removed, an even number of hex
 * digits, at least PSK_MIN_BYTES bytes. Throws ConfigError (what, where, the fix).
 */
export function loadPskFile(file: string, source: KeySource): Buffer {
  const where = { key: source.key, value: file };
  let data: Buffer;
  try {
    data = readOwnedFile(file, 'key file', 'secret', 4096);
  } catch (err) {
    if (err instanceof FileSafetyError) throw new ConfigError(err.message, where, { cause: err });
    throw err;
  }
  try {
    return decodePsk(data, file, source.key);
  } finally {
    data.fill(0);
  }
}

/** Decodes the text of a key file (see loadPskFile). */
export function decodePsk(data: Buffer, file: string, key: string): Buffer {
  const where = { key, value: file };
  const generate = `generate one with: openssl rand -hex 32 > ${file} && chmod 0400 ${file}`;
  const nl = data.indexOf(0x0a);
  let end = nl < 0 ? data.length : nl;
  if (end === 0 && nl < 0) throw new ConfigError(`key file ${file} is empty; ${generate}`, where);
  while (end > 0 && (data[end - 1] === 0x0d || data[end - 1] === 0x0a)) end--;
  if (end > PSK_MAX_HEX) {
    throw new ConfigError(
      `key file ${file}: the key line is too long (${end} characters, at most ${PSK_MAX_HEX} hex digits)`,
      where,
    );
  }
  const line = data.subarray(0, end).toString('latin1');
  if (line.length === 0 || line.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(line)) {
    throw new ConfigError(
      `key file ${file} does not hold a key in hex on its first line (an even number of digits 0-9, a-f); ${generate}`,
      where,
    );
  }
  const key32 = Buffer.from(line, 'hex');
  if (key32.length < PSK_MIN_BYTES) {
    key32.fill(0);
    throw new ConfigError(
      `key file ${file} holds a key of ${line.length / 2} bytes; at least ${PSK_MIN_BYTES} bytes (${2 * PSK_MIN_BYTES} hex digits) are required; ${generate}`,
      where,
    );
  }
  return key32;
}

export interface AllowedClient {
  identity: string;
  enabled: boolean;
  /** Per-identity key mode: the key file (absolute path) and its key. */
  keyFile: string | null;
  key: Buffer | null;
  /** auditrelay's `node=` word: host names this identity may send records for (empty: none given). */
  nodes: string[];
  line: number;
}

export interface AllowedClients {
  file: string;
  /** True when every entry has its own key (`key=`); false: single-PSK mode (everyone uses tls_psk_file). */
  perIdentityKeys: boolean;
  entries: Map<string, AllowedClient>;
}

const NODE_NAME = /^[A-Za-z0-9_.:-]{1,255}$/;

/**
 * Reads and checks tls_allowed_clients (upstream's rules, module comment), loading each per-identity key file.
 * Throws ConfigError naming file:line.
 */
export function loadAllowedClients(file: string, configKey = 'tls_allowed_clients'): AllowedClients {
  let data: Buffer;
  try {
    data = readOwnedFile(file, 'allowed-clients file', 'protected', ACL_MAX_BYTES);
  } catch (err) {
    if (err instanceof FileSafetyError)
      throw new ConfigError(err.message, { key: configKey, value: file }, { cause: err });
    throw err;
  }
  return parseAllowedClients(data.toString('latin1'), file, (path, line) =>
    loadPskFile(path, { key: `${file}:${line}: key=` }),
  );
}

/** Parses the text of an allowed-clients file; `loadKey` reads a `key=` file. */
export function parseAllowedClients(
  text: string,
  file: string,
  loadKey: (path: string, line: number) => Buffer,
): AllowedClients {
  const entries = new Map<string, AllowedClient>();
  const keyFiles = new Map<string, number>();
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const fail = (line: number, message: string, allowed?: string): never => {
    for (const e of entries.values()) e.key?.fill(0);
    throw new ConfigError(message, { file, line, ...(allowed ? { allowed } : {}) });
  };
  lines.forEach((raw, index) => {
    const line = index + 1;
    const text = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (text.length > ACL_MAX_LINE)
      fail(line, `line is ${text.length} characters long, more than ${ACL_MAX_LINE}`);
    if (text.length === 0 || text.startsWith('#')) return;
    const words = text.split(/[ \t]+/).filter((w) => w !== '');
    if (words.length === 0) return;
    const [identity, status, ...rest] = words as [string, string | undefined, ...string[]];
    const statusAllowed = 'IDENTITY enabled|disabled [key=/path/to/key] [node=HOST[,HOST...]] [notes]';
    if (status === undefined) fail(line, `"${identity}": missing status field`, statusAllowed);
    const problem = pskIdentityProblem(identity);
    if (problem !== null) fail(line, `invalid identity "${identity}": ${problem}`, PSK_IDENTITY_ALLOWED);
    if (entries.has(identity))
      fail(line, `duplicate identity "${identity}" (first on line ${entries.get(identity)!.line})`);
    const word = status!.toLowerCase();
    if (word !== 'enabled' && word !== 'disabled') {
      fail(line, `invalid status "${status}" for "${identity}"; must be enabled or disabled`, statusAllowed);
    }
    let keyFile: string | null = null;
    const nodes: string[] = [];
    for (let i = 0; i < rest.length; i++) {
      const w = rest[i]!;
      if (w.startsWith('key=/')) {
        if (keyFile !== null) fail(line, `"${identity}" has two key= words`);
        keyFile = w.slice(4);
        const first = keyFiles.get(keyFile);
        if (first !== undefined) fail(line, `duplicate key file path "${keyFile}" (also on line ${first})`);
        keyFiles.set(keyFile, line);
      } else if (w.startsWith('node=')) {
        for (const n of w.slice(5).split(',')) {
          if (!NODE_NAME.test(n)) {
            fail(line, `"${n}" in ${w} is not a host name`, 'node=HOST[,HOST...] (letters, digits, . _ - :)');
          }
          nodes.push(n);
        }
      } else {
        break; // notes: the rest of the line
      }
    }
    const entry: AllowedClient = {
      identity,
      enabled: word === 'enabled',
      keyFile,
      key: null,
      nodes,
      line,
    };
    if (keyFile !== null) entry.key = loadKey(keyFile, line);
    entries.set(identity, entry);
  });
  const withKey = [...entries.values()].filter((e) => e.keyFile !== null);
  if (withKey.length > 0 && withKey.length !== entries.size) {
    const without = [...entries.values()].find((e) => e.keyFile === null)!;
    fail(
      without.line,
      `${withKey.length} of ${entries.size} entries have a per-identity key (key=) and "${without.identity}" has none; all entries must have key= or none`,
    );
  }
  if (withKey.length > 0) {
    for (let i = 0; i < withKey.length; i++) {
      for (let j = i + 1; j < withKey.length; j++) {
        const a = withKey[i]!;
        const b = withKey[j]!;
        if (a.key!.length === b.key!.length && timingSafeEqual(a.key!, b.key!)) {
          fail(
            b.line,
            `identities "${a.identity}" and "${b.identity}" have the same key (${a.keyFile}, ${b.keyFile}); each identity needs its own key, else one host can act as the other`,
          );
        }
      }
    }
  } else {
    const enabled = [...entries.values()].filter((e) => e.enabled);
    if (enabled.length > 1) {
      fail(
        enabled[1]!.line,
        `single-PSK mode (no key= entries) allows at most one enabled identity, but "${enabled[0]!.identity}" and "${enabled[1]!.identity}" are enabled; give each its own key with key=/path, or disable all but one`,
      );
    }
  }
  return { file, perIdentityKeys: withKey.length > 0, entries };
}

/** Zeroes every key held by `acl`. */
export function wipeAllowedClients(acl: AllowedClients | null): void {
  if (!acl) return;
  for (const e of acl.entries.values()) e.key?.fill(0);
}
