/**
 * The escaping rule of src/collector/sanitize.ts: what is escaped, that it is reversible (random inputs), and that
 * auditd's own tools still read the collector's log (the real ausearch).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { sanitizeRecord, unescapeLogLine } from '../../src/collector/sanitize.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { WireClient } from '../helpers/wire-client.js';

const hex = (s: string) => Buffer.from(s, 'hex');
const san = (b: Buffer) => sanitizeRecord(b).line.toString('latin1');

/** A byte or sequence that must never reach the log as such. */
function dangerous(line: Buffer): string | null {
  for (let i = 0; i < line.length; i++) {
    const b = line[i]!;
    if ((b < 0x20 && b !== 0x09 && b !== 0x1d) || b === 0x7f) return `byte 0x${b.toString(16)} at ${i}`;
    if (b === 0xc2 && line[i + 1]! >= 0x80 && line[i + 1]! <= 0x9f) return `C1 control at ${i}`;
    if (b === 0xe2 && line[i + 1] === 0x80 && (line[i + 2] === 0xa8 || line[i + 2] === 0xa9))
      return `U+2028/9 at ${i}`;
  }
  return null;
}

describe('sanitizeRecord: the stated rule', () => {
  it('leaves ordinary records (ASCII, tabs, valid UTF-8, lone backslashes) byte for byte', () => {
    for (const s of [
      'type=SYSCALL msg=audit(1.0:1): arch=c000003e syscall=59 comm="ls" exe="/usr/bin/ls"',
      'a\tb c:\\path\\x\\xZ1 \\X41 é ü 😀 ∀',
      `type=EXECVE msg=audit(1.0:2): argc=1 a0="${'y'.repeat(5000)}" path=c:\\dir\\x ü`,
    ]) {
      const b = Buffer.from(s);
      const r = sanitizeRecord(b);
      expect(r.found).toBeNull();
      expect(r.line).toBe(b);
    }
  });

  it("keeps auditd's ENRICHED separator (GS, 0x1d) byte for byte, as auditd writes it", () => {
    const b = Buffer.from(
      'type=USER_ACCT msg=audit(1615113648.981:15220): pid=9460 uid=1000 res=success\x1dUID="user" AUID="user"',
      'latin1',
    );
    const r = sanitizeRecord(b);
    expect(r.found).toBeNull();
    expect(r.line).toBe(b);
  });

  it('escapes C0 controls, DEL, C1 controls (UTF-8 and raw), U+2028/9 and escape look-alikes as \\xHH', () => {
    expect(san(Buffer.from('a\rb\vc\fd\ne\0f\x1b[31mg\x7fh'))).toBe(
      'a\\x0db\\x0bc\\x0cd\\x0ae\\x00f\\x1b[31mg\\x7fh',
    );
    expect(
      san(
        Buffer.concat([Buffer.from('nel'), hex('c285'), Buffer.from('csi'), hex('c29b'), Buffer.from('x')]),
      ),
    ).toBe('nel\\xc2\\x85csi\\xc2\\x9bx');
    expect(san(Buffer.concat([Buffer.from('ls'), hex('e280a8'), Buffer.from('ps'), hex('e280a9')]))).toBe(
      'ls\\xe2\\x80\\xa8ps\\xe2\\x80\\xa9',
    );
    // A raw 0x9b (CSI for an 8-bit terminal) that is not part of valid UTF-8; other invalid bytes stay.
    expect(san(hex('419b42ff43'))).toBe('A\\x9bB\xffC');
    // A literal "\x41" in a record is kept apart from an escape.
    expect(san(Buffer.from('path=C:\\x41'))).toBe('path=C:\\x5cx41');
    expect(sanitizeRecord(Buffer.from('a\rb\n\x1bc\\x00')).found).toEqual({
      'line-break': 2,
      control: 1,
      'escape-lookalike': 1,
    });
  });

  it('is reversible and leaves nothing dangerous, for random records', () => {
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const alphabet = [
      0x00, 0x0a, 0x0d, 0x1b, 0x5c, 0x78, 0x41, 0x66, 0x30, 0x7f, 0x85, 0x9b, 0xc2, 0xe2, 0x80, 0xa8, 0x20,
    ];
    for (let n = 0; n < 22_000; n++) {
      // Short records, and long ones (over 1 KiB: the quick test takes another path there).
      const len = n < 20_000 ? rand() % 24 : 1025 + (rand() % 300);
      const b = Buffer.alloc(len);
      const sparse = len > 1024 && n % 2 === 0;
      for (let i = 0; i < len; i++) {
        if (sparse) b[i] = rand() % 500 === 0 ? alphabet[rand() % alphabet.length]! : 0x61;
        else b[i] = rand() % 3 === 0 ? rand() % 256 : alphabet[rand() % alphabet.length]!;
      }
      const line = sanitizeRecord(b).line;
      expect(dangerous(line), b.toString('hex')).toBeNull();
      expect(unescapeLogLine(line).equals(b), b.toString('hex')).toBe(true);
    }
  });
});

