/**
 * Loss you can see (docs/loss.md), the pure logic of src/evidence/loss.ts and the analysis of
 * src/evidence/report.ts: sequences as bounded ranges (gaps, late records, duplicates, the bound), record
 * identities at the end of a line, the kernel's and auditd's loss reports, audit serials split into boots, the union
 * of several collectors' logs by agent id, the time range, time arguments.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AgentSequence,
  lossSignalOf,
  lossSignalOfLine,
  ridOfLine,
  SeqRanges,
  SerialEpochs,
} from '../../src/evidence/loss.js';
import { hostOf, LossAnalysis, NO_HOST, parseTimeArg } from '../../src/evidence/report.js';
import { FIXTURE_CORPUS_DIR } from '../helpers/corpus.js';

const corpus = (name: string) =>
  readFileSync(path.join(FIXTURE_CORPUS_DIR, name), 'utf8')
    .split('\n')
    .filter((l) => l !== '');

describe('SeqRanges', () => {
  it('in order: one range, nothing missing', () => {
    const r = new SeqRanges(8);
    for (let i = 1; i <= 1000; i++) expect(r.add(i)).toEqual({ kind: 'new', skipped: 0, filled: 0 });
    expect([r.min, r.max, r.ranges, r.missing(), r.count()]).toEqual([1, 1000, 1, 0, 1000]);
    expect(r.gaps()).toEqual([]);
  });

  it('a jump opens a gap, a late record fills it, a repeat is a duplicate', () => {
    const r = new SeqRanges(8);
    r.add(1);
    r.add(2);
    expect(r.add(6)).toEqual({ kind: 'new', skipped: 3, filled: 0 });
    expect(r.gaps()).toEqual([[3, 5]]);
    expect(r.add(4)).toEqual({ kind: 'new', skipped: 0, filled: 1 });
    expect(r.gaps()).toEqual([
      [3, 3],
      [5, 5],
    ]);
    expect(r.add(3).filled).toBe(1);
    expect(r.add(5).filled).toBe(1);
    expect([r.ranges, r.missing(), r.gaps()]).toEqual([1, 0, []]);
    expect(r.add(4).kind).toBe('dup');
    // Below the lowest: the sequence starts earlier (another log read later), not a gap filled.
    expect(r.add(0)).toEqual({ kind: 'new', skipped: 0, filled: 0 });
  });

  it('bounded: past maxRanges the oldest gaps are merged, still counted as missing', () => {
    const r = new SeqRanges(4);
    for (let i = 0; i < 20; i++) r.add(i * 10); // 19 gaps of 9
    expect(r.ranges).toBe(4);
    expect(r.missing()).toBe(19 * 9);
    expect(r.gaps()).toEqual([
      [161, 169],
      [171, 179],
      [181, 189],
    ]);
    expect(r.forgottenMissing).toBe(16 * 9);
    // A late record in the forgotten part is taken for a duplicate (documented).
    expect(r.add(5).kind).toBe('dup');
  });

  it('random order gives the same set as in order', () => {
    const r = new SeqRanges(1000);
    const seqs = Array.from({ length: 500 }, (_, i) => i + 1).filter((n) => n % 37 !== 0);
    // Deterministic shuffle.
    for (let i = seqs.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [seqs[i], seqs[j]] = [seqs[j]!, seqs[i]!];
    }
    for (const s of seqs) r.add(s);
    expect(r.gaps()).toEqual(Array.from({ length: 13 }, (_, i) => [37 * (i + 1), 37 * (i + 1)]));
    expect(r.missing()).toBe(13);
  });
});

describe('record identities and loss reports in lines', () => {
  it('rid= only as the last field, in the strict form', () => {
    expect(ridOfLine('node=a type=X msg=audit(1.000:1): x=1 peer_id=tls-psk:web1 rid=AB12-x_.:42')).toEqual({
      agent: 'AB12-x_.',
      seq: 42,
    });
    expect(ridOfLine('type=X msg=audit(1.000:1): rid=a:1 x=2')).toBeNull();
    expect(ridOfLine('type=X msg=audit(1.000:1): x=1 rid=a:b')).toBeNull();
    expect(ridOfLine(`type=X msg=audit(1.000:1): x=1 rid=${'a'.repeat(65)}:1`)).toBeNull();
    expect(ridOfLine('type=X msg=audit(1.000:1): x=1 rid=a:99999999999999999')).toBeNull();
  });

  it("the kernel's lost counter and auditd's records", () => {
    // The kernel's record when the lost counter is reset (kernel/audit.c audit_log_config_change("audit_lost", 0, lost)).
    const reset = 'op=set audit_lost=0 old=1234 auid=0 ses=1 subj=unconfined res=1';
    expect(lossSignalOf('CONFIG_CHANGE', reset)).toEqual({
      type: 'CONFIG_CHANGE',
      kind: 'kernel-lost',
      lost: 1234,
    });
    expect(lossSignalOf('CONFIG_CHANGE', 'op=set audit_lost=0 old=0 auid=0 res=1')).toBeNull();
    // Real CONFIG_CHANGE records (go-libaudit's RHEL 7 sample): no loss.
    for (const line of corpus('golibaudit_aucoalesce_rhel-7-linux-3.10.0.log').filter((l) =>
      l.includes('CONFIG_CHANGE'),
    ))
      expect(lossSignalOfLine(Buffer.from(line))).toBeNull();
    expect(lossSignalOf('DAEMON_ABORT', 'auditd error halt, auid=0 pid=1 res=failed')?.kind).toBe(
      'daemon-abort',
    );
    expect(lossSignalOf('DAEMON_ERR', 'auditd error, auid=0 res=failed')?.kind).toBe('daemon-error');
    expect(lossSignalOf('DAEMON_RESUME', 'auditd resuming logging, res=success')?.kind).toBe('daemon-resume');
    expect(lossSignalOf('DAEMON_ROTATE', 'x')).toBeNull();
    expect(lossSignalOf('DAEMON_END', 'auditd normal halt lost=5 res=success')).toEqual({
      type: 'DAEMON_END',
      kind: 'kernel-lost',
      lost: 5,
    });
    expect(lossSignalOf('USER_CMD', "msg='lost=9'")).toBeNull();
    // The real DAEMON_START / DAEMON_END of the corpus, through the byte path the collector uses.
    const daemon = corpus('golibaudit_auparse_audit-rhel7.log').filter((l) => l.includes('type=DAEMON_'));
    expect(daemon.map((l) => lossSignalOfLine(Buffer.from(`node=web1 ${l}`))?.kind ?? null)).toEqual([
      null, // DAEMON_CONFIG
      'daemon-end',
      'daemon-start',
    ]);
    expect(
      lossSignalOfLine(Buffer.from(`node=h type=CONFIG_CHANGE msg=audit(1.000:1): ${reset}`))?.lost,
    ).toBe(1234);
    expect(lossSignalOfLine(Buffer.from('type=SYSCALL msg=audit(1.000:1): x=1'))).toBeNull();
    expect(lossSignalOfLine(Buffer.from('node=x'))).toBeNull();
  });

  it('agent restarts: a later boot', () => {
    const a = new AgentSequence('a', 8);
    expect(a.noteBoot(1000)).toBe(false);
    expect(a.noteBoot(1000)).toBe(false);
    expect(a.noteBoot(900)).toBe(false); // an old session still open
    expect(a.noteBoot(2000)).toBe(true);
    expect(a.restarts).toBe(1);
  });
});

describe('audit serials', () => {
  it("go-libaudit's lost_messages.log: serials 50..58 missing; normal.log: none", () => {
    for (const [file, missing] of [
      ['golibaudit_testdata_lost_messages.log', [[50, 58]]],
      ['golibaudit_testdata_normal.log', []],
    ] as const) {
      const a = new LossAnalysis();
      for (const l of corpus(file)) a.line(`node=h1 ${l}`);
      const h = a.report().hosts[0]!;
      expect(h.serials.gaps).toEqual(missing);
      expect(h.loss).toBe(false); // a hint unless --serial-gaps
    }
    const strict = new LossAnalysis({ serialGaps: true });
    for (const l of corpus('golibaudit_testdata_lost_messages.log')) strict.line(`node=h1 ${l}`);
    expect(strict.report().hosts[0]!.loss).toBe(true);
  });

  it('a reboot (later time, serials from the start again) is a new boot, not a gap; DAEMON_* are not kernel serials', () => {
    const e = new SerialEpochs(64, 8);
    const t0 = Date.UTC(2026, 11, 1, 10);
    for (let s = 5000; s < 5100; s++) e.add(t0 + s, s);
    for (let s = 1; s < 50; s++) e.add(t0 + 600_000 + s, s); // after a reboot
    e.add(t0 + 5050, 5050); // a record of the first boot read later (another log)
    expect(e.epochs().length).toBe(2);
    expect(e.missing()).toBe(0);
    // The same host's serials across test3.log's stitched samples: 194434 missing, other samples are other boots.
    const a = new LossAnalysis();
    for (const l of corpus('golibaudit_auparse_test3.log')) a.line(`node=h ${l}`);
    const h = a.report().hosts[0]!;
    expect(h.serials.gaps[0]).toEqual([194434, 194434]);
    expect(h.serials.boots).toBe(3);
    // Records without a host name are not analysed by serial (they may come from many hosts).
    const none = new LossAnalysis();
    for (const l of corpus('golibaudit_auparse_test3.log')) none.line(l);
    expect(none.report().hosts[0]).toMatchObject({ host: NO_HOST, serials: { missingEvents: 0 } });
  });
});

describe('several collectors: union by agent id; time range', () => {
  const base = corpus('beats_test.log')[0]!.replace(/msg=audit\([^)]*\)/, 'msg=audit(TIME:SERIAL)');
  const line = (seq: number, host = 'web1', agent = 'AGENT1') =>
    `node=${host} ${base.replace('TIME', `${1_764_583_200 + seq}.000`).replace('SERIAL', String(1000 + seq))} rid=${agent}:${seq}`;

  it('records sent to another collector after a failover are no gap; what neither has is', () => {
    const a = new LossAnalysis();
    for (const s of [1, 2, 3, 4, 5, 9, 11, 12]) a.line(line(s), 'collector-a.log', s);
    const alone = a.report();
    expect(alone.hosts[0]!.agents[0]).toMatchObject({
      missing: 4,
      gaps: [
        [6, 8],
        [10, 10],
      ],
    });
    for (const s of [6, 7, 8, 9]) a.line(line(s), 'collector-b.log', s); // 9: sent to both (ack lost)
    const both = a.report();
    expect(both.hosts[0]).toMatchObject({
      host: 'web1',
      records: 12,
      missingRecords: 1,
      loss: true,
      agents: [{ agent: 'AGENT1', records: 12, duplicates: 1, firstSeq: 1, lastSeq: 12, gaps: [[10, 10]] }],
    });
    expect(both.hosts[0]!.summary).toMatch(/^LOSS: 1 record\(s\) missing in 1 gap/);
    // The serial hint agrees: the event of record 10 is missing.
    expect(both.hosts[0]!.serials.gaps).toEqual([[1010, 1010]]);
  });

  it('--since/--until on audit time: gaps only between the records in range', () => {
    const a = new LossAnalysis({ since: (1_764_583_200 + 3) * 1000, until: (1_764_583_200 + 8) * 1000 });
    for (const s of [1, 2, 3, 5, 6, 7, 8, 9]) a.line(line(s));
    const h = a.report().hosts[0]!;
    expect(h).toMatchObject({ records: 4, agents: [{ firstSeq: 3, lastSeq: 7, gaps: [[4, 4]] }] });
    expect(h.first).toBe(new Date((1_764_583_200 + 3) * 1000).toISOString());
  });

  it('the host: an authenticated stamp, else node=, else the address stamp', () => {
    expect(hostOf('node=n1 type=X msg=audit(1.000:1): a=1 peer_id=x509:web1.example.com rid=a:1', 'n1')).toBe(
      'web1.example.com',
    );
    expect(hostOf('node=n1 type=X msg=audit(1.000:1): a=1 peer_id=addr:10.0.0.1', 'n1')).toBe('n1');
    expect(hostOf('type=X msg=audit(1.000:1): a=1 peer_id=addr:10.0.0.1', null)).toBe('10.0.0.1');
    expect(hostOf('type=X msg=audit(1.000:1): a=1', null)).toBe(NO_HOST);
  });
});

describe('time arguments', () => {
  const now = Date.UTC(2026, 11, 1, 12);
  it('ISO 8601, Unix seconds, relative', () => {
    expect(parseTimeArg('2026-12-01T10:00:00Z', '--since', now)).toBe(Date.UTC(2026, 11, 1, 10));
    expect(parseTimeArg('2026-12-01 10:00+01:00', '--since', now)).toBe(Date.UTC(2026, 11, 1, 9));
    expect(parseTimeArg('2026-12-01', '--since', now)).toBe(new Date(2026, 11, 1).getTime()); // local midnight
    expect(parseTimeArg('1764583200', '--since', now)).toBe(1_764_583_200_000);
    expect(parseTimeArg('@1764583200.5', '--since', now)).toBe(1_764_583_200_500);
    expect(parseTimeArg('-2h', '--since', now)).toBe(now - 7_200_000);
    expect(parseTimeArg('30m ago', '--since', now)).toBe(now - 1_800_000);
    expect(parseTimeArg('now', '--until', now)).toBe(now);
    expect(() => parseTimeArg('yesterday', '--since', now)).toThrow(/--since 'yesterday' is not a time/);
    expect(() => parseTimeArg('2026-13-45', '--since', now)).toThrow(/is not a time/);
  });
});
