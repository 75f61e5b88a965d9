/**
 * transport = tls end to end in-process, real TLS sockets on loopback: our agent → our collector with TLS-PSK
 * (one identity, single-PSK allowed-clients file, per-identity keys) and mutual X.509 (with a PKI made by the
 * real `openssl`), the host identity stamp and its node= policy, SIGHUP reloads (a disabled identity is
 * disconnected at once, a new key file and a new CRL apply), and every bad input an operator may meet: each gives
 * one specific log line naming the peer, the agent retries with backoff (never a tight loop) and loses nothing.
 */
import { chmodSync, chownSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { Collector, DEFAULT_COLLECTOR_SETTINGS } from '../../src/collector/collector.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { collectorMetrics } from '../../src/status/metrics.js';
import { type RunningAgent, records, startAgent } from '../helpers/agent-harness.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import {
  keyOf,
  makePki,
  memoryLogger,
  type Pki,
  RawTlsClient,
  type RunningTlsCollector,
  rawConnect,
  startTlsCollector,
  tempDir,
  writeAcl,
  writeKey,
} from './support.js';

const withOpenssl = requireOrSkip({
  suite: 'tls x509 (certificates made with openssl)',
  binaries: ['openssl'],
});
const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;

describe('tls: our agent → our collector', () => {
  let tmp: { dir: string; remove: () => void };
  let pki: Pki | null = null;
  const agents: RunningAgent[] = [];
  const collectors: RunningTlsCollector[] = [];
  let n = 0;

  beforeAll(() => {
    tmp = tempDir('auditrelay-tls-');
    if (withOpenssl) pki = makePki(path.join(tmp.dir, 'pki'));
  });
  afterEach(async () => {
    await Promise.all(
      agents.splice(0).map((a) => {
        a.input.end();
        return Promise.race([a.done, new Promise((r) => setTimeout(r, 5000))]);
      }),
    );
    for (const c of collectors.splice(0)) await c.stop();
  });
  afterAll(() => tmp?.remove());

  const file = (name: string) => path.join(tmp.dir, `${++n}-${name}`);

  async function collector(
    tlsOpts: Parameters<typeof startTlsCollector>[1],
    extra: Parameters<typeof startTlsCollector>[2] = {},
  ): Promise<RunningTlsCollector> {
    const c = await startTlsCollector(tmp.dir, tlsOpts, extra);
    collectors.push(c);
    return c;
  }

  function agent(port: number, config: Parameters<typeof startAgent>[1]): RunningAgent {
    const a = startAgent(port, {
      transport: 'tls',
      reconnectInitialMs: 50,
      reconnectMaxMs: 400,
      drainTimeout: 1,
      ...config,
    });
    agents.push(a);
    return a;
  }

  /** Failed attempts the agent recorded (kind: reason), with their time. */
  function failures(a: RunningAgent): { time: number; reason: string }[] {
    return a.agent.observer.errors
      .filter((e) => e.source === 'connection')
      .map((e) => ({ time: Date.parse(e.time), reason: e.message }));
  }

  /**
   * At least `n` failed attempts, each with `reason`; never connected; not a tight loop (the backoff's floor is
   * network_retry_time = 1 s from the third attempt on, so 3 s hold at most a handful of attempts); nothing lost.
   */
  async function expectRetries(
    a: RunningAgent,
    count: number,
    reason: RegExp,
    queued: number,
  ): Promise<string> {
    await pollUntil(() => failures(a).length >= count, {
      timeoutMs: 15_000,
      what: `${count} failed attempts`,
      diagnostics: () =>
        failures(a)
          .map((f) => f.reason)
          .join('\n'),
    });
    const f = failures(a);
    if (process.env.TLS_DEBUG) console.log(f.map((x) => `${x.time % 100000} ${x.reason.slice(0, 60)}`));
    for (const x of f) expect(x.reason).toMatch(reason);
    expect(a.agent.stats.connects).toBe(0);
    expect(a.agent.queue.depth).toBe(queued);
    const span = (f.at(-1)!.time - f[0]!.time) / 1000;
    expect(f.length).toBeLessThanOrEqual(4 + Math.ceil(span));
    return f[0]!.reason;
  }

  describe('psk', () => {
    it('one identity: every record delivered, stamped with peer_id=tls-psk:<identity>', async () => {
      const key = writeKey(file('psk.key'));
      const c = await collector({ pskFile: key, pskIdentity: 'web1' });
      const a = agent(c.port, { tlsPskFile: key, tlsPskIdentity: 'web1' });
      const recs = records(1, 300);
      a.write(recs);
      const lines = await c.waitForLines(recs.length);
      expect(await a.finish()).toBe(0);
      expect(lines).toEqual(recs.map((r) => `${r} peer_id=tls-psk:web1`));
      expect(c.collector.stats.tlsSessions).toBe(1);
      expect(await collectorMetrics(c.collector).metrics()).toMatch(
        /^auditrelay_collector_tls_sessions_total 1$/m,
      );
      const established = a.logs.find((l) => /^TLS session established/.test(l.msg))!;
      expect(established.msg).toMatch(/as identity web1 \(TLSv1\.3, TLS_AES_128_GCM_SHA256, X25519\)/);
      expect((await c.waitForLog(/authenticated as tls-psk web1/)).msg).toMatch(
        /TLSv1\.3, TLS_AES_128_GCM_SHA256/,
      );
    });

    it('per-identity keys: each host its own key and stamp; node= policies reject and rewrite', async () => {
      const k1 = writeKey(file('h1.key'));
      const k2 = writeKey(file('h2.key'));
      const acl = writeAcl(file('clients'), [
        `host-1 enabled key=${k1} node=web1.example.com prod web`,
        `host-2 enabled key=${k2}`,
        `host-3 disabled key=${writeKey(file('h3.key'))} retired`,
      ]);
      const c = await collector({ allowedClients: acl }, { identityPolicy: 'reject' });
      const a1 = agent(c.port, { tlsPskFile: k1, tlsPskIdentity: 'host-1' });
      const a2 = agent(c.port, { tlsPskFile: k2, tlsPskIdentity: 'host-2' });
      a1.write([
        'node=web1 type=USER_CMD msg=audit(1.0:1): short name of host-1',
        'node=web1.example.com type=USER_CMD msg=audit(1.0:2): its FQDN',
        'node=web2 type=USER_CMD msg=audit(1.0:3): another host name: refused',
        'type=USER_CMD msg=audit(1.0:4): no node at all peer_id=tls-psk:host-2 forged',
      ]);
      a2.write(['node=host-2 type=USER_CMD msg=audit(1.0:5): host-2 by its identity']);
      await c.waitForLines(4);
      expect(await a1.finish()).toBe(0);
      expect(await a2.finish()).toBe(0);
      expect(c.lines().sort()).toEqual(
        [
          'node=web1 type=USER_CMD msg=audit(1.0:1): short name of host-1 peer_id=tls-psk:host-1',
          'node=web1.example.com type=USER_CMD msg=audit(1.0:2): its FQDN peer_id=tls-psk:host-1',
          'type=USER_CMD msg=audit(1.0:4): no node at all peer_id\\x3dtls-psk:host-2 forged peer_id=tls-psk:host-1',
          'node=host-2 type=USER_CMD msg=audit(1.0:5): host-2 by its identity peer_id=tls-psk:host-2',
        ].sort(),
      );
      expect(c.collector.stats.identityRefused).toBe(1);
      const refused = await c.waitForLog(/claims node=web2/);
      expect(refused.msg).toMatch(
        /\(tls-psk host-1\) claims node=web2, which is not that identity's: refused/,
      );
      // The agent was told (a FATAL-class reply: generic_error_action) and did not retry it.
      expect(
        a1.logs.some((l) => /0x60000100 record refused/.test(String(l.msg) + String(l.message ?? ''))),
      ).toBe(true);

      c.collector.identityPolicy = 'rewrite';
      const a3 = agent(c.port, { tlsPskFile: k1, tlsPskIdentity: 'host-1' });
      a3.write(['node=web2 type=USER_CMD msg=audit(1.0:6): rewritten']);
      await c.waitForLines(5);
      expect(await a3.finish()).toBe(0);
      expect(c.lines().at(-1)).toBe(
        'node=web1.example.com type=USER_CMD msg=audit(1.0:6): rewritten peer_id=tls-psk:host-1',
      );
      expect(c.collector.stats.identityRewritten).toBe(1);
    });

    it('wrong key: "did not accept our key", backoff, records kept; delivered after the key file is fixed', async () => {
      const right = writeKey(file('right.key'));
      const wrong = writeKey(file('agent.key'));
      const c = await collector({ pskFile: right, pskIdentity: 'web1' });
      const a = agent(c.port, { tlsPskFile: wrong, tlsPskIdentity: 'web1' });
      a.write(records(1, 20));
      const reason = await expectRetries(a, 3, /did not accept our key for identity web1 \(TLS alert 47/, 20);
      console.info(`[tls] agent, wrong key: ${reason}`);
      const log = await c.waitForLog(/TLS: refused client/);
      expect(log.msg).toMatch(
        /^TLS: refused client 127\.0\.0\.1:\d+: wrong key: the client's pre-shared key is not the one this collector has for its identity \(binder does not verify\)$/,
      );
      // The fix: the right key in the agent's file; read at the next attempt.
      writeKey(wrong, keyOf(right).toString('hex'));
      await c.waitForLines(20);
      expect(await a.finish()).toBe(0);
    });

    it('unknown and disabled identities: refused with the reason on both sides, records kept', async () => {
      const shared = writeKey(file('shared.key'));
      const acl = writeAcl(file('clients'), ['host-1 enabled prod', 'host-old disabled retired']);
      const c = await collector({ pskFile: shared, allowedClients: acl });
      const unknown = agent(c.port, { tlsPskFile: shared, tlsPskIdentity: 'host-9' });
      unknown.write(records(1, 3));
      const reason = await expectRetries(unknown, 2, /the server refused identity host-9.*TLS alert 40/, 3);
      console.info(`[tls] agent, unknown identity: ${reason}`);
      expect((await c.waitForLog(/refused client .*unknown identity/)).msg).toMatch(
        /TLS: refused client 127\.0\.0\.1:\d+: unknown identity "host-9" \(not in .*clients\)/,
      );
      const disabled = agent(c.port, { tlsPskFile: shared, tlsPskIdentity: 'host-old' });
      disabled.write(records(1, 2));
      await expectRetries(disabled, 2, /the server refused identity host-old/, 2);
      expect((await c.waitForLog(/is disabled/)).msg).toMatch(/identity "host-old" is disabled in .*clients/);
    });

    it('SIGHUP: a disabled identity is disconnected at once while another keeps sending; a new key applies', async () => {
      const k1 = writeKey(file('h1.key'));
      const k2 = writeKey(file('h2.key'));
      const aclFile = file('clients');
      writeAcl(aclFile, [`host-1 enabled key=${k1}`, `host-2 enabled key=${k2}`]);
      const c = await collector({ allowedClients: aclFile });
      const a1 = agent(c.port, { tlsPskFile: k1, tlsPskIdentity: 'host-1' });
      const a2 = agent(c.port, { tlsPskFile: k2, tlsPskIdentity: 'host-2' });
      a1.write(records(1, 5, 'A'));
      a2.write(records(1, 5, 'B'));
      await c.waitForLines(10);
      writeAcl(aclFile, [`host-1 disabled key=${k1}`, `host-2 enabled key=${k2}`]);
      const closed = c.collector.reloadTls(c.settings);
      expect(closed).toHaveLength(1);
      expect((await c.waitForLog(/TLS: disconnecting/)).msg).toMatch(
        /^TLS: disconnecting 127\.0\.0\.1:\d+ \(tls-psk host-1\): identity "host-1" is disabled in /,
      );
      await pollUntil(() => failures(a1).length > 0, { timeoutMs: 5000, what: 'host-1 to lose its link' });
      a1.write(records(6, 3, 'A'));
      a2.write(records(6, 3, 'B'));
      await pollUntil(() => c.lines().filter((l) => l.includes('tag=B')).length >= 8, {
        timeoutMs: 5000,
        what: 'host-2 to keep sending',
        diagnostics: () => c.lines().join('\n'),
      });
      // Its reconnects are refused (records kept), host-2 is untouched.
      await pollUntil(
        () => failures(a1).filter((f) => /refused identity host-1/.test(f.reason)).length >= 2,
        {
          timeoutMs: 10_000,
          what: 'host-1 to be refused',
          diagnostics: () =>
            failures(a1)
              .map((f) => f.reason)
              .join('\n'),
        },
      );
      expect(a1.agent.queue.depth).toBe(3);
      expect(a1.agent.stats.connects).toBe(1);
      expect(a2.agent.stats.connects).toBe(1);
      // host-1 gets a new key and is enabled again: applies on the next reload.
      const k1b = writeKey(file('h1b.key'));
      writeAcl(aclFile, [`host-1 enabled key=${k1b}`, `host-2 enabled key=${k2}`]);
      expect(c.collector.reloadTls(c.settings)).toEqual([]);
      writeKey(k1, keyOf(k1b).toString('hex'));
      await pollUntil(() => c.lines().filter((l) => l.includes('tag=A')).length >= 8, {
        timeoutMs: 10_000,
        what: 'host-1 to deliver with its new key',
      });
      expect(await a1.finish()).toBe(0);
      expect(await a2.finish()).toBe(0);
    });

    it('no TLS session tickets are sent (as auditd 4.2: no resumption; audisp-remote 4.2.1 stalls on one)', async () => {
      const key = writeKey(file('psk.key'));
      const c = await collector({ pskFile: key, pskIdentity: 'web1' });
      const client = await RawTlsClient.connect({ port: c.port, identity: 'web1', key: keyOf(key) });
      let tickets = 0;
      client.socket.on('session', () => tickets++);
      client.send('type=USER_CMD msg=audit(1.0:1): x');
      await client.waitForReplies(1);
      client.send('type=USER_CMD msg=audit(1.0:2): y');
      await client.waitForReplies(2);
      client.close();
      expect(tickets).toBe(0);
      expect(c.entries.some((e) => /cannot be stopped from sending session tickets/.test(e.msg))).toBe(false);
    });

    it('a bad file on SIGHUP changes nothing and says why', async () => {
      const k1 = writeKey(file('h1.key'));
      const aclFile = writeAcl(file('clients'), [`host-1 enabled key=${k1}`]);
      const c = await collector({ allowedClients: aclFile });
      writeAcl(aclFile, [`host-1 enabled key=${k1}`, 'host-2 enabled']);
      expect(() => c.collector.reloadTls(c.settings)).toThrow(
        /:3: 1 of 2 entries have a per-identity key \(key=\) and "host-2" has none; all entries must have key= or none/,
      );
      const a = agent(c.port, { tlsPskFile: k1, tlsPskIdentity: 'host-1' });
      a.write(records(1, 2));
      await c.waitForLines(2);
    });
  });

  describe('mismatched transports', () => {
    it('a plaintext client on a TLS port: one line naming the peer', async () => {
      const key = writeKey(file('psk.key'));
      const c = await collector({ pskFile: key, pskIdentity: 'web1' });
      const s = await rawConnect(c.port);
      s.write(encodeEvent(1, Buffer.from('type=USER_CMD msg=audit(1.0:1): plaintext\n')));
      await new Promise((r) => s.once('close', r));
      expect((await c.waitForLog(/TLS: refused client/)).msg).toMatch(
        /^TLS: refused client 127\.0\.0\.1:\d+: the client does not speak TLS \(it sent bytes that are not a TLS record\): is it configured with transport = tcp\?$/,
      );
    });

    it('our TLS agent on a plaintext collector, and a tcp agent on a TLS collector', async () => {
      const { log, entries } = memoryLogger();
      const plain = new Collector(
        { ...DEFAULT_COLLECTOR_SETTINGS, port: 0, logFile: file('plain.log'), fsync: 'never' },
        log,
      );
      const { port } = await plain.start();
      try {
        const key = writeKey(file('psk.key'));
        const a = agent(port, { tlsPskFile: key, tlsPskIdentity: 'web1' });
        a.write(records(1, 2));
        const reason = await expectRetries(a, 2, /closed the connection during the TLS handshake/, 2);
        console.info(`[tls] agent → plaintext server: ${reason}`);
        await pollUntil(() => entries.find((e) => /protocol error/.test(e.msg)), {
          timeoutMs: 5000,
          what: 'the collector protocol error',
        });
        expect(entries.find((e) => /protocol error/.test(e.msg))!.msg).toMatch(
          /bad magic 0x\w+ at stream offset 0 \(expected 0xff0000fe\): this is a TLS handshake; the peer uses transport = tls and this side does not/,
        );
      } finally {
        await plain.stop();
      }
      const key = writeKey(file('psk2.key'));
      const c = await collector({ pskFile: key, pskIdentity: 'web1' });
      const tcp = startAgent(c.port, { reconnectInitialMs: 50, reconnectMaxMs: 400, drainTimeout: 1 });
      agents.push(tcp);
      tcp.write(records(1, 2));
      await pollUntil(() => failures(tcp).length >= 2, { timeoutMs: 10_000, what: 'the tcp agent to fail' });
      expect(failures(tcp)[0]!.reason).toMatch(/TLS alert: the peer expects transport = tls|closed/);
      expect(tcp.agent.queue.depth).toBe(2);
    });
  });

  describe.skipIf(!withOpenssl)('x509', () => {
    const x509 = (name: string, o: { expired?: boolean; ca?: 'main' | 'other' } = {}) => {
      const { cert, key } = pki!.client(name, o);
      return {
        tlsAuth: 'x509' as const,
        tlsCaFile: pki!.caCert,
        tlsCertFile: cert,
        tlsKeyFile: key,
        tlsServerName: 'collector.test',
      };
    };
    const server = (extra: Record<string, unknown> = {}) => ({
      auth: 'x509' as const,
      caFile: pki!.caCert,
      certFile: pki!.serverCert,
      keyFile: pki!.serverKey,
      ...extra,
    });

    it('mutual X.509: delivered and stamped with the allowed certificate name', async () => {
      const c = await collector(server({ allowedNames: ['*.example.com'], crlFile: pki!.crl() }));
      const a = agent(c.port, x509('web1.example.com'));
      a.write(['node=web1 type=USER_CMD msg=audit(1.0:1): x509', ...records(2, 50)]);
      const lines = await c.waitForLines(51);
      expect(await a.finish()).toBe(0);
      expect(lines[0]).toBe('node=web1 type=USER_CMD msg=audit(1.0:1): x509 peer_id=x509:web1.example.com');
      expect(c.collector.stats.identityMismatches).toBe(0);
    });

    it('expired, untrusted, revoked and unlisted client certificates: one line each naming the peer', async () => {
      const revoked = pki!.client('revoked.example.com');
      pki!.revoke(revoked.cert);
      const c = await collector(server({ allowedNames: ['*.example.com'], crlFile: pki!.crl() }));
      const cases: [ReturnType<typeof x509>, RegExp][] = [
        [
          x509('old.example.com', { expired: true }),
          /has expired on Jan {2}2 00:00:00 2020 GMT \(CERT_HAS_EXPIRED\)/,
        ],
        [x509('stranger.example.com', { ca: 'other' }), /is not signed by a CA in the CA file/],
        [
          { ...x509('x'), tlsCertFile: revoked.cert, tlsKeyFile: revoked.key },
          /is revoked \(listed in the CRL\) \(CERT_REVOKED\)/,
        ],
        [x509('web9.example.org'), /names web9\.example\.org, none of which is in tls_allowed_names/],
      ];
      for (const [config, expected] of cases) {
        const a = agent(c.port, config);
        a.write(records(1, 2));
        const reason = await expectRetries(a, 2, /did not accept our certificate|refused our certificate/, 2);
        console.info(`[tls] agent, refused certificate: ${reason}`);
        const line = await c.waitForLog(expected);
        expect(line.msg).toMatch(/^TLS: refused client 127\.0\.0\.1:\d+: its certificate "CN=/);
        a.input.end();
      }
      expect(c.lines()).toEqual([]);
    });

    it('the agent refuses a server certificate it cannot trust or that names another host', async () => {
      const c = await collector(server());
      const untrusted = agent(c.port, { ...x509('web2.example.com'), tlsCaFile: pki!.otherCaCert });
      untrusted.write(records(1, 1));
      console.info(
        `[tls] agent, untrusted server: ${await expectRetries(untrusted, 2, /the server's certificate is not signed by a CA in the CA file/, 1)}`,
      );
      const wrongName = agent(c.port, { ...x509('web3.example.com'), tlsServerName: 'other.test' });
      wrongName.write(records(1, 1));
      await expectRetries(
        wrongName,
        2,
        /the server's certificate does not name other\.test \(tls_server_name\)/,
        1,
      );
    });

    it('SIGHUP: a new CRL and a narrower tls_allowed_names disconnect the clients they exclude', async () => {
      const c = await collector(server({ crlFile: pki!.crl() }));
      const stay = agent(c.port, x509('stay.example.com'));
      const cut = pki!.client('cut.example.com');
      const gone = agent(c.port, { ...x509('x'), tlsCertFile: cut.cert, tlsKeyFile: cut.key });
      stay.write(records(1, 2, 'S'));
      gone.write(records(1, 2, 'G'));
      await c.waitForLines(4);
      expect(c.collector.reloadTls({ ...c.settings, allowedNames: ['stay.example.com'] })).toHaveLength(1);
      expect((await c.waitForLog(/TLS: disconnecting/)).msg).toMatch(
        /\(x509 cut\.example\.com\): certificate name cut\.example\.com is no longer in tls_allowed_names/,
      );
      stay.write(records(3, 2, 'S'));
      await c.waitForLines(6);
      // Revoked: a new CRL closes the X.509 sessions; each is judged again when it reconnects, the revoked one
      // is refused, the other carries on.
      pki!.revoke(cut.cert);
      // (stay is the X.509 session still open: cut has been refused since the first reload.)
      const cutOff = c.collector.reloadTls({ ...c.settings, allowedNames: null, crlFile: pki!.crl() });
      expect(cutOff).toHaveLength(1);
      expect((await c.waitForLog(/is revoked/)).msg).toMatch(
        /^TLS: refused client 127\.0\.0\.1:\d+: its certificate "CN=cut\.example\.com" .* is revoked \(listed in the CRL\)/,
      );
      await pollUntil(() => /did not accept our certificate/.test(failures(gone).at(-1)?.reason ?? ''), {
        timeoutMs: 5000,
        what: 'the revoked agent to be refused',
      });
      stay.write(records(5, 2, 'S'));
      await c.waitForLines(8);
      expect(c.lines().filter((l) => l.includes('tag=G'))).toHaveLength(2);
      expect(gone.agent.stats.connects).toBe(1);
    });
  });

  describe.skipIf(!asRoot)('key files that break the owner and mode rule', () => {
    it('agent: a key readable by others, owned by another user, or a symlink is refused at start (exit status 6)', () => {
      const key = writeKey(file('psk.key'));
      const build = (f: string) =>
        new Agent(
          settingsFromConfig({
            ...defaultAgentConfig(),
            remoteServer: [{ host: '127.0.0.1', port: null }],
            transport: 'tls',
            tlsPskFile: f,
            tlsPskIdentity: 'web1',
          }),
          { input: new PassThrough(), log: memoryLogger().log },
        );
      chmodSync(key, 0o440);
      expect(() => build(key)).toThrow(
        new RegExp(
          `tls_psk_file: key file ${key} has mode 0440; a key file must be mode 0400 .*fix with chmod 0400 ${key}`,
        ),
      );
      chmodSync(key, 0o400);
      chownSync(key, 1, 0);
      expect(() => build(key)).toThrow(
        /is owned by uid 1; it must be owned by root with mode 0400.*fix with chown root:root/,
      );
      chownSync(key, 0, 0);
      const link = file('link.key');
      symlinkSync(key, link);
      expect(() => build(link)).toThrow(/is a symbolic link; it is never followed/);
      const short = writeKey(file('short.key'), 'abcd');
      expect(() => build(short)).toThrow(
        /holds a key of 2 bytes; at least 32 bytes \(64 hex digits\) are required/,
      );
    });

    it('collector: an allowed-clients file writable by its group, and a key= file with mode 0644', async () => {
      const key = writeKey(file('h1.key'));
      const acl = writeAcl(file('clients'), [`host-1 enabled key=${key}`]);
      chmodSync(acl, 0o664);
      await expect(startTlsCollector(tmp.dir, { allowedClients: acl })).rejects.toThrow(
        /tls_allowed_clients: allowed-clients file .* is writable by its group \(mode 0664\).*fix with chmod go-w/,
      );
      chmodSync(acl, 0o600);
      chmodSync(key, 0o644);
      await expect(startTlsCollector(tmp.dir, { allowedClients: acl })).rejects.toThrow(
        /:2: key=: key file .*h1\.key has mode 0644; a key file must be mode 0400/,
      );
      rmSync(key);
      writeFileSync(key, 'zz'.repeat(32), { mode: 0o400 });
      await expect(startTlsCollector(tmp.dir, { allowedClients: acl })).rejects.toThrow(
        /does not hold a key in hex on its first line/,
      );
    });
  });

  it('the agent never opens a link in a tight loop against a port that resets every TLS handshake', async () => {
    let accepted = 0;
    const server = net.createServer((s) => {
      accepted++;
      s.once('data', () => s.resetAndDestroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const key = writeKey(file('psk.key'));
      const a = agent((server.address() as net.AddressInfo).port, {
        tlsPskFile: key,
        tlsPskIdentity: 'web1',
      });
      a.write(records(1, 4));
      await expectRetries(a, 4, /closed the connection during the TLS handshake/, 4);
      expect(accepted).toBe(failures(a).length);
    } finally {
      server.close();
    }
  });
});