const ausearch = requireOrSkip({ suite: 'collector log read by the real ausearch', binaries: ['ausearch'] });

describe.skipIf(!ausearch)('the collector log and auditd’s tools', () => {
  it('ausearch -if reads every record with CR, VT, FF, NEL, U+2028/9, ESC sequences and NUL in it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-ausearch-'));
    const logFile = path.join(dir, 'audit.log');
    const collector = new Collector(
      { ...DEFAULT_COLLECTOR_SETTINGS, port: 0, logFile, fsync: 'never' },
      pino({ level: 'silent' }),
    );
    try {
      const { port } = await collector.start();
      const nasty = [
        '\r',
        '\v',
        '\f',
        '\n',
        '\0',
        '\x1b[2J\x1b[31m',
        '\x1b]0;owned\x07',
        Buffer.from('c285', 'hex').toString('latin1'),
        Buffer.from('e280a8', 'hex').toString('latin1'),
        Buffer.from('e280a9', 'hex').toString('latin1'),
        Buffer.from('9b', 'hex').toString('latin1'),
      ];
      const payloads = nasty.map((bad, i) =>
        Buffer.from(
          `type=USER_CMD msg=audit(1700000000.${String(i).padStart(3, '0')}:${100 + i}): pid=${i} uid=0 auid=1000 ses=1 msg='cwd="/" cmd=6C73 terminal=pts/0 res=success ${bad}node=forged type=USER_LOGIN msg=audit(1.1:1): x'\n`,
          'latin1',
        ),
      );
      const client = await WireClient.connect({ host: '127.0.0.1', port });
      await client.write(Buffer.concat(payloads.map((p, i) => encodeEvent(i + 1, p))));
      const replies = await client.waitForReplies(payloads.length, 10_000);
      expect(replies.every((r) => r.type === MessageType.ACK)).toBe(true);
      client.destroy();
      const log = readFileSync(logFile);
      const lines = log.toString('latin1').split('\n').slice(0, -1);
      expect(lines).toHaveLength(payloads.length);
      expect(dangerous(log.subarray(0, -1).filter((b) => b !== 0x0a) as Buffer)).toBeNull();
      lines.forEach((l, i) => {
        expect(unescapeLogLine(Buffer.from(l, 'latin1')).equals(payloads[i]!.subarray(0, -1))).toBe(true);
      });
      // auditd's own tool parses every line as one event, with the right serial, and forges nothing.
      const raw = execFileSync('ausearch', ['-if', logFile, '--raw'], { encoding: 'latin1' });
      expect(raw.split('\n').filter((l) => l !== '')).toHaveLength(payloads.length);
      const interpreted = execFileSync('ausearch', ['-if', logFile, '-i'], { encoding: 'latin1' });
      expect(interpreted.split('\n').filter((l) => l === '----')).toHaveLength(payloads.length);
      expect(interpreted).not.toContain('USER_LOGIN msg=audit(1.1:1)\n');
      const one = execFileSync('ausearch', ['-if', logFile, '-a', '105', '--raw'], { encoding: 'latin1' });
      expect(one.trim()).toBe(lines[5]);
    } finally {
      await collector.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
