/**
 * The hashing and signing underneath the evidence store, against published vectors: RFC 6962 tree heads (the
 * certificate-transparency test vectors), RFC 9162 inclusion proofs checked both ways for every index and size up
 * to 40 (also from a compact range, as a rotated segment makes them), and the C2SP signed-note example note and
 * key of golang.org/x/mod/sumdb/note (interoperability of key ids and signatures).
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CompactRange,
  EMPTY_ROOT,
  nodeHash,
  PartialTree,
  rootFromInclusionPath,
  sha256,
} from '../../src/evidence/merkle.js';
import {
  formatCheckpoint,
  noteSignedBy,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  signNote,
  verifierKey,
} from '../../src/evidence/note.js';

const leafHash = (data: Buffer) => sha256(Buffer.concat([Buffer.from([0]), data]));

/** MTH by the RFC's recursive definition, for comparison. */
function mth(leaves: Buffer[]): Buffer {
  if (leaves.length === 0) return EMPTY_ROOT;
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}

describe('RFC 6962 Merkle tree', () => {
  it('gives the published tree heads for the test vector leaves', () => {
    const data = [
      '',
      '00',
      '10',
      '2021',
      '3031',
      '40414243',
      '5051525354555657',
      '606162636465666768696a6b6c6d6e6f',
    ];
    const roots = [
      '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
      'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
      'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
      '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
      '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
      'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
      '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
    ];
    const tree = new CompactRange();
    expect(tree.root().toString('hex')).toBe(
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
    data.forEach((d, i) => {
      tree.append(leafHash(Buffer.from(d, 'hex')));
      expect(tree.root().toString('hex')).toBe(roots[i]);
    });
  });

  it('makes inclusion proofs that verify, from the full tree and from a compact range, for every index and size', () => {
    const leaves = Array.from({ length: 40 }, (_, i) => leafHash(Buffer.from(`leaf ${i}`)));
    for (let size = 1; size <= 40; size++) {
      const root = mth(leaves.slice(0, size));
      for (const start of [0, Math.floor(size / 3), size - 1]) {
        const range = new CompactRange();
        for (let i = 0; i < start; i++) range.append(leaves[i]!);
        const tree = new PartialTree(range, size, (i) => leaves[i]!);
        expect(tree.mth(0, size).equals(root)).toBe(true);
        for (let index = start; index < size; index++) {
          const path = tree.inclusionPath(index, size);
          expect(rootFromInclusionPath(index, size, leaves[index]!, path)?.equals(root)).toBe(true);
          // A wrong leaf, index or size does not verify.
          expect(
            rootFromInclusionPath(index, size, leaves[(index + 1) % 40]!, path)?.equals(root) ?? false,
          ).toBe(false);
          if (size > 1) {
            expect(
              rootFromInclusionPath((index + 1) % size, size, leaves[index]!, path)?.equals(root) ?? false,
            ).toBe(index === (index + 1) % size);
          }
        }
      }
    }
  });

  it('refuses a compact range that does not fit its size', () => {
    expect(() => new CompactRange(3, [EMPTY_ROOT])).toThrow(/2 subtree roots/);
  });
});

describe('C2SP signed notes and checkpoints', () => {
  it('reads the example key and note of golang.org/x/mod/sumdb/note (key id and signature interoperate)', () => {
    const key = parseVerifierKey('PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW');
    if (typeof key === 'string') throw new Error(key);
    expect(key.keyId.toString('hex')).toBe('c74f20a3');
    const text =
      'If you think cryptography is the answer to your problem,\n' +
      "then you don't know what your problem is.\n" +
      '\n' +
      '\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n';
    const note = parseNote(text);
    if (typeof note === 'string') throw new Error(note);
    expect(noteSignedBy(note, key)).toBe(true);
    const altered = parseNote(text.replace('answer', 'Answer'));
    expect(typeof altered !== 'string' && noteSignedBy(altered, key)).toBe(false);
  });

  it('signs and verifies checkpoints; rejects bad keys and malformed checkpoints', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const raw = Buffer.from((publicKey.export({ format: 'jwk' }) as { x: string }).x, 'base64url');
    const vk = verifierKey('auditrelay-test', raw);
    expect(parseVerifierKey(vk.text)).toMatchObject({ name: 'auditrelay-test' });
    const body = formatCheckpoint({
      origin: 'host/auditrelay/log',
      size: 5,
      root: sha256(Buffer.from('x')),
      extensions: ['time t'],
    });
    expect(parseCheckpoint(body)).toMatchObject({
      origin: 'host/auditrelay/log',
      size: 5,
      extensions: ['time t'],
    });
    const note = parseNote(signNote(body, 'auditrelay-test', privateKey, raw));
    if (typeof note === 'string') throw new Error(note);
    expect(noteSignedBy(note, vk)).toBe(true);
    const other = verifierKey('auditrelay-test', Buffer.alloc(32, 1));
    expect(noteSignedBy(note, other)).toBe(false);
    expect(parseVerifierKey(vk.text.replace(/\+[0-9a-f]{8}\+/, '+00000000+'))).toMatch(/does not match/);
    expect(parseVerifierKey('has space+00000000+AA==')).toMatch(/white space/);
    expect(parseVerifierKey('name+0000+AA==')).toMatch(/not a verifier key/);
    expect(parseCheckpoint('o\n012\nAAAA\n')).toMatch(/decimal/);
    expect(parseCheckpoint('o\n1\nAAAA\n')).toMatch(/base64 SHA-256/);
    expect(parseNote('no signature\n')).toMatch(/blank line/);
  });
});
