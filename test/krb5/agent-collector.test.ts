/**
 * transport = krb5 end to end in-process: our agent → our collector, with a real MIT KDC (test/helpers/kdc.ts).
 * The happy path (principal suffix, splitting to fit auditd's buffer, handshake time), then each failure an
 * operator may meet: stale keys on either side, a client that is not authorised, the KDC down, tickets that
 * expire while the agent runs, tampered tokens both ways, and a server that is not the one the agent targets.
 * Each must give a clear error, retry with backoff and lose nothing.
 */
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KRB5_MAX_RECORD } from '../../src/krb5/auditd.js';
import { acquireCredentials } from '../../src/krb5/gssapi.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { gapsAndDuplicates, type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { KDC_BINARIES, type Kdc, startKdc } from '../helpers/kdc.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import {
  installKeytab,
  RawKrb5Client,
  type RunningCollector,
  startKrb5Collector,
  TokenProxy,
  tempDir,
} from './support.js';

const available = requireOrSkip({
  suite: 'krb5 agent → collector (real KDC)',
  binaries: KDC_BINARIES,
  gssapiBinding: true,
});

const HOST = os.hostname();
/** What the collector is (host-based service auditd on this host), and what agents target. */
const SERVER = `auditd/${HOST}`;
const AGENT = 'auditd/agent1.example';

