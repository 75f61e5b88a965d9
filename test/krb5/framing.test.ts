import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  encodeToken,
  encodeTokenLength,
  MAX_HANDSHAKE_TOKEN_LENGTH,
  TokenDecoder,
  TokenTooLargeError,
} from '../../src/krb5/framing.js';

describe('krb5 token framing: encoder', () => {
  it('prefixes a 4-byte big-endian length', () => {
    expect(encodeToken(Buffer.from('abc')).toString('hex')).toBe('00000003616263');
    expect(encodeTokenLength(0x01020304).toString('hex')).toBe('01020304');
  });

  it('encodes the empty token (auditd client sends one first) as four zero bytes', () => {
    expect(encodeToken(Buffer.alloc(0)).toString('hex')).toBe('00000000');
  });

  it('is big-endian, unlike the RMW header: 8970 is 00 00 23 0a', () => {
    expect(encodeTokenLength(MAX_HANDSHAKE_TOKEN_LENGTH).toString('hex')).toBe('0000230a');
  });

  it('rejects lengths the prefix cannot carry', () => {
    expect(() => encodeTokenLength(-1)).toThrow(RangeError);
    expect(() => encodeTokenLength(2 ** 32)).toThrow(RangeError);
    expect(() => encodeTokenLength(1.5)).toThrow(RangeError);
    expect(encodeTokenLength(2 ** 32 - 1).toString('hex')).toBe('ffffffff');
  });

  it('accepts any Uint8Array', () => {
    expect(encodeToken(new Uint8Array([1, 2])).toString('hex')).toBe('000000020102');
  });
});

describe('krb5 token framing: streaming decoder', () => {
  const tokens = [
    Buffer.alloc(0),
    Buffer.from('first'),
    randomBytes(1000),
    Buffer.alloc(0),
    randomBytes(MAX_HANDSHAKE_TOKEN_LENGTH),
    Buffer.from([0]),
  ];
  const stream = Buffer.concat(tokens.map(encodeToken));

  it('decodes a whole stream pushed at once, empty tokens included', () => {
    const decoder = new TokenDecoder();
    expect(decoder.push(stream)).toEqual(tokens);
    expect(decoder.bufferedBytes).toBe(0);
  });

  it('decodes the same tokens whatever the chunking (byte by byte, odd sizes, random)', () => {
    for (const sizes of [[1], [3], [5], [4096], [7, 1, 13]]) {
      const decoder = new TokenDecoder();
      const out: Buffer[] = [];
      let offset = 0;
      for (let i = 0; offset < stream.length; i++) {
        const size = sizes[i % sizes.length]!;
        out.push(...decoder.push(stream.subarray(offset, offset + size)));
        offset += size;
      }
      expect(out).toEqual(tokens);
      expect(decoder.bufferedBytes).toBe(0);
    }
    const decoder = new TokenDecoder();
    const out: Buffer[] = [];
    for (let offset = 0; offset < stream.length; ) {
      const size = 1 + Math.floor(Math.random() * 300);
      out.push(...decoder.push(stream.subarray(offset, offset + size)));
      offset += size;
    }
    expect(out).toEqual(tokens);
  });

  it('reports a partial token (prefix and body) until it completes', () => {
    const decoder = new TokenDecoder();
    const framed = encodeToken(Buffer.from('hello'));
    expect(decoder.push(framed.subarray(0, 2))).toEqual([]);
    expect(decoder.bufferedBytes).toBe(2);
    expect(decoder.pendingTokenLength).toBeUndefined();
    expect(decoder.push(framed.subarray(2, 6))).toEqual([]);
    expect(decoder.pendingTokenLength).toBe(5);
    expect(decoder.push(framed.subarray(6))).toEqual([Buffer.from('hello')]);
    expect(decoder.bufferedBytes).toBe(0);
    expect(decoder.pendingTokenLength).toBeUndefined();
  });

  it('returns copies: mutating the pushed chunk afterwards does not change tokens or buffered data', () => {
    const decoder = new TokenDecoder();
    const chunk = Buffer.concat([
      encodeToken(Buffer.from('abc')),
      encodeToken(Buffer.from('xyz')).subarray(0, 5),
    ]);
    const [first] = decoder.push(chunk);
    chunk.fill(0);
    expect(first).toEqual(Buffer.from('abc'));
    expect(decoder.push(Buffer.from('yz'))).toEqual([Buffer.from('xyz')]);
  });

  it('accepts exactly the maximum and refuses one byte more as soon as the prefix is complete', () => {
    expect(new TokenDecoder().push(encodeToken(Buffer.alloc(8970)))).toHaveLength(1);
    const decoder = new TokenDecoder();
    expect(decoder.push(Buffer.from([0, 0, 0x23]))).toEqual([]);
    let error: unknown;
    try {
      decoder.push(Buffer.from([0x0b])); // 8971, no body needed to refuse it
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TokenTooLargeError);
    expect(error).toMatchObject({ code: 'ERR_KRB5_TOKEN_TOO_LARGE', length: 8971, maxTokenLength: 8970 });
    expect((error as Error).message).toBe('krb5 token length 8971 exceeds the maximum of 8970 bytes');
  });

  it('stays failed after an oversized length (the stream cannot be resynchronised)', () => {
    const decoder = new TokenDecoder({ maxTokenLength: 10 });
    expect(() => decoder.push(encodeTokenLength(0xffffffff))).toThrow(TokenTooLargeError);
    expect(() => decoder.push(encodeToken(Buffer.from('ok')))).toThrow(TokenTooLargeError);
    expect(decoder.bufferedBytes).toBe(0);
  });

  it('returns the tokens before an oversized one only if pushed separately (the push throws)', () => {
    const decoder = new TokenDecoder({ maxTokenLength: 4 });
    expect(decoder.push(encodeToken(Buffer.from('ok')))).toEqual([Buffer.from('ok')]);
    expect(() => decoder.push(encodeToken(Buffer.from('too long')))).toThrow(
      /length 8 exceeds the maximum of 4/,
    );
  });

  it('lets the limit change between tokens (e.g. after the handshake)', () => {
    const decoder = new TokenDecoder({ maxTokenLength: 3 });
    expect(decoder.push(encodeToken(Buffer.from('abc')))).toHaveLength(1);
    decoder.maxTokenLength = 100;
    expect(decoder.maxTokenLength).toBe(100);
    expect(decoder.push(encodeToken(Buffer.alloc(50)))).toHaveLength(1);
    expect(() => {
      decoder.maxTokenLength = -1;
    }).toThrow(RangeError);
    expect(() => new TokenDecoder({ maxTokenLength: 2 ** 32 })).toThrow(RangeError);
  });

  it('handles many small tokens in one chunk and an empty push', () => {
    const decoder = new TokenDecoder();
    const many = Array.from({ length: 500 }, (_, i) => Buffer.from(String(i)));
    expect(decoder.push(Buffer.concat(many.map(encodeToken)))).toEqual(many);
    expect(decoder.push(Buffer.alloc(0))).toEqual([]);
  });

  it('stays linear when a big token arrives one byte at a time', () => {
    const decoder = new TokenDecoder({ maxTokenLength: 1 << 18 });
    const big = randomBytes(1 << 18);
    const framed = encodeToken(big);
    const started = performance.now();
    let out: Buffer[] = [];
    for (let i = 0; i < framed.length; i++) {
      const got = decoder.push(framed.subarray(i, i + 1));
      if (got.length > 0) out = got;
    }
    expect(out).toEqual([big]);
    // quadratic buffering would take minutes here; linear takes well under a few seconds
    expect(performance.now() - started).toBeLessThan(20_000);
  });
});
