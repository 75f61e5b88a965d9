/**
 * No client can hold a TLS collector: 1,000 connections that stall mid-handshake (half send nothing, half send half
 * a real ClientHello), from 250 loopback addresses, while a well-behaved client keeps sending records on its open
 * session and a new client connects and authenticates. The good clients get every acknowledgement; each stalled
 * connection is closed by the handshake deadline or the cap on pending handshakes; the collector's descriptors come
 * back to where they were. The collector runs as its own process (the built CLI), so /proc/<pid>/fd is its alone.
 *
 * Timing figures are printed, not asserted (the ack latency during the flood is measured by the benchmark,
 * BENCHMARKS.md).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';
import { keyOf, RawTlsClient, tempDir, writeKey } from './support.js';

const CLI = path.join(REPO_ROOT, 'bin/auditrelay.js');
const available = requireOrSkip({
  suite: 'tls collector hang test (the built CLI)',
  files: [path.join(REPO_ROOT, 'dist/src/cli.js')],
});

const DEADLINE_MS = 2000;
const STALLED = 1000;
const ADDRESSES = 250;
const MAX_PENDING = 256;

const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const rssKb = (pid: number): number =>
  Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);

/** The first bytes a TLS-PSK client sends: captured from Node's own client against a listener that never answers. */
async function clientHello(key: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = net.createServer((c) =>
      c.once('data', (d: Buffer) => {
        resolve(d);
        c.destroy();
        server.close();
      }),
    );
    server.listen(0, '127.0.0.1', () => {
      const c = tls.connect({
        host: '127.0.0.1',
        port: (server.address() as net.AddressInfo).port,
        minVersion: 'TLSv1.3',
        pskCallback: () => ({ psk: key, identity: 'web1' }),
        checkServerIdentity: () => undefined,
      });
      c.on('error', () => {});
    });
  });
}

