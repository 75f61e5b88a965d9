/**
 * krb5 configuration without a KDC: upstream's principal names, the collector's authorization rule, the keytab
 * ownership/mode rule, renewal margins, the settings derived from the config files, and what `auditrelay agent`
 * and `auditrelay collector` do at start when krb5 cannot work (exit status 6 with the fix in the message).
 */
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renewMarginMs } from '../../src/agent/krb5-transport.js';
import { settingsFromConfig } from '../../src/agent/settings.js';
import { fromConfig } from '../../src/collector/settings.js';
import { defaultAgentConfig } from '../../src/config/agent-config.js';
import { defaultCollectorConfig } from '../../src/config/collector-config.js';
import { ConfigError } from '../../src/errors.js';
import {
  AUDITD_MAX_DATA_TOKEN,
  agentPrincipals,
  authorizeClient,
  KRB5_MAX_RECORD,
  parsePrincipal,
} from '../../src/krb5/auditd.js';
import { checkKeytabFile } from '../../src/krb5/keytab.js';
import { MAX_SERVER_PAYLOAD } from '../../src/protocol/constants.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { tempDir } from './support.js';

describe('krb5 principals (upstream rules)', () => {
  it('client is <krb5_client_name>/<host name>; target is krb5_principal with / → @, else <client name>@<remote_server>', () => {
    expect(
      agentPrincipals({
        krb5Principal: null,
        krb5ClientName: 'auditd',
        remoteServer: 'log.example.org',
        hostname: 'h1',
      }),
    ).toEqual({ client: 'auditd/h1', target: 'auditd@log.example.org' });
    expect(
      agentPrincipals({
        krb5Principal: 'auditd/collector.example.org',
        krb5ClientName: 'audit',
        remoteServer: '10.0.0.5',
        hostname: 'h1.example.org',
      }),
    ).toEqual({ client: 'audit/h1.example.org', target: 'auditd@collector.example.org' });
    // only the first '/' is replaced, as upstream's strchr
    expect(
      agentPrincipals({ krb5Principal: 'svc', krb5ClientName: 'x', remoteServer: 'r', hostname: 'h' }).target,
    ).toBe('svc');
    expect(agentPrincipals({ krb5Principal: null, krb5ClientName: 'x', remoteServer: 'r' }).client).toBe(
      `x/${os.hostname()}`,
    );
  });

  it('parses principals, with escaped @ in the name', () => {
    expect(parsePrincipal('auditd/h.example.org@EXAMPLE.ORG')).toEqual({
      name: 'auditd/h.example.org',
      service: 'auditd',
      instance: 'h.example.org',
      realm: 'EXAMPLE.ORG',
    });
    expect(parsePrincipal('a\\@b/c@R')?.realm).toBe('R');
    expect(parsePrincipal('noreal')).toBeNull();
  });

  it('authorises <service>/<any host>@<same realm>, optionally narrowed by an allow-list', () => {
    const policy = { service: 'auditd', realm: 'EXAMPLE.ORG' };
    expect(authorizeClient('auditd/any.host@EXAMPLE.ORG', policy)).toBeNull();
    expect(authorizeClient('other/h@EXAMPLE.ORG', policy)).toBe(
      'client principal other/h@EXAMPLE.ORG is not authorised: its service is other, not auditd',
    );
    expect(authorizeClient('auditd/h@OTHER.ORG', policy)).toBe(
      'client principal auditd/h@OTHER.ORG is not authorised: its realm is OTHER.ORG, not EXAMPLE.ORG',
    );
    expect(authorizeClient('auditd@EXAMPLE.ORG', policy)).toMatch(
      /not of the form auditd\/<host>@EXAMPLE\.ORG/,
    );
    const narrowed = { ...policy, allowed: ['auditd/a@EXAMPLE.ORG'] };
    expect(authorizeClient('auditd/a@EXAMPLE.ORG', narrowed)).toBeNull();
    expect(authorizeClient('auditd/b@EXAMPLE.ORG', narrowed)).toMatch(/not in the allow-list/);
  });

  it('bounds a record so that its wrapped token fits auditd (8966-byte token)', () => {
    expect(AUDITD_MAX_DATA_TOKEN).toBe(8966);
    expect(KRB5_MAX_RECORD).toBe(8822);
  });

  it('renews at 10% of the lifetime, at most 5 minutes before the end; 0 turns proactive renewal off', () => {
    const s = { clientPrincipal: 'a/b', target: 'c@d', keyFile: '/k' };
    expect(renewMarginMs(86_400_000, s)).toBe(300_000);
    expect(renewMarginMs(600_000, s)).toBe(60_000);
    expect(renewMarginMs(10_000, { ...s, renewFraction: 0.3 })).toBe(3000);
    expect(renewMarginMs(10_000, { ...s, renewFraction: 0 })).toBe(0);
  });
});

