/**
 * Pure parts of the scale-out work: the record-identity wire (src/protocol/record-id.ts), host subjects
 * (src/jetstream/nats.ts), the collector's JetStream keys, and the sink's recovery from its log's tail.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseCollectorConfig } from '../../src/config/collector-config.js';
import { hostSubject, hostToken, tokenHost } from '../../src/jetstream/nats.js';
import {
  encodeHello,
  formatRid,
  parseHello,
  parseRid,
  RECORD_NUMBER_SIZE,
  splitRecordId,
  writeRecordNumber,
} from '../../src/protocol/record-id.js';
import { lastWrittenSeq } from '../../src/sink/sink.js';

const F = '/etc/auditrelay/collector.conf';
const parse = (text: string) => parseCollectorConfig(text, F).config;

describe('record identities on the wire', () => {
  it('a hello is recognised exactly; a heartbeat of another client is not one; a malformed hello is an error', () => {
    expect(parseHello(encodeHello({ agent: 'AB12-x.y_z', boot: 1764600000123 }))).toEqual({
      agent: 'AB12-x.y_z',
      boot: 1764600000123,
    });
    expect(parseHello(Buffer.alloc(0))).toBeNull();
    expect(parseHello(Buffer.from('auditrelay-hello 2 agent=a boot=1'))).toBeNull();
    expect(() => parseHello(Buffer.from('auditrelay-hello 1 agent=a/b boot=1'))).toThrow(/malformed hello/);
    expect(() => parseHello(Buffer.from(`auditrelay-hello 1 agent=${'a'.repeat(65)} boot=1`))).toThrow(
      /malformed hello/,
    );
    expect(() => parseHello(Buffer.from('auditrelay-hello 1 agent=a boot=x'))).toThrow(/malformed hello/);
  });

  it('a RECORD_ID payload is an 8-byte big-endian number and the text; short, zero or huge numbers are refused', () => {
    const text = Buffer.from('type=USER msg=audit(1.0:1): x');
    const p = Buffer.alloc(RECORD_NUMBER_SIZE + text.length);
    writeRecordNumber(p, 0, 2 ** 40 + 7);
    text.copy(p, RECORD_NUMBER_SIZE);
    expect(splitRecordId(p)).toEqual({ seq: 2 ** 40 + 7, text });
    expect(() => splitRecordId(Buffer.alloc(7))).toThrow(/shorter than its 8-byte record number/);
    expect(() => splitRecordId(Buffer.alloc(9))).toThrow(/outside 1\.\.2\^53-1/);
    const huge = Buffer.alloc(9);
    huge.writeBigUInt64BE(2n ** 60n);
    expect(() => splitRecordId(huge)).toThrow(/outside 1\.\.2\^53-1/);
  });

  it('rids parse back; a collector-local id does not', () => {
    expect(parseRid(formatRid({ agent: 'agent-1', seq: 42 }))).toEqual({ agent: 'agent-1', seq: 42 });
    expect(parseRid('~0a1b2c:42')).toBeNull();
    expect(parseRid('agent:4x')).toBeNull();
  });
});

describe('host subjects', () => {
  it('a host name is one subject token, reversibly', () => {
    for (const host of ['web1.example.com', 'a_b', '10.0.0.1', 'fe80::1', 'ümlaut host', '*', '>', '']) {
      const token = hostToken(host);
      expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(tokenHost(token)).toBe(host);
    }
    expect(hostSubject('AUDIT', 'web1.example.com')).toBe('AUDIT.web1_2eexample_2ecom');
    expect(tokenHost('bad.token')).toBeNull();
    expect(tokenHost('_zz')).toBeNull();
  });
});

describe('collector keys for output = jetstream', () => {
  it('jetstream_servers takes a list with or without spaces after the commas', () => {
    const cfg = parse(
      'output = jetstream\njetstream_servers = nats://10.0.0.1:4222, nats://[::1]:4223,nats://n3.example.com:4224\njetstream_stream = AUDIT_1\njetstream_replicas = 5\n',
    );
    expect(cfg.output).toBe('jetstream');
    expect(cfg.jetstreamServers).toEqual([
      'nats://10.0.0.1:4222',
      'nats://[::1]:4223',
      'nats://n3.example.com:4224',
    ]);
    expect(cfg.jetstreamStream).toBe('AUDIT_1');
    expect(cfg.jetstreamReplicas).toBe(5);
  });

  it('bad values name the line, the key and what is allowed', () => {
    expect(() => parse('jetstream_servers = http://x:1\n')).toThrow(
      /collector.conf:1: jetstream_servers: "http:\/\/x:1" is not nats:\/\/HOST:PORT \(allowed: nats:\/\/HOST:PORT/,
    );
    expect(() => parse('jetstream_stream = a.b\n')).toThrow(/jetstream_stream: "a.b" is not a stream name/);
    expect(() => parse('jetstream_replicas = 7\n')).toThrow(
      /jetstream_replicas: .*out of range|jetstream_replicas/,
    );
    expect(() => parse('output = kafka\n')).toThrow(/output: unknown value "kafka"/);
  });
});

describe("the sink's recovery from its log", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-sink-tail-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the last js_seq of the log, else of LOG.1; 0 without either; a foreign log is refused', async () => {
    const log = path.join(dir, 'audit.log');
    expect(await lastWrittenSeq(log)).toBe(0);
    writeFileSync(`${log}.1`, 'node=a type=USER msg=x rid=a:1 js_seq=7\nnode=a type=USER msg=y js_seq=9\n');
    writeFileSync(log, '');
    expect(await lastWrittenSeq(log)).toBe(9);
    writeFileSync(log, 'node=a type=USER msg=z rid=a:3 js_seq=12\n');
    expect(await lastWrittenSeq(log)).toBe(12);
    writeFileSync(log, 'type=USER msg=audit(1.0:1): from auditd\n');
    await expect(lastWrittenSeq(log)).rejects.toThrow(
      /has lines without js_seq=: it is not a log written by the sink/,
    );
  });
});
