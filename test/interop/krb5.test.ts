/**
 * transport = krb5 against the real Debian 3.0.9 programs, inside a private network+mount namespace with its own
 * MIT KDC (test/helpers/kdc.ts with `namespace`):
 * - our agent → real auditd (transport = KRB5): every corpus record, in order, byte-exact, with auditd's
 *   ` krb5=<principal>` suffix;
 * - real audisp-remote (transport = krb5) → our collector: the same, the suffix added by us.
 *
 * The real programs read no KRB5_CONFIG (audisp-remote runs with an empty environment, as under auditd's
 * dispatcher), so the realm's krb5.conf is bind-mounted over /etc/krb5.conf inside the namespace only, and
 * /var/tmp (auditd's default replay cache) gets a private tmpfs. audisp-remote 3.0.9 crashes on any connection
 * error with krb5 (reference 4.5), so the collector is listening before it starts.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { KRB5_MAX_RECORD } from '../../src/krb5/auditd.js';
import {
  audispRemote309Records,
  expectedRecords,
  loadCorpus,
  REPO_ROOT,
  readCompleteLines,
} from '../helpers/corpus.js';
import { KDC_BINARIES, type Kdc, startKdc } from '../helpers/kdc.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDISP_REMOTE_BIN, audispRemoteConf, startRealAudispRemote } from '../helpers/real-audisp-remote.js';
import { AUDITD_BIN, DEFAULT_AUDITD_PORT, startRealAuditd } from '../helpers/real-auditd.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';
import { installKeytab } from '../krb5/support.js';

const PORT = DEFAULT_AUDITD_PORT;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const HOST = os.hostname();
const PRINCIPAL = `auditd/${HOST}`;

const available = requireOrSkip({
  suite: 'krb5 interop with the real auditd and audisp-remote (Debian 3.0.9)',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN, AUDISP_REMOTE_BIN, ...KDC_BINARIES],
  gssapiBinding: true,
  files: [path.join(REPO_ROOT, 'dist/src/cli.js'), '/etc/krb5.conf'],
});

/** A record as the agent sends it over krb5: split into pieces that fit a wrapped message (newline included). */
function krb5Pieces(record: Buffer): Buffer[] {
  const limit = KRB5_MAX_RECORD - 1;
  const out: Buffer[] = [];
  for (let i = 0; i < record.length; i += limit) out.push(record.subarray(i, i + limit));
  return out;
}

const asText = (records: readonly Buffer[]): string[] => records.map((r) => r.toString('latin1'));