describe('krb5 settings from the config files', () => {
  it('agent: principals, keytab, and a record limit that fits a wrapped message', () => {
    const tcp = settingsFromConfig({
      ...defaultAgentConfig(),
      remoteServer: [{ host: 'log.example.org', port: null }],
    });
    expect(tcp.krb5).toBeUndefined();
    expect(tcp.maxRecord).toBe(MAX_SERVER_PAYLOAD);
    const krb5 = settingsFromConfig({
      ...defaultAgentConfig(),
      remoteServer: [{ host: 'log.example.org', port: null }],
      transport: 'krb5',
    });
    expect(krb5.krb5).toEqual({
      clientPrincipal: `auditd/${os.hostname()}`,
      target: 'auditd@log.example.org',
      keyFile: '/etc/audit/audisp-remote.key',
    });
    expect(krb5.maxRecord).toBe(KRB5_MAX_RECORD);
  });

  it('collector: transport = KRB5 maps krb5_principal, krb5_key_file, handshake_timeout; the suffix is on', () => {
    expect(fromConfig(defaultCollectorConfig()).krb5).toBeNull();
    const s = fromConfig({
      ...defaultCollectorConfig(),
      transport: 'krb5',
      krb5Principal: 'audit',
      krb5KeyFile: '/etc/audit/k',
      handshakeTimeout: 7,
    });
    expect(s.krb5).toMatchObject({
      service: 'audit',
      keyFile: '/etc/audit/k',
      handshakeTimeoutMs: 7000,
      appendPrincipal: true,
      allowedPrincipals: null,
    });
  });
});

