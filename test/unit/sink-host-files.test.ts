/**
 * The per-host layout of `auditrelay sink` (src/sink/host-files.ts) without NATS: hostile host names become safe,
 * distinct file names inside the directory; the recovery after a crash in the middle of a batch that spans hosts
 * writes every record exactly once, in each host's order; the number of open files stays bounded.
 */

import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { DEFAULT_LOG_MANAGEMENT } from '../../src/collector/log-store.js';
import { parseCollectorConfig } from '../../src/config/collector-config.js';
import { hostToken, tokenBytes } from '../../src/jetstream/nats.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import {
  CURSOR_FILE,
  type HostLine,
  HostLogs,
  hostFileName,
  hostFileStem,
  LIMIT_STEP,
  lastSeqOf,
  MAX_STEM,
  readCursor,
  stemHost,
  writeCursor,
} from '../../src/sink/host-files.js';

const HOSTILE: (string | Buffer)[] = [
  'web1.example.com',
  '',
  '.',
  '..',
  '../../etc/passwd',
  '/etc/passwd',
  'a/b',
  '.hidden',
  '_',
  '_2e',
  'a_2eb',
  'a.b',
  'with space',
  'nul\0byte',
  'ctl\x1d\n\r',
  'ümlaut',
  Buffer.from([0xff, 0xfe, 0x2f]),
  Buffer.from([0xc3]),
  'x'.repeat(5000),
  `${'x'.repeat(5000)}y`,
  '~tilde',
  'a.log.1',
  'a',
];

describe('host file names', () => {
  test('hostile names map to safe, distinct, reversible names', () => {
    const names = new Set<string>();
    for (const h of HOSTILE) {
      const bytes = typeof h === 'string' ? Buffer.from(h) : h;
      const name = hostFileName(h);
      expect(name, JSON.stringify(h)).toMatch(/^[A-Za-z0-9_~-][A-Za-z0-9._~-]*\.log$/);
      expect(name).not.toContain('/');
      expect(name.startsWith('.')).toBe(false);
      expect(Buffer.byteLength(name)).toBeLessThanOrEqual(MAX_STEM + 70);
      expect(path.basename(name)).toBe(name);
      names.add(name);
      const stem = hostFileStem(h);
      if (stem.includes('~')) {
        // Too long: cut and hashed, not reversible but distinct (the hash covers every byte).
        expect(bytes.length).toBeGreaterThan(MAX_STEM / 3);
        expect(stemHost(stem)).toBeNull();
      } else {
        expect(stemHost(stem)?.equals(bytes), JSON.stringify(h)).toBe(true);
      }
    }
    expect(names.size).toBe(HOSTILE.length);
    expect(hostFileName('web1.example.com')).toBe('web1.example.com.log');
    expect(hostFileName('..')).toBe('_2e..log');
    expect(hostFileName('../../etc/passwd')).toBe('_2e._2f.._2fetc_2fpasswd.log');
    expect(hostFileName('')).toBe('_.log');
  });

  test('the subject token gives the host bytes, also when they are not UTF-8', () => {
    expect(tokenBytes(hostToken('../x'))?.toString()).toBe('../x');
    const raw = Buffer.from([0xff, 0x2f, 0x2e]);
    const token = [...raw].map((b) => `_${b.toString(16).padStart(2, '0')}`).join('');
    expect(tokenBytes(token)?.equals(raw)).toBe(true);
    expect(hostFileName(tokenBytes(token)!)).toBe('_ff_2f..log');
    expect(tokenBytes('not.a*token')).toBeNull();
  });
});

