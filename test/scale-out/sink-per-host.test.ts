/**
 * `auditrelay sink` with `sink_log_layout = per_host` (issue 14 item 4) against a real 3-node nats-server cluster
 * (>= 2.10, .cache/peers) on 127.0.0.1: records of several hosts, some with hostile names (`/`, `..`, a leading
 * dot, a control byte, 300 bytes long), are published into an R3 stream (as a collector publishes them: subject
 * `<STREAM>.<host token>`, message id); the sink writes them with at most 3 files open (so batches are written in
 * several steps and files are closed and opened again) and is killed -9 three times while it writes, while more
 * records arrive. Every record is exactly once in its host's file, in the host's order; nothing is written outside
 * the directory.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { hostToken } from '../../src/jetstream/nats.js';
import { CURSOR_FILE, hostFileName, lastSeqOf, readCursor } from '../../src/sink/host-files.js';
import { NatsCluster } from '../helpers/nats-cluster.js';
import { NATS_SERVER } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import {
  checkSinkLog,
  describeCheck,
  kill9,
  type Proc,
  sinkConfig,
  startSink,
  stopProc,
} from '../helpers/scale-out.js';
import { pollUntil } from '../helpers/wait.js';

const available = requireOrSkip({ suite: 'sink per host (NATS JetStream)', files: [NATS_SERVER] });

const HOSTS = [
  'web1.example.com',
  '../../etc/passwd',
  'a/b',
  '..',
  '.hidden',
  'ctl\x1dbyte',
  `long-${'x'.repeat(300)}`,
];

describe.skipIf(!available)('sink_log_layout = per_host, real 3-node NATS cluster', () => {
  let dir: string;
  let cluster: NatsCluster;
  let nc: NatsConnection;
  const procs: Proc[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-sink-ph-'));
    cluster = await NatsCluster.start(path.join(dir, 'nats'));
    nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  });

  afterAll(async () => {
    for (const p of procs) await kill9(p);
    await nc?.close();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('hostile host names, 3 files open at most, kill -9 of the sink three times mid-stream: every record once in its host file, in order, nothing outside the directory', async () => {
    const stream = 'PERHOST';
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    // Right after the cluster is ready the meta leader may not know every peer yet ("no suitable peers for
    // placement"): asked again until it places the three replicas.
    await pollUntil(
      () =>
        jsm.streams
          .add({ name: stream, subjects: [`${stream}.>`], storage: StorageType.File, num_replicas: 3 })
          .then(
            () => true,
            (err: Error) => {
              if (/no suitable peers/.test(err.message)) return false;
              throw err;
            },
          ),
      {
        // A new cluster on a loaded 2-core machine took more than 20 s to place three replicas (seen beside the
        // whole suite and other work).
        timeoutMs: 60_000,
        intervalMs: 200,
        what: 'the R3 stream to be created',
        diagnostics: () => cluster.logs(),
      },
    );
    const js = jetstream(nc, { timeout: 10_000 });
    const perHost = 1500;
    const total = HOSTS.length * perHost;
    let published = 0;
    /** Records `from`..`to` of every host, interleaved, 200 publishes in flight. */
    const publish = async (from: number, to: number) => {
      const pending: Promise<unknown>[] = [];
      for (let n = from; n <= to; n++) {
        for (let i = 0; i < HOSTS.length; i++) {
          const h = headers();
          h.set('Nats-Msg-Id', `agent-h${i}:${n}`);
          const data = `type=USER_CMD msg=audit(1700000000.${n}:${n}): pid=1 uid=0 node=h${i} tag=h${i}:${n} msg='x'`;
          pending.push(js.publish(`${stream}.${hostToken(HOSTS[i]!)}`, data, { headers: h }));
          if (pending.length >= 200) await Promise.all(pending.splice(0));
        }
      }
      await Promise.all(pending);
      published = to * HOSTS.length;
    };

    const hostsDir = path.join(dir, 'hosts');
    const sink = sinkConfig(dir, cluster.urls, stream, [
      'sink_log_layout = per_host',
      `sink_log_dir = ${hostsDir}`,
      'sink_max_open_logs = 3',
    ]);
    const done = () => readCursor(hostsDir)?.done ?? 0;
    const diagnostics = () =>
      `published ${published}, cursor ${JSON.stringify(existsSync(hostsDir) ? readCursor(hostsDir) : null)}\n${sink.proc?.out.slice(-20).join('\n')}`;

    /** Host files whose last js_seq is beyond the cursor: a batch written in some files only. */
    const ahead = async () => {
      const cursor = done();
      const out: string[] = [];
      for (const h of HOSTS) {
        const seq = await lastSeqOf(path.join(hostsDir, hostFileName(h))).catch(() => 0);
        if (seq > cursor) out.push(h);
      }
      return out;
    };
    /**
     * Stops the sink (SIGSTOP) when some host files are ahead of the cursor and kills it -9 while it is stopped:
     * the crash lands between the writes of one batch, every time (if the state passed before it stopped, it
     * goes on and waits for the next batch).
     */
    const killBetweenWrites = async () => {
      const p = sink.proc!;
      await pollUntil(
        async () => {
          if ((await ahead()).length === 0) return false;
          process.kill(p.proc.pid!, 'SIGSTOP');
          if ((await ahead()).length > 0) return true;
          process.kill(p.proc.pid!, 'SIGCONT');
          return false;
        },
        { timeoutMs: 60_000, intervalMs: 2, what: 'a batch written in some host files only', diagnostics },
      );
      await kill9(p);
    };

    await publish(1, 500);
    procs.push(startSink(sink));
    const more = publish(501, perHost);
    // 1. Killed at an arbitrary moment.
    await pollUntil(() => done() >= 900, { timeoutMs: 60_000, what: 'the sink past 900', diagnostics });
    await kill9(sink.proc);
    procs.push(startSink(sink));
    // 2, 3. Killed between the host files of a batch, twice.
    for (let k = 0; k < 2; k++) {
      await killBetweenWrites();
      procs.push(startSink(sink));
    }
    await more;
    await pollUntil(() => done() >= total, {
      timeoutMs: 60_000,
      what: 'the sink to write everything',
      diagnostics,
    });
    expect(await stopProc(sink.proc)).toBe(0);

    // Exactly once, in order, per host file.
    for (let i = 0; i < HOSTS.length; i++) {
      const file = path.join(hostsDir, hostFileName(HOSTS[i]!));
      const r = checkSinkLog([file], new Map([[`h${i}`, perHost]]));
      expect(r.missing, `${HOSTS[i]}: ${describeCheck(r)}`).toEqual([]);
      expect(r.duplicates, describeCheck(r)).toEqual([]);
      expect(r.outOfOrder, describeCheck(r)).toEqual([]);
      expect(r.seqProblems).toBe(0);
      expect(r.malformed).toBe(0);
      expect(r.lines).toBe(perHost);
      expect([...r.perHost.keys()]).toEqual([`h${i}`]);
    }
    // The control byte in the record itself was escaped again; the names are the documented ones.
    expect(readdirSync(hostsDir).sort()).toEqual([CURSOR_FILE, ...HOSTS.map((h) => hostFileName(h))].sort());
    expect(hostFileName('../../etc/passwd')).toBe('_2e._2f.._2fetc_2fpasswd.log');
    expect(readdirSync(dir).sort()).toEqual(['hosts', 'nats', 'sink', 'sink.conf']);
    expect(readdirSync(path.join(dir, 'sink'))).toEqual([]);
    expect(readCursor(hostsDir)?.done).toBe(total);
    // The two kills between writes: each restarted sink found host files ahead of the cursor and skipped there.
    const partial = procs.flatMap((p) => p.out.filter((l) => l.includes('(written before a restart)')));
    expect(partial.length).toBeGreaterThanOrEqual(2);
    const restarts = sink.proc!.out.filter((l) => l.includes('has every stream sequence up to'));
    expect(restarts.length).toBe(1);
    expect(readFileSync(path.join(hostsDir, hostFileName('a/b')), 'utf8').split('\n')[0]).toContain(
      ' rid=agent-h2:1 js_seq=',
    );
  }, 180_000);
});
