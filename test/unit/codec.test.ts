import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  encodeAscii,
  encodeEvent,
  encodeHeartbeat,
  encodeReply,
  FrameDecoder,
} from '../../src/protocol/codec.js';
import { MAX_SERVER_PAYLOAD, MessageType, typeName } from '../../src/protocol/constants.js';

const CORPUS = path.resolve(import.meta.dirname, '../fixtures/corpus');
const corpusRecords = (): Buffer[] =>
  readdirSync(CORPUS)
    .filter((f) => f.endsWith('.log'))
    .flatMap((f) =>
      readFileSync(path.join(CORPUS, f), 'latin1')
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => Buffer.from(`${l}\n`, 'latin1')),
    );

describe('managed format', () => {
  it('encodes the header exactly as captured from audisp-remote (reference §3.2)', () => {
    const payload = Buffer.alloc(0x50, 'a');
    const frame = encodeEvent(2, payload);
    expect(frame.subarray(0, 16).toString('hex')).toBe('fe0000ff000000000000500002000000');
    expect(encodeReply(MessageType.ACK, 5).toString('hex')).toBe('fe0000ff000000000040000005000000');
    expect(encodeHeartbeat(9).toString('hex')).toBe('fe0000ff000001000000000009000000');
  });

  it('round-trips every corpus record, whole and one byte at a time', () => {
    const recs = corpusRecords();
    expect(recs.length).toBeGreaterThan(100);
    const stream = Buffer.concat(recs.map((r, i) => encodeEvent(i + 1, r)));
    const whole = new FrameDecoder({ maxPayload: MAX_SERVER_PAYLOAD }).push(stream);
    expect(whole.map((m) => m.payload)).toEqual(recs);
    expect(whole.map((m) => m.sequence)).toEqual(recs.map((_, i) => i + 1));
    const dec = new FrameDecoder({ maxPayload: MAX_SERVER_PAYLOAD });
    const bytewise = [];
    for (let i = 0; i < stream.length; i++) bytewise.push(...dec.push(stream.subarray(i, i + 1)));
    expect(bytewise.map((m) => m.payload)).toEqual(recs);
    expect(dec.pendingBytes).toBe(0);
  });

  it('decodes several messages per chunk and keeps a partial tail', () => {
    const a = encodeEvent(1, Buffer.from('one\n'));
    const b = encodeEvent(2, Buffer.from('two\n'));
    const dec = new FrameDecoder({ maxPayload: 100 });
    const first = dec.push(Buffer.concat([a, b.subarray(0, 10)]));
    expect(first.map((m) => m.payload.toString())).toEqual(['one\n']);
    expect(dec.pendingBytes).toBe(10);
    expect(dec.push(b.subarray(10)).map((m) => m.sequence)).toEqual([2]);
  });

  it('reports bad magic after returning the messages before it', () => {
    const dec = new FrameDecoder({ maxPayload: 100 });
    const out = dec.push(Buffer.concat([encodeEvent(1, Buffer.from('ok\n')), Buffer.from('garbage\n')]));
    expect(out).toHaveLength(1);
    expect(dec.error?.message).toMatch(/bad magic 0x62726167 at stream offset 19/);
    expect(dec.push(encodeEvent(2, Buffer.from('x')))).toEqual([]);
  });

  it('rejects a length above the limit', () => {
    const dec = new FrameDecoder({ maxPayload: MAX_SERVER_PAYLOAD });
    dec.push(encodeEvent(1, Buffer.alloc(MAX_SERVER_PAYLOAD + 1)));
    expect(dec.error?.message).toMatch(/message length 8955 .* exceeds the limit of 8954 bytes/);
  });

  it('refuses to encode a payload that does not fit the 16-bit length', () => {
    expect(() => encodeEvent(1, Buffer.alloc(70_000))).toThrow(/16-bit length/);
  });

  it('names reply types', () => {
    expect(typeName(MessageType.DISKFULL)).toBe('DISKFULL');
    expect(typeName(0x60000007)).toBe('0x60000007');
  });
});

describe('ascii format', () => {
  it('is the record line with exactly one newline', () => {
    expect(encodeAscii(Buffer.from('type=X msg=a\n')).toString()).toBe('type=X msg=a\n');
    expect(encodeAscii(Buffer.from('type=X msg=a')).toString()).toBe('type=X msg=a\n');
  });
});