describe('host files: recovery and bounds', () => {
  let dir: string;
  let logs: string;
  const log = pino({ level: 'silent' });

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-hostfiles-'));
    logs = path.join(dir, 'hosts');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const open = (maxOpen = 4) => new HostLogs({ dir: logs, maxOpen, management: DEFAULT_LOG_MANAGEMENT, log });

  /** Messages 1..n round-robin over `hosts`: line `tag=<i>:<n> js_seq=<seq>`. */
  function stream(hosts: (string | Buffer)[], n: number): HostLine[] {
    const counts = new Map<number, number>();
    const out: HostLine[] = [];
    for (let seq = 1; seq <= n; seq++) {
      const i = (seq * 7) % hosts.length;
      const k = (counts.get(i) ?? 0) + 1;
      counts.set(i, k);
      const h = hosts[i]!;
      out.push({
        host: typeof h === 'string' ? Buffer.from(h) : h,
        seq,
        text: Buffer.from(`type=USER msg=audit(1.0:${seq}): tag=${i}:${k} js_seq=${seq}\n`),
      });
    }
    return out;
  }

  function check(hosts: (string | Buffer)[], lines: HostLine[]): void {
    for (let i = 0; i < hosts.length; i++) {
      const h = hosts[i]!;
      const file = path.join(logs, hostFileName(h));
      const want = lines
        .filter((l) => l.host.equals(typeof h === 'string' ? Buffer.from(h) : h))
        .map((l) => l.text.toString())
        .join('');
      expect(existsSync(file) ? readFileSync(file, 'utf8') : '', `host ${i}`).toBe(want);
    }
    // Nothing but the host files and the cursor in the directory, nothing beside it.
    const names = readdirSync(logs).sort();
    expect(names).toEqual([CURSOR_FILE, ...new Set(hosts.map((h) => hostFileName(h)))].sort());
    expect(readdirSync(dir)).toEqual(['hosts']);
  }

  test('batches spanning hosts, with a crash after some hosts of a batch were written: each record once, in order', async () => {
    const hosts = HOSTILE;
    const all = stream(hosts, 400);
    const a = open(5);
    expect(await a.start()).toBe(0);
    await a.write(all.slice(0, 100), 100);
    await a.write(all.slice(100, 200), 200);
    expect(a.openFiles).toBeLessThanOrEqual(5);
    expect(a.evicted).toBeGreaterThan(0);
    await a.close();
    expect(readCursor(logs)).toEqual({ done: 200, limit: 100 + LIMIT_STEP });
    // The crash: batch 201..300 reached some host files (those of its first half), the cursor did not move.
    const batch = all.slice(200, 300);
    const firstHalf = batch.slice(0, 50);
    for (const l of firstHalf) {
      writeFileSync(path.join(logs, hostFileName(l.host)), l.text, { flag: 'a' });
    }
    // Restart: from the cursor; the whole batch comes again, then the rest.
    const b = open(3);
    expect(await b.start()).toBe(200);
    const r = await b.write(batch, 300);
    expect(r).toEqual({ written: 50, skipped: 50 });
    await b.write(all.slice(300), 400);
    await b.close();
    check(hosts, all);
    expect(readCursor(logs)?.done).toBe(400);
  });

  test('a batch whose writing failed halfway is given again: files written (and closed since) are not written twice', async () => {
    // In the failing batch, evil's records come in the last of three steps (2 files open at most).
    const hosts = ['evil', 'b', 'c', 'd', 'e'];
    const all = stream(hosts, 50).filter((l) => l.seq > 0);
    const a = open(2);
    await a.start();
    await a.write(all.slice(0, 10), 10);
    // evil's file is replaced by a link while it is closed (the least recently used): the next batch fails there.
    const evil = path.join(logs, hostFileName('evil'));
    renameSync(evil, path.join(dir, 'evil.saved'));
    symlinkSync(path.join(dir, 'nowhere'), evil);
    const batch = all.slice(10, 30);
    await expect(a.write(batch, 30)).rejects.toThrow(/symbolic link/);
    expect(readCursor(logs)?.done).toBe(10);
    rmSync(evil);
    renameSync(path.join(dir, 'evil.saved'), evil);
    await a.write(batch, 30);
    await a.write(all.slice(30), 50);
    expect(a.skipped).toBeGreaterThan(0);
    await a.close();
    check(hosts, all);
    expect(existsSync(path.join(dir, 'nowhere'))).toBe(false);
  });

  test('a torn last line (killed mid-write) is cut and that record written once', async () => {
    const hosts = ['h1', 'h2'];
    const all = stream(hosts, 20);
    const a = open();
    await a.start();
    await a.write(all.slice(0, 10), 10);
    await a.close();
    const l = all[10]!;
    writeFileSync(path.join(logs, hostFileName(l.host)), l.text.subarray(0, 9), { flag: 'a' });
    const b = open();
    expect(await b.start()).toBe(10);
    await b.write(all.slice(10), 20);
    await b.close();
    check(hosts, all);
  });

  test('no cursor but host files: every file tail decides (the whole stream again, written once)', async () => {
    const hosts = ['h1', 'h2', 'h3'];
    const all = stream(hosts, 60);
    const a = open();
    await a.start();
    await a.write(all.slice(0, 30), 30);
    await a.close();
    rmSync(path.join(logs, CURSOR_FILE));
    const b = open(1);
    expect(await b.start()).toBe(0);
    expect(b.cursor.limit).toBe(30);
    await b.write(all.slice(0, 30), 30);
    await b.write(all.slice(30), 60);
    expect(b.skipped).toBe(30);
    await b.close();
    check(hosts, all);
    expect(readCursor(logs)).toEqual({ done: 60, limit: 30 + LIMIT_STEP + 30 });
  });

  test('a rotated host file: the tail of LOG.1 gives the last sequence', async () => {
    mkdirSync(logs, { mode: 0o750 });
    chmodSync(logs, 0o750);
    writeFileSync(path.join(logs, 'h1.log.1'), 'a js_seq=5\nb js_seq=9\n');
    writeFileSync(path.join(logs, 'h1.log'), '');
    expect(await lastSeqOf(path.join(logs, 'h1.log'))).toBe(9);
    writeFileSync(path.join(logs, 'h1.log'), `${'z'.repeat(300_000)} js_seq=12\n`);
    expect(await lastSeqOf(path.join(logs, 'h1.log'))).toBe(12);
    writeFileSync(path.join(logs, 'h2.log'), 'not a sink log\n');
    await expect(lastSeqOf(path.join(logs, 'h2.log'))).rejects.toThrow(/without js_seq=/);
  });

  test('a symlink planted as a host file is never followed; a writable directory is refused', async () => {
    const a = open();
    await a.start();
    const target = path.join(dir, 'target');
    writeFileSync(target, 'untouched\n');
    symlinkSync(target, path.join(logs, hostFileName('evil')));
    const line = { host: Buffer.from('evil'), seq: 1, text: Buffer.from('x js_seq=1\n') };
    await expect(a.write([line], 1)).rejects.toThrow(/symbolic link/);
    expect(readFileSync(target, 'utf8')).toBe('untouched\n');
    expect(readCursor(logs)?.done ?? 0).toBe(0);
    await a.close();
    chmodSync(logs, 0o777);
    await expect(open().start()).rejects.toThrow(/writable by others/);
    chmodSync(logs, 0o750);
    expect(lstatSync(path.join(logs, hostFileName('evil'))).isSymbolicLink()).toBe(true);
  });

  test('sink_max_open_logs above the descriptor limit is lowered to what it leaves, with a warning', () => {
    const script = [
      `import { HostLogs } from ${JSON.stringify(path.join(PACKAGE_ROOT, 'dist/src/sink/host-files.js'))};`,
      `import { DEFAULT_LOG_MANAGEMENT } from ${JSON.stringify(path.join(PACKAGE_ROOT, 'dist/src/collector/log-store.js'))};`,
      `const warnings = [];`,
      `const log = { warn: (_o, m) => warnings.push(m), info() {}, error() {}, debug() {} };`,
      `const h = new HostLogs({ dir: ${JSON.stringify(logs)}, maxOpen: 1000, management: DEFAULT_LOG_MANAGEMENT, log });`,
      `await h.start();`,
      `const lines = [];`,
      `for (let i = 0; i < 60; i++) lines.push({ host: Buffer.from('h' + i), seq: i + 1, text: Buffer.from('r js_seq=' + (i + 1) + '\\n') });`,
      `await h.write(lines, 60);`,
      `console.log(JSON.stringify({ warnings, open: h.openFiles }));`,
      `await h.close();`,
    ].join('\n');
    const r = spawnSync(
      'sh',
      ['-c', 'ulimit -n 100 && exec "$0" --input-type=module -e "$1"', process.execPath, script],
      {
        encoding: 'utf8',
      },
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { warnings: string[]; open: number };
    expect(out.warnings[0]).toMatch(
      /sink_max_open_logs = 1000 needs more descriptors than the limit of 100 allows: at most 36 host files/,
    );
    expect(out.open).toBe(36);
    expect(readdirSync(logs).length).toBe(61);
  });

  test('cursor: written atomically, a malformed one is refused with what to do', () => {
    mkdirSync(logs, { mode: 0o750 });
    expect(readCursor(logs)).toBeNull();
    writeCursor(logs, { done: 7, limit: 10_007 });
    expect(readCursor(logs)).toEqual({ done: 7, limit: 10_007 });
    writeFileSync(path.join(logs, CURSOR_FILE), 'garbage');
    expect(() => readCursor(logs)).toThrow(/not a sink cursor.*remove it/);
  });

  test('600 hosts with at most 8 files open', async () => {
    const hosts = Array.from({ length: 600 }, (_, i) => `host-${i}.example`);
    const all = hosts.map((h, i) => ({
      host: Buffer.from(h),
      seq: i + 1,
      text: Buffer.from(`r js_seq=${i + 1}\n`),
    }));
    const a = open(8);
    await a.start();
    let max = 0;
    for (let i = 0; i < all.length; i += 200) {
      await a.write(all.slice(i, i + 200), i + 200);
      max = Math.max(max, a.openFiles);
    }
    expect(max).toBeLessThanOrEqual(8);
    expect(a.opened).toBe(600);
    await a.close();
    expect(readdirSync(logs).length).toBe(601);
    expect(readFileSync(path.join(logs, 'host-599.example.log'), 'utf8')).toBe('r js_seq=600\n');
  }, 60_000);
});

describe('configuration keys', () => {
  test('sink_log_layout, sink_log_dir, sink_max_open_logs: defaults, values, errors, warnings', () => {
    const d = parseCollectorConfig('', 'sink.conf').config;
    expect([d.sinkLogLayout, d.sinkLogDir, d.sinkMaxOpenLogs]).toEqual([
      'single',
      '/var/log/auditrelay/hosts',
      256,
    ]);
    const { config, warnings } = parseCollectorConfig(
      'sink_log_layout = per_host\nsink_log_dir = /srv/hosts\nsink_max_open_logs = 64\nevidence = yes\nspace_left = 100\n',
      'sink.conf',
    );
    expect([config.sinkLogLayout, config.sinkLogDir, config.sinkMaxOpenLogs]).toEqual([
      'per_host',
      '/srv/hosts',
      64,
    ]);
    expect(warnings.map((w) => w.key).sort()).toEqual(['evidence', 'space_left']);
    expect(warnings.find((w) => w.key === 'evidence')?.text).toMatch(/sink.conf:4: evidence: .*no evidence/);
    expect(parseCollectorConfig('evidence = yes\n', 'sink.conf').warnings).toEqual([]);
    expect(() => parseCollectorConfig('sink_log_layout = per-host\n', 'sink.conf')).toThrow(/per_host/);
    expect(() => parseCollectorConfig('sink_log_dir = hosts\n', 'sink.conf')).toThrow(/absolute/);
    expect(() => parseCollectorConfig('sink_max_open_logs = 0\n', 'sink.conf')).toThrow(/sink_max_open_logs/);
  });
});