describe.skipIf(!available)('krb5: our agent → our collector', () => {
  let kdc: Kdc;
  let restoreEnv: () => void;
  let tmp: { dir: string; remove: () => void };
  let serverKeytab: string;
  let agentKeytab: string;
  const agents: RunningAgent[] = [];
  const collectors: RunningCollector[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    kdc = await startKdc();
    restoreEnv = kdc.applyToProcess();
    tmp = tempDir('auditrelay-krb5-');
    serverKeytab = installKeytab(await kdc.addPrincipal(SERVER), path.join(tmp.dir, 'audit.key'));
    agentKeytab = installKeytab(await kdc.addPrincipal(AGENT), path.join(tmp.dir, 'audisp-remote.key'));
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) {
      a.input.end();
      await Promise.race([a.done, new Promise((r) => setTimeout(r, 5000))]);
    }
    for (const c of collectors.splice(0)) await c.stop();
    for (const fn of cleanups.splice(0)) await fn();
  });

  afterAll(async () => {
    restoreEnv?.();
    await kdc?.stop();
    tmp?.remove();
  });

  async function collector(
    krb5: Parameters<typeof startKrb5Collector>[1] = { keyFile: serverKeytab },
  ): Promise<RunningCollector> {
    const c = await startKrb5Collector(tmp.dir, { handshakeTimeoutMs: 2000, ...krb5 });
    collectors.push(c);
    return c;
  }

  function agent(
    port: number,
    opts: { keyFile?: string; principal?: string; target?: string; renewFraction?: number } = {},
  ): RunningAgent {
    const a = startAgent(
      port,
      {
        transport: 'krb5',
        krb5Principal: opts.target ?? SERVER,
        krb5KeyFile: opts.keyFile ?? agentKeytab,
        reconnectInitialMs: 50,
        reconnectMaxMs: 400,
        drainTimeout: 1,
      },
      (s) => {
        s.krb5!.clientPrincipal = opts.principal ?? AGENT;
        if (opts.renewFraction !== undefined) s.krb5!.renewFraction = opts.renewFraction;
      },
    );
    agents.push(a);
    return a;
  }

  /** auditd's ` krb5=<principal>`, then the collector's host identity stamp (identity_policy = stamp). */
  const suffix = (principal = AGENT) =>
    ` krb5=${principal}@${kdc.realm} peer_id=krb5:${principal}@${kdc.realm}`;

  /** Failed attempts the agent recorded (kind: reason), with their time (ms). */
  function failures(a: RunningAgent): { time: number; reason: string }[] {
    return a.agent.observer.errors
      .filter((e) => e.source === 'connection')
      .map((e) => ({ time: Date.parse(e.time), reason: e.message }));
  }

  /** At least `n` failed attempts, spaced by the backoff (not a busy loop), each with the expected reason. */
  async function expectRetries(a: RunningAgent, n: number, reason: RegExp): Promise<void> {
    await pollUntil(() => failures(a).length >= n, {
      timeoutMs: 15_000,
      what: `${n} failed attempts`,
      diagnostics: () => a.logs.map((l) => `${l.msg} ${l.reason ?? l.error ?? ''}`).join('\n'),
    });
    const f = failures(a);
    console.info(`[krb5] agent error: ${f[0]!.reason}`);
    for (const x of f) expect(x.reason).toMatch(reason);
    expect(a.agent.stats.connects).toBe(0);
  }

  it('delivers every record with the client principal appended; long records are split to fit auditd', async () => {
    const c = await collector();
    const started = performance.now();
    const a = agent(c.port);
    const recs = records(1, 300);
    const long = `type=EXECVE msg=audit(1.000:1): a0="${'x'.repeat(20_000)}"`;
    a.write([...recs, long]);
    const lines = await c.waitForLines(recs.length + 3);
    console.info(
      `[krb5] agent → collector: ${recs.length} records + 1 long one in ${(performance.now() - started).toFixed(0)} ms ` +
        'from the agent start (ticket, service ticket, handshake included)',
    );
    expect(await a.finish()).toBe(0);
    expect(lines.slice(0, recs.length)).toEqual(recs.map((r) => `${r}${suffix()}`));
    const pieces = lines.slice(recs.length).map((l) => l.slice(0, -suffix().length));
    // maxRecord counts the record's newline
    const piece = KRB5_MAX_RECORD - 1;
    expect(pieces.map((p) => p.length)).toEqual([piece, piece, long.length - 2 * piece]);
    expect(pieces.join('')).toBe(long);
    expect(c.collector.stats.krb5Sessions).toBe(1);
    expect(
      a.logs.some((l) => /Kerberos ticket obtained for auditd\/agent1\.example@TEST\.REALM/.test(l.msg)),
    ).toBe(true);
    expect(
      a.logs.some((l) => l.msg === `Kerberos session established with ${SERVER} as ${AGENT}@${kdc.realm}`),
    ).toBe(true);
  });

  it('handshake time: ticket, service ticket, AP-REQ/AP-REP and the first ack', async () => {
    const c = await collector();
    const t0 = performance.now();
    const cred = await acquireCredentials({ usage: 'initiate', principal: AGENT, keytab: agentKeytab });
    const ticketMs = performance.now() - t0;
    const times: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      const client = await RawKrb5Client.connect(c.port, cred, SERVER.replace('/', '@'));
      client.send(encodeEvent(i + 1, Buffer.from(`type=USER_CMD msg=audit(1.0:${i}): timing\n`)));
      await client.waitForReplies(1);
      times.push(performance.now() - t);
      client.close();
    }
    cred.dispose();
    times.sort((x, y) => x - y);
    console.info(
      `[krb5] TGT from keytab ${ticketMs.toFixed(1)} ms; connect + handshake + first ack: min ${times[0]!.toFixed(1)}` +
        ` ms, median ${times[10]!.toFixed(1)} ms, max ${times[19]!.toFixed(1)} ms (20 connections)`,
    );
    expect(times[10]!).toBeLessThan(200);
    await c.waitForLines(20);
  });

  it('stale collector keytab (key rotated on the KDC): clear errors, retries, delivered once the keytab is replaced', async () => {
    const name = 'auditd/agent2.example';
    const keytab = installKeytab(await kdc.addPrincipal(name), path.join(tmp.dir, 'agent2.key'));
    const serverFile = path.join(tmp.dir, 'rotating-audit.key');
    installKeytab(serverKeytab, serverFile);
    const c = await collector({ keyFile: serverFile });
    // The KDC now issues tickets for a new key; the collector's file still holds the old one.
    const fresh = await kdc.rotateKey(SERVER);
    const a = agent(c.port, { keyFile: keytab, principal: name });
    a.write(records(1, 20));
    await expectRetries(a, 2, /Kerberos handshake .* failed: .*/);
    const refused = await c.waitForLog(/Kerberos: refused client/);
    expect(refused.error).toMatch(/kvno \d+ not found in keytab; keytab is likely out of date/);
    expect(failures(a)[0]!.reason).toMatch(
      /gss_init_sec_context failed.*Key version is not available .*\(the server's keytab does not hold the current key of auditd@/,
    );
    expect(a.agent.queue.depth).toBe(20);
    // Fix: the current key goes into the collector's keytab (MIT reads it at every handshake).
    installKeytab(fresh, serverFile);
    await c.waitForLines(20);
    expect(await a.finish()).toBe(0);
    expect(c.lines()).toEqual(records(1, 20).map((r) => `${r}${suffix(name)}`));
    // Both keys now in the collector's file would also work: the agent's service tickets use the newest.
    serverKeytab = installKeytab(fresh, path.join(tmp.dir, 'audit.key'));
  });

  it('stale agent keytab: "Decrypt integrity check failed" at ticket time, retried until the keytab is replaced', async () => {
    const name = 'auditd/agent3.example';
    const file = installKeytab(await kdc.addPrincipal(name), path.join(tmp.dir, 'agent3.key'));
    const fresh = await kdc.rotateKey(name);
    const c = await collector();
    const a = agent(c.port, { keyFile: file, principal: name });
    a.write(records(1, 5));
    await expectRetries(
      a,
      2,
      /cannot obtain a Kerberos ticket for auditd\/agent3\.example from .*agent3\.key: .*Decrypt integrity check failed/,
    );
    expect(a.agent.queue.depth).toBe(5);
    installKeytab(fresh, file);
    await c.waitForLines(5);
    expect(await a.finish()).toBe(0);
  });

  it('a client that is not auditd/*@REALM is refused before the session (and an allow-list narrows it further)', async () => {
    const other = 'other/agent4.example';
    const otherKeytab = installKeytab(await kdc.addPrincipal(other), path.join(tmp.dir, 'other.key'));
    const c = await collector();
    const a = agent(c.port, { keyFile: otherKeytab, principal: other });
    a.write(records(1, 3));
    await expectRetries(a, 2, /closed the connection after receiving our ticket.*not authorised there/);
    const refused = await c.waitForLog(/Kerberos: refused client/);
    expect(refused.error).toBe(
      `client principal ${other}@${kdc.realm} is not authorised: its service is other, not auditd`,
    );
    expect(c.lines()).toEqual([]);
    expect(a.agent.queue.depth).toBe(3); // kept, not dropped

    const allowListed = await collector({
      keyFile: serverKeytab,
      allowedPrincipals: [`${AGENT}@${kdc.realm}`],
    });
    const b = agent(allowListed.port, {
      keyFile: installKeytab(await kdc.addPrincipal('auditd/agent5.example'), path.join(tmp.dir, 'a5.key')),
      principal: 'auditd/agent5.example',
    });
    b.write(records(1, 1));
    await expectRetries(b, 1, /not authorised there/);
    expect((await allowListed.waitForLog(/Kerberos: refused client/)).error).toMatch(/not in the allow-list/);
    const ok = agent(allowListed.port);
    ok.write(records(1, 1));
    await allowListed.waitForLines(1);
  });

  it('KDC down at start: "Cannot contact any KDC", retried with backoff; delivered once it is back', async () => {
    const name = 'auditd/agent6.example';
    const keytab = installKeytab(await kdc.addPrincipal(name), path.join(tmp.dir, 'agent6.key'));
    const c = await collector();
    await kdc.stopServer();
    try {
      const a = agent(c.port, { keyFile: keytab, principal: name });
      a.write(records(1, 10));
      await expectRetries(
        a,
        3,
        /cannot obtain a Kerberos ticket .*Cannot contact any KDC for realm 'TEST\.REALM'/,
      );
      const times = failures(a).map((f) => f.time);
      expect(times[2]! - times[0]!).toBeGreaterThan(0);
      await kdc.startServer();
      await c.waitForLines(10);
      expect(await a.finish()).toBe(0);
      expect(c.lines()).toEqual(records(1, 10).map((r) => `${r}${suffix(name)}`));
    } finally {
      if (kdc.pid && (await isDown())) await kdc.startServer();
    }
    async function isDown(): Promise<boolean> {
      try {
        process.kill(kdc.pid, 0);
        return false;
      } catch {
        return true;
      }
    }
  });

  it('tickets that end while the agent runs: renewed ahead, links cycled, nothing lost', async () => {
    const name = 'auditd/shortlived.example';
    const keytab = installKeytab(
      await kdc.addPrincipal(name, { maxLife: '3s' }),
      path.join(tmp.dir, 'short.key'),
    );
    const c = await collector();
    const a = agent(c.port, { keyFile: keytab, principal: name, renewFraction: 0.3 });
    const total = 70;
    const all = records(1, total);
    for (let i = 0; i < total; i++) {
      a.write([all[i]!]);
      await new Promise((r) => setTimeout(r, 100)); // a steady trickle over ~7 s, i.e. more than 2 lifetimes
    }
    await c.waitForLines(total);
    expect(await a.finish()).toBe(0);
    const { lost, duplicates } = gapsAndDuplicates(seqs(c.lines()), total);
    expect(lost).toEqual([]);
    const tickets = a.logs.filter((l) => /^Kerberos ticket obtained/.test(l.msg)).length;
    const sessions = a.logs.filter((l) => /^Kerberos session established/.test(l.msg)).length;
    console.info(
      `[krb5] 3 s tickets over ${total / 10} s: ${tickets} tickets, ${sessions} sessions, ${duplicates} duplicates`,
    );
    expect(tickets).toBeGreaterThanOrEqual(3);
    expect(sessions).toBeGreaterThanOrEqual(3);
    expect(
      failures(a).some((f) => /service ticket .* (ends in|has expired).*fresh ticket/.test(f.reason)),
    ).toBe(true);
  });

  it('an expired ticket without proactive renewal: the link is dropped at its end and reopened with a new ticket', async () => {
    const name = 'auditd/expiring.example';
    const keytab = installKeytab(
      await kdc.addPrincipal(name, { maxLife: '2s' }),
      path.join(tmp.dir, 'exp.key'),
    );
    const c = await collector();
    const a = agent(c.port, { keyFile: keytab, principal: name, renewFraction: 0 });
    a.write(records(1, 1));
    await c.waitForLines(1);
    await pollUntil(
      () => failures(a).some((f) => /has expired: reconnecting with a fresh ticket/.test(f.reason)),
      {
        timeoutMs: 5000,
        what: 'the link to be dropped at the end of the ticket',
      },
    );
    a.write(records(2, 1));
    await c.waitForLines(2);
    expect(await a.finish()).toBe(0);
    expect(a.logs.filter((l) => /^Kerberos ticket obtained/.test(l.msg)).length).toBeGreaterThanOrEqual(2);
  });

  it('a tampered token, either way: logged with the peer, link closed, everything delivered after the reconnect', async () => {
    const c = await collector();
    const proxy = new TokenProxy(c.port);
    await proxy.start();
    cleanups.push(() => proxy.stop());
    proxy.tamper('up', 5); // the 5th record on its way to the collector
    proxy.tamper('down', 12); // an ack on its way back
    const a = agent(proxy.port);
    const total = 40;
    a.write(records(1, total));
    await pollUntil(() => gapsAndDuplicates(seqs(c.lines()), total).lost.length === 0, {
      timeoutMs: 15_000,
      what: 'every record in the collector log',
      diagnostics: () =>
        `${c.lines().length} lines\n${a.logs.map((l) => `${l.msg} ${l.reason ?? ''}`).join('\n')}`,
    });
    expect(await a.finish()).toBe(0);
    expect(proxy.tampered).toBe(2);
    const bad = await c.waitForLog(/failed to unwrap/);
    expect(bad.msg).toMatch(
      /^Kerberos: a message from auditd\/agent1\.example@TEST\.REALM failed to unwrap: gss_unwrap failed: .*Message Integrity Check/,
    );
    expect(bad.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(
      failures(a).some((f) =>
        /a reply from the server failed to unwrap .*Message Integrity Check/i.test(f.reason),
      ),
    ).toBe(true);
    const { duplicates } = gapsAndDuplicates(seqs(c.lines()), total);
    console.info(
      `[krb5] tampering: ${duplicates} duplicate(s) after the tampered ack (at-least-once, as upstream)`,
    );
  });

  it('a server that is not the one targeted (no key for it) fails the handshake on both sides; records stay queued', async () => {
    const wrongTarget = 'auditd/localhost';
    await kdc.addPrincipal(wrongTarget); // exists in the realm, but this collector holds only auditd/<host>
    const c = await collector();
    const a = agent(c.port, { target: wrongTarget });
    a.write(records(1, 4));
    await expectRetries(
      a,
      2,
      /Kerberos handshake with 127\.0\.0\.1:\d+ as auditd\/agent1\.example for auditd@localhost failed: /,
    );
    expect(failures(a)[0]!.reason).toMatch(
      /The ticket isn't for us .*\(the server holds no key for auditd@localhost: wrong server, or krb5_principal/,
    );
    const refused = await c.waitForLog(/Kerberos: refused client/);
    expect(refused.error).toMatch(/auditd\/localhost@TEST\.REALM/);
    expect(a.agent.queue.depth).toBe(4);
    expect(c.lines()).toEqual([]);
  });

  it('closes a connection that does not finish its handshake at the deadline, and serves others meanwhile', async () => {
    const c = await collector({ keyFile: serverKeytab, handshakeTimeoutMs: 500 });
    const net = await import('node:net');
    const silent = net.connect({ host: '127.0.0.1', port: c.port });
    const half = net.connect({ host: '127.0.0.1', port: c.port });
    half.write(Buffer.from([0, 0, 0x10, 0, 1, 2, 3])); // a 4096-byte token, 3 bytes of it
    const t0 = performance.now();
    const closedAt = (s: import('node:net').Socket) =>
      new Promise<number>((resolve) => {
        s.on('error', () => {});
        s.on('close', () => resolve(performance.now() - t0));
      });
    const closes = Promise.all([closedAt(silent), closedAt(half)]);
    const cred = await acquireCredentials({ usage: 'initiate', principal: AGENT, keytab: agentKeytab });
    const client = await RawKrb5Client.connect(c.port, cred, SERVER.replace('/', '@'));
    client.send(encodeEvent(7, Buffer.from('type=USER_CMD msg=audit(1.0:1): while others hang\n')));
    const [reply] = await client.waitForReplies(1);
    expect(reply).toMatchObject({ type: MessageType.ACK, sequence: 7 });
    const goodMs = performance.now() - t0;
    const [a, b] = await closes;
    console.info(
      `[krb5] handshake deadline 500 ms: hung clients closed at ${a!.toFixed(0)} / ${b!.toFixed(0)} ms; good client done at ${goodMs.toFixed(0)} ms`,
    );
    expect(goodMs).toBeLessThan(500);
    for (const ms of [a!, b!]) {
      expect(ms).toBeGreaterThan(450);
      expect(ms).toBeLessThan(1500);
    }
    expect(
      c.entries.filter((e) => /did not complete its Kerberos handshake within 500 ms/.test(e.msg)),
    ).toHaveLength(2);
    client.close();
    cred.dispose();
  });

  it('the authenticating deadline applies: a server that never answers the handshake is left, and retried', async () => {
    const net = await import('node:net');
    const held: import('node:net').Socket[] = [];
    const mute = net.createServer((sock) => {
      held.push(sock);
      sock.resume(); // reads the AP-REQ, answers nothing
    });
    await new Promise<void>((resolve) => mute.listen({ host: '127.0.0.1', port: 0 }, resolve));
    cleanups.push(async () => {
      for (const sock of held) sock.destroy();
      await new Promise<void>((resolve) => mute.close(() => resolve()));
    });
    const port = (mute.address() as import('node:net').AddressInfo).port;
    const a = startAgent(
      port,
      {
        transport: 'krb5',
        krb5Principal: SERVER,
        krb5KeyFile: agentKeytab,
        reconnectInitialMs: 50,
        reconnectMaxMs: 200,
        maxTimePerRecord: 1,
        drainTimeout: 1,
      },
      (x) => {
        x.krb5!.clientPrincipal = AGENT;
      },
    );
    agents.push(a);
    a.write(records(1, 2));
    const t0 = Date.now();
    await pollUntil(() => held.length >= 2 && a.agent.stats.failures >= 2, {
      timeoutMs: 6000,
      what: 'two abandoned handshakes',
      diagnostics: () => JSON.stringify(a.agent.stats),
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(a.agent.stats.lastFailure).toMatch(/^auth-timeout: /);
    expect(a.agent.queue.depth).toBe(2);
  });

  it('bounds handshakes in progress: beyond maxPendingHandshakes the oldest pending one is closed', async () => {
    const c = await collector({ keyFile: serverKeytab, maxPendingHandshakes: 3, handshakeTimeoutMs: 10_000 });
    const net = await import('node:net');
    const socks = Array.from({ length: 5 }, () => net.connect({ host: '127.0.0.1', port: c.port }));
    const closed = socks.map(
      (sock) =>
        new Promise<void>((resolve) => {
          sock.on('error', () => {});
          sock.on('close', () => resolve());
        }),
    );
    cleanups.push(async () => {
      for (const sock of socks) sock.destroy();
    });
    await Promise.all(closed.slice(0, 2));
    expect(
      c.entries.filter((e) => /3 Kerberos handshakes in progress: closing the oldest/.test(e.msg)),
    ).toHaveLength(2);
    // An authenticated client is never the one pushed out, and still gets in.
    const cred = await acquireCredentials({ usage: 'initiate', principal: AGENT, keytab: agentKeytab });
    const client = await RawKrb5Client.connect(c.port, cred, SERVER.replace('/', '@'));
    client.send(encodeEvent(1, Buffer.from('type=USER_CMD msg=audit(1.0:1): still served\n')));
    await client.waitForReplies(1);
    client.close();
    cred.dispose();
  });

  it('collector shutdown: the wrapped ENDING reaches the agent (remote_ending_action applies)', async () => {
    const first = await collector();
    const a = agent(first.port);
    a.write(records(1, 1));
    await first.waitForLines(1);
    await first.stop();
    // The failure's kind, from the agent's log: its last failure is soon a refused reconnection (nothing listens).
    await pollUntil(() => a.logs.find((l) => l.kind === 'remote-ending'), {
      timeoutMs: 5000,
      what: 'the agent to see ENDING',
      diagnostics: () => a.logs.map((l) => `${l.msg} ${l.kind ?? ''}`).join('\n'),
    });
    collectors.splice(collectors.indexOf(first), 1);
    expect(a.logs.some((l) => /ENDING/.test(l.msg))).toBe(true);
  });
});