describe.skipIf(!available)('tls collector: clients that stall their handshake', () => {
  let tmp: { dir: string; remove: () => void };
  let collector: ChildProcess;
  let stderr = '';
  let port = 0;
  let key: Buffer;

  beforeAll(async () => {
    tmp = tempDir('auditrelay-tls-hang-');
    const keyFile = writeKey(path.join(tmp.dir, 'psk.key'));
    key = keyOf(keyFile);
    const conf = path.join(tmp.dir, 'auditd.conf');
    writeFileSync(
      conf,
      [
        'transport = TLS',
        `tls_psk_file = ${keyFile}`,
        'tls_psk_identity = web1',
        `handshake_timeout = ${DEADLINE_MS / 1000}`,
        `max_pending_handshakes = ${MAX_PENDING}`,
        'tcp_listen_queue = 2048',
        'tcp_listen_port = 60',
        `log_file = ${path.join(tmp.dir, 'audit.log')}`,
        'flush = none',
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    collector = spawn(process.execPath, [CLI, 'collector', '--config', conf, '--listen', '127.0.0.1:0'], {
      env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    collector.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    port = await pollUntil(
      () => {
        const m = /"port":(\d+),[^\n]*"msg":"collector listening"/.exec(stderr);
        if (collector.exitCode !== null) throw new Error(`collector exited: ${stderr}`);
        return m ? Number(m[1]) : undefined;
      },
      { timeoutMs: 15_000, what: 'the collector to listen', diagnostics: () => stderr },
    );
  });

  afterAll(async () => {
    if (collector) await terminate(collector, 'SIGTERM', 5000);
    tmp?.remove();
  });

  it(`${STALLED} stalled handshakes: the good clients get every ack; each stalled one is closed`, async () => {
    const pid = collector.pid!;
    const hello = await clientHello(key);
    const good = await RawTlsClient.connect({ port, identity: 'web1', key });
    let acked = 0;
    const roundTrip = async (): Promise<number> => {
      const t = performance.now();
      good.send(`type=USER_CMD msg=audit(1.0:${acked + 1}): good client`);
      await good.waitForReplies(acked + 1);
      acked++;
      return performance.now() - t;
    };
    const before: number[] = [];
    for (let i = 0; i < 10; i++) before.push(await roundTrip());
    let last = -1;
    const fds0 = await pollUntil(
      () => {
        const n = fdCount(pid);
        const stable = n === last;
        last = n;
        return stable ? n : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50, what: 'a stable fd count' },
    );
    const rss0 = rssKb(pid);

    // The flood: from 127.0.1.1..127.0.1.250, 4 each (under the per-address bound of pending handshakes).
    const opened = performance.now();
    const stalled = Array.from({ length: STALLED }, (_, i) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress: `127.0.1.${(i % ADDRESSES) + 1}` });
      socket.on('error', () => {});
      const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(performance.now())));
      if (i % 2 === 1) socket.once('connect', () => socket.write(hello.subarray(0, hello.length >> 1)));
      return { socket, closed };
    });
    // While they hang: records on the open session, and a new client that authenticates.
    const during: number[] = [];
    for (let i = 0; i < 50; i++) during.push(await roundTrip());
    const t = performance.now();
    const fresh = await RawTlsClient.connect({ port, identity: 'web1', key, localAddress: '127.0.0.2' });
    fresh.send('type=USER_CMD msg=audit(2.0:1): new client during the flood');
    const [reply] = await fresh.waitForReplies(1);
    const freshMs = performance.now() - t;
    expect(reply!.type).toBe(MessageType.ACK);
    fresh.close();
    expect(good.replies).toHaveLength(acked);
    expect(good.replies.every((r) => r.type === MessageType.ACK)).toBe(true);

    // Every stalled connection is closed by the collector: at the deadline, or earlier for a newer one (the cap).
    const closedAt = (await Promise.all(stalled.map((s) => s.closed))).map((x) => x - opened);
    const fdsBack = await pollUntil(() => (fdCount(pid) <= fds0 ? fdCount(pid) : undefined), {
      timeoutMs: 5000,
      what: 'the collector fds back to the baseline',
      diagnostics: () => `fds ${fdCount(pid)} (baseline ${fds0})`,
    });
    const rss1 = rssKb(pid);
    during.push(await roundTrip());
    good.close();
    expect(fdsBack).toBeLessThanOrEqual(fds0);
    const byDeadline = closedAt.filter((ms) => ms >= DEADLINE_MS - 50).length;
    expect(byDeadline).toBeGreaterThan(0);
    expect(byDeadline).toBeLessThanOrEqual(STALLED);

    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.info(
      `[tls hang] ${STALLED} stalled handshakes from ${ADDRESSES} addresses: ack on an open session median ` +
        `${median(before).toFixed(2)} ms before, ${median(during).toFixed(2)} ms / max ${Math.max(...during).toFixed(2)} ms during; ` +
        `new client connect + handshake + ack ${freshMs.toFixed(1)} ms during; ${STALLED - byDeadline} closed early for ` +
        `newer ones (max_pending_handshakes = ${MAX_PENDING}), ${byDeadline} at the ${DEADLINE_MS} ms deadline; fds ${fds0} → ${fdsBack}; RSS ${rss0} → ${rss1} kB`,
    );
    // One line per kind, rate-limited (the counts follow in later lines).
    await pollUntil(
      () => /did not complete its handshake within 2000 ms \(handshake_timeout\): closing/.test(stderr),
      {
        timeoutMs: 5000,
        what: 'the handshake deadline log line',
      },
    );
    expect(stderr).toMatch(
      /256 TLS handshakes in progress \(max_pending_handshakes\): closing the oldest \(127\.0\.1\.\d+:\d+\)/,
    );
    const logged = readFileSync(path.join(tmp.dir, 'audit.log'), 'utf8').trim().split('\n');
    expect(logged).toHaveLength(acked + 1);
    collector.kill('SIGTERM');
    expect(await waitForExit(collector, 10_000)).toEqual({ code: 0, signal: null });
  });
});
