/**
 * Agent failover with a real auditd first (issue 14 item 1): `remote_server = <Debian's auditd 3.0.9>, <our
 * collector>` inside a private network+mount namespace. The agent works with auditd as it does with one server
 * (plain records, its log unchanged), fails over to our collector when auditd ends, and goes back to a new auditd
 * by the failback probe; every record is in one of the logs.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { REPO_ROOT, readCompleteLines } from '../helpers/corpus.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDITD_BIN, startRealAuditd } from '../helpers/real-auditd.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');

const available = requireOrSkip({
  suite: 'agent failover between the real auditd 3.0.9 and our collector',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN],
  files: [path.join(REPO_ROOT, 'dist/src/cli.js')],
});

describe.skipIf(!available)('agent failover: real auditd first, our collector second', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];

  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  function run(args: string[], stdin: 'pipe' | 'ignore'): ChildProcess & { err: () => string } {
    let err = '';
    const child = sandbox!.spawn(process.execPath, [BIN, ...args], {
      stdio: [stdin, 'ignore', 'pipe'],
      env: { AUDITRELAY_LOG_FORMAT: 'json' },
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    started.push(child);
    return Object.assign(child, { err: () => err });
  }

  it('auditd, then our collector when auditd ends, then a new auditd (failback); nothing lost', async () => {
    sandbox = await NetnsSandbox.create();
    const dir = sandbox.dir;
    const first = await startRealAuditd(sandbox, { port: AUDITD_PORT, dir: path.join(dir, 'auditd-1') });
    const collectorLog = path.join(dir, 'collector.log');
    const collector = run(
      [
        'collector',
        '--listen',
        `127.0.0.1:${COLLECTOR_PORT}`,
        '--log',
        collectorLog,
        '--evidence-key-file',
        path.join(dir, 'keys', 'signing.key'),
      ],
      'ignore',
    );
    await pollUntil(async () => (await sandbox!.tcpListeners(COLLECTOR_PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
      diagnostics: () => collector.err(),
    });
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        `remote_server = 127.0.0.1:${AUDITD_PORT}, 127.0.0.1:${COLLECTOR_PORT}`,
        'mode = forward',
        `queue_dir = ${path.join(dir, 'queue')}`,
        `state_file = ${path.join(dir, 'agent.state')}`,
        'reconnect_initial_ms = 50',
        'reconnect_max_ms = 500',
        'failback_interval = 1',
        'drain_timeout = 20',
        'log_level = debug',
        '',
      ].join('\n'),
    );
    const agent = run(['agent', '--config', conf], 'pipe');
    agent.stdin!.write(`${records(1, 50, 'one').join('\n')}\n`);
    await first.waitForLines(50, 20_000);
    // auditd ends (ENDING to its clients): the agent goes to our collector.
    await first.stop();
    agent.stdin!.write(`${records(51, 50, 'two').join('\n')}\n`);
    await pollUntil(() => readCompleteLines(collectorLog).length >= 50, {
      timeoutMs: 20_000,
      what: 'batch 2 at the collector',
      diagnostics: () => agent.err().slice(-3000),
    });
    // A new auditd on the first address: the failback probe finds it.
    const second = await startRealAuditd(sandbox, { port: AUDITD_PORT, dir: path.join(dir, 'auditd-2') });
    await pollUntil(() => agent.err().includes('answers again: going back to it'), {
      timeoutMs: 20_000,
      what: 'the failback to auditd',
      diagnostics: () => agent.err().slice(-3000),
    });
    agent.stdin!.end(`${records(101, 50, 'three').join('\n')}\n`);
    expect(await waitForExit(agent, 30_000), agent.err().slice(-2000)).toEqual({ code: 0, signal: null });
    const atSecond = await second.waitForLines(50, 20_000);
    await second.stop();

    const asText = (lines: Buffer[]) => lines.map((l) => l.toString('latin1'));
    // auditd got plain records, byte for byte (no hello, no rid).
    expect(asText(first.receivedRecords())).toEqual(records(1, 50, 'one'));
    expect(asText(atSecond)).toEqual(records(101, 50, 'three'));
    // Our collector got record identities.
    const atCollector = asText(readCompleteLines(collectorLog));
    expect(atCollector.every((l) => / rid=[a-z2-7]{26}:\d+$/.test(l))).toBe(true);
    const all = [...asText(first.receivedRecords()), ...atCollector, ...asText(atSecond)];
    const { lost } = gapsAndDuplicates(seqs(all), 150);
    expect(lost).toEqual([]);
    expect(agent.err()).toMatch(/failing over from 127\.0\.0\.1:60 to 127\.0\.0\.1:61/);
  });
});
