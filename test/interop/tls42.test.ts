/**
 * auditrelay against the real audit >= 4.2.1 programs (Debian sid, fetched by scripts/fetch-peers.sh and run with
 * sid's own loader, test/helpers/peers.ts), in one private network + mount namespace:
 * - our agent → real auditd 4.2.1 with `transport = TLS` (PSK): every corpus record, in order, byte-exact; a wrong
 *   key and an unknown identity give their specific reasons (auditd's alerts 51 and 80), records stay queued and
 *   are delivered once the key is right;
 * - our agent → real auditd 4.2.1 with `transport = KRB5` (its non-blocking GSS handshake), with a real MIT KDC;
 * - real audisp-remote 4.2.1 → our collector (the built CLI) with a single PSK, and with per-identity keys from
 *   tls_allowed_clients: every record, in order, stamped with the identity; then a SIGHUP that disables one
 *   identity disconnects that real audisp-remote at once while the other keeps sending.
 * The version used is printed; under CI=true the suite fails (does not skip) when it cannot get one.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  audispRemote309Records,
  expectedRecords,
  loadCorpus,
  REPO_ROOT,
  readCompleteLines,
} from '../helpers/corpus.js';
import { KDC_BINARIES, startKdc } from '../helpers/kdc.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { AUDIT42_RUN, audit42Version, FETCH_HINT } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import {
  audispRemoteConf,
  type RealAudispRemote,
  startRealAudispRemote,
} from '../helpers/real-audisp-remote.js';
import { type RealAuditd, startRealAuditd } from '../helpers/real-auditd.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';
import { installKeytab } from '../krb5/support.js';
import { keyOf, writeAcl, writeKey } from '../tls/support.js';

const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const HOST = os.hostname();
const asText = (records: readonly Buffer[]): string[] => records.map((r) => r.toString('latin1'));

const available = requireOrSkip({
  suite: `interop with audit >= 4.2.1 (TLS, krb5) (${FETCH_HINT})`,
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', ...KDC_BINARIES],
  gssapiBinding: true,
  files: [AUDIT42_RUN, path.join(REPO_ROOT, 'dist/src/cli.js'), '/etc/krb5.conf'],
});

describe.skipIf(!available)('auditrelay with the real auditd and audisp-remote 4.2.1', () => {
  let sb: NetnsSandbox;
  const started: ChildProcess[] = [];
  const daemons: { stop(): Promise<unknown> }[] = [];
  let n = 0;

  beforeAll(async () => {
    console.info(`[tls interop] audit peers: ${audit42Version()} (${AUDIT42_RUN})`);
    expect(audit42Version()).toMatch(/version 4\.(2\.[1-9]|[3-9])|version [5-9]/);
    sb = await NetnsSandbox.create();
  });
  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    for (const d of daemons.splice(0)) await d.stop().catch(() => {});
  });
  afterAll(async () => {
    await sb?.destroy();
    await NetnsSandbox.destroyAll();
  });

  const file = (name: string) => path.join(sb.dir, `${++n}-${name}`);

  /** `auditrelay ARGS` inside the sandbox; killed by pid after the test. */
  function auditrelay(args: string[], stdin: 'pipe' | 'ignore') {
    let err = '';
    const child = sb.spawn(process.execPath, [BIN, ...args], {
      stdio: [stdin, 'ignore', 'pipe'],
      env: { AUDITRELAY_LOG_FORMAT: 'json' },
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    started.push(child);
    return Object.assign(child, { stderrText: () => err });
  }

  function agentConf(lines: string[]): string {
    const conf = file('agent.conf');
    const dir = file('agent');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${AUDITD_PORT}`,
        `queue_dir = ${dir}-queue`,
        `state_file = ${dir}.state`,
        'reconnect_initial_ms = 50',
        'reconnect_max_ms = 400',
        'drain_timeout = 20',
        ...lines,
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    return conf;
  }

  async function auditd(extraConf: Record<string, string | number>): Promise<RealAuditd> {
    const d = await startRealAuditd(sb, { port: AUDITD_PORT, audit42: true, extraConf });
    daemons.push(d);
    return d;
  }

  async function collector(lines: string[]) {
    const conf = file('auditd.conf');
    const logFile = file('collector.log');
    writeFileSync(
      conf,
      [
        `tcp_listen_port = ${COLLECTOR_PORT}`,
        `log_file = ${logFile}`,
        'tcp_max_per_addr = 16',
        ...lines,
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    const c = auditrelay(['collector', '--config', conf], 'ignore');
    await pollUntil(
      async () => (await sb.tcpListeners(COLLECTOR_PORT)).some((l) => l.users.some((u) => u.pid === c.pid)),
      {
        timeoutMs: 15_000,
        what: 'the collector to listen',
        diagnostics: () => c.stderrText(),
      },
    );
    return { child: c, logFile, lines: () => asText(readCompleteLines(logFile)) };
  }

  const corpus = () => loadCorpus({ includeShared: true }).flatMap((f) => expectedRecords(f.bytes));

  it('our agent → real auditd 4.2.1 (TLS-PSK): every corpus record, in order, byte-exact', async () => {
    const key = writeKey(file('psk.key'));
    const d = await auditd({ transport: 'TLS', tls_psk_file: key, tls_psk_identity: 'host-1' });
    const records = corpus();
    expect(records.length).toBeGreaterThan(200);
    const agent = auditrelay(
      [
        'agent',
        '--config',
        agentConf(['transport = tls', `tls_psk_file = ${key}`, 'tls_psk_identity = host-1']),
      ],
      'pipe',
    );
    const t0 = performance.now();
    agent.stdin!.end(Buffer.concat(records.flatMap((r) => [r, Buffer.from('\n')])));
    expect(await waitForExit(agent, 60_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    await d.waitForLines(records.length, 30_000);
    console.info(
      `[tls interop] our agent → auditd 4.2.1 over TLS: ${records.length} records in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    expect(asText(d.receivedRecords())).toEqual(asText(records));
    expect(agent.stderrText()).toMatch(
      /TLS session established with 127\.0\.0\.1:60 as identity host-1 \(TLSv1\.3, TLS_AES_128_GCM_SHA256, X25519\)/,
    );
    expect(d.ownRecords().join('\n')).toMatch(
      /op=tls-accept res=success .* id=host-1 .* tls_version=TLSv1\.3 cipher=TLS_AES_128_GCM_SHA256 group=x25519/,
    );
  });

  it('our agent → real auditd 4.2.1: wrong key and unknown identity give their reasons; delivered once fixed', async () => {
    const key = writeKey(file('psk.key'));
    const d = await auditd({ transport: 'TLS', tls_psk_file: key, tls_psk_identity: 'host-1' });
    const wrongKey = writeKey(file('wrong.key'));
    const a = auditrelay(
      [
        'agent',
        '--config',
        agentConf([
          'transport = tls',
          `tls_psk_file = ${wrongKey}`,
          'tls_psk_identity = host-1',
          'log_level = debug',
        ]),
      ],
      'pipe',
    );
    a.stdin!.write('type=USER_CMD msg=audit(1.0:1): queued while the key is wrong\n');
    const reason = await pollUntil(
      () =>
        /did not accept our key for identity host-1 \(TLS alert 51 decrypt_error\)[^"]*/.exec(
          a.stderrText(),
        )?.[0],
      { timeoutMs: 15_000, what: 'the wrong-key reason', diagnostics: () => a.stderrText() },
    );
    console.info(`[tls interop] agent → auditd 4.2.1, wrong key: ${reason}`);
    await pollUntil(() => /binder does not verify/.test(sb.syslogText()), {
      timeoutMs: 5000,
      what: 'auditd to log it',
    });
    const u = auditrelay(
      [
        'agent',
        '--config',
        agentConf([
          'transport = tls',
          `tls_psk_file = ${key}`,
          'tls_psk_identity = host-9',
          'log_level = debug',
        ]),
      ],
      'pipe',
    );
    u.stdin!.write('type=USER_CMD msg=audit(1.0:2): unknown identity\n');
    const unknown = await pollUntil(
      () => /the server refused identity host-9 \(TLS alert 80 internal_error[^"]*/.exec(u.stderrText())?.[0],
      { timeoutMs: 15_000, what: 'the unknown-identity reason', diagnostics: () => u.stderrText() },
    );
    console.info(`[tls interop] agent → auditd 4.2.1, unknown identity: ${unknown}`);
    expect(sb.syslogText()).toMatch(/TLS PSK identity mismatch: received 'host-9'/);
    expect(d.receivedRecords()).toEqual([]);
    // The fix: the right key in the agent's file (read at every connect); the queued record is delivered.
    writeKey(wrongKey, keyOf(key).toString('hex'));
    await d.waitForLines(1, 15_000);
    expect(asText(d.receivedRecords())).toEqual([
      'type=USER_CMD msg=audit(1.0:1): queued while the key is wrong',
    ]);
    a.stdin!.end();
    expect(await waitForExit(a, 30_000)).toEqual({ code: 0, signal: null });
  });

  it('our agent → real auditd 4.2.1 (KRB5, its non-blocking handshake): every record with krb5=<principal>', async () => {
    const kdc = await startKdc({ namespace: sb });
    daemons.push(kdc);
    await sb.bindFile(kdc.krb5Conf, '/etc/krb5.conf');
    await sb.mountTmpfs('/var/tmp', '1777');
    const principal = `auditd/${HOST}`;
    const keytab = installKeytab(await kdc.addPrincipal(principal), file('audit.key'));
    const d = await auditd({ transport: 'KRB5', krb5_principal: 'auditd', krb5_key_file: keytab });
    const agentKeytab = installKeytab(keytab, file('audisp-remote.key'));
    const records = corpus().filter((r) => r.length < 8000);
    const agent = auditrelay(
      [
        'agent',
        '--config',
        agentConf(['transport = krb5', `krb5_principal = ${principal}`, `krb5_key_file = ${agentKeytab}`]),
      ],
      'pipe',
    );
    agent.stdin!.end(Buffer.concat(records.flatMap((r) => [r, Buffer.from('\n')])));
    expect(await waitForExit(agent, 60_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    await d.waitForLines(records.length, 30_000);
    const suffix = ` krb5=${principal}@${kdc.realm}`;
    expect(asText(d.receivedRecords())).toEqual(asText(records).map((r) => `${r}${suffix}`));
    expect(sb.syslogText()).toMatch(
      new RegExp(`GSS-API authenticated connection from: ${principal}@${kdc.realm}`),
    );
  });

  /** A real audisp-remote 4.2.1 with transport = tls, its stdin ours. */
  function remote(key: string, identity: string): Promise<RealAudispRemote> {
    return startRealAudispRemote(sb, {
      audit42: true,
      confText: audispRemoteConf({
        port: COLLECTOR_PORT,
        extra: { transport: 'tls', tls_psk_file: key, tls_psk_identity: identity },
      }),
    });
  }

  it('real audisp-remote 4.2.1 (single PSK) → our collector: every record, in order, stamped', async () => {
    const key = writeKey(file('psk.key'));
    const c = await collector(['transport = TLS', `tls_psk_file = ${key}`, 'tls_psk_identity = host-1']);
    const r = await remote(key, 'host-1');
    const records = loadCorpus({ includeShared: true }).flatMap((f) => audispRemote309Records(f.bytes));
    const t0 = performance.now();
    await r.write(records);
    await pollUntil(() => c.lines().length >= records.length, {
      timeoutMs: 30_000,
      what: `${records.length} records in the collector log`,
      diagnostics: () =>
        `have ${c.lines().length}\n${c.child.stderrText().slice(-3000)}\n${sb.syslogText().slice(-2000)}`,
    });
    console.info(
      `[tls interop] audisp-remote 4.2.1 → our collector over TLS: ${records.length} records in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    expect(await r.stop()).toEqual({ code: 0, signal: null });
    expect(c.lines()).toEqual(asText(records).map((l) => `${l} peer_id=tls-psk:host-1`));
    expect(sb.syslogText()).toMatch(
      /audisp-remote: TLS connected to 127\.0\.0\.1 using TLS_AES_128_GCM_SHA256 kex=x25519/,
    );
    expect(c.child.stderrText()).toMatch(
      /authenticated as tls-psk host-1 \(TLSv1\.3, TLS_AES_128_GCM_SHA256\)/,
    );
  });

  it('per-identity keys: two real audisp-remote 4.2.1; SIGHUP disables one, it is cut off at once, the other keeps sending', async () => {
    const k1 = writeKey(file('host-1.key'));
    const k2 = writeKey(file('host-2.key'));
    const acl = file('tls-clients');
    writeAcl(acl, [`host-1 enabled key=${k1}`, `host-2 enabled key=${k2}`]);
    const c = await collector(['transport = TLS', `tls_allowed_clients = ${acl}`]);
    const r1 = await remote(k1, 'host-1');
    const r2 = await remote(k2, 'host-2');
    const rec = (host: number, i: number) =>
      `type=USER_CMD msg=audit(1700000000.${i}:${i}): host-${host} record ${i}`;
    await r1.write([rec(1, 1), rec(1, 2)]);
    await r2.write([rec(2, 1), rec(2, 2)]);
    await pollUntil(() => c.lines().length >= 4, {
      timeoutMs: 15_000,
      what: '4 records',
      diagnostics: () => `${c.child.stderrText()}\n${sb.syslogText()}\n${c.lines().join('\n')}`,
    });
    expect(c.lines().sort()).toEqual(
      [
        `${rec(1, 1)} peer_id=tls-psk:host-1`,
        `${rec(1, 2)} peer_id=tls-psk:host-1`,
        `${rec(2, 1)} peer_id=tls-psk:host-2`,
        `${rec(2, 2)} peer_id=tls-psk:host-2`,
      ].sort(),
    );
    // host-1 is disabled: SIGHUP re-reads the file and cuts it off at once.
    writeAcl(acl, [`host-1 disabled key=${k1}`, `host-2 enabled key=${k2}`]);
    c.child.kill('SIGHUP');
    await pollUntil(
      () =>
        /TLS: disconnecting 127\.0\.0\.1:\d+ \(tls-psk host-1\): identity \\"host-1\\" is disabled/.test(
          c.child.stderrText(),
        ),
      {
        timeoutMs: 10_000,
        what: 'the collector to disconnect host-1',
        diagnostics: () => c.child.stderrText(),
      },
    );
    // host-2 goes on. host-1's audisp-remote saw its link fail while idle ("TLS read ... failed") and, as upstream
    // does after an idle failure, does not reconnect: its next record stays queued and is never logged. A new
    // audisp-remote with host-1's key is refused at its handshake (alert 40, it keeps running per
    // startup_failure_action).
    await r1.write([rec(1, 3)]);
    await r2.write([rec(2, 3), rec(2, 4)]);
    await pollUntil(() => c.lines().length >= 6, {
      timeoutMs: 15_000,
      what: 'host-2 records after the reload',
    });
    const again = await remote(k1, 'host-1');
    await again.write([rec(1, 4)]);
    await pollUntil(() => /audisp-remote: TLS handshake with 127\.0\.0\.1 failed/.test(sb.syslogText()), {
      timeoutMs: 15_000,
      what: 'the new audisp-remote of host-1 to be refused',
      diagnostics: () => `${c.child.stderrText().slice(-3000)}\n${sb.syslogText().slice(-3000)}`,
    });
    expect(sb.syslogText()).toMatch(/audisp-remote: TLS error: .*SSL alert number 40/);
    await pollUntil(
      () =>
        /TLS: refused client 127\.0\.0\.1:\d+: identity \\"host-1\\" is disabled in/.test(
          c.child.stderrText(),
        ),
      { timeoutMs: 5000, what: "the collector's refusal line", diagnostics: () => c.child.stderrText() },
    );
    await again.stop();
    await r2.write([rec(2, 5)]);
    await pollUntil(() => c.lines().length >= 7, { timeoutMs: 15_000, what: 'host-2 keeps sending' });
    expect(c.lines().filter((l) => l.includes('host-1 record'))).toHaveLength(2);
    expect(c.lines().filter((l) => l.includes('host-2 record'))).toEqual(
      [1, 2, 3, 4, 5].map((i) => `${rec(2, i)} peer_id=tls-psk:host-2`),
    );
    await r1.stop();
    expect(await r2.stop()).toEqual({ code: 0, signal: null });
  });
});
