/**
 * auditd's Kerberos denial of service (audit-remote-protocol.md 4.4), against our collector: 200 connections that
 * send nothing and 200 that send half a token must not delay a well-behaved client's records by more than the
 * handshake deadline (in fact: not measurably), each is closed at the deadline, and the collector's file
 * descriptors and memory return to where they were. The collector runs as its own process (`auditrelay
 * collector --config`), so /proc/<pid>/fd and its RSS are its alone.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireCredentials, type Credential } from '../../src/krb5/gssapi.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { KDC_BINARIES, type Kdc, startKdc } from '../helpers/kdc.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';
import { installKeytab, RawKrb5Client, tempDir } from './support.js';

const CLI = path.join(REPO_ROOT, 'bin/auditrelay.js');
const available = requireOrSkip({
  suite: 'krb5 collector hang test (real KDC)',
  binaries: KDC_BINARIES,
  gssapiBinding: true,
  files: [path.join(REPO_ROOT, 'dist/src/cli.js')],
});

const HOST = os.hostname();
const DEADLINE_MS = 2000;
const SILENT = 200;
const HALF = 200;

const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const rssKb = (pid: number): number =>
  Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);

describe.skipIf(!available)('krb5 collector: clients that hang their handshake', () => {
  let kdc: Kdc;
  let restoreEnv: () => void;
  let tmp: { dir: string; remove: () => void };
  let collector: ChildProcess;
  let stderr = '';
  let port = 0;
  let cred: Credential;
  const target = `auditd@${HOST}`;

  beforeAll(async () => {
    kdc = await startKdc();
    restoreEnv = kdc.applyToProcess();
    tmp = tempDir('auditrelay-hang-');
    const keytab = installKeytab(await kdc.addPrincipal(`auditd/${HOST}`), path.join(tmp.dir, 'audit.key'));
    const clientKeytab = installKeytab(
      await kdc.addPrincipal('auditd/good.example'),
      path.join(tmp.dir, 'c.key'),
    );
    cred = await acquireCredentials({
      usage: 'initiate',
      principal: 'auditd/good.example',
      keytab: clientKeytab,
    });
    const conf = path.join(tmp.dir, 'auditd.conf');
    writeFileSync(
      conf,
      [
        'transport = KRB5',
        'krb5_principal = auditd',
        `krb5_key_file = ${keytab}`,
        `handshake_timeout = ${DEADLINE_MS / 1000}`,
        'tcp_max_per_addr = 1024',
        'tcp_listen_queue = 1024',
        'tcp_listen_port = 60',
        `log_file = ${path.join(tmp.dir, 'audit.log')}`,
        `evidence_key_file = ${path.join(tmp.dir, 'keys', 'signing.key')}`,
        'flush = none',
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    collector = spawn(process.execPath, [CLI, 'collector', '--config', conf, '--listen', '127.0.0.1:0'], {
      env: { ...process.env, ...kdc.env, AUDITRELAY_LOG_FORMAT: 'json' },
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
    cred?.dispose();
    restoreEnv?.();
    await kdc?.stop();
    tmp?.remove();
  });

  /** One record on an established session: ms until its ack. */
  async function roundTrip(client: RawKrb5Client, seq: number): Promise<number> {
    const t = performance.now();
    client.send(encodeEvent(seq, Buffer.from(`type=USER_CMD msg=audit(1.0:${seq}): good client\n`)));
    await client.waitForReplies(client.replies.length + 1);
    return performance.now() - t;
  }

  /** A new connection: ms for connect + handshake + one record acknowledged. */
  async function freshConnection(seq: number): Promise<number> {
    const t = performance.now();
    const c = await RawKrb5Client.connect(port, cred, target);
    await roundTrip(c, seq);
    c.close();
    return performance.now() - t;
  }

  it(`${SILENT} silent + ${HALF} half-token connections delay nobody and are all closed at the deadline`, async () => {
    const pid = collector.pid!;
    let seq = 1;
    // Baseline, with an established session that stays open through the flood.
    const session = await RawKrb5Client.connect(port, cred, target);
    const before: number[] = [];
    for (let i = 0; i < 10; i++) before.push(await roundTrip(session, seq++));
    const freshBefore: number[] = [];
    for (let i = 0; i < 5; i++) freshBefore.push(await freshConnection(seq++));
    // The fresh connections' sockets close asynchronously on the collector's side: wait for a stable count.
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

    // The flood: half of them send nothing, half a length prefix announcing 4000 bytes and 2000 of them.
    const opened = performance.now();
    const bad: { socket: net.Socket; closedAt: Promise<number> }[] = [];
    for (let i = 0; i < SILENT + HALF; i++) {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.on('error', () => {});
      const closedAt = new Promise<number>((resolve) => socket.on('close', () => resolve(performance.now())));
      if (i >= SILENT) {
        socket.once('connect', () => {
          const half = Buffer.alloc(4 + 2000, 0x41);
          half.writeUInt32BE(4000, 0);
          socket.write(half);
        });
      }
      bad.push({ socket, closedAt });
    }
    await pollUntil(() => fdCount(pid) >= fds0 + SILENT + HALF, {
      timeoutMs: DEADLINE_MS - 200,
      intervalMs: 5,
      what: `the collector to accept all ${SILENT + HALF} bad connections`,
      diagnostics: () => `fds ${fdCount(pid)} (baseline ${fds0})`,
    });
    const acceptedMs = performance.now() - opened;
    const fdsPeak = fdCount(pid);

    // While they hang: records on the open session, and new clients connecting.
    const during: number[] = [];
    for (let i = 0; i < 20; i++) during.push(await roundTrip(session, seq++));
    const freshDuring: number[] = [];
    for (let i = 0; i < 5; i++) freshDuring.push(await freshConnection(seq++));
    const servedBy = performance.now() - opened;
    expect(servedBy, 'the good client was served before the bad ones were even closed').toBeLessThan(
      DEADLINE_MS,
    );

    // Each bad connection is closed by the collector at its deadline.
    const closedAfter = (await Promise.all(bad.map((b) => b.closedAt))).map((t) => t - opened);
    const fdsBack = await pollUntil(() => (fdCount(pid) <= fds0 ? fdCount(pid) : undefined), {
      timeoutMs: 5000,
      what: 'the collector fds back to the baseline',
      diagnostics: () => `fds ${fdCount(pid)} (baseline ${fds0})`,
    });
    const rss1 = rssKb(pid);
    // The session survived the flood.
    during.push(await roundTrip(session, seq++));
    session.close();

    const max = (xs: number[]) => Math.max(...xs);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.info(
      `[krb5 hang] ${SILENT}+${HALF} bad connections accepted in ${acceptedMs.toFixed(0)} ms (fds ${fds0} → ${fdsPeak}); ` +
        `record ack on an open session: median ${median(before).toFixed(2)} ms before, ${median(during).toFixed(2)} ms / max ` +
        `${max(during).toFixed(2)} ms during; new connection + handshake + ack: max ${max(freshBefore).toFixed(1)} ms before, ` +
        `${max(freshDuring).toFixed(1)} ms during; bad ones closed after ${Math.min(...closedAfter).toFixed(0)}..` +
        `${max(closedAfter).toFixed(0)} ms (deadline ${DEADLINE_MS}); fds back to ${fdsBack}; RSS ${rss0} → ${rss1} kB`,
    );
    expect(max(during)).toBeLessThan(DEADLINE_MS);
    expect(max(freshDuring)).toBeLessThan(DEADLINE_MS);
    // Closed at the deadline (counted from their accept, which came after `opened`), not before, not much later.
    expect(Math.min(...closedAfter)).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
    expect(max(closedAfter)).toBeLessThan(DEADLINE_MS + acceptedMs + 1000);
    expect(fdsBack).toBeLessThanOrEqual(fds0);
    expect(rss1 - rss0, 'RSS after the bad clients are gone (kB)').toBeLessThan(64 * 1024);
    // The collector's log lines reach our pipe asynchronously: wait for all of them.
    const timeouts = () => stderr.match(/did not complete its Kerberos handshake within 2000 ms/g) ?? [];
    await pollUntil(() => timeouts().length >= SILENT + HALF, {
      timeoutMs: 10_000,
      what: `${SILENT + HALF} handshake-timeout log lines`,
      diagnostics: () => `have ${timeouts().length}`,
    });
    expect(timeouts()).toHaveLength(SILENT + HALF);
    expect(existsSync(path.join(tmp.dir, 'audit.log'))).toBe(true);
    const logged = readFileSync(path.join(tmp.dir, 'audit.log'), 'utf8').trim().split('\n');
    expect(logged).toHaveLength(seq - 1);
    expect(
      logged.every((l) =>
        l.endsWith(' krb5=auditd/good.example@TEST.REALM peer_id=krb5:auditd/good.example@TEST.REALM'),
      ),
    ).toBe(true);

    collector.kill('SIGTERM');
    expect(await waitForExit(collector, 10_000)).toEqual({ code: 0, signal: null });
  });
});
