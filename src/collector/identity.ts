/**
 * The host identity the collector stamps on records (docs/tls.md, "Host identity"): who authenticated the
 * connection, and what happens when a record's `node=` names another host.
 *
 * The stamp is one field appended to the record, as auditd appends ` krb5=<principal>`:
 *
 *     ... peer_id=<kind>:<name>
 *
 * - `peer_id`: not a field of the audit field dictionary (linux-audit/audit-documentation field-dictionary.csv) nor
 *   of auparse's table, so ausearch and aureport parse the record as before and `ausearch -i` prints the field as
 *   it is; "peer" is TLS's word for the authenticated other end.
 * - `<kind>`: `tls-psk` (the PSK identity), `x509` (the certificate name that was allowed: the SAN DNS name or CN),
 *   `krb5` (the client principal), `addr` (plain tcp: the peer address).
 * - `<name>`: every byte outside `A-Z a-z 0-9 . _ ~ @ / : + , -` is written `%HH` (so the value never holds a space,
 *   quote, `=` or control byte, and `%` itself is `%25`).
 * - A record that already holds ` peer_id=` (or starts with `peer_id=`) has that `=` written as `\x3d` (the
 *   collector's reversible escape, src/collector/sanitize.ts), so the collector's stamp is the only `peer_id=`
 *   field of the line: no client can forge another host's stamp.
 *
 * `node=` policy (`identity_policy`), for a record that starts with `node=NAME `:
 * - `off`: nothing is stamped or checked (default for transport = tcp: lines stay as auditd writes them);
 * - `stamp` (default for tls and krb5): the stamp is appended; a `node=` that does not belong to the identity is
 *   counted and logged (rate-limited);
 * - `reject`: such a record is refused: not written, answered with a REFUSED reply (a FATAL-class reply: clients
 *   run generic_error_action and drop it), logged and counted;
 * - `rewrite`: the record's `node=` is set to the identity's host name (added when the record has none), then
 *   stamped.
 *
 * A node belongs to an identity when it equals one of the identity's host names, or is the first label of one
 * (`web1` for `web1.example.com`), ignoring case. An identity's host names: the `node=` words of its
 * tls_allowed_clients line, else the PSK identity itself; the certificate's SAN DNS names and CN; the host part of a
 * Kerberos principal (`auditd/web1.example.com@REALM`); the peer address for plain tcp.
 */

export type IdentityKind = 'tls-psk' | 'x509' | 'krb5' | 'address';

/** Who authenticated a connection; set when its authentication completes (plain tcp: at accept). */
export interface PeerIdentity {
  kind: IdentityKind;
  name: string;
  /** Host names a record of this identity may carry in `node=` (first: the one `rewrite` writes). */
  nodes?: readonly string[];
}

export type IdentityPolicy = 'off' | 'stamp' | 'reject' | 'rewrite';
export const IDENTITY_POLICIES = ['off', 'stamp', 'reject', 'rewrite'] as const;

/** The field name of the stamp. */
export const IDENTITY_FIELD = 'peer_id';

const KIND_WORD: Record<IdentityKind, string> = {
  'tls-psk': 'tls-psk',
  x509: 'x509',
  krb5: 'krb5',
  address: 'addr',
};

const SAFE = /^[A-Za-z0-9._~@/:+,-]$/;

/** `%HH` for every byte outside the safe set (module comment). */
export function encodeIdentityName(name: string): string {
  let out = '';
  for (const b of Buffer.from(name, 'utf8')) {
    const c = String.fromCharCode(b);
    out += b < 0x80 && SAFE.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** ` peer_id=<kind>:<name>`, as appended to a record. */
export function identityStamp(id: PeerIdentity): Buffer {
  return Buffer.from(` ${IDENTITY_FIELD}=${KIND_WORD[id.kind]}:${encodeIdentityName(id.name)}`);
}

/** The host names an identity's records may carry (module comment). */
export function identityNodes(id: PeerIdentity): string[] {
  if (id.nodes && id.nodes.length > 0) return [...id.nodes];
  if (id.kind === 'krb5') {
    const host = /^[^/@]+\/([^@]+)/.exec(id.name)?.[1];
    return host ? [host] : [];
  }
  if (id.kind === 'address') return [id.name.replace(/^::ffff:/, '')];
  return [id.name];
}

/** Whether `node` belongs to one of `names` (equal, or the first label of one; case ignored). */
export function nodeBelongs(node: string, names: readonly string[]): boolean {
  const n = node.toLowerCase();
  for (const name of names) {
    const m = name.toLowerCase();
    if (n === m) return true;
    if (!n.includes('.') && m.split('.')[0] === n) return true;
  }
  return false;
}

const NODE_PREFIX = Buffer.from('node=');
const FIELD = Buffer.from(`${IDENTITY_FIELD}=`);
const FIELD_ESCAPED = Buffer.from(`${IDENTITY_FIELD}\\x3d`);

/** The value of a leading `node=NAME ` field, or null. */
export function recordNode(line: Buffer): string | null {
  if (line.length < NODE_PREFIX.length + 2 || line.compare(NODE_PREFIX, 0, 5, 0, 5) !== 0) return null;
  const space = line.indexOf(0x20, NODE_PREFIX.length);
  if (space <= NODE_PREFIX.length) return null;
  return line.toString('latin1', NODE_PREFIX.length, space);
}

/** Client-written `peer_id=` at the start or after a space, with `=` as `\x3d` (module comment). */
export function neutralizeField(line: Buffer): Buffer {
  let at = line.indexOf(FIELD);
  if (at < 0) return line;
  const parts: Buffer[] = [];
  let from = 0;
  while (at >= 0) {
    if (at === 0 || line[at - 1] === 0x20) {
      parts.push(line.subarray(from, at), FIELD_ESCAPED);
      from = at + FIELD.length;
    }
    at = line.indexOf(FIELD, at + FIELD.length);
  }
  if (parts.length === 0) return line;
  parts.push(line.subarray(from));
  return Buffer.concat(parts);
}

export type IdentityDecision =
  | { action: 'write'; line: Buffer; mismatch: string | null; rewritten: boolean }
  | { action: 'refuse'; node: string };

/**
 * Applies `policy` to one record line (already escaped, krb5 suffix added) of a connection authenticated as `id`.
 */
export function applyIdentity(
  line: Buffer,
  id: PeerIdentity | null,
  policy: IdentityPolicy,
  stamp: Buffer | null = null,
): IdentityDecision {
  if (policy === 'off' || id === null) return { action: 'write', line, mismatch: null, rewritten: false };
  const node = recordNode(line);
  const names = identityNodes(id);
  const mismatch = node !== null && !nodeBelongs(node, names) ? node : null;
  if (mismatch !== null && policy === 'reject') return { action: 'refuse', node: mismatch };
  let body = neutralizeField(line);
  let rewritten = false;
  if (policy === 'rewrite' && names[0] !== undefined && (node === null || mismatch !== null)) {
    const rest =
      node === null ? body : body.subarray(NODE_PREFIX.length + Buffer.byteLength(node, 'latin1') + 1);
    body = Buffer.concat([Buffer.from(`node=${encodeIdentityName(names[0])} `), rest]);
    rewritten = true;
  }
  return { action: 'write', line: Buffer.concat([body, stamp ?? identityStamp(id)]), mismatch, rewritten };
}
