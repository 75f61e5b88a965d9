/**
 * auditrelay against the real Debian 3.0.9 programs, inside a private network+mount namespace:
 * - our agent → real auditd (network-only aggregator);
 * - real audisp-remote → our collector.
 * Every record of every corpus file arrives in order, byte-exact (after the server's documented
 * trailing-newline handling). Needs root and Debian's auditd + audispd-plugins: skips loudly on a
 * laptop, fails under CI=true (test/helpers/prereq.ts).
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  audispRemote309Records,
  expectedRecords,
  loadCorpus,
  REPO_ROOT,
  readCompleteLines,
} from '../helpers/corpus.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDISP_REMOTE_BIN, audispRemoteConf, startRealAudispRemote } from '../helpers/real-audisp-remote.js';
import { AUDITD_BIN, DEFAULT_AUDITD_PORT, startRealAuditd } from '../helpers/real-auditd.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const PORT = DEFAULT_AUDITD_PORT;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const asBytes = (records: readonly Buffer[]): string[] => records.map((r) => r.toString('latin1'));

const available = requireOrSkip({
  suite: 'interop with the real auditd and audisp-remote (Debian 3.0.9)',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN, AUDISP_REMOTE_BIN],
  files: [path.join(REPO_ROOT, 'dist/src/cli.js')],
});

/** Every expected record of the corpus (fixtures + shared corpus when present), in file order. */
function corpusRecords(): Buffer[] {
  return loadCorpus({ includeShared: true }).flatMap((f) => expectedRecords(f.bytes));
}

