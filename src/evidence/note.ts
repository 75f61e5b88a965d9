/**
 * Signed notes and checkpoints as transparency logs write them (C2SP signed-note and tlog-checkpoint):
 *
 *     <origin>\n<tree size>\n<base64 root hash>\n[<extension line>\n...]\n— <key name> <base64(key id || signature)>\n
 *
 * Ed25519 keys only (signature type 0x01). The key id is the first 4 bytes of SHA-256(name || "\n" || 0x01 ||
 * public key); a verifier key is written `<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`.
 */
import { createPublicKey, type KeyObject, sign, verify } from 'node:crypto';
import { sha256 } from './merkle.js';

const ED25519 = 0x01;
const SIG_PREFIX = '\u2014 ';

export interface VerifierKey {
  name: string;
  keyId: Buffer;
  publicKey: Buffer;
  key: KeyObject;
  /** The `name+hash+base64` text. */
  text: string;
}

export function checkKeyName(name: string): string | null {
  if (name.length === 0) return 'a key name cannot be empty';
  if (/[\s+]/u.test(name)) return `a key name cannot contain white space or '+': '${name}'`;
  return null;
}

export function keyId(name: string, publicKey: Buffer): Buffer {
  return sha256(Buffer.concat([Buffer.from(`${name}\n`), Buffer.from([ED25519]), publicKey])).subarray(0, 4);
}

export function verifierKey(name: string, publicKey: Buffer): VerifierKey {
  const id = keyId(name, publicKey);
  const key = createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: publicKey.toString('base64url') },
    format: 'jwk',
  });
  const text = `${name}+${id.toString('hex')}+${Buffer.concat([Buffer.from([ED25519]), publicKey]).toString('base64')}`;
  return { name, keyId: id, publicKey, key, text };
}

/** Parses `name+hash+base64`; returns an error text when it is not an Ed25519 verifier key. */
export function parseVerifierKey(text: string): VerifierKey | string {
  // NAME+KEYID+BASE64: the name has no '+', the base64 may.
  const t = text.trim();
  const m = /^([^+]*)\+([0-9a-fA-F]{8})\+([A-Za-z0-9+/=]+)$/.exec(t);
  if (!m) return `'${t.slice(0, 100)}' is not a verifier key (NAME+KEYID+BASE64)`;
  const [, name, hex, b64] = m as unknown as [string, string, string, string];
  const bad = checkKeyName(name);
  if (bad) return bad;
  const raw = Buffer.from(b64, 'base64');
  if (raw.length !== 33 || raw[0] !== ED25519) return `verifier key ${name}: not an Ed25519 key`;
  const vk = verifierKey(name, raw.subarray(1));
  if (vk.keyId.toString('hex') !== hex.toLowerCase()) {
    return `verifier key ${name}: key id ${hex} does not match the key (expected ${vk.keyId.toString('hex')})`;
  }
  return vk;
}

/** A checkpoint body: origin, size, root hash, extension lines. */
export interface Checkpoint {
  origin: string;
  size: number;
  root: Buffer;
  extensions: string[];
}

export function formatCheckpoint(c: Checkpoint): string {
  return `${[c.origin, String(c.size), c.root.toString('base64'), ...c.extensions].join('\n')}\n`;
}

export function parseCheckpoint(body: string): Checkpoint | string {
  if (!body.endsWith('\n')) return 'checkpoint does not end with a newline';
  const lines = body.slice(0, -1).split('\n');
  if (lines.length < 3) return 'checkpoint has fewer than 3 lines';
  const [origin, sizeText, rootText, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin === '') return 'checkpoint origin is empty';
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeText) || !Number.isSafeInteger(Number(sizeText))) {
    return `checkpoint tree size '${sizeText}' is not a decimal number`;
  }
  const root = Buffer.from(rootText, 'base64');
  if (root.length !== 32 || root.toString('base64') !== rootText)
    return 'checkpoint root is not a base64 SHA-256';
  return { origin, size: Number(sizeText), root, extensions };
}

export interface NoteSignature {
  name: string;
  keyId: Buffer;
  signature: Buffer;
}

export interface Note {
  /** The signed text, ending with a newline. */
  body: string;
  signatures: NoteSignature[];
}

export function signNote(body: string, name: string, privateKey: KeyObject, publicKey: Buffer): string {
  const sig = sign(null, Buffer.from(body, 'utf8'), privateKey);
  const blob = Buffer.concat([keyId(name, publicKey), sig]).toString('base64');
  return `${body}\n${SIG_PREFIX}${name} ${blob}\n`;
}

export function parseNote(text: string): Note | string {
  const split = text.lastIndexOf('\n\n');
  if (split < 0) return 'not a signed note (no blank line before the signatures)';
  const body = text.slice(0, split + 1);
  const sigText = text.slice(split + 2);
  if (!sigText.endsWith('\n')) return 'signed note does not end with a newline';
  const signatures: NoteSignature[] = [];
  for (const line of sigText.slice(0, -1).split('\n')) {
    if (!line.startsWith(SIG_PREFIX)) return `not a signature line: '${line.slice(0, 80)}'`;
    const rest = line.slice(SIG_PREFIX.length);
    const sp = rest.lastIndexOf(' ');
    if (sp <= 0) return `malformed signature line: '${line.slice(0, 80)}'`;
    const blob = Buffer.from(rest.slice(sp + 1), 'base64');
    if (blob.length < 5) return `malformed signature line: '${line.slice(0, 80)}'`;
    signatures.push({ name: rest.slice(0, sp), keyId: blob.subarray(0, 4), signature: blob.subarray(4) });
  }
  if (signatures.length === 0) return 'signed note has no signature';
  return { body, signatures };
}

/** True when one of the note's signatures is a valid signature by `key`. */
export function noteSignedBy(note: Note, key: VerifierKey): boolean {
  const data = Buffer.from(note.body, 'utf8');
  return note.signatures.some(
    (s) =>
      s.name === key.name &&
      s.keyId.equals(key.keyId) &&
      s.signature.length === 64 &&
      verify(null, data, key.key, s.signature),
  );
}