describe('the keytab rule (root-owned, mode 0400)', () => {
  const tmp = tempDir('auditrelay-keytab-');
  afterAll(() => tmp.remove());
  const isRoot = process.getuid?.() === 0;

  it('a missing keytab is not an error here (acquiring from it fails later with its own message)', () => {
    expect(checkKeytabFile(path.join(tmp.dir, 'none'), 'krb5_key_file', true)).toEqual({ exists: false });
  });

  it('refuses a keytab readable by others, naming the file, owner, mode and the fix', () => {
    const file = path.join(tmp.dir, 'loose.key');
    writeFileSync(file, 'x');
    chmodSync(file, 0o644);
    expect(checkKeytabFile(file, 'krb5_key_file', false)).toEqual({ exists: true });
    let error: unknown;
    try {
      checkKeytabFile(file, 'krb5_key_file', true);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toBe(
      `krb5_key_file: the keytab ${file} is owned by uid ${process.getuid?.()} with mode 0644; it must be owned by ` +
        'root with mode 0400 (anyone who can read it can impersonate this host; auditd refuses it too) ' +
        `(allowed: fix with: chown root:root ${file} && chmod 0400 ${file})`,
    );
    chmodSync(file, 0o400);
    if (isRoot) expect(checkKeytabFile(file, 'krb5_key_file', true)).toEqual({ exists: true });
  });

  const asRoot = requireOrSkip({
    suite: 'keytab rule: a keytab root does not own (chown needs root)',
    root: true,
  });
  it.skipIf(!asRoot)('refuses a keytab of mode 0400 that root does not own', () => {
    const file = path.join(tmp.dir, 'foreign.key');
    writeFileSync(file, 'x', { mode: 0o400 });
    chownSync(file, 1000, 1000);
    expect(() => checkKeytabFile(file, 'krb5_key_file', true)).toThrow(/owned by uid 1000 with mode 0400/);
  });

  it('refuses a directory', () => {
    expect(() => checkKeytabFile(tmp.dir, 'krb5_key_file', false)).toThrow(/is not a regular file/);
  });
});

const CLI = path.join(REPO_ROOT, 'bin/auditrelay.js');
const built = existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'));
/**
 * The start-up checks below that get past "is Kerberos available at all" need the GSS-API binding (the agent and
 * the collector refuse transport = krb5 without it, before they look at the keytab), and the keytab rule needs
 * root (only root can own a file as root). Without them: skipped loudly, an error in CI.
 */
const withBinding = requireOrSkip({
  suite: 'krb5 keytab checks at start-up (the GSS-API binding)',
  gssapiBinding: true,
});
const asRootWithBinding =
  withBinding && requireOrSkip({ suite: 'krb5 keytab rule at start-up (root-owned keytab)', root: true });

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json', ...env },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

describe.skipIf(!built)('krb5 at start-up (auditrelay agent / collector)', () => {
  const tmp = tempDir('auditrelay-krb5cli-');
  let agentConf: string;
  let collectorConf: string;
  let key: string;
  beforeAll(() => {
    mkdirSync(tmp.dir, { recursive: true });
    key = path.join(tmp.dir, 'k.key');
    writeFileSync(key, 'not a keytab');
    chmodSync(key, 0o400);
    agentConf = path.join(tmp.dir, 'agent.conf');
    writeFileSync(
      agentConf,
      `remote_server = 127.0.0.1\nport = 9\ntransport = krb5\nkrb5_key_file = ${key}\ndrain_timeout = 1\n`,
      { mode: 0o640 },
    );
    collectorConf = path.join(tmp.dir, 'auditd.conf');
    writeFileSync(
      collectorConf,
      `tcp_listen_port = 9\ntransport = KRB5\nkrb5_key_file = ${key}\nlog_file = ${tmp.dir}/audit.log\nevidence_key_file = ${tmp.dir}/keys/signing.key\n`,
      { mode: 0o640 },
    );
  });
  afterAll(() => tmp.remove());

  it('without the binding: exit status 6, naming libkrb5-dev and the rebuild command', async () => {
    const env = { AUDITRELAY_GSSAPI_ADDON: path.join(tmp.dir, 'missing.node') };
    for (const args of [
      ['agent', '--config', agentConf],
      ['collector', '--config', collectorConf],
    ]) {
      const r = await run(args, env);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(
        /config error: transport: Kerberos \(transport = krb5\) is not available: the GSS-API binding is not built .*missing\.node is missing.*libkrb5-dev.*node scripts\/build-native\.mjs/,
      );
    }
  });

  it.skipIf(!asRootWithBinding)('with a keytab others can read: exit status 6 with the fix', async () => {
    chmodSync(key, 0o640);
    try {
      for (const args of [
        ['agent', '--config', agentConf],
        ['collector', '--config', collectorConf],
      ]) {
        const r = await run(args);
        expect(r.code, r.stderr).toBe(6);
        expect(r.stderr).toContain(
          `config error: krb5_key_file: the keytab ${key} is owned by uid 0 with mode 0640; it must be owned by root with mode 0400`,
        );
        expect(r.stderr).toContain(`chown root:root ${key} && chmod 0400 ${key}`);
      }
    } finally {
      chmodSync(key, 0o400);
    }
  });

  it.skipIf(!withBinding)(
    'collector: a keytab without the service key stops the start with a config error',
    async () => {
      const r = await run(['collector', '--config', collectorConf]);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(
        /config error: krb5_key_file: cannot use the keytab .*k\.key for service auditd on this host/,
      );
    },
  );
});
