/**
 * The TLS keys of both configurations with upstream's parse rules and our errors (file:line, key, value, allowed),
 * what Node 20 cannot do, key files and allowed-clients files (both modes, every rule of autls-psk.c and
 * autls-acl.c), and the suites actually offered.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../../src/config/agent-config.js';
import { parseCollectorConfig } from '../../src/config/collector-config.js';
import { ConfigError } from '../../src/errors.js';
import { contextOptions, orderForPsk } from '../../src/tls/options.js';
import { decodePsk, loadAllowedClients, loadPskFile, parseAllowedClients } from '../../src/tls/psk.js';
import { tempDir, writeAcl, writeKey } from './support.js';

const A = '/etc/audit/audisp-remote.conf';
const C = '/etc/audit/auditd.conf';
const agentErr = (text: string) => message(() => parseAgentConfig(text, A));
const collectorErr = (text: string) => message(() => parseCollectorConfig(text, C));

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

const tmp = tempDir('auditrelay-tls-config-');
afterAll(() => tmp.remove());

describe('agent keys (audisp-remote.conf)', () => {
  const tls = 'transport = tls\ntls_psk_file = /etc/audit/psk.key\ntls_psk_identity = host-1\n';

  it('reads upstream keys and auditrelay x509 keys', () => {
    const cfg = parseAgentConfig(
      `${tls}tls_cipher_suites = TLS_AES_256_GCM_SHA384:tls_aes_128_gcm_sha256\ntls_key_exchange = X25519:P-256\ntls_crypto_profile = SYSTEM\ntls_require_pqc = no\n`,
      A,
    );
    expect(cfg).toMatchObject({
      transport: 'tls',
      tlsAuth: 'psk',
      tlsPskFile: '/etc/audit/psk.key',
      tlsPskIdentity: 'host-1',
      tlsCipherSuites: ['TLS_AES_256_GCM_SHA384', 'TLS_AES_128_GCM_SHA256'],
      tlsKeyExchange: ['X25519', 'P-256'],
      tlsCryptoProfile: 'system',
    });
    expect(
      parseAgentConfig(
        'transport = tls\ntls_auth = x509\ntls_ca_file = /a\ntls_cert_file = /b\ntls_key_file = /c\ntls_server_name = collector.example\n',
        A,
      ),
    ).toMatchObject({ tlsAuth: 'x509', tlsCaFile: '/a', tlsServerName: 'collector.example' });
  });

  it('what Node 20 cannot do is an error that says why', () => {
    expect(agentErr('tls_crypto_profile = pqc\n')).toBe(
      `${A}:1: tls_crypto_profile: the pqc profile cannot be met: Node ${process.versions.node} uses OpenSSL ${process.versions.openssl}, which has no ML-KEM, so no post-quantum hybrid key exchange can be made; use tls_crypto_profile = compatible (X25519, what auditd 4.2.1 negotiates with any client without ML-KEM) (allowed: compatible, system)`,
    );
    expect(agentErr('tls_require_pqc = yes\n')).toMatch(
      /^.*:1: tls_require_pqc: tls_require_pqc = yes cannot be met: .*has no ML-KEM.* \(allowed: no\)$/,
    );
    expect(agentErr('tls_key_exchange = X25519MLKEM768:X25519\n')).toMatch(
      /:1: tls_key_exchange: X25519MLKEM768: Node .* has no ML-KEM/,
    );
    expect(agentErr('tls_key_exchange = X25519:curve999\n')).toMatch(
      /"curve999" is not a key exchange group this OpenSSL .* knows/,
    );
  });

  it('suites: TLS 1.3 names only, at least one SHA-256 suite, SHA-256 offered first', () => {
    expect(agentErr('tls_cipher_suites = TLS_AES_256_GCM_SHA384\n')).toMatch(
      /:1: tls_cipher_suites: no SHA-256 suite is listed: a pre-shared key can only be used with a SHA-256 suite/,
    );
    expect(agentErr('tls_cipher_suites = ECDHE-RSA-AES128-GCM-SHA256\n')).toMatch(
      /"ECDHE-RSA-AES128-GCM-SHA256" is not a TLS 1\.3 cipher suite \(allowed: a colon-separated list/,
    );
    expect(orderForPsk(['TLS_AES_256_GCM_SHA384', 'TLS_AES_128_GCM_SHA256'])).toEqual([
      'TLS_AES_128_GCM_SHA256',
      'TLS_AES_256_GCM_SHA384',
    ]);
    expect(contextOptions({ profile: 'compatible', cipherSuites: null, keyExchange: null })).toEqual({
      ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384',
      ecdhCurve: 'X25519',
    });
    // system: Node's default list starts with TLS_AES_256_GCM_SHA384; the SHA-256 suites still come first.
    const system = contextOptions({ profile: 'system', cipherSuites: null, keyExchange: null });
    expect(system.ciphers.split(':')[0]).toMatch(/_SHA256$/);
    expect(system.ecdhCurve).toBeUndefined();
  });

  it('identities: printable ASCII, at most 255 bytes', () => {
    expect(agentErr(`tls_psk_identity = ${'a'.repeat(256)}\n`)).toMatch(/line is \d+ characters long/);
    expect(message(() => parseAgentConfig(`tls_psk_identity = h\u00e9\n`, A))).toMatch(
      /:1: tls_psk_identity: the PSK identity contains byte 0xc3 at position 1; only printable ASCII without spaces \(0x21-0x7e\) is allowed/,
    );
    expect(agentErr('tls_psk_identity = a\x7f\n')).toMatch(/control character/);
  });

  it("upstream's sanity checks name the line", () => {
    expect(agentErr('transport = tls\n')).toBe(
      `${A}:1: tls_psk_file: transport = tls requires tls_psk_file (allowed: the absolute path of a 0400 root-owned file holding the key in hex (openssl rand -hex 32))`,
    );
    expect(agentErr('transport = tls\ntls_psk_file = /k\n')).toMatch(
      /:2: tls_psk_identity: tls_psk_identity is required when tls_psk_file is set/,
    );
    expect(agentErr(`${tls}format = ascii\n`)).toMatch(
      /:4: transport: transport = tls requires format = managed \(as upstream\), but format is ascii/,
    );
    expect(agentErr('transport = tls\ntls_auth = x509\ntls_ca_file = /a\n')).toMatch(
      /:2: tls_cert_file: tls_auth = x509 requires tls_cert_file/,
    );
    expect(agentErr('tls_auth = cert\n')).toBe(`${A}:1: tls_auth: unknown value "cert" (allowed: psk, x509)`);
    expect(agentErr('tls_psk_file = psk.key\n')).toMatch(/"psk\.key" is not an absolute path/);
  });
});

describe('collector keys (auditd.conf)', () => {
  it('reads upstream keys and ours', () => {
    const { config } = parseCollectorConfig(
      'transport = TLS\ntls_psk_file = /k\ntls_allowed_clients = /etc/audit/tls-clients\nidentity_policy = reject\nmax_pending_handshakes = 32\n',
      C,
    );
    expect(config).toMatchObject({
      transport: 'tls',
      tlsPskFile: '/k',
      tlsAllowedClients: '/etc/audit/tls-clients',
      identityPolicy: 'reject',
      maxPendingHandshakes: 32,
    });
  });

  it('errors', () => {
    expect(collectorErr('transport = TLS\n')).toMatch(
      /:1: tls_psk_file: transport = TLS requires tls_psk_file \(or tls_allowed_clients with key= files\)/,
    );
    expect(collectorErr('transport = TLS\ntls_psk_file = /k\n')).toMatch(
      /:2: tls_psk_identity: tls_psk_identity is required when tls_psk_file is set and tls_allowed_clients is not/,
    );
    expect(collectorErr('tls_crypto_profile = pqc\n')).toMatch(/the pqc profile cannot be met: .*no ML-KEM/);
    expect(collectorErr('tls_allowed_names = web 1\n')).toMatch(
      /unexpected extra word "1" after the value "web"/,
    );
    expect(collectorErr('tls_allowed_names = a,b!\n')).toMatch(/"b!" is not a certificate name/);
    expect(collectorErr('identity_policy = strict\n')).toBe(
      `${C}:1: identity_policy: unknown value "strict" (allowed: off, stamp, reject, rewrite)`,
    );
    expect(collectorErr('max_pending_handshakes = 0\n')).toMatch(/0 is out of range \(allowed: 1\.\.65536\)/);
  });
});

describe('key files (autls-psk.c rules)', () => {
  const dir = tmp.dir;
  const load = (hex: string) => message(() => decodePsk(Buffer.from(hex), '/k', 'tls_psk_file'));

  it('hex on the first line, CR/LF removed, at least 32 bytes', () => {
    const hex = 'ab'.repeat(32);
    expect(decodePsk(Buffer.from(`${hex}\r\n# comment\n`), '/k', 'k')).toEqual(Buffer.from(hex, 'hex'));
    expect(decodePsk(Buffer.from(hex), '/k', 'k')).toHaveLength(32);
    expect(load('')).toMatch(
      /key file \/k is empty; generate one with: openssl rand -hex 32 > \/k && chmod 0400 \/k/,
    );
    expect(load('abc')).toMatch(/does not hold a key in hex on its first line/);
    expect(load(`${'zz'.repeat(32)}`)).toMatch(/does not hold a key in hex/);
    expect(load('ab'.repeat(31))).toMatch(
      /holds a key of 31 bytes; at least 32 bytes \(64 hex digits\) are required/,
    );
    expect(load('ab'.repeat(300))).toMatch(
      /the key line is too long \(600 characters, at most 510 hex digits\)/,
    );
  });

  it('a FIFO and a missing file are refused without blocking', () => {
    const fifo = path.join(dir, 'fifo.key');
    execFileSync('mkfifo', ['-m', '0400', fifo]);
    expect(message(() => loadPskFile(fifo, { key: 'tls_psk_file' }))).toMatch(
      /key file .*fifo\.key is a FIFO; only a regular file is accepted/,
    );
    expect(message(() => loadPskFile(path.join(dir, 'none.key'), { key: 'tls_psk_file' }))).toMatch(
      /cannot open key file .*none\.key: ENOENT/,
    );
  });
});

describe('tls_allowed_clients (autls-acl.c rules)', () => {
  const parse = (lines: string[]) =>
    parseAllowedClients(`${lines.join('\n')}\n`, '/acl', (file) => Buffer.from(file.padEnd(32, '.')));
  const err = (lines: string[]) => message(() => parse(lines));

  it('single-PSK mode: identity status notes; comments, blanks, tabs, CRLF', () => {
    const acl = parse(['# comment', '', 'host-1\tenabled   prod web host\r', 'host-2 DISABLED retired']);
    expect(acl.perIdentityKeys).toBe(false);
    expect([...acl.entries.values()].map((e) => [e.identity, e.enabled, e.nodes])).toEqual([
      ['host-1', true, []],
      ['host-2', false, []],
    ]);
  });

  it('per-identity keys and node= words', () => {
    const acl = parse([
      'host-1 enabled key=/etc/audit/psk/h1.key node=web1.example.com,web1 prod',
      'host-2 disabled key=/etc/audit/psk/h2.key',
    ]);
    expect(acl.perIdentityKeys).toBe(true);
    expect(acl.entries.get('host-1')).toMatchObject({
      keyFile: '/etc/audit/psk/h1.key',
      nodes: ['web1.example.com', 'web1'],
    });
  });

  it('every rule is an error naming file:line', () => {
    expect(err(['host-1'])).toBe(
      '/acl:1: "host-1": missing status field (allowed: IDENTITY enabled|disabled [key=/path/to/key] [node=HOST[,HOST...]] [notes])',
    );
    expect(err(['host-1 on'])).toMatch(
      /^\/acl:1: invalid status "on" for "host-1"; must be enabled or disabled/,
    );
    expect(err(['host-1 enabled', 'host-1 disabled'])).toBe(
      '/acl:2: duplicate identity "host-1" (first on line 1)',
    );
    expect(err(['host-1 enabled', 'host-2 enabled'])).toMatch(
      /^\/acl:2: single-PSK mode \(no key= entries\) allows at most one enabled identity, but "host-1" and "host-2" are enabled/,
    );
    expect(err(['host-1 enabled key=/a', 'host-2 enabled'])).toMatch(
      /^\/acl:2: 1 of 2 entries have a per-identity key \(key=\) and "host-2" has none; all entries must have key= or none/,
    );
    expect(err(['host-1 enabled key=/a', 'host-2 enabled key=/a'])).toBe(
      '/acl:2: duplicate key file path "/a" (also on line 1)',
    );
    expect(err(['host-1 enabled node=web_1!'])).toMatch(/"web_1!" in node=web_1! is not a host name/);
    expect(err([`${'x'.repeat(600)} enabled`])).toMatch(
      /^\/acl:1: line is 608 characters long, more than 510/,
    );
    expect(err(['host\u00e9 enabled'])).toMatch(/invalid identity/);
  });

  it('the same key for two identities is refused (one host could act as the other)', () => {
    const dir = tmp.dir;
    const same = 'cd'.repeat(32);
    const k1 = writeKey(path.join(dir, 'same1.key'), same);
    const k2 = writeKey(path.join(dir, 'same2.key'), same);
    const acl = writeAcl(path.join(dir, 'same.acl'), [
      `host-1 enabled key=${k1}`,
      `host-2 enabled key=${k2}`,
    ]);
    expect(message(() => loadAllowedClients(acl))).toMatch(
      /same\.acl:3: identities "host-1" and "host-2" have the same key .*each identity needs its own key/,
    );
  });
});
