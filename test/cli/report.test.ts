/**
 * `auditrelay report` (docs/loss.md), the built CLI on log files as collectors write them: real records of the
 * corpus (beats, go-libaudit) with `node=` and the collector's ` rid=AGENT:SEQ`, in two collectors' directories
 * with a rotated and a gzipped file. Exit statuses: 0 no loss seen, 1 loss seen, 2 usage, 5 an input not read.
 * The union of both collectors' logs closes the gap a failover leaves in each; what neither has is reported, with
 * the kernel's loss report and auditd's restart; --since/--until; --json; go-libaudit's lost_messages.log by serial.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Report } from '../../src/evidence/report.js';
import { FIXTURE_CORPUS_DIR } from '../helpers/corpus.js';
import { killAll, requireBuild, runCli } from './process.js';

beforeAll(requireBuild);
const dirs: string[] = [];
afterEach(async () => {
  await killAll();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const T0 = 1_796_119_200; // 2026-12-01T10:00:00Z
/** Real single-record events of the corpus, re-stamped: node, time, serial, and the collector's rid. */
const samples = readFileSync(path.join(FIXTURE_CORPUS_DIR, 'beats_useradd.log'), 'utf8')
  .split('\n')
  .filter((l) => l.startsWith('type='));

function rec(seq: number, host = 'web1', agent = 'QZ7RAGENT1'): string {
  const s = samples[seq % samples.length]!.replace(
    /msg=audit\([^)]*\)/,
    `msg=audit(${T0 + seq}.000:${5000 + seq + (seq > 27 ? 1 : 0)})`,
  );
  return `node=${host} ${s} rid=${agent}:${seq}`;
}