describe.skipIf(!available)('krb5 interop with the real auditd and audisp-remote', () => {
  let sandbox: NetnsSandbox | undefined;
  let kdc: Kdc | undefined;
  const started: ChildProcess[] = [];

  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await kdc?.stop();
    kdc = undefined;
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  /** Sandbox + KDC inside it + the realm as the namespace's /etc/krb5.conf; returns a 0400 keytab for PRINCIPAL. */
  async function realm(): Promise<{ sb: NetnsSandbox; k: Kdc; keytab: string }> {
    sandbox = await NetnsSandbox.create();
    kdc = await startKdc({ namespace: sandbox });
    await sandbox.bindFile(kdc.krb5Conf, '/etc/krb5.conf');
    await sandbox.mountTmpfs('/var/tmp', '1777');
    const keytab = installKeytab(await kdc.addPrincipal(PRINCIPAL), path.join(sandbox.dir, 'audit.key'));
    return { sb: sandbox, k: kdc, keytab };
  }

  function auditrelay(sb: NetnsSandbox, args: string[], stdin: 'pipe' | 'ignore') {
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

  it('our agent → real auditd (KRB5): every corpus record, in order, byte-exact, with krb5=<principal>', async () => {
    const { sb, k, keytab } = await realm();
    const auditd = await startRealAuditd(sb, {
      port: PORT,
      extraConf: { transport: 'KRB5', krb5_principal: 'auditd', krb5_key_file: keytab },
    });
    const agentKeytab = installKeytab(keytab, path.join(sb.dir, 'audisp-remote.key'));
    const conf = path.join(sb.dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${PORT}`,
        `queue_dir = ${path.join(sb.dir, 'queue')}`,
        'transport = krb5',
        `krb5_principal = ${PRINCIPAL}`,
        `krb5_key_file = ${agentKeytab}`,
        'reconnect_initial_ms = 50',
        'reconnect_max_ms = 500',
        'drain_timeout = 20',
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    const records = loadCorpus({ includeShared: true }).flatMap((f) => expectedRecords(f.bytes));
    expect(records.length).toBeGreaterThan(200);
    const t0 = performance.now();
    const agent = auditrelay(sb, ['agent', '--config', conf], 'pipe');
    agent.stdin!.end(Buffer.concat(records.flatMap((r) => [r, Buffer.from('\n')])));
    expect(await waitForExit(agent, 60_000), agent.stderrText()).toEqual({ code: 0, signal: null });
    const suffix = ` krb5=${PRINCIPAL}@${k.realm}`;
    const expected = records.flatMap(krb5Pieces).map((r) => `${r.toString('latin1')}${suffix}`);
    await auditd.waitForLines(expected.length, 30_000);
    console.info(
      `[krb5 interop] our agent → auditd 3.0.9: ${expected.length} records in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    await auditd.stop();
    expect(asText(auditd.receivedRecords())).toEqual(expected);
    expect(agent.stderrText()).toMatch(/Kerberos session established with auditd\/[^ ]+ as auditd\//);
    // auditd's own view: it authenticated us.
    expect(sb.syslogText()).toMatch(new RegExp(`GSS-API Accepted connection from: ${PRINCIPAL}@${k.realm}`));
  });

  it('real audisp-remote (krb5) → our collector: every corpus record, in order, byte-exact, with krb5=<principal>', async () => {
    const { sb, k, keytab } = await realm();
    const logFile = path.join(sb.dir, 'collector.log');
    const conf = path.join(sb.dir, 'auditd.conf');
    writeFileSync(
      conf,
      [
        `tcp_listen_port = ${PORT}`,
        'transport = KRB5',
        'krb5_principal = auditd',
        `krb5_key_file = ${keytab}`,
        `log_file = ${logFile}`,
        `evidence_key_file = ${path.join(sb.dir, 'keys', 'signing.key')}`,
        'tcp_max_per_addr = 16',
        '',
      ].join('\n'),
      { mode: 0o640 },
    );
    const collector = auditrelay(sb, ['collector', '--config', conf], 'ignore');
    await pollUntil(async () => (await sb.tcpListeners(PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
      diagnostics: () => collector.stderrText(),
    });
    const remoteKeytab = installKeytab(keytab, path.join(sb.dir, 'audisp-remote.key'));
    const remote = await startRealAudispRemote(sb, {
      confText: audispRemoteConf({
        port: PORT,
        extra: { transport: 'krb5', krb5_principal: PRINCIPAL, krb5_key_file: remoteKeytab },
      }),
    });
    const expected = loadCorpus({ includeShared: true }).flatMap((f) => audispRemote309Records(f.bytes));
    const t0 = performance.now();
    await remote.write(expected);
    await pollUntil(() => readCompleteLines(logFile).length >= expected.length, {
      timeoutMs: 30_000,
      what: `${expected.length} records in the collector log`,
      diagnostics: () =>
        `have ${readCompleteLines(logFile).length}\n${collector.stderrText().slice(-3000)}\n${sb.syslogText().slice(-3000)}`,
    });
    console.info(
      `[krb5 interop] audisp-remote 3.0.9 → our collector: ${expected.length} records in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    expect(await remote.stop()).toEqual({ code: 0, signal: null });
    collector.kill('SIGTERM');
    expect(await waitForExit(collector, 15_000)).toEqual({ code: 0, signal: null });
    // auditd's ` krb5=<principal>`, then the collector's host identity stamp (identity_policy = stamp).
    const suffix = ` krb5=${PRINCIPAL}@${k.realm} peer_id=krb5:${PRINCIPAL}@${k.realm}`;
    expect(asText(readCompleteLines(logFile))).toEqual(asText(expected).map((r) => `${r}${suffix}`));
    expect(collector.stderrText()).toContain(`authenticated as ${PRINCIPAL}@${k.realm}`);
    expect(sb.syslogText()).toMatch(new RegExp(`audisp-remote: kerberos principal: ${PRINCIPAL}@${k.realm}`));
  });
});
