/**
 * The GSS-API binding against a real MIT KDC (test/helpers/kdc.ts): credentials from keytabs, the auditd
 * handshake in-process (through the 4-byte token framing), wrap/unwrap with confidentiality, and the failure
 * texts an operator would see.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { encodeToken, TokenDecoder } from '../../src/krb5/framing.js';
import {
  acceptSecContext,
  acquireCredentials,
  addonPath,
  type Credential,
  GssError,
  initSecContext,
  type Krb5UnavailableError,
  type SecurityContext,
} from '../../src/krb5/gssapi.js';
import { KDC_BINARIES, KDC_PACKAGES, type Kdc, startKdc } from '../helpers/kdc.js';
import { missingPrerequisites, requireOrSkip } from '../helpers/prereq.js';

const prerequisites = {
  suite: 'krb5 GSS-API binding (real KDC)',
  binaries: KDC_BINARIES,
  gssapiBinding: true,
};
if (missingPrerequisites(prerequisites).length > 0) {
  console.warn(
    `[krb5] to run ${prerequisites.suite}: sudo apt-get install ${[...new Set(Object.values(KDC_PACKAGES))].join(' ')} ` +
      'libkrb5-dev build-essential python3, then node scripts/build-native.mjs',
  );
}
const available = requireOrSkip(prerequisites);

const SERVER = 'auditd/localhost@TEST.REALM';
const CLIENT = 'auditd/agent.localhost@TEST.REALM';
const TARGET = 'auditd@localhost';

/** A 16-byte RMW header (little-endian, audit-remote-protocol.md 3.2) + payload, as the agent wraps it. */
function rmwMessage(type: number, seq: number, payload: string): Buffer {
  const body = Buffer.from(payload);
  const header = Buffer.alloc(16);
  header.writeUInt32LE(0xff0000fe, 0);
  header.writeUInt32LE(type, 6);
  header.writeUInt16LE(body.length, 10);
  header.writeUInt32LE(seq, 12);
  return Buffer.concat([header, body]);
}

interface Established {
  client: SecurityContext;
  server: SecurityContext;
  sourceName: string | null;
  steps: { initTokens: number[]; acceptTokens: number[] };
}

/**
 * auditd's handshake, through the framing: the client sends an empty token, then init/accept tokens until both
 * sides are complete; the server skips zero-length tokens.
 */
async function handshake(
  clientCred: Credential,
  serverCred: Credential,
  target = TARGET,
): Promise<Established> {
  const toServer = new TokenDecoder();
  const toClient = new TokenDecoder();
  const steps = { initTokens: [] as number[], acceptTokens: [] as number[] };
  const wire: Buffer[] = [encodeToken(Buffer.alloc(0))];
  let init = await initSecContext(clientCred, target, null);
  steps.initTokens.push(init.token.length);
  wire.push(encodeToken(init.token));
  let server: SecurityContext | undefined;
  let sourceName: string | null = null;
  for (let round = 0; round < 5; round++) {
    for (const token of toServer.push(Buffer.concat(wire.splice(0)))) {
      if (token.length === 0) continue; // auditd's leading empty token
      const step = acceptSecContext(serverCred, token, server);
      server = step.context;
      sourceName = step.sourceName;
      steps.acceptTokens.push(step.token.length);
      if (step.token.length > 0) {
        for (const reply of toClient.push(encodeToken(step.token))) {
          init = await initSecContext(clientCred, target, reply, init.context);
          steps.initTokens.push(init.token.length);
          if (init.token.length > 0) wire.push(encodeToken(init.token));
        }
      }
    }
    if (init.complete && server?.complete) return { client: init.context, server, sourceName, steps };
  }
  throw new Error('handshake did not complete in 5 rounds');
}