describe.skipIf(!available)('auditrelay with the real auditd and audisp-remote', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];

  /** Runs `auditrelay ARGS` inside the sandbox; killed by pid in afterEach. */
  function auditrelay(
    args: string[],
    stdin: 'pipe' | 'ignore' = 'ignore',
  ): ChildProcess & { stderrText: () => string } {
    let err = '';
    const child = sandbox!.spawn(process.execPath, [BIN, ...args], {
      stdio: [stdin, 'ignore', 'pipe'],
      env: { AUDITRELAY_LOG_FORMAT: 'json' },
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    started.push(child);
    return Object.assign(child, { stderrText: () => err });
  }

  function agentConf(extra: string[] = []): string {
    const file = path.join(sandbox!.dir, `agent-${started.length}.conf`);
    writeFileSync(
      file,
      [
        'remote_server = 127.0.0.1',
        `port = ${PORT}`,
        `queue_dir = ${path.join(sandbox!.dir, `queue-${started.length}`)}`,
        `state_file = ${path.join(sandbox!.dir, `agent-${started.length}.state`)}`,
        'reconnect_initial_ms = 50',
        'reconnect_max_ms = 500',
        'drain_timeout = 20',
        'log_level = debug',
        ...extra,
        '',
      ].join('\n'),
    );
    return file;
  }

  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  it('our agent → real auditd: every corpus record, in order, byte-exact', async () => {
    sandbox = await NetnsSandbox.create();
    const auditd = await startRealAuditd(sandbox, { port: PORT });
    const expected = corpusRecords();
    expect(expected.length).toBeGreaterThan(200);
    const agent = auditrelay(['agent', '--config', agentConf()], 'pipe');
    // Feed each file's records as auditd's dispatcher would: one per line.
    agent.stdin!.end(Buffer.concat(expected.flatMap((r) => [r, Buffer.from('\n')])));
    const exit = await waitForExit(agent, 60_000);
    expect(exit, agent.stderrText()).toEqual({ code: 0, signal: null });
    await auditd.waitForLines(expected.length, 30_000);
    await auditd.stop();
    expect(asBytes(auditd.receivedRecords())).toEqual(asBytes(expected));
  });

  it('our agent → real auditd: a record longer than auditd keeps (8953 bytes) arrives whole, in pieces', async () => {
    sandbox = await NetnsSandbox.create();
    const auditd = await startRealAuditd(sandbox, { port: PORT });
    const long = Buffer.from(`type=EXECVE msg=audit(1.000:1): argc=1 a0="${'x'.repeat(12_000)}"`);
    const agent = auditrelay(['agent', '--config', agentConf()], 'pipe');
    const cwd = 'type=CWD msg=audit(1.000:1): cwd="/"';
    agent.stdin!.end(Buffer.concat([long, Buffer.from(`\n${cwd}\n`)]));
    expect(await waitForExit(agent, 60_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    const received = await auditd.waitForLines(3, 30_000);
    await auditd.stop();
    expect(received.map((r) => r.length)).toEqual([8953, long.length - 8953, cwd.length]);
    expect(Buffer.concat(received.slice(0, 2))).toEqual(long);
    // auditd kept the connection: one accept, no reconnect needed for the oversized record.
    expect(auditd.ownRecords().filter((l) => / type=DAEMON_ACCEPT /.test(l))).toHaveLength(1);
    expect(agent.stderrText()).toMatch(/sent as several records/);
  });

  it('our agent → real auditd: an RST on an idle link (upstream never recovers, §6.7) is repaired with no new input', async () => {
    sandbox = await NetnsSandbox.create();
    const auditd = await startRealAuditd(sandbox, { port: PORT });
    const agent = auditrelay(['agent', '--config', agentConf()], 'pipe');
    const accepts = () => auditd.ownRecords().filter((l) => / type=DAEMON_ACCEPT /.test(l)).length;
    agent.stdin!.write('type=USER_CMD msg=audit(1.000:1): before the reset\n');
    await auditd.waitForLines(1);
    expect(accepts()).toBe(1);
    // The server side of the connection is destroyed: the idle agent gets an RST.
    await sandbox.resetTcpConnections(PORT);
    // No input: the agent reconnects by itself.
    await pollUntil(() => accepts() >= 2, {
      timeoutMs: 15_000,
      what: 'a second DAEMON_ACCEPT (the agent reconnected)',
    });
    agent.stdin!.end('type=USER_CMD msg=audit(1.000:2): after the reset\n');
    expect(await waitForExit(agent, 30_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    const received = await auditd.waitForLines(2);
    expect(asBytes(received)).toEqual([
      'type=USER_CMD msg=audit(1.000:1): before the reset',
      'type=USER_CMD msg=audit(1.000:2): after the reset',
    ]);
    expect(agent.stderrText()).toMatch(/reconnected to the server/);
  });

  it('our agent → real auditd: survives an auditd restart (ENDING) and delivers what was queued meanwhile', async () => {
    sandbox = await NetnsSandbox.create();
    const first = await startRealAuditd(sandbox, { port: PORT });
    const agent = auditrelay(['agent', '--config', agentConf()], 'pipe');
    agent.stdin!.write('type=USER_CMD msg=audit(1.000:1): one\n');
    await first.waitForLines(1);
    await first.stop(); // sends ENDING
    agent.stdin!.write('type=USER_CMD msg=audit(1.000:2): two, while the server is down\n');
    const second = await startRealAuditd(sandbox, { port: PORT });
    await second.waitForLines(1, 15_000);
    agent.stdin!.end();
    expect(await waitForExit(agent, 30_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    await second.stop();
    expect(asBytes(first.receivedRecords())).toEqual(['type=USER_CMD msg=audit(1.000:1): one']);
    expect(asBytes(second.receivedRecords())).toEqual([
      'type=USER_CMD msg=audit(1.000:2): two, while the server is down',
    ]);
    expect(agent.stderrText()).toMatch(/ENDING/);
  });

  it('real audisp-remote → our collector: every corpus record, in order, byte-exact', async () => {
    sandbox = await NetnsSandbox.create();
    const logFile = path.join(sandbox.dir, 'collector.log');
    const collector = auditrelay([
      'collector',
      '--listen',
      `127.0.0.1:${PORT}`,
      '--log',
      logFile,
      '--evidence-key-file',
      path.join(sandbox.dir, 'keys', 'signing.key'),
    ]);
    await pollUntil(async () => (await sandbox!.tcpListeners(PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
      diagnostics: () => collector.stderrText(),
    });
    const remote = await startRealAudispRemote(sandbox, { confText: audispRemoteConf({ port: PORT }) });
    const corpus = loadCorpus({ includeShared: true });
    // What the real plugin sends (it drops a few lines the contract keeps, e.g. a lone '#').
    const expected = corpus.flatMap((f) => audispRemote309Records(f.bytes));
    await remote.write(expected);
    await pollUntil(() => readCompleteLines(logFile).length >= expected.length, {
      timeoutMs: 30_000,
      what: `${expected.length} records in the collector log`,
      diagnostics: () => `have ${readCompleteLines(logFile).length}\n${collector.stderrText().slice(-2000)}`,
    });
    expect(await remote.stop()).toEqual({ code: 0, signal: null });
    collector.kill('SIGTERM');
    expect(await waitForExit(collector, 15_000)).toEqual({ code: 0, signal: null });
    expect(asBytes(readCompleteLines(logFile))).toEqual(asBytes(expected));
  });

  it('real audisp-remote → our collector: ENDING on collector shutdown makes it reconnect to the next collector', async () => {
    sandbox = await NetnsSandbox.create();
    const logFile = path.join(sandbox.dir, 'collector.log');
    const startCollector = async () => {
      const c = auditrelay([
        'collector',
        '--listen',
        `127.0.0.1:${PORT}`,
        '--log',
        logFile,
        '--evidence-key-file',
        path.join(sandbox!.dir, 'keys', 'signing.key'),
      ]);
      await pollUntil(async () => (await sandbox!.tcpListeners(PORT)).length > 0, {
        timeoutMs: 15_000,
        what: 'the collector to listen',
      });
      return c;
    };
    const first = await startCollector();
    const remote = await startRealAudispRemote(sandbox, { confText: audispRemoteConf({ port: PORT }) });
    await remote.write(['type=USER_CMD msg=audit(1.000:1): one']);
    await pollUntil(() => readCompleteLines(logFile).length >= 1, {
      timeoutMs: 15_000,
      what: 'the first record',
      // Seen once inside the whole suite (not alone): what each side said, for the next time.
      diagnostics: () => `collector:\n${first.stderrText()}\naudisp-remote:\n${remote.diagnostics()}`,
    });
    first.kill('SIGTERM');
    expect(await waitForExit(first, 15_000)).toEqual({ code: 0, signal: null });
    // ENDING set remote_ended in the plugin: it reconnects on its next record (upstream behaviour).
    await startCollector();
    await remote.write(['type=USER_CMD msg=audit(1.000:2): two']);
    await pollUntil(() => readCompleteLines(logFile).length >= 2, {
      timeoutMs: 15_000,
      what: 'the second record',
    });
    expect(asBytes(readCompleteLines(logFile))).toEqual([
      'type=USER_CMD msg=audit(1.000:1): one',
      'type=USER_CMD msg=audit(1.000:2): two',
    ]);
    await remote.stop();
  });
});
