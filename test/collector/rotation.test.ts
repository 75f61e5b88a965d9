/**
 * Rotation of the collector's log (docs/collector.md, "Log management"): records flowing from several clients
 * through 100 rotations are each in exactly one file, whole (0 lost, 0 duplicated), and the evidence of the rotated
 * set verifies; max_log_file with rotate keeps num_logs files (the oldest removed, its evidence pruned) and with
 * keep_logs removes none; a log renamed by the real logrotate (`create`, with the documented `postrotate`) and one
 * renamed without a signal are both noticed and reopened, nothing lost or doubled, and the set verifies.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';
import {
  cleanup,
  counts,
  linesOf,
  logSet,
  onCleanup,
  RecordClient,
  startCollector,
  tempDir,
  verifyLogs,
} from './harness.js';

afterEach(cleanup);

const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');

describe('rotation', () => {
  it('100 rotations while three clients send: every acknowledged record in exactly one file, whole; the set verifies', async () => {
    // On tmpfs where there is one: each rotation fsyncs the evidence (a checkpoint), which a shared disk makes slow.
    const c = await startCollector(
      {
        evidence: { keyFile: '', checkpointIntervalMs: 0 },
        logManagement: {
          ...(await import('../../src/collector/log-store.js')).DEFAULT_LOG_MANAGEMENT,
          maxLogFileAction: { kind: 'keep_logs' },
        },
      },
      tempDir('auditrelay-rotation-', existsSync('/dev/shm') ? '/dev/shm' : undefined),
    );
    const clients = await Promise.all(
      ['a', 'b', 'c'].map((tag, i) =>
        RecordClient.connect(c.port, tag, { node: `host-${tag}`, localAddress: `127.0.0.${i + 2}` }),
      ),
    );
    let sending = true;
    const loops = clients.map(async (client) => {
      while (sending) {
        const replies = await client.send(40);
        expect(new Set(replies)).toEqual(new Set([MessageType.ACK]));
      }
    });
    for (let i = 0; i < 100; i++) {
      // At least one batch between two rotations, so that none finds an empty log.
      const before = c.collector.stats.records;
      await pollUntil(() => c.collector.stats.records > before, {
        timeoutMs: 10_000,
        what: 'records written',
      });
      await c.collector.rotate('test');
    }
    sending = false;
    await Promise.all(loops);
    await c.stop();

    expect(c.collector.logStatus().rotations).toBe(100);
    const files = logSet(c.logFile);
    expect(files).toHaveLength(101);
    const lines = linesOf(files);
    const sent = clients.flatMap((cl) => cl.written());
    const seen = counts(lines);
    const lost = sent.filter((l) => !seen.has(l));
    const doubled = [...seen].filter(([, n]) => n > 1);
    expect({ lost: lost.length, doubled: doubled.length, lines: lines.length }).toEqual({
      lost: 0,
      doubled: 0,
      lines: sent.length,
    });
    // Each client's records in the order it sent them, across the files.
    for (const cl of clients)
      expect(lines.filter((l) => l.startsWith(`node=${cl.node} `))).toEqual(cl.written());
    // Rotated files are read-only, as auditd leaves them.
    expect(statSync(files[0]!).mode & 0o777).toBe(0o400);
    const v = verifyLogs(c.dir, c.keyFile);
    expect(v.lines).toEqual([]);
    expect(v.records).toBe(sent.length);
  });

  it('max_log_file with rotate keeps num_logs files (the oldest goes, with its evidence); keep_logs removes none', async () => {
    const { DEFAULT_LOG_MANAGEMENT } = await import('../../src/collector/log-store.js');
    const c = await startCollector({
      evidence: { keyFile: '', checkpointIntervalMs: 0, mode: 'inline' },
      logManagement: {
        ...DEFAULT_LOG_MANAGEMENT,
        maxLogFileBytes: 16 * 1024,
        numLogs: 3,
        maxLogFileAction: { kind: 'rotate' },
      },
    });
    const client = await RecordClient.connect(c.port, 'r');
    for (let i = 0; i < 30; i++) await client.send(20);
    expect(c.collector.logStatus().rotations).toBeGreaterThanOrEqual(4);
    expect(logSet(c.logFile).map((f) => path.basename(f))).toEqual([
      'audit.log.2',
      'audit.log.1',
      'audit.log',
    ]);
    // A file is rotated before the first write that finds it at max_log_file or beyond: at most one batch over it.
    for (const f of logSet(c.logFile).slice(0, 2))
      expect(statSync(f).size).toBeLessThan(16 * 1024 + 20 * 400);
    const kept = linesOf(logSet(c.logFile));
    expect(kept).toEqual(client.written().slice(-kept.length));
    await c.stop();
    // Segments of the removed logs are pruned; what is left verifies (the oldest file's start is no gap).
    const v = verifyLogs(c.dir, c.keyFile);
    expect(v.lines).toEqual([]);
    expect(
      readdirSync(`${c.logFile}.evidence`).filter((n) => n.endsWith('.chain')).length,
    ).toBeLessThanOrEqual(4);

    const k = await startCollector({
      logManagement: {
        ...DEFAULT_LOG_MANAGEMENT,
        maxLogFileBytes: 16 * 1024,
        numLogs: 2,
        maxLogFileAction: { kind: 'keep_logs' },
      },
    });
    const kc = await RecordClient.connect(k.port, 'k');
    for (let i = 0; i < 20; i++) await kc.send(20);
    await k.stop();
    const all = logSet(k.logFile);
    expect(all.length).toBeGreaterThan(3);
    expect(linesOf(all)).toEqual(kc.written());
  });
});

describe('a log renamed by another program', () => {
  const logrotate = requireOrSkip({ suite: 'the collector under logrotate', binaries: ['logrotate'] });

  it.skipIf(!logrotate)(
    'logrotate (create, delaycompress, the documented postrotate: a reload) to the collector process: reopened, nothing lost or doubled, the set verifies',
    async () => {
      const dir = tempDir();
      const log = path.join(dir, 'audit.log');
      const keyFile = path.join(dir, 'keys', 'signing.key');
      const collector = spawn(
        process.execPath,
        [BIN, 'collector', '--listen', '127.0.0.1:0', '--log', log, '--evidence-key-file', keyFile],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' } },
      );
      onCleanup(async () => {
        await terminate(collector, 'SIGTERM', 10_000);
      });
      let stderr = '';
      collector.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const port = await pollUntil(() => /"port":(\d+),[^\n]*"collector listening"/.exec(stderr)?.[1], {
        timeoutMs: 20_000,
        what: 'the collector to listen',
        diagnostics: () => stderr,
      });
      // docs/collector.md, "Rotating with logrotate": the stanza as documented, with this collector's pid.
      const conf = path.join(dir, 'logrotate.conf');
      writeFileSync(
        conf,
        [
          `${log} {`,
          '  rotate 1000',
          '  create 0600 root root',
          '  compress',
          '  delaycompress',
          '  missingok',
          '  notifempty',
          '  sharedscripts',
          '  postrotate',
          `    /bin/kill -HUP ${collector.pid}`,
          '  endscript',
          '}',
          '',
        ].join('\n'),
        { mode: 0o600 },
      );
      const state = path.join(dir, 'logrotate.state');
      const client = await RecordClient.connect(Number(port), 'lr', { node: 'web1' });
      for (let round = 1; round <= 3; round++) {
        await client.send(50);
        execFileSync('logrotate', ['--force', '--state', state, conf], { stdio: 'pipe' });
        await pollUntil(() => stderr.split('renamed or removed by another program').length - 1 === round, {
          timeoutMs: 10_000,
          what: `the collector to reopen its log after logrotate #${round}`,
          diagnostics: () => stderr,
        });
      }
      await client.send(50);
      collector.kill('SIGTERM');
      await pollUntil(() => collector.exitCode !== null || undefined, {
        timeoutMs: 15_000,
        what: 'the exit',
      });
      expect(collector.exitCode, stderr).toBe(0);
      // logrotate compressed the oldest (.2.gz, .3.gz after delaycompress): read them to count every record.
      const files = readdirSync(dir)
        .filter((n) => /^audit\.log(\.\d+(\.gz)?)?$/.test(n))
        .sort((a, b) => Number(/\.(\d+)/.exec(b)?.[1] ?? 0) - Number(/\.(\d+)/.exec(a)?.[1] ?? 0));
      expect(files).toEqual(['audit.log.3.gz', 'audit.log.2.gz', 'audit.log.1', 'audit.log']);
      const lines = files.flatMap((n) => {
        const p = path.join(dir, n);
        const text = n.endsWith('.gz')
          ? execFileSync('gzip', ['-dc', p], { encoding: 'latin1' })
          : readFileSync(p, 'latin1');
        return text.split('\n').slice(0, -1);
      });
      expect(lines).toEqual(client.written());
      // The files not compressed yet verify (verify does not read .gz: verify before compressing, docs/evidence.md).
      const v = verifyLogs(log, keyFile);
      expect(v.lines).toEqual([]);
      const v1 = verifyLogs(`${log}.1`, keyFile);
      expect(v1.lines).toEqual([]);
    },
  );

  it('renamed without a signal (logrotate nocreate, an operator): noticed within a check, a new log created; with create, the new file is adopted', async () => {
    const c = await startCollector({
      evidence: { keyFile: '', checkpointIntervalMs: 0, mode: 'inline' },
      logManagement: {
        ...(await import('../../src/collector/log-store.js')).DEFAULT_LOG_MANAGEMENT,
        checkIntervalMs: 50,
      },
    });
    const client = await RecordClient.connect(c.port, 'mv', { node: 'web2' });
    await client.send(30);
    execFileSync('mv', [c.logFile, `${c.logFile}-20261201`]);
    await pollUntil(() => existsSync(c.logFile), { timeoutMs: 10_000, what: 'a new log after the rename' });
    await client.send(30);
    // logrotate `create`: the new file is made by the other program, then the collector finds it.
    execFileSync('mv', [c.logFile, `${c.logFile}-20261202`]);
    writeFileSync(c.logFile, '', { mode: 0o600 });
    await pollUntil(
      () => c.logs.filter((l) => /renamed or removed by another program/.test(l.msg)).length === 2,
      { timeoutMs: 10_000, what: 'the second rename noticed' },
    );
    await client.send(30);
    await c.stop();
    const lines = linesOf([`${c.logFile}-20261201`, `${c.logFile}-20261202`, c.logFile]);
    expect(lines).toEqual(client.written());
    expect(linesOf([`${c.logFile}-20261202`])).toHaveLength(30);
    expect(verifyLogs(c.dir, c.keyFile).lines).toEqual([]);
  });
});