describe.skipIf(!available)('krb5 GSS-API binding with a real KDC', () => {
  let kdc: Kdc;
  let restoreEnv: () => void;
  let serverKeytab: string;
  let clientKeytab: string;
  let serverCred: Credential;
  let clientCred: Credential;

  beforeAll(async () => {
    kdc = await startKdc();
    console.info(`[krb5] KDC ready on 127.0.0.1:${kdc.port} after ${kdc.startupMs.toFixed(0)} ms`);
    // KRB5_CONFIG for the in-process library; KRB5CCNAME/KRB5_KTNAME point nowhere, so everything below must
    // come from the explicit keytabs and MEMORY ccaches.
    restoreEnv = kdc.applyToProcess();
    serverKeytab = await kdc.addPrincipal(SERVER);
    clientKeytab = await kdc.addPrincipal(CLIENT);
    serverCred = await acquireCredentials({
      usage: 'accept',
      principal: 'auditd@localhost',
      nameType: 'hostbased',
      keytab: serverKeytab,
    });
    clientCred = await acquireCredentials({ usage: 'initiate', principal: CLIENT, keytab: clientKeytab });
  });

  afterAll(async () => {
    restoreEnv?.();
    await kdc?.stop();
  });

  it('credentials report their names and lifetimes', async () => {
    expect(clientCred.usage).toBe('initiate');
    expect(clientCred.name).toBe(CLIENT);
    // kinit-like TGT: 24 h (the realm's max_life) minus the seconds since it was issued
    expect(clientCred.lifetime).toBeGreaterThan(86_400 - 120);
    expect(clientCred.lifetime).toBeLessThanOrEqual(86_400);
    expect(clientCred.expiresAt).toBeGreaterThan(Date.now() + 86_000_000);
    expect(serverCred.usage).toBe('accept');
    expect(serverCred.name).toBe(SERVER);
    expect(serverCred.lifetime).toBe(Number.POSITIVE_INFINITY); // keys in a keytab do not expire
    expect(serverCred.expiresAt).toBe(Number.POSITIVE_INFINITY);

    const shortKeytab = await kdc.addPrincipal('auditd/short.localhost', { maxLife: '5m' });
    const short = await acquireCredentials({ usage: 'initiate', keytab: shortKeytab });
    expect(short.name).toBe('auditd/short.localhost@TEST.REALM'); // first principal of the client keytab
    expect(short.lifetime).toBeGreaterThan(240);
    expect(short.lifetime).toBeLessThanOrEqual(300);
    short.dispose();
    expect(short.disposed).toBe(true);
  });

  it('completes the auditd handshake in-process: one AP-REQ, one AP-REP, both sides established', async () => {
    const { client, server, sourceName, steps } = await handshake(clientCred, serverCred);
    expect(steps.initTokens).toEqual([expect.any(Number), 0]);
    expect(steps.initTokens[0]).toBeGreaterThan(0);
    expect(steps.acceptTokens).toHaveLength(1);
    expect(steps.acceptTokens[0]).toBeGreaterThan(0); // mutual authentication: AP-REP
    expect(client.complete && server.complete).toBe(true);
    expect(client.initiator).toBe(true);
    expect(server.initiator).toBe(false);

    expect(sourceName).toBe(CLIENT);
    expect(server.peerName()).toBe(CLIENT);
    expect(server.localName()).toBe(SERVER);
    expect(client.peerName()).toBe(SERVER); // the host-based target, canonicalised to auditd/localhost
    expect(client.localName()).toBe(CLIENT);

    for (const ctx of [client, server]) {
      expect(ctx.flags()).toMatchObject({
        mutual: true,
        replay: true,
        confidentiality: true,
        integrity: true,
      });
      expect(ctx.flags().delegation).toBe(false);
      expect(ctx.lifetime()).toBeGreaterThan(86_400 - 120);
    }
    // the service ticket's end time; MIT's acceptor adds its clock skew allowance (5 min)
    expect(client.lifetime()).toBeLessThanOrEqual(86_400);
    expect(server.lifetime()).toBeLessThanOrEqual(86_400 + 300);
    client.dispose();
    server.dispose();
    expect(client.disposed).toBe(true);
    expect(() => client.wrap(Buffer.from('x'))).toThrow(/disposed/);
  });

  it('wraps and unwraps both ways with confidentiality', async () => {
    const { client, server } = await handshake(clientCred, serverCred);
    for (let seq = 2; seq < 12; seq++) {
      const message = rmwMessage(
        0,
        seq,
        `type=SYSCALL msg=audit(1700000000.${seq}:1): secret-marker-${seq}\n`,
      );
      const token = client.wrap(message);
      expect(token.includes(Buffer.from('secret-marker'))).toBe(false); // encrypted, not just signed
      const unwrapped = server.unwrap(token);
      expect(unwrapped.confidential).toBe(true);
      expect(unwrapped.data).toEqual(message);

      const ack = rmwMessage(0x40000000, seq, '');
      const reply = server.wrap(ack);
      expect(client.unwrap(reply)).toEqual({ data: ack, confidential: true });
    }
  });

  it('bounds token sizes: wrapSizeLimit keeps a wrapped message within auditd 8970-byte limit', async () => {
    const { client, server } = await handshake(clientCred, serverCred);
    const limit = client.wrapSizeLimit(8970);
    expect(limit).toBeGreaterThan(8970 - 100);
    expect(limit).toBeLessThan(8970);
    const token = client.wrap(Buffer.alloc(limit, 0x61));
    expect(token.length).toBeLessThanOrEqual(8970);
    expect(server.unwrap(token).data.length).toBe(limit);
  });

  it('refuses a tampered token with a readable error, and keeps working for the next good one', async () => {
    const { client, server } = await handshake(clientCred, serverCred);
    const token = client.wrap(rmwMessage(0, 2, 'type=USER_LOGIN msg=audit(1.2:3): ok\n'));
    const tampered = Buffer.from(token);
    tampered[tampered.length - 20]! ^= 0x01;
    let error: unknown;
    try {
      server.unwrap(tampered);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(GssError);
    const gssError = error as GssError;
    expect(gssError.operation).toBe('gss_unwrap');
    expect(gssError.majorText).toMatch(/invalid Message Integrity Check/i);
    expect(gssError.message).toMatch(
      /^gss_unwrap failed: .*Message Integrity Check.*\[major 0x[0-9a-f]{8}\]/,
    );
    expect(server.unwrap(token).data.toString()).toContain('USER_LOGIN');
  });

  it('refuses a replayed token', async () => {
    const { client, server } = await handshake(clientCred, serverCred);
    const token = client.wrap(rmwMessage(0, 2, 'once\n'));
    expect(server.unwrap(token).data.subarray(16).toString()).toBe('once\n');
    expect(() => server.unwrap(token)).toThrow(/replay.*duplicate of an earlier token/);
  });

  it('a context only unwraps tokens of its own session', async () => {
    const a = await handshake(clientCred, serverCred);
    const b = await handshake(clientCred, serverCred);
    expect(() => b.server.unwrap(a.client.wrap(Buffer.from('cross')))).toThrow(GssError);
  });

  it('fails readably when the acceptor keytab holds an old key (key rotated on the KDC)', async () => {
    const staleKeytab = await kdc.addPrincipal('auditd/stale.localhost'); // kvno 2
    await kdc.rotateKey('auditd/stale.localhost'); // the KDC now issues tickets for kvno 3
    const staleServer = await acquireCredentials({ usage: 'accept', keytab: staleKeytab });
    const { token } = await initSecContext(clientCred, 'auditd@stale.localhost', null);
    let error: unknown;
    try {
      acceptSecContext(staleServer, token);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(GssError);
    const gssError = error as GssError;
    expect(gssError.operation).toBe('gss_accept_sec_context');
    expect(gssError.minorText).toBe(
      'Request ticket server auditd/stale.localhost@TEST.REALM kvno 3 not found in keytab; keytab is likely out of date',
    );
    expect(gssError.message).toContain('kvno 3 not found in keytab');
    expect(gssError.token?.length).toBeGreaterThan(0); // the KRB-ERROR the mechanism would send back
  });

  it('fails readably when the client keytab holds an old key', async () => {
    const staleKeytab = await kdc.addPrincipal('auditd/oldclient.localhost');
    await kdc.rotateKey('auditd/oldclient.localhost');
    const failure = acquireCredentials({ usage: 'initiate', keytab: staleKeytab });
    await expect(failure).rejects.toBeInstanceOf(GssError);
    await expect(failure).rejects.toThrow(
      /^gss_acquire_cred_from failed \(initiator from keytab .*\): .*\[major 0x00070000\]: Decrypt integrity check failed \[minor 0x[0-9a-f]{8}\]$/,
    );
  });

  it('fails readably for an unknown service, a missing keytab and a key for another service', async () => {
    await expect(initSecContext(clientCred, 'nosuch@localhost', null)).rejects.toThrow(
      /gss_init_sec_context failed \(target 'nosuch@localhost'\).*Server nosuch\/localhost@TEST\.REALM not found in Kerberos database/,
    );
    await expect(
      acquireCredentials({ usage: 'initiate', keytab: `${kdc.dir}/missing.keytab` }),
    ).rejects.toThrow(/cannot read keytab .*missing\.keytab: No such file or directory/);
    await expect(
      acquireCredentials({
        usage: 'accept',
        principal: 'auditd@elsewhere.localhost',
        nameType: 'hostbased',
        keytab: serverKeytab,
      }),
    ).rejects.toThrow(/No key table entry found matching auditd\/elsewhere\.localhost@/);
    const otherKeytab = await kdc.addPrincipal('auditd/other.localhost');
    const other = await acquireCredentials({ usage: 'accept', keytab: otherKeytab });
    const { token } = await initSecContext(clientCred, TARGET, null);
    expect(() => acceptSecContext(other, token)).toThrow(/auditd\/localhost@TEST\.REALM not found in keytab/);
  });

  it('rejects misuse with usage errors', async () => {
    const first = await initSecContext(clientCred, TARGET, null);
    expect(first.complete).toBe(false);
    expect(() => first.context.wrap(Buffer.from('early'))).toThrow(/not established yet/);
    await expect(initSecContext(clientCred, TARGET, Buffer.from('x'))).rejects.toThrow(
      /first initSecContext/,
    );
    const pending = initSecContext(clientCred, TARGET, Buffer.from('bogus'), first.context);
    await expect(initSecContext(clientCred, TARGET, Buffer.from('again'), first.context)).rejects.toThrow(
      /busy/,
    );
    await expect(pending).rejects.toBeInstanceOf(GssError); // not an AP-REP
    expect(() => acceptSecContext(serverCred, Buffer.alloc(0))).toThrow(/empty input token/);
    expect(() => acceptSecContext(clientCred, Buffer.from('x'))).toThrow(GssError);
    await expect(acquireCredentials({ usage: 'accept', ccache: 'MEMORY:x' })).rejects.toThrow(/only applies/);
    const disposable = await acquireCredentials({ usage: 'initiate', keytab: clientKeytab });
    disposable.dispose();
    await expect(initSecContext(disposable, TARGET, null)).rejects.toThrow(/credential has been disposed/);
  });

  it('runs handshakes concurrently and releases credentials acquired in a loop', async () => {
    const all = await Promise.all(Array.from({ length: 8 }, () => handshake(clientCred, serverCred)));
    for (const { client, server } of all) {
      expect(server.unwrap(client.wrap(Buffer.from('parallel'))).data.toString()).toBe('parallel');
    }
    for (let i = 0; i < 20; i++) {
      const cred = await acquireCredentials({ usage: 'initiate', keytab: clientKeytab });
      const { client } = await handshake(cred, serverCred);
      cred.dispose(); // the established context does not need the credential any more
      expect(client.wrap(Buffer.from('after dispose')).length).toBeGreaterThan(0);
    }
  });
});

describe('krb5 binding loader', () => {
  it('throws Krb5UnavailableError naming the package and the rebuild command when the addon is missing', async () => {
    const saved = process.env.AUDITRELAY_GSSAPI_ADDON;
    process.env.AUDITRELAY_GSSAPI_ADDON = '/nonexistent/auditrelay_gssapi.node';
    try {
      vi.resetModules();
      const fresh = await import('../../src/krb5/gssapi.js');
      expect(fresh.isGssapiAvailable()).toBe(false);
      let error: unknown;
      try {
        fresh.loadGssapi();
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(fresh.Krb5UnavailableError);
      expect(error).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message).toContain('/nonexistent/auditrelay_gssapi.node');
      expect(message).toContain('libkrb5-dev');
      expect(message).toContain('node scripts/build-native.mjs');
      expect((error as InstanceType<typeof Krb5UnavailableError>).code).toBe('ERR_KRB5_UNAVAILABLE');
      await expect(fresh.acquireCredentials({ usage: 'accept' })).rejects.toThrow(fresh.Krb5UnavailableError);
    } finally {
      if (saved === undefined) delete process.env.AUDITRELAY_GSSAPI_ADDON;
      else process.env.AUDITRELAY_GSSAPI_ADDON = saved;
      vi.resetModules();
    }
  });

  it('finds the addon at native/build/Release from the source tree', () => {
    expect(addonPath()).toMatch(/\/native\/build\/Release\/auditrelay_gssapi\.node$/);
    if (available) expect(existsSync(addonPath())).toBe(true);
  });
});
