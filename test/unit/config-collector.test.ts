import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  COLLECTOR_IGNORED_KEYS,
  COLLECTOR_KEYS,
  type CollectorConfig,
  collectorSyncPolicy,
  defaultCollectorConfig,
  formatCollectorConfig,
  loadCollectorConfig,
  parseCollectorConfig,
  withCollectorOverrides,
} from '../../src/config/collector-config.js';
import { ConfigError, UsageError } from '../../src/errors.js';

const F = '/etc/audit/auditd.conf';
const FIXTURE = join(import.meta.dirname, '../fixtures/config/debian-auditd.conf');
const tmp = mkdtempSync(join(tmpdir(), 'auditrelay-config-collector-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}
const parse1 = (line: string) => parseCollectorConfig(`${line}\n`, F).config;
const err1 = (line: string) => errorOf(() => parseCollectorConfig(`${line}\n`, F)).message;

const DEFAULTS: CollectorConfig = {
  tcpListenPort: 60,
  tcpListenQueue: 4096,
  tcpMaxPerAddr: 1,
  tcpClientPorts: { min: 0, max: 65535 },
  tcpClientMaxIdle: 0,
  transport: 'tcp',
  krb5Principal: 'auditd',
  krb5KeyFile: '/etc/audit/audit.key',
  tlsAuth: 'psk',
  tlsCryptoProfile: 'compatible',
  tlsPskFile: null,
  tlsPskIdentity: null,
  tlsAllowedClients: null,
  tlsCipherSuites: null,
  tlsKeyExchange: null,
  logFile: '/var/log/auditrelay/audit.log',
  flush: 'incremental_async',
  freq: 50,
  maxLogFile: 100,
  numLogs: 10,
  maxLogFileAction: { kind: 'keep_logs' },
  spaceLeft: { percent: 5 },
  spaceLeftAction: { kind: 'syslog' },
  adminSpaceLeft: { percent: 2 },
  adminSpaceLeftAction: { kind: 'syslog' },
  diskFullAction: { kind: 'syslog' },
  diskErrorAction: { kind: 'syslog' },
  actionMailAcct: 'root',
  tcpListenAddress: '127.0.0.1',
  handshakeTimeout: 5,
  maxMessageSize: 8970,
  krb5AllowedPrincipals: null,
  krb5AppendPrincipal: true,
  statusListen: null,
  logLevel: 'info',
  memoryBudget: 64 * 1024 * 1024,
  tcpMaxConnections: 4096,
  staleSessionTimeout: 10,
  tlsCaFile: null,
  tlsCertFile: null,
  tlsKeyFile: null,
  tlsCrlFile: null,
  tlsAllowedNames: null,
  identityPolicy: null,
  maxPendingHandshakes: null,
  evidence: true,
  evidenceKeyFile: '/var/lib/auditrelay/evidence/signing.key',
  evidenceCheckpointInterval: 10,
  hostSilenceTimeout: 3600,
  maxHosts: 100000,
  output: 'file',
  jetstreamServers: ['nats://127.0.0.1:4222'],
  jetstreamStream: 'AUDIT',
  jetstreamReplicas: 3,
  jetstreamDuplicateWindow: 600,
  sinkConsumer: 'auditrelay-sink',
  sinkLogLayout: 'single',
  sinkLogDir: '/var/log/auditrelay/hosts',
  sinkMaxOpenLogs: 256,
  recordIds: true,
};

describe('limits (issue 9)', () => {
  it('memory_budget takes a size with K/M/G; tcp_max_connections and stale_session_timeout are integers in range', () => {
    expect(parse1('memory_budget = 256M').memoryBudget).toBe(256 * 1024 * 1024);
    expect(parse1('memory_budget = 1048576').memoryBudget).toBe(1024 * 1024);
    expect(err1('memory_budget = 512K')).toMatch(/memory_budget: 512K is out of range/);
    expect(parse1('tcp_max_connections = 10000').tcpMaxConnections).toBe(10000);
    expect(err1('tcp_max_connections = 0')).toMatch(/out of range/);
    expect(parse1('stale_session_timeout = 30').staleSessionTimeout).toBe(30);
    expect(err1('stale_session_timeout = 0')).toMatch(/out of range/);
  });

  it('a small tcp_listen_queue (auditd ships 5) is a warning that says why', () => {
    const { config, warnings } = parseCollectorConfig('tcp_listen_queue = 5\n', F);
    expect(config.tcpListenQueue).toBe(5);
    expect(warnings.map((w) => w.text)).toEqual([
      `${F}:1: tcp_listen_queue: 5 is small: when more clients connect at once (after a restart or a network outage) the kernel drops their SYNs and each waits 1 s or more to retry; remove the line (default 4096) or raise it`,
    ]);
    expect(parseCollectorConfig('tcp_listen_queue = 512\n', F).warnings).toEqual([]);
  });
});

describe('krb5 extensions', () => {
  it('krb5_allowed_principals takes full principal names, comma-separated', () => {
    expect(parse1('krb5_allowed_principals = auditd/a@R,auditd/b@R').krb5AllowedPrincipals).toEqual([
      'auditd/a@R',
      'auditd/b@R',
    ]);
    expect(err1('krb5_allowed_principals = auditd/a')).toContain('"auditd/a" is not a full principal name');
    expect(parse1('krb5_append_principal = no').krb5AppendPrincipal).toBe(false);
  });
});

describe('defaults', () => {
  it('are as documented', () => {
    expect(defaultCollectorConfig()).toEqual(DEFAULTS);
    expect(parseCollectorConfig('', F)).toEqual({ config: DEFAULTS, warnings: [] });
  });
});

describe("Debian 12's shipped auditd.conf", () => {
  it('is accepted with its log management, with a warning for every key that has no meaning for the collector', () => {
    const { config, warnings } = loadCollectorConfig(FIXTURE, { checkOwnership: false });
    // Debian ships tcp_listen_queue = 5: kept, with a warning (a burst of clients would wait for SYN retries).
    expect(config).toEqual({
      ...DEFAULTS,
      flush: 'incremental_async',
      freq: 50,
      tcpListenQueue: 5,
      logFile: '/var/log/audit/audit.log',
      maxLogFile: 8,
      numLogs: 5,
      maxLogFileAction: { kind: 'rotate' },
      spaceLeft: { mib: 75 },
      spaceLeftAction: { kind: 'syslog' },
      adminSpaceLeft: { mib: 50 },
      adminSpaceLeftAction: { kind: 'suspend' },
      diskFullAction: { kind: 'suspend' },
      diskErrorAction: { kind: 'suspend' },
    });
    expect(warnings.filter((w) => w.key === 'tcp_listen_queue').map((w) => w.message)).toEqual([
      expect.stringMatching(/^5 is small: /),
    ]);
    // Its log_file is auditd's own: a warning says why the collector should not share it.
    expect(warnings.filter((w) => w.key === 'log_file').map((w) => w.message)).toEqual([
      expect.stringMatching(/^\/var\/log\/audit\/audit\.log is the log of this host's own auditd/),
    ]);
    for (const key of ['tcp_listen_queue', 'log_file']) {
      warnings.splice(
        warnings.findIndex((w) => w.key === key),
        1,
      );
    }
    const text = readFileSync(FIXTURE, 'utf8');
    const ignored = text
      .split('\n')
      .map((l) => l.split(' ')[0]!)
      .filter((k) => k in COLLECTOR_IGNORED_KEYS);
    expect(warnings.map((w) => w.key)).toEqual(ignored);
    expect(ignored).toContain('local_events');
    expect(warnings[0]).toEqual({
      file: FIXTURE,
      line: 5,
      key: 'local_events',
      message: 'ignored: it applies to local kernel events; the collector only receives network records',
      text: `${FIXTURE}:5: local_events: ignored: it applies to local kernel events; the collector only receives network records`,
    });
  });
});

describe('tcp_* keys', () => {
  const edges: [string, keyof CollectorConfig, number, number][] = [
    ['tcp_listen_port', 'tcpListenPort', 1, 65535],
    ['tcp_listen_queue', 'tcpListenQueue', 1, 65535],
    ['tcp_max_per_addr', 'tcpMaxPerAddr', 1, 1024],
    ['tcp_client_max_idle', 'tcpClientMaxIdle', 0, 2147483647],
    ['freq', 'freq', 1, 2147483647],
    ['handshake_timeout', 'handshakeTimeout', 1, 3600],
    ['max_message_size', 'maxMessageSize', 64, 1048576],
  ];
  for (const [key, field, min, max] of edges) {
    const shownMin = key === 'freq' ? 0 : min;
    it(`${key}: accepts ${min} and ${max}, rejects ${min > 0 && key !== 'freq' ? `${min - 1} and ` : ''}${max + 1}`, () => {
      expect(parse1(`${key} = ${min}`)[field]).toBe(min);
      expect(parse1(`${key} = ${max}`)[field]).toBe(max);
      if (min > 0 && key !== 'freq') {
        expect(err1(`${key} = ${min - 1}`)).toBe(
          `${F}:1: ${key}: ${min - 1} is out of range (allowed: ${min}..${max})`,
        );
      }
      expect(err1(`${key} = ${max + 1}`)).toBe(
        `${F}:1: ${key}: ${max + 1} is out of range (allowed: ${shownMin}..${max})`,
      );
      expect(err1(`${key} = 5x`)).toBe(
        `${F}:1: ${key}: "5x" is not a decimal integer (allowed: ${shownMin}..${max})`,
      );
    });
  }

  it('tcp_client_ports: N or N-M within 0..65535', () => {
    expect(parse1('tcp_client_ports = 60').tcpClientPorts).toEqual({ min: 60, max: 60 });
    expect(parse1('tcp_client_ports = 1024-65535').tcpClientPorts).toEqual({ min: 1024, max: 65535 });
    expect(parse1('tcp_client_ports = 0-0').tcpClientPorts).toEqual({ min: 0, max: 0 });
    const allowed = '(allowed: a port N or a range N-M, 0..65535, N <= M)';
    expect(err1('tcp_client_ports = 1024-65536')).toBe(
      `${F}:1: tcp_client_ports: 1024-65536 is out of range ${allowed}`,
    );
    expect(err1('tcp_client_ports = 2000-1000')).toBe(
      `${F}:1: tcp_client_ports: range 2000-1000 is reversed ${allowed}`,
    );
    expect(err1('tcp_client_ports = 1000-')).toBe(
      `${F}:1: tcp_client_ports: "1000-" is neither a port nor a range N-M ${allowed}`,
    );
    expect(err1('tcp_client_ports = any')).toContain('"any" is neither a port nor a range N-M');
  });

  it('transport: TCP, KRB5, TLS, enable_krb5 with upstream order semantics', () => {
    expect(parse1('transport = TCP').transport).toBe('tcp');
    expect(parse1('transport = KRB5').transport).toBe('krb5');
    expect(
      parseCollectorConfig('transport = TLS\ntls_allowed_clients = /etc/audit/c\n', F).config.transport,
    ).toBe('tls');
    expect(err1('transport = UDP')).toBe(`${F}:1: transport: unknown value "UDP" (allowed: tcp, krb5, tls)`);
    expect(parseCollectorConfig('enable_krb5 = yes\ntransport = tcp\n', F).config.transport).toBe('tcp');
    expect(parseCollectorConfig('transport = tcp\nenable_krb5 = yes\n', F).config.transport).toBe('krb5');
    expect(err1('tls_allowed_clients = x')).toBe(
      `${F}:1: tls_allowed_clients: "x" is not an absolute path (allowed: an absolute path)`,
    );
  });

  it('krb5 and log_file values', () => {
    const c = parseCollectorConfig(
      'krb5_principal = audit\nkrb5_key_file = /etc/k.key\nlog_file = /srv/audit.log\n',
      F,
    ).config;
    expect(c).toMatchObject({ krb5Principal: 'audit', krb5KeyFile: '/etc/k.key', logFile: '/srv/audit.log' });
    expect(err1('log_file = audit.log')).toBe(
      `${F}:1: log_file: "audit.log" is not an absolute path (allowed: an absolute path)`,
    );
  });

  it('tcp_listen_address: addresses and host names, no brackets or ports', () => {
    expect(parse1('tcp_listen_address = ::').tcpListenAddress).toBe('::');
    expect(parse1('tcp_listen_address = 0.0.0.0').tcpListenAddress).toBe('0.0.0.0');
    expect(parse1('tcp_listen_address = collector.example').tcpListenAddress).toBe('collector.example');
    expect(err1('tcp_listen_address = [::1]')).toBe(
      `${F}:1: tcp_listen_address: "[::1]" is not a valid address or host name ` +
        '(allowed: an IP address (127.0.0.1, 0.0.0.0, ::1, ::) or a host name, without brackets or port)',
    );
  });

  it('status_listen and log_level', () => {
    expect(parse1('status_listen = 127.0.0.1:9101').statusListen).toEqual({ host: '127.0.0.1', port: 9101 });
    expect(parse1('log_level = debug').logLevel).toBe('debug');
    expect(err1('log_level = loud')).toContain('(allowed: trace, debug, info, warn, error, fatal)');
  });
});

describe('flush and freq', () => {
  it('accepts every flush mode, case-insensitively', () => {
    for (const m of ['none', 'incremental', 'incremental_async', 'data', 'sync'] as const) {
      expect(parseCollectorConfig(`flush = ${m.toUpperCase()}\nfreq = 10\n`, F).config.flush).toBe(m);
    }
    expect(err1('flush = always')).toBe(
      `${F}:1: flush: unknown value "always" (allowed: none, incremental, incremental_async, data, sync)`,
    );
  });

  it('incremental flushing with freq = 0 is an error, as auditd', () => {
    expect(errorOf(() => parseCollectorConfig('flush = incremental\nfreq = 0\n', F)).message).toBe(
      `${F}:2: freq: flush = incremental needs freq > 0, but freq is 0 ` +
        '(allowed: 1..2147483647 with incremental flushing, or flush = none, data or sync)',
    );
  });

  it('freq set with a non-incremental flush is a warning, as auditd', () => {
    const { warnings } = parseCollectorConfig('flush = sync\nfreq = 20\n', F);
    expect(warnings.map((w) => w.text)).toEqual([`${F}:2: freq: freq = 20 has no effect with flush = sync`]);
    expect(parseCollectorConfig('flush = none\n', F).warnings).toEqual([]);
    expect(parseCollectorConfig('flush = none\nfreq = 0\n', F).warnings).toEqual([]);
  });

  it('maps to a sync policy', () => {
    expect(collectorSyncPolicy({ flush: 'none', freq: 0 })).toEqual({ fsync: 'never' });
    expect(collectorSyncPolicy({ flush: 'incremental', freq: 20 })).toEqual({
      fsync: 'every',
      records: 20,
      waitBeforeAck: true,
    });
    expect(collectorSyncPolicy({ flush: 'incremental_async', freq: 50 })).toEqual({
      fsync: 'every',
      records: 50,
      waitBeforeAck: false,
    });
    expect(collectorSyncPolicy({ flush: 'data', freq: 0 })).toEqual({ fsync: 'always', dataOnly: true });
    expect(collectorSyncPolicy({ flush: 'sync', freq: 0 })).toEqual({ fsync: 'always', dataOnly: false });
  });
});

describe('ignored and unknown keys', () => {
  it('every ignored auditd.conf key is accepted with a warning, options included', () => {
    for (const key of Object.keys(COLLECTOR_IGNORED_KEYS)) {
      const { config, warnings } = parseCollectorConfig(`${key} = SOMETHING\n`, F);
      expect(config).toEqual(DEFAULTS);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]!.text).toBe(`${F}:1: ${key}: ignored: ${COLLECTOR_IGNORED_KEYS[key]}`);
    }
  });

  it('an ignored key still needs a value, as auditd', () => {
    expect(err1('local_events =')).toBe(`${F}:1: local_events: missing value after "=" (allowed: a value)`);
  });

  it('unknown keys are errors', () => {
    const msg = err1('tcp_listen_prot = 60');
    expect(msg).toMatch(
      /^\/etc\/audit\/auditd\.conf:1: tcp_listen_prot: unknown key "tcp_listen_prot"; did you mean "tcp_listen_port"\? \(allowed: tcp_listen_port, /,
    );
  });

  it('syntax errors name file and line', () => {
    expect(err1('tcp_listen_port=60')).toBe(
      `${F}:1: tcp_listen_port: "=" must have a space on each side (upstream rejects "key=value"): write "tcp_listen_port = 60"`,
    );
    expect(err1('tcp_listen_port\t=\t60')).toContain('tab character');
    expect(err1('tcp_listen_port = 60 61')).toContain('unexpected extra word "61"');
  });

  it('lines up to 158 characters (auditd.conf buffer); long comments are skipped', () => {
    const line = `log_file = /${'a'.repeat(158 - 'log_file = /'.length)}`;
    expect(parse1(line).logFile).toHaveLength(158 - 'log_file = '.length);
    expect(err1(`${line}a`)).toBe(
      `${F}:1: line is 159 characters long; upstream reads at most 158 per line and would misread it ` +
        '(allowed: at most 158 characters per line)',
    );
    expect(parseCollectorConfig(`# ${'x'.repeat(300)}\n`, F).config).toEqual(DEFAULTS);
  });
});

describe('loadCollectorConfig', () => {
  it('missing file: error unless allowMissing', () => {
    const p = join(tmp, 'none.conf');
    expect(errorOf(() => loadCollectorConfig(p)).message).toBe(
      `${p}: config file does not exist; create it or pass --config`,
    );
    expect(loadCollectorConfig(p, { allowMissing: true })).toEqual({ config: DEFAULTS, warnings: [] });
  });

  it('unreadable file names the file and errno', () => {
    const d = join(tmp, 'dir.conf');
    mkdirSync(d);
    expect(errorOf(() => loadCollectorConfig(d, { checkOwnership: false })).message).toBe(
      `${d}: cannot read config file: EISDIR (illegal operation on a directory)`,
    );
  });

  it('reads a file', () => {
    const p = join(tmp, 'c.conf');
    writeFileSync(p, 'tcp_listen_port = 6000\ntcp_listen_address = ::\n');
    expect(loadCollectorConfig(p).config).toEqual({
      ...DEFAULTS,
      tcpListenPort: 6000,
      tcpListenAddress: '::',
    });
  });
});

describe('withCollectorOverrides', () => {
  const base = defaultCollectorConfig();

  it('applies --listen HOST:PORT and [IPV6]:PORT', () => {
    expect(withCollectorOverrides(base, { listen: '0.0.0.0:6060' })).toMatchObject({
      tcpListenAddress: '0.0.0.0',
      tcpListenPort: 6060,
    });
    expect(withCollectorOverrides(base, { listen: '[::1]:60' })).toMatchObject({
      tcpListenAddress: '::1',
      tcpListenPort: 60,
    });
    expect(withCollectorOverrides(base, { listen: 'localhost:0' })).toMatchObject({
      tcpListenAddress: 'localhost',
      tcpListenPort: 0,
    });
  });

  it('applies --log, resolving relative paths', () => {
    expect(withCollectorOverrides(base, { log: '/tmp/a.log' }).logFile).toBe('/tmp/a.log');
    expect(withCollectorOverrides(base, { log: 'a.log' }).logFile).toBe(resolve('a.log'));
  });

  it('does not modify its input', () => {
    const copy = structuredClone(base);
    withCollectorOverrides(base, { listen: '1.2.3.4:5', log: '/x' });
    expect(base).toEqual(copy);
    expect(withCollectorOverrides(base, {})).toEqual(base);
  });

  it('rejects bad input with a clear usage error', () => {
    const cases: [string, string][] = [
      [
        '60',
        '--listen: "60" has no ":PORT"; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
      ],
      ['::1:60', '--listen: IPv6 address in "::1:60" must be in brackets: [::1]:60'],
      [
        ':60',
        '--listen: ":60" has no host before ":"; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60 (0.0.0.0 or [::] for all)',
      ],
      [
        '[::1]60',
        '--listen: "[::1]60" has no ":PORT" after "]"; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
      ],
      [
        '[::1:60',
        '--listen: "[::1:60" has "[" without "]"; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
      ],
      [
        '[1.2.3.4]:60',
        '--listen: "1.2.3.4" inside [] is not an IPv6 address; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
      ],
      ['host:65536', '--listen: port 65536 in "host:65536" is out of range 0..65535'],
      ['host:http', '--listen: port "http" in "host:http" is not a decimal integer'],
      [
        'ba d:60',
        '--listen: "ba d" is not a valid host name or address; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
      ],
    ];
    for (const [listen, message] of cases) {
      expect(() => withCollectorOverrides(base, { listen })).toThrow(UsageError);
      expect(() => withCollectorOverrides(base, { listen })).toThrow(message);
    }
    expect(() => withCollectorOverrides(base, { log: '' })).toThrow('--log: the file name is empty');
  });
});

describe('formatCollectorConfig', () => {
  it('round-trips the defaults and a changed config', () => {
    const def = defaultCollectorConfig();
    expect(parseCollectorConfig(formatCollectorConfig(def), 'x')).toEqual({ config: def, warnings: [] });
    const text = [
      'tcp_listen_port = 6000',
      'tcp_listen_queue = 64',
      'tcp_max_per_addr = 4',
      'tcp_client_ports = 1024-2048',
      'tcp_client_max_idle = 600',
      'transport = KRB5',
      'krb5_principal = audit',
      'krb5_key_file = /etc/k.key',
      'tls_auth = x509',
      'tls_crypto_profile = system',
      'tls_psk_file = /etc/audit/psk.key',
      'tls_psk_identity = host-1',
      'tls_allowed_clients = /etc/audit/tls-clients',
      'tls_cipher_suites = TLS_AES_128_GCM_SHA256',
      'tls_key_exchange = X25519',
      'log_file = /srv/audit.log',
      'flush = SYNC',
      'freq = 0',
      'tcp_listen_address = ::',
      'handshake_timeout = 10',
      'max_message_size = 4096',
      'krb5_allowed_principals = audit/web1@EXAMPLE.COM,audit/web2@EXAMPLE.COM',
      'krb5_append_principal = no',
      'status_listen = [::1]:9101',
      'log_level = warn',
      'tls_ca_file = /etc/audit/ca.pem',
      'tls_cert_file = /etc/audit/cert.pem',
      'tls_key_file = /etc/audit/cert.key',
      'tls_crl_file = /etc/audit/ca.crl',
      'tls_allowed_names = web1.example.com,*.db.example.com',
      'identity_policy = rewrite',
      'max_pending_handshakes = 64',
    ].join('\n');
    const cfg = parseCollectorConfig(text, 'x').config;
    const out = formatCollectorConfig(cfg);
    expect(
      out
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.split(' ')[0]),
    ).toEqual(COLLECTOR_KEYS);
    expect(parseCollectorConfig(out, 'x').config).toEqual(cfg);
  });
});

describe('log management keys (auditd.conf, issue 12)', () => {
  it('max_log_file (MiB) and num_logs (at most 999, as auditd)', () => {
    expect(parse1('max_log_file = 8').maxLogFile).toBe(8);
    expect(parse1('max_log_file = 0').maxLogFile).toBe(0);
    expect(parse1('num_logs = 999').numLogs).toBe(999);
    expect(err1('num_logs = 1000')).toBe(`${F}:1: num_logs: 1000 is out of range (allowed: 0..999)`);
    expect(err1('max_log_file = 8M')).toContain('"8M" is not a decimal integer');
  });

  it('max_log_file_action: ignore, syslog, suspend, rotate, keep_logs (and exec of 4.2), case-insensitive', () => {
    for (const k of ['ignore', 'syslog', 'suspend', 'rotate', 'keep_logs'] as const) {
      expect(parse1(`max_log_file_action = ${k.toUpperCase()}`).maxLogFileAction).toEqual({ kind: k });
    }
    expect(err1('max_log_file_action = email')).toBe(
      `${F}:1: max_log_file_action: unknown value "email" (allowed: ignore, syslog, suspend, rotate, keep_logs, exec /path/to/script)`,
    );
  });

  it('space_left and admin_space_left: MiB or 1%..99%; space_left must be the larger, as auditd', () => {
    expect(parse1('space_left = 75').spaceLeft).toEqual({ mib: 75 });
    expect(parse1('space_left = 25%').spaceLeft).toEqual({ percent: 25 });
    expect(parse1('admin_space_left = 1%').adminSpaceLeft).toEqual({ percent: 1 });
    expect(err1('space_left = 100%')).toContain('100% is out of range');
    expect(err1('space_left = 5 %')).toContain('unexpected extra word');
    expect(err1('space_left = 1.5')).toContain('"1.5" is neither a number of MiB nor a percentage');
    expect(errorOf(() => parseCollectorConfig('space_left = 50\nadmin_space_left = 75\n', F)).message).toBe(
      `${F}:2: space_left: space_left (50 MiB) must be larger than admin_space_left (75 MiB) (allowed: a larger space_left, or a smaller admin_space_left)`,
    );
    expect(
      errorOf(() => parseCollectorConfig('space_left = 5%\nadmin_space_left = 5%\n', F)).message,
    ).toContain('space_left (5%) must be larger than admin_space_left (5%)');
    // Either off (0) is fine; MiB against a percentage is checked at run time.
    expect(parseCollectorConfig('space_left = 0\nadmin_space_left = 75\n', F).config.spaceLeft).toEqual({
      mib: 0,
    });
    expect(parseCollectorConfig('space_left = 10\nadmin_space_left = 5%\n', F).config.adminSpaceLeft).toEqual(
      {
        percent: 5,
      },
    );
  });

  it('the actions take what auditd allows for each key', () => {
    for (const k of ['ignore', 'syslog', 'rotate', 'email', 'suspend', 'single', 'halt'] as const) {
      expect(parse1(`space_left_action = ${k}`).spaceLeftAction).toEqual({ kind: k });
      expect(parse1(`admin_space_left_action = ${k}`).adminSpaceLeftAction).toEqual({ kind: k });
    }
    expect(parse1('disk_full_action = rotate').diskFullAction).toEqual({ kind: 'rotate' });
    expect(err1('disk_full_action = email')).toContain('unknown value "email"');
    expect(err1('disk_error_action = rotate')).toContain('unknown value "rotate"');
    expect(err1('disk_error_action = email')).toContain('unknown value "email"');
    expect(err1('space_left_action = syslog /x')).toContain('unexpected extra word "/x"');
  });

  it('single and halt are accepted with a warning that says what the collector does instead', () => {
    const { warnings } = parseCollectorConfig('admin_space_left_action = halt\n', F);
    expect(warnings.map((w) => w.text)).toEqual([
      `${F}:1: admin_space_left_action: halt: the collector does not change this server's run level for its clients' records (nothing on the clients would be protected by it); it suspends logging instead (clients keep their records) and logs at error level`,
    ]);
  });

  it('exec takes a script checked as auditd checks it (absolute, regular, owner, mode), in a private directory', () => {
    const dir = join(tmp, 'scripts');
    mkdirSync(dir, { mode: 0o700 });
    const script = join(dir, 'alert.sh');
    writeFileSync(script, '#!/bin/sh\n', { mode: 0o750 });
    expect(parse1(`space_left_action = exec ${script}`).spaceLeftAction).toEqual({
      kind: 'exec',
      path: script,
    });
    expect(parse1(`max_log_file_action = EXEC ${script}`).maxLogFileAction).toEqual({
      kind: 'exec',
      path: script,
    });
    expect(err1('disk_full_action = exec')).toBe(
      `${F}:1: disk_full_action: exec needs the path of a script (allowed: exec /path/to/script)`,
    );
    expect(err1('disk_full_action = exec alert.sh')).toContain('"alert.sh" is not an absolute path');
    expect(err1(`disk_full_action = exec ${join(dir, 'none.sh')}`)).toContain('cannot be used: ENOENT');
    const loose = join(dir, 'loose.sh');
    writeFileSync(loose, '#!/bin/sh\n', { mode: 0o777 });
    chmodSync(loose, 0o777);
    expect(err1(`disk_full_action = exec ${loose}`)).toContain(
      'has mode 0777; it must be 0750, 0755, 0555 or 0550 (as auditd requires); fix with: chmod 0750',
    );
  });

  it('action_mail_acct: an address or account of the characters auditd allows', () => {
    expect(parse1('action_mail_acct = audit-team+alerts@example.com').actionMailAcct).toBe(
      'audit-team+alerts@example.com',
    );
    expect(err1('action_mail_acct = a;rm')).toContain('"a;rm" is not an address');
    expect(err1('action_mail_acct = root@localhost')).toContain('needs a "." after the "@"');
  });

  it('evidence, evidence_key_file, evidence_checkpoint_interval, host_silence_timeout, max_hosts', () => {
    const c = parseCollectorConfig(
      [
        'evidence = no',
        'evidence_key_file = /etc/auditrelay/evidence.key',
        'evidence_checkpoint_interval = 60',
        'host_silence_timeout = 0',
        'max_hosts = 5000',
      ].join('\n'),
      F,
    ).config;
    expect(c).toMatchObject({
      evidence: false,
      evidenceKeyFile: '/etc/auditrelay/evidence.key',
      evidenceCheckpointInterval: 60,
      hostSilenceTimeout: 0,
      maxHosts: 5000,
    });
    expect(err1('evidence_key_file = signing.key')).toContain('is not an absolute path');
    expect(err1('max_hosts = 0')).toContain('out of range');
  });

  it('the effective config prints every key and parses back to the same', () => {
    const dir = join(tmp, 'scripts2');
    mkdirSync(dir, { mode: 0o700 });
    const script = join(dir, 'full.sh');
    writeFileSync(script, '#!/bin/sh\n', { mode: 0o755 });
    const cfg = parseCollectorConfig(
      [
        'max_log_file = 50',
        'num_logs = 3',
        'max_log_file_action = rotate',
        'space_left = 20%',
        'space_left_action = email',
        'admin_space_left = 100',
        'admin_space_left_action = suspend',
        `disk_full_action = exec ${script}`,
        'disk_error_action = ignore',
        'action_mail_acct = ops@example.com',
      ].join('\n'),
      F,
    ).config;
    const out = formatCollectorConfig(cfg);
    expect(out).toContain(`disk_full_action = EXEC ${script}\n`);
    expect(out).toContain('space_left = 20%\n');
    expect(parseCollectorConfig(out, 'x').config).toEqual(cfg);
  });

  it('--evidence-key-file overrides evidence_key_file', () => {
    expect(
      withCollectorOverrides(defaultCollectorConfig(), { evidenceKeyFile: 'k/signing.key' }).evidenceKeyFile,
    ).toBe(resolve('k/signing.key'));
  });
});
