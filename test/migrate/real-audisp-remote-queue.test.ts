/**
 * Import of queue files written by the real audisp-remote 3.0.9 (Debian's audispd-plugins) in forward mode,
 * inside a private network + mount namespace (NetnsSandbox; its config is bind-mounted over
 * /etc/audit/audisp-remote.conf there only):
 * - the server is down from the start: every record stays queued; after the plugin stopped, the import
 *   holds them byte for byte, and our agent delivers them from the durable queue;
 * - a collector acknowledges a few records and dies: later records are queued behind queue_head, wrapping
 *   around the end of the file (queue_depth 4), and the import follows the wrap.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';
import { importQueue } from '../../src/migrate/import-queue.js';
import { DurableQueue } from '../../src/queue/durable-queue.js';
import { records } from '../helpers/agent-harness.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDISP_REMOTE_BIN, audispRemoteConf, startRealAudispRemote } from '../helpers/real-audisp-remote.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const REPO = path.resolve(import.meta.dirname, '..', '..');
const BIN = path.join(REPO, 'bin', 'auditrelay.js');
const PORT = 6060;

const available = requireOrSkip({
  suite: 'import of a queue file written by the real audisp-remote (forward mode)',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', 'bash', 'env', AUDISP_REMOTE_BIN],
  files: [path.join(REPO, 'dist/src/cli.js')],
});

const silent = pino({ level: 'silent' });

describe.skipIf(!available)('import of a real audisp-remote queue file', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];
  const closers: (() => Promise<unknown>)[] = [];

  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  async function openQueue(dir: string) {
    const { queue } = await DurableQueue.open({
      dir,
      maxBytes: 16 * 1024 * 1024,
      fsync: 'always',
      fsyncIntervalMs: 200,
    });
    closers.push(() => queue.close());
    return queue;
  }

  it('server down from the start: every record queued by audisp-remote is imported byte for byte, then delivered', async () => {
    sandbox = await NetnsSandbox.create();
    const queueFile = path.join(sandbox.dir, 'remote.queue');
    const lines = [
      ...records(1, 5),
      // ENRICHED format: the 0x1D separator and non-ASCII bytes pass through untouched.
      Buffer.from(
        'type=USER_LOGIN msg=audit(1700000000.006:6): pid=1 uid=0 res=success seq=6\x1dUID="root" AUID="\xe9"',
        'latin1',
      ),
    ];
    const remote = await startRealAudispRemote(sandbox, {
      confText: audispRemoteConf({
        port: PORT, // nothing listens in the sandbox: connect() is refused
        extra: { mode: 'forward', queue_file: queueFile, queue_depth: 16 },
      }),
    });
    await remote.write(lines);
    await remote.waitForState((s) => s.queuedItems === lines.length, `${lines.length} records queued`);
    // Records are left queued: exit status 1 (in forward mode they stay in the file).
    expect(await remote.stop()).toEqual({ code: 1, signal: null });

    const raw = readFileSync(queueFile);
    expect(raw.subarray(0, 14).toString('latin1')).toBe('\0audisp-remote');
    const queue = await openQueue(path.join(sandbox.dir, 'queue'));
    const r = importQueue(queueFile, queue, silent);
    expect(r).toMatchObject({ imported: lines.length, skipped: 0, findings: [] });
    expect(r.header).toMatchObject({
      numEntries: 16,
      entrySize: 12288,
      queueHead: 0,
      queueLength: lines.length,
    });

    // Our agent sends the imported backlog (empty input: it drains the queue and exits 0).
    const server = new ScriptServer();
    const port = await server.start();
    closers.push(() => server.stop());
    const settings = settingsFromConfig({
      ...defaultAgentConfig(),
      remoteServer: [{ host: '127.0.0.1', port: null }],
      port,
      reconnectInitialMs: 20,
      reconnectMaxMs: 200,
      drainTimeout: 10,
    });
    const input = new PassThrough();
    const agent = new Agent(settings, { input, log: silent, queue });
    const done = agent.run();
    input.end();
    expect(await done).toBe(0);
    expect(server.records.map((b) => b.toString('latin1'))).toEqual(
      lines.map((l) => `${Buffer.isBuffer(l) ? l.toString('latin1') : l}\n`),
    );
  });

  it('records queued behind queue_head wrap around the end of the file; the import follows the wrap', async () => {
    sandbox = await NetnsSandbox.create();
    const queueFile = path.join(sandbox.dir, 'remote.queue');
    const logFile = path.join(sandbox.dir, 'collector.log');
    let err = '';
    const collector = sandbox.spawn(
      process.execPath,
      [
        BIN,
        'collector',
        '--listen',
        `127.0.0.1:${PORT}`,
        '--log',
        logFile,
        '--evidence-key-file',
        path.join(sandbox.dir, 'keys', 'signing.key'),
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { AUDITRELAY_LOG_FORMAT: 'json' },
      },
    );
    started.push(collector);
    collector.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    await pollUntil(async () => (await sandbox!.tcpListeners(PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
      diagnostics: () => err,
    });
    const remote = await startRealAudispRemote(sandbox, {
      confText: audispRemoteConf({
        port: PORT,
        extra: {
          mode: 'forward',
          queue_file: queueFile,
          queue_depth: 4,
          network_failure_action: 'syslog', // keep running when the collector is gone
        },
      }),
    });
    const all = records(1, 6);
    await remote.write(all.slice(0, 3));
    const delivered = () =>
      readFileSync(logFile, 'latin1')
        .split('\n')
        .filter((l) => l !== '');
    await pollUntil(() => delivered().length === 3, {
      timeoutMs: 15_000,
      what: '3 records at the collector',
    });
    await remote.waitForState((s) => s.queuedItems === 0, 'the 3 records acknowledged');
    collector.kill('SIGKILL');
    await waitForExit(collector, 10_000);
    await remote.write(all.slice(3));
    await remote.waitForState((s) => s.queuedItems === 3, '3 records queued');
    expect(await remote.stop(30_000)).toEqual({ code: 1, signal: null });

    const queue = await openQueue(path.join(sandbox.dir, 'queue'));
    const r = importQueue(queueFile, queue, silent);
    // Slots 3, 0, 1: the head sits where the acknowledged records left it.
    expect(r.header).toMatchObject({ numEntries: 4, queueHead: 3, queueLength: 3 });
    expect(r.imported).toBe(3);
    const got: string[] = [];
    for (let x = queue.takeNext(); x; x = queue.takeNext()) {
      got.push(x.payload.toString('latin1'));
      queue.ack(x.id);
    }
    expect(got).toEqual(all.slice(3).map((l) => `${l}\n`));
    expect(delivered()).toEqual(all.slice(0, 3));
  });
});
