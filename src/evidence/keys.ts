/**
 * The Ed25519 key that signs checkpoints (docs/evidence.md, "Keys").
 *
 * Generated on first use in a private directory (src/fs/safe-files.ts: a real directory, owned by root or by us,
 * not writable by group or others; created 0700), mode 0400, written to an exclusive temporary file and linked into
 * place so that a crash never leaves half a key and an existing key is never replaced. The file is PEM PKCS#8
 * preceded by a `name:` line, the key name of the signed notes. A key file readable by group or others, not owned by
 * us (or root), a link or not a regular file is refused.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import { closeSync, fsyncSync, linkSync, readSync, unlinkSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EvidenceError, FileSafetyError } from '../errors.js';
import {
  checkPrivateDirectory,
  createExclusive,
  formatMode,
  openRegularForRead,
  syncDirectory,
} from '../fs/safe-files.js';
import { checkKeyName, type VerifierKey, verifierKey } from './note.js';

export const DEFAULT_KEY_FILE = '/var/lib/auditrelay/evidence/signing.key';

export interface SigningKey {
  name: string;
  privateKey: KeyObject;
  publicKey: Buffer;
  verifier: VerifierKey;
  file: string;
}

/** The default key name: `auditrelay-<host name>` (no white space or '+'). */
export function defaultKeyName(): string {
  return `auditrelay-${os.hostname().replace(/[\s+]/g, '_') || 'host'}`;
}

export interface KeyOptions {
  file: string;
  /** Name for a key created now (an existing key keeps the name in its file). Default defaultKeyName(). */
  name?: string;
  /** Create the key when the file does not exist. */
  create: boolean;
}

export function loadSigningKey(options: KeyOptions): SigningKey & { created: boolean } {
  const dir = path.dirname(path.resolve(options.file));
  checkPrivateDirectory(dir, { what: 'evidence key directory', create: options.create, mode: 0o700 });
  let text: string;
  try {
    text = readKeyFile(options.file);
  } catch (err) {
    const enoent = (err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT';
    if (!enoent || !options.create) throw err;
    createKeyFile(options.file, options.name ?? defaultKeyName());
    return { ...parseKeyFile(readKeyFile(options.file), options.file), created: true };
  }
  return { ...parseKeyFile(text, options.file), created: false };
}

const MAX_KEY_FILE = 16 * 1024;

function readKeyFile(file: string): string {
  const { fd, stat } = openRegularForRead(file, 'evidence signing key');
  try {
    const me = typeof process.geteuid === 'function' ? process.geteuid() : 0;
    if (stat.uid !== 0 && stat.uid !== me) {
      throw new FileSafetyError(
        `evidence signing key ${file} is owned by uid ${stat.uid}, not by root or by the running user (uid ${me}); fix with: chown ${me === 0 ? 'root' : me} ${file}`,
      );
    }
    if ((stat.mode & 0o077) !== 0) {
      throw new FileSafetyError(
        `evidence signing key ${file} is readable or writable by others (mode ${formatMode(stat.mode)}); anyone who can read it can forge checkpoints: fix with chmod 0400 ${file}, and consider the key compromised`,
      );
    }
    if (stat.size > MAX_KEY_FILE) {
      throw new EvidenceError(`evidence signing key ${file} is ${stat.size} bytes: not a key file`);
    }
    const buf = Buffer.alloc(stat.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function parseKeyFile(text: string, file: string): SigningKey {
  const m = /^name: *(\S+) *$/m.exec(text);
  if (!m) throw new EvidenceError(`evidence signing key ${file} has no 'name: NAME' line`);
  const name = m[1]!;
  const bad = checkKeyName(name);
  if (bad) throw new EvidenceError(`evidence signing key ${file}: ${bad}`);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: text.slice(text.indexOf('-----BEGIN')), format: 'pem' });
  } catch (err) {
    throw new EvidenceError(
      `evidence signing key ${file} is not a PEM private key: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new EvidenceError(
      `evidence signing key ${file} is a ${privateKey.asymmetricKeyType} key, not Ed25519`,
    );
  }
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' }) as { x: string };
  const publicKey = Buffer.from(jwk.x, 'base64url');
  return { name, privateKey, publicKey, verifier: verifierKey(name, publicKey), file };
}

function createKeyFile(file: string, name: string): void {
  const bad = checkKeyName(name);
  if (bad) throw new EvidenceError(`evidence key name: ${bad}`);
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
  const text =
    '# auditrelay evidence signing key (Ed25519): signs the checkpoints of the logs beside which it keeps\n' +
    '# evidence. Keep it on this host, mode 0400; print the public key with `auditrelay pubkey`.\n' +
    `name: ${name}\n${pem}`;
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = createExclusive(tmp, 0o400, 'temporary file for the evidence signing key');
  try {
    const buf = Buffer.from(text);
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    // link() never replaces: two processes creating a key at once end up with one of them.
    linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new EvidenceError(`cannot create evidence signing key ${file}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // gone
    }
  }
  syncDirectory(path.dirname(file));
}