function logs(): { a: string; b: string } {
  const root = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-report-'));
  dirs.push(root);
  const a = path.join(root, 'collector-a');
  const b = path.join(root, 'collector-b');
  mkdirSync(a);
  mkdirSync(b);
  const lines = (seqs: number[], host?: string) => `${seqs.map((s) => rec(s, host)).join('\n')}\n`;
  // Collector A: web1's records 1..20 (rotated at 10), then 31..40 after web1 came back from collector B; 35 is
  // missing everywhere. db1 (another agent) complete.
  writeFileSync(path.join(a, 'audit.log.1'), lines([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
  writeFileSync(
    path.join(a, 'audit.log'),
    `${lines([11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 31, 32, 33, 34, 36, 37, 38, 39, 40])}${[1, 2, 3]
      .map((s) => rec(s, 'db1', 'DB1AGENT'))
      .join('\n')}\n`,
  );
  // Collector B, while web1 failed over to it: 21..30, its rotated file compressed; the kernel reported loss and
  // auditd restarted on web1 then.
  writeFileSync(path.join(b, 'audit.log.1.gz'), gzipSync(lines([21, 22, 23, 24, 25])));
  writeFileSync(
    path.join(b, 'audit.log'),
    `${lines([26, 27])}node=web1 type=CONFIG_CHANGE msg=audit(${T0 + 27}.500:5028): op=set audit_lost=0 old=17 auid=0 ses=1 subj=unconfined res=1\n` +
      `node=web1 type=DAEMON_START msg=audit(${T0 + 27}.600:7798): op=start ver=3.0.9 format=enriched kernel=6.1.0 auid=4294967295 pid=251 uid=0 ses=4294967295 res=success\n` +
      lines([28, 29, 30]),
  );
  return { a, b };
}

describe('auditrelay report', () => {
  it("both collectors' logs: the failover is no gap; record 35 and the kernel's loss are; exit 1", async () => {
    const { a, b } = logs();
    const r = await runCli(['report', a, b]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toBe('');
    const out = r.stdout.split('\n');
    expect(out[0]).toBe('auditrelay report: 4 file(s), 44 record(s) of 2 host(s)');
    expect(out).toContain('db1: no loss seen');
    expect(out).toContain(
      'web1: LOSS: 1 record(s) missing in 1 gap(s) of the agent sequence; the kernel reported 17 event(s) lost (hint: 1 audit event serial(s) missing in 1 gap(s); --serial-gaps counts them as loss)',
    );
    expect(out).toContain('  agent QZ7RAGENT1: records 1..40, 39 record(s), missing 1: 35');
    expect(out).toContain('  auditd: 1 start(s) (the agent, its plugin, restarts with it)');
    expect(out).toContainEqual(
      expect.stringMatching(
        /^ {2}2026-12-01T10:00:27\.500Z CONFIG_CHANGE: 17 event\(s\) lost \(.*collector-b\/audit\.log:3\)$/,
      ),
    );
    expect(out).toContain(
      'summary: LOSS seen on 1 of 2 host(s): web1 (1 record(s) missing, 17 event(s) lost in kernels)',
    );

    // One collector's logs alone: the records web1 sent to B are a gap there.
    const alone = await runCli(['report', a]);
    expect(alone.code).toBe(1);
    expect(alone.stdout).toContain('  agent QZ7RAGENT1: records 1..40, 29 record(s), missing 11: 21..30, 35');
  });

  it('--json, and a time range that leaves the loss out: exit 0', async () => {
    const { a, b } = logs();
    const r = await runCli([
      'report',
      '--json',
      '--since',
      `${T0 + 1}`,
      '--until',
      '2026-12-01T10:00:25Z',
      a,
      b,
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as Report;
    expect(rep).toMatchObject({
      version: 1,
      since: '2026-12-01T10:00:01.000Z',
      until: '2026-12-01T10:00:25.000Z',
      summary: { hosts: 2, records: 27, hostsWithLoss: 0, missingRecords: 0, kernelLost: 0, unreadable: 0 },
    });
    const web1 = rep.hosts.find((h) => h.host === 'web1')!;
    expect(web1).toMatchObject({
      records: 24,
      first: '2026-12-01T10:00:01.000Z',
      last: '2026-12-01T10:00:24.000Z',
      loss: false,
      agents: [{ agent: 'QZ7RAGENT1', firstSeq: 1, lastSeq: 24, missing: 0, gaps: [] }],
    });
    expect(rep.files.map((f) => path.basename(path.dirname(f.path)) + '/' + path.basename(f.path))).toEqual([
      'collector-a/audit.log.1',
      'collector-a/audit.log',
      'collector-b/audit.log.1.gz',
      'collector-b/audit.log',
    ]);
  });

  it('usage errors: exit 2; an input that cannot be read: named, exit 5 (1 when loss is seen anyway)', async () => {
    const none = await runCli(['report']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^auditrelay: report needs at least one PATH/);
    const bad = await runCli(['report', '--since', 'yesterday', '/tmp']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^auditrelay: --since 'yesterday' is not a time: give 2026-12-01/);
    const order = await runCli([
      'report',
      '--since',
      '2026-12-02T00:00Z',
      '--until',
      '2026-12-01T00:00Z',
      '/tmp',
    ]);
    expect(order.code).toBe(2);
    expect(order.stderr).toMatch(/is not before --until/);

    const { a, b } = logs();
    const missing = path.join(path.dirname(a), 'nope.log');
    const db1Only = path.join(path.dirname(a), 'db1.log');
    writeFileSync(db1Only, `${[1, 2].map((s) => rec(s, 'db1', 'DB1AGENT')).join('\n')}\n`);
    const r = await runCli(['report', db1Only, missing]);
    expect(r.code).toBe(5);
    expect(r.stderr).toBe(`auditrelay: report: cannot read ${missing}: no such file or directory\n`);
    expect(r.stdout).toMatch(
      /summary: no loss seen: 1 host\(s\), 2 record\(s\); 1 input\(s\) could not be read/,
    );
    const both = await runCli(['report', a, b, missing]);
    expect(both.code).toBe(1);
  });

  it("go-libaudit's lost_messages.log (a real log with lost events): a hint by serial; --serial-gaps: exit 1", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-report-'));
    dirs.push(dir);
    const f = path.join(dir, 'audit.log');
    writeFileSync(
      f,
      readFileSync(path.join(FIXTURE_CORPUS_DIR, 'golibaudit_testdata_lost_messages.log'), 'utf8').replace(
        /^type=/gm,
        'node=host1 type=',
      ),
    );
    const hint = await runCli(['report', f]);
    expect(hint.code).toBe(0);
    expect(hint.stdout).toContain(
      'host1: no loss seen (hint: 9 audit event serial(s) missing in 1 gap(s); --serial-gaps counts them as loss)',
    );
    const strict = await runCli(['report', '--serial-gaps', f]);
    expect(strict.code).toBe(1);
    expect(strict.stdout).toContain('host1: LOSS: 9 audit event serial(s) missing in 1 gap(s)');
    expect(strict.stdout).toContain('50..58');
  });
});
