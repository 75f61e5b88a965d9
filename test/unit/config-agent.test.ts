import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { settingsFromConfig } from '../../src/agent/settings.js';
import {
  AGENT_KEYS,
  AGENT_RANGES,
  type AgentConfig,
  defaultAgentConfig,
  formatEffectiveConfig,
  loadAgentConfig,
  parseAgentConfig,
} from '../../src/config/agent-config.js';
import { ConfigError } from '../../src/errors.js';
import { requireOrSkip } from '../helpers/prereq.js';

const F = '/etc/audit/audisp-remote.conf';
const FIXTURE = join(import.meta.dirname, '../fixtures/config/debian-audisp-remote.conf');
/** The exec-program and ownership checks chown files to root: root only, skipped loudly elsewhere. */
const isRoot = requireOrSkip({
  suite: 'agent config: ownership and exec program checks (chown)',
  root: true,
});
const tmp = mkdtempSync(join(tmpdir(), 'auditrelay-config-agent-'));
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

/** Parses `key = value` given as one line (line 1) of a file named F. */
const parse1 = (line: string) => parseAgentConfig(`${line}\n`, F);
const err1 = (line: string) => errorOf(() => parse1(line)).message;

const DEFAULTS: AgentConfig = {
  remoteServer: null,
  port: 60,
  localPort: 0,
  transport: 'tcp',
  mode: 'immediate',
  queueFile: '/var/spool/audit/remote.log',
  queueDepth: 2048,
  format: 'managed',
  networkRetryTime: 1,
  maxTriesPerRecord: 3,
  maxTimePerRecord: 5,
  heartbeatTimeout: 0,
  networkFailureAction: { kind: 'stop' },
  diskLowAction: { kind: 'ignore' },
  diskFullAction: { kind: 'warn_once' },
  diskErrorAction: { kind: 'warn_once' },
  remoteEndingAction: { kind: 'reconnect' },
  genericErrorAction: { kind: 'syslog' },
  genericWarningAction: { kind: 'syslog' },
  queueErrorAction: { kind: 'stop' },
  overflowAction: { kind: 'syslog' },
  startupFailureAction: { kind: 'warn_once_continue' },
  krb5Principal: null,
  krb5ClientName: 'auditd',
  krb5KeyFile: '/etc/audit/audisp-remote.key',
  tlsAuth: 'psk',
  tlsCryptoProfile: 'compatible',
  tlsPskFile: null,
  tlsPskIdentity: null,
  tlsCipherSuites: null,
  tlsKeyExchange: null,
  maxInFlight: 4096,
  queueDir: '/var/spool/auditrelay',
  fsync: 'interval',
  fsyncIntervalMs: 200,
  queueMaxBytes: 1073741824,
  reconnectInitialMs: 200,
  reconnectMaxMs: 30000,
  drainTimeout: 5,
  failbackInterval: 300,
  tlsCaFile: null,
  tlsCertFile: null,
  tlsKeyFile: null,
  tlsCrlFile: null,
  tlsServerName: null,
  forwardEoe: false,
  recordIds: true,
  agentId: null,
  input: { kind: 'stdin' },
  tailStateFile: '/var/lib/auditrelay/tail.state',
  tailStart: 'end',
  tailPollMs: 1000,
  stateFile: '/run/auditrelay/agent.state',
  statusListen: null,
  healthLinkDownTimeout: 60,
  healthQueueThreshold: 90,
  logLevel: 'info',
  logTarget: 'auto',
};

describe('defaults', () => {
  it('are upstream 3.0.9 code defaults plus ours', () => {
    expect(defaultAgentConfig()).toEqual(DEFAULTS);
  });

  it('an empty or comment-only file yields the defaults', () => {
    expect(parseAgentConfig('', F)).toEqual(DEFAULTS);
    expect(parseAgentConfig('# nothing\n\n', F)).toEqual(DEFAULTS);
  });

  it('returns a fresh object each time', () => {
    const a = defaultAgentConfig();
    a.networkFailureAction = { kind: 'ignore' };
    expect(defaultAgentConfig().networkFailureAction).toEqual({ kind: 'stop' });
  });
});

describe("Debian 12's shipped audisp-remote.conf", () => {
  const text = readFileSync(FIXTURE, 'utf8');

  it('is rejected as upstream rejects it: remote_server is empty', () => {
    const e = errorOf(() => loadAgentConfig(FIXTURE, { checkOwnership: false }));
    expect(e.message).toBe(
      `${FIXTURE}:6: remote_server: remote_server is empty; Debian ships /etc/audit/audisp-remote.conf with it ` +
        'empty and it must be set to the collector (upstream exits with status 6 too) ' +
        '(allowed: HOST[:PORT][, HOST[:PORT]...]: host names or IP addresses in order of preference, an IPv6 address in brackets when a port follows ([2001:db8::1]:60))',
    );
    expect(e.location).toMatchObject({ file: FIXTURE, line: 6, key: 'remote_server', value: '' });
    expect(e.code).toBe('AR_CONFIG');
  });

  it('with remote_server set, gives the Debian values (queue_depth 10240, the rest as the code defaults)', () => {
    const fixed = text.replace(/^remote_server = *$/m, 'remote_server = logs.example.org');
    expect(fixed).not.toBe(text);
    expect(parseAgentConfig(fixed, FIXTURE)).toEqual({
      ...DEFAULTS,
      remoteServer: [{ host: 'logs.example.org', port: null }],
      queueDepth: 10240,
    });
  });
});

describe('numeric keys: range edges', () => {
  const fields: Record<keyof typeof AGENT_RANGES, keyof AgentConfig> = {
    port: 'port',
    local_port: 'localPort',
    queue_depth: 'queueDepth',
    network_retry_time: 'networkRetryTime',
    max_tries_per_record: 'maxTriesPerRecord',
    max_time_per_record: 'maxTimePerRecord',
    heartbeat_timeout: 'heartbeatTimeout',
    max_in_flight: 'maxInFlight',
    fsync_interval_ms: 'fsyncIntervalMs',
    queue_max_bytes: 'queueMaxBytes',
    reconnect_initial_ms: 'reconnectInitialMs',
    reconnect_max_ms: 'reconnectMaxMs',
    drain_timeout: 'drainTimeout',
    failback_interval: 'failbackInterval',
    tail_poll_ms: 'tailPollMs',
    health_link_down_timeout: 'healthLinkDownTimeout',
    health_queue_threshold: 'healthQueueThreshold',
  };
  const expected: Record<string, [number, number]> = {
    port: [1, 65535],
    local_port: [0, 65535],
    queue_depth: [1, 2147483647],
    network_retry_time: [1, 2147483647],
    max_tries_per_record: [1, 2147483647],
    max_time_per_record: [1, 2147483647],
    heartbeat_timeout: [0, 2147483647],
    max_in_flight: [1, 65535],
    fsync_interval_ms: [1, 60000],
    queue_max_bytes: [16384, 1099511627776],
    reconnect_initial_ms: [1, 3600000],
    reconnect_max_ms: [1, 3600000],
    drain_timeout: [0, 3600],
    failback_interval: [0, 86400],
    tail_poll_ms: [10, 60000],
    health_link_down_timeout: [1, 86400],
    health_queue_threshold: [1, 100],
  };

  it('covers every numeric key', () => {
    expect(AGENT_RANGES).toEqual(expected);
  });

  for (const [key, [min, max]] of Object.entries(expected)) {
    if (key === 'queue_max_bytes') continue; // its message describes sizes; tested below
    const field = fields[key as keyof typeof AGENT_RANGES];
    // reconnect_initial_ms must not exceed reconnect_max_ms, so set the other one out of the way
    const extra =
      key === 'reconnect_initial_ms'
        ? '\nreconnect_max_ms = 3600000'
        : key === 'reconnect_max_ms'
          ? '\nreconnect_initial_ms = 1'
          : '';
    it(`${key}: accepts ${min} and ${max}, rejects ${min > 0 ? `${min - 1} and ` : ''}${max + 1}`, () => {
      expect(parseAgentConfig(`${key} = ${min}${extra}\n`, F)[field]).toBe(min);
      expect(parseAgentConfig(`${key} = ${max}${extra}\n`, F)[field]).toBe(max);
      if (min > 0) {
        expect(err1(`${key} = ${min - 1}`)).toBe(
          `${F}:1: ${key}: ${min - 1} is out of range (allowed: ${min}..${max})`,
        );
      }
      expect(err1(`${key} = ${max + 1}`)).toBe(
        `${F}:1: ${key}: ${max + 1} is out of range (allowed: ${min}..${max})`,
      );
    });
  }

  it('rejects anything but decimal digits, naming the value and range', () => {
    for (const bad of ['-1', '+5', '0x10', '1.5', '10s', '1e3']) {
      expect(err1(`max_time_per_record = ${bad}`)).toBe(
        `${F}:1: max_time_per_record: "${bad}" is not a decimal integer (allowed: 1..2147483647)`,
      );
    }
  });

  it('rejects huge numbers as out of range rather than rounding them', () => {
    expect(err1('queue_depth = 99999999999999999999999')).toBe(
      `${F}:1: queue_depth: 99999999999999999999999 is out of range (allowed: 1..2147483647)`,
    );
  });

  it('accepts leading zeros as upstream (strtoul)', () => {
    expect(parse1('port = 0060').port).toBe(60);
  });

  it('rejects a missing value', () => {
    expect(err1('port =')).toBe(
      `${F}:1: port: missing value after "=" (allowed: a decimal integer in 1..65535)`,
    );
  });

  it('rejects an extra word after the value', () => {
    expect(err1('port = 60 61')).toBe(
      `${F}:1: port: unexpected extra word "61" after the value "60" (allowed: "port = value" with nothing after the value)`,
    );
  });

  it('local_port accepts any (case-insensitive) as 0', () => {
    expect(parse1('local_port = any').localPort).toBe(0);
    expect(parse1('local_port = ANY').localPort).toBe(0);
    expect(parse1('local_port = 1023').localPort).toBe(1023);
    expect(err1('local_port = some')).toBe(
      `${F}:1: local_port: "some" is neither "any" nor a decimal integer (allowed: any, or 0..65535)`,
    );
  });

  it('queue_max_bytes accepts bytes and K/M/G suffixes within 16K..1024G', () => {
    expect(parse1('queue_max_bytes = 16384').queueMaxBytes).toBe(16384);
    expect(parse1('queue_max_bytes = 16K').queueMaxBytes).toBe(16384);
    expect(parse1('queue_max_bytes = 512m').queueMaxBytes).toBe(512 * 1024 ** 2);
    expect(parse1('queue_max_bytes = 2G').queueMaxBytes).toBe(2 * 1024 ** 3);
    expect(parse1('queue_max_bytes = 1024G').queueMaxBytes).toBe(1024 ** 4);
    const allowed =
      '(allowed: 16K..1024G bytes; a plain number or one with a suffix K, M or G (powers of 1024))';
    expect(err1('queue_max_bytes = 16383')).toBe(`${F}:1: queue_max_bytes: 16383 is out of range ${allowed}`);
    expect(err1('queue_max_bytes = 1025G')).toBe(`${F}:1: queue_max_bytes: 1025G is out of range ${allowed}`);
    for (const bad of ['1T', '1.5G', '1 G', 'G', '-1K', '1KB']) {
      expect(() => parse1(`queue_max_bytes = ${bad}`)).toThrow(ConfigError);
    }
    expect(err1('queue_max_bytes = 1T')).toBe(`${F}:1: queue_max_bytes: "1T" is not a size ${allowed}`);
  });
});

describe('keyword keys', () => {
  it('transport: tcp, krb5, tls (case-insensitive)', () => {
    expect(parse1('transport = TCP').transport).toBe('tcp');
    expect(parse1('transport = krb5').transport).toBe('krb5');
    expect(
      parseAgentConfig('transport = TLS\ntls_psk_file = /etc/audit/psk.key\ntls_psk_identity = web1\n', F)
        .transport,
    ).toBe('tls');
    expect(err1('transport = udp')).toBe(`${F}:1: transport: unknown value "udp" (allowed: tcp, krb5, tls)`);
  });

  it('mode, format, fsync, log_level, forward_eoe', () => {
    expect(parse1('mode = Forward').mode).toBe('forward');
    expect(err1('mode = store')).toBe(`${F}:1: mode: unknown value "store" (allowed: immediate, forward)`);
    expect(parse1('format = ascii').format).toBe('ascii');
    expect(err1('format = json')).toBe(`${F}:1: format: unknown value "json" (allowed: managed, ascii)`);
    for (const v of ['always', 'interval', 'never'] as const) expect(parse1(`fsync = ${v}`).fsync).toBe(v);
    expect(err1('fsync = sometimes')).toBe(
      `${F}:1: fsync: unknown value "sometimes" (allowed: always, interval, never)`,
    );
    for (const v of ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const) {
      expect(parse1(`log_level = ${v}`).logLevel).toBe(v);
    }
    expect(err1('log_level = verbose')).toBe(
      `${F}:1: log_level: unknown value "verbose" (allowed: trace, debug, info, warn, error, fatal)`,
    );
    expect(parse1('forward_eoe = yes').forwardEoe).toBe(true);
    expect(parse1('forward_eoe = NO').forwardEoe).toBe(false);
    expect(parse1('record_ids = no').recordIds).toBe(false);
    expect(parse1('agent_id = web-01.example').agentId).toBe('web-01.example');
    expect(parse1('agent_id = auto').agentId).toBeNull();
    expect(() => parse1('agent_id = a/b')).toThrow(/agent_id: "a\/b" is not an agent id/);
    expect(err1('forward_eoe = true')).toBe(`${F}:1: forward_eoe: unknown value "true" (allowed: yes, no)`);
  });

  it('enable_krb5 follows upstream order semantics', () => {
    expect(parseAgentConfig('enable_krb5 = yes\n', F).transport).toBe('krb5');
    expect(parseAgentConfig('enable_krb5 = yes\ntransport = tcp\n', F).transport).toBe('tcp');
    expect(parseAgentConfig('transport = tcp\nenable_krb5 = yes\n', F).transport).toBe('krb5');
    expect(parseAgentConfig('transport = krb5\nenable_krb5 = no\n', F).transport).toBe('krb5');
    expect(err1('enable_krb5 = maybe')).toBe(`${F}:1: enable_krb5: unknown value "maybe" (allowed: yes, no)`);
  });

  it('reads the TLS keys of audit 4.2 (the rules: test/tls/config.test.ts)', () => {
    expect(parse1('tls_psk_file = /etc/audit/psk').tlsPskFile).toBe('/etc/audit/psk');
    expect(err1('tls_psk_file = psk')).toBe(
      `${F}:1: tls_psk_file: "psk" is not an absolute path (allowed: an absolute path)`,
    );
  });

  it('rejects unknown keys, listing the known ones', () => {
    const msg = err1('remote_host = a');
    expect(msg).toMatch(/^\/etc\/audit\/audisp-remote\.conf:1: remote_host: unknown key "remote_host"/);
    expect(msg).toContain(`(allowed: ${AGENT_KEYS.join(', ')})`);
  });

  it('duplicate keys: the last one wins, as upstream', () => {
    expect(parseAgentConfig('port = 1\nport = 2\n', F).port).toBe(2);
  });
});

describe('string and path keys', () => {
  it('remote_server accepts host names and addresses', () => {
    const one = (host: string) => [{ host, port: null }];
    expect(parse1('remote_server = logs.example.org').remoteServer).toEqual(one('logs.example.org'));
    expect(parse1('remote_server = 192.0.2.1').remoteServer).toEqual(one('192.0.2.1'));
    expect(parse1('remote_server = 2001:db8::1').remoteServer).toEqual(one('2001:db8::1'));
  });

  it('remote_server takes a list in order of preference, HOST[:PORT], IPv6 in brackets (issue 14)', () => {
    expect(
      parse1('remote_server = a.example, b.example:61, [2001:db8::1]:62, [::1], 192.0.2.1:63').remoteServer,
    ).toEqual([
      { host: 'a.example', port: null },
      { host: 'b.example', port: 61 },
      { host: '2001:db8::1', port: 62 },
      { host: '::1', port: null },
      { host: '192.0.2.1', port: 63 },
    ]);
    const cfg = parse1('remote_server = a.example,b.example:61 , [::1]:62');
    expect(formatEffectiveConfig(cfg)).toMatch(/^remote_server = a\.example, b\.example:61, \[::1\]:62$/m);
    // settings: each server with its port (`port` when it has none)
    const s = settingsFromConfig({ ...cfg, port: 70 });
    expect(s.servers.map((x) => `${x.host}/${x.port}`)).toEqual(['a.example/70', 'b.example/61', '::1/62']);
  });

  it('remote_server rejects bad ports, bad brackets, empty entries, repeats and invalid names', () => {
    const allowed =
      '(allowed: HOST[:PORT][, HOST[:PORT]...]: host names or IP addresses in order of preference, an IPv6 address in brackets when a port follows ([2001:db8::1]:60))';
    expect(err1('remote_server = logs:0')).toBe(
      `${F}:1: remote_server: "logs:0": the port "0" is not in 1..65535 ${allowed}`,
    );
    expect(err1('remote_server = logs:x')).toBe(
      `${F}:1: remote_server: "logs:x": the port "x" is not in 1..65535 ${allowed}`,
    );
    expect(err1('remote_server = [logs]:60')).toBe(
      `${F}:1: remote_server: "[logs]:60" is neither [IPV6] nor [IPV6]:PORT ${allowed}`,
    );
    expect(err1('remote_server = a, ::1')).toBe(
      `${F}:1: remote_server: "::1": write an IPv6 address in a list in brackets ([::1]) ${allowed}`,
    );
    expect(err1('remote_server = a,,b')).toBe(`${F}:1: remote_server: "a,,b" has an empty entry ${allowed}`);
    expect(err1('remote_server = a:60, a:60')).toBe(
      `${F}:1: remote_server: "a:60" is listed twice ${allowed}`,
    );
    expect(err1('remote_server = bad!host')).toBe(
      `${F}:1: remote_server: "bad!host" is not a valid host name or address ${allowed}`,
    );
  });

  it('paths must be absolute', () => {
    for (const key of ['queue_file', 'queue_dir', 'krb5_key_file']) {
      expect(err1(`${key} = spool/q`)).toBe(
        `${F}:1: ${key}: "spool/q" is not an absolute path (allowed: an absolute path)`,
      );
    }
    expect(parse1('queue_dir = /srv/q').queueDir).toBe('/srv/q');
  });

  it('krb5 names', () => {
    const cfg = parseAgentConfig('krb5_principal = auditd/collector\nkrb5_client_name = relay\n', F);
    expect(cfg.krb5Principal).toBe('auditd/collector');
    expect(cfg.krb5ClientName).toBe('relay');
    expect(err1('krb5_client_name =')).toBe(
      `${F}:1: krb5_client_name: missing value after "=" (allowed: a principal name component such as auditd)`,
    );
  });

  it('input: stdin, af_unix[:path], tail[:path]', () => {
    expect(parse1('input = stdin').input).toEqual({ kind: 'stdin' });
    expect(parse1('input = af_unix').input).toEqual({ kind: 'af_unix', path: '/var/run/audispd_events' });
    expect(parse1('input = tail:/var/log/x.log').input).toEqual({ kind: 'tail', path: '/var/log/x.log' });
    expect(err1('input = tail:relative.log')).toContain('must be absolute');
    expect(err1('input = pipe')).toBe(
      `${F}:1: input: unknown input "pipe" (allowed: stdin, af_unix, af_unix:/absolute/path, tail, tail:/absolute/path)`,
    );
  });

  it('status_listen: empty or off disables; HOST:PORT and [IPV6]:PORT', () => {
    expect(parse1('status_listen =').statusListen).toBeNull();
    expect(parse1('status_listen = off').statusListen).toBeNull();
    expect(parse1('status_listen = 127.0.0.1:9100').statusListen).toEqual({ host: '127.0.0.1', port: 9100 });
    expect(parse1('status_listen = [::1]:0').statusListen).toEqual({ host: '::1', port: 0 });
    expect(err1('status_listen = ::1:9100')).toBe(
      `${F}:1: status_listen: IPv6 address in "::1:9100" must be in brackets: [::1]:9100 ` +
        '(allowed: empty or "off" (disabled), or HOST:PORT / [IPV6]:PORT)',
    );
    expect(err1('status_listen = localhost')).toContain('"localhost" has no ":PORT"');
    expect(err1('status_listen = localhost:70000')).toContain(
      'port 70000 in "localhost:70000" is out of range 0..65535',
    );
  });
});

describe('failure actions', () => {
  const common = ['ignore', 'syslog', 'warn_once', 'warn_once_continue', 'suspend', 'single', 'halt', 'stop'];
  const full =
    'ignore, syslog, exec /absolute/path, warn_once, warn_once_continue, suspend, single, halt, stop';
  const fieldOf: Record<string, keyof AgentConfig> = {
    network_failure_action: 'networkFailureAction',
    disk_low_action: 'diskLowAction',
    disk_full_action: 'diskFullAction',
    disk_error_action: 'diskErrorAction',
    remote_ending_action: 'remoteEndingAction',
    generic_error_action: 'genericErrorAction',
    generic_warning_action: 'genericWarningAction',
    queue_error_action: 'queueErrorAction',
  };

  for (const [key, field] of Object.entries(fieldOf)) {
    it(`${key}: every action, exec with a path, and nothing else`, () => {
      for (const kind of common) expect(parse1(`${key} = ${kind.toUpperCase()}`)[field]).toEqual({ kind });
      expect(parse1(`${key} = exec /usr/local/bin/alert`)[field]).toEqual({
        kind: 'exec',
        path: '/usr/local/bin/alert',
      });
      const allowed = key === 'remote_ending_action' ? `${full}, reconnect` : full;
      expect(err1(`${key} = email`)).toBe(`${F}:1: ${key}: unknown action "email" (allowed: ${allowed})`);
      if (key === 'remote_ending_action') {
        expect(parse1(`${key} = reconnect`)[field]).toEqual({ kind: 'reconnect' });
      } else {
        expect(err1(`${key} = reconnect`)).toBe(
          `${F}:1: ${key}: unknown action "reconnect"; reconnect is valid only for remote_ending_action (allowed: ${allowed})`,
        );
      }
    });
  }

  it('exec needs an absolute path; other actions take none', () => {
    expect(err1('disk_full_action = exec')).toBe(
      `${F}:1: disk_full_action: exec needs the path of the program to run (allowed: exec /absolute/path)`,
    );
    expect(err1('disk_full_action = exec bin/alert')).toBe(
      `${F}:1: disk_full_action: exec path "bin/alert" is not absolute (allowed: exec /absolute/path)`,
    );
    expect(err1('disk_full_action = syslog /bin/true')).toBe(
      `${F}:1: disk_full_action: action "syslog" takes no argument, got "/bin/true" (only exec takes a path) (allowed: ${full})`,
    );
  });

  it('overflow_action: ignore, syslog, suspend, single, halt only', () => {
    for (const kind of ['ignore', 'syslog', 'suspend', 'single', 'halt']) {
      expect(parse1(`overflow_action = ${kind}`).overflowAction).toEqual({ kind });
    }
    for (const bad of ['stop', 'exec', 'warn_once']) {
      expect(err1(`overflow_action = ${bad}`)).toBe(
        `${F}:1: overflow_action: unknown action "${bad}" (not valid for overflow_action) (allowed: ignore, syslog, suspend, single, halt)`,
      );
    }
  });

  it('startup_failure_action: ignore, syslog, exec, warn_once, warn_once_continue only', () => {
    for (const kind of ['ignore', 'syslog', 'warn_once', 'warn_once_continue']) {
      expect(parse1(`startup_failure_action = ${kind}`).startupFailureAction).toEqual({ kind });
    }
    expect(parse1('startup_failure_action = exec /x').startupFailureAction).toEqual({
      kind: 'exec',
      path: '/x',
    });
    for (const bad of ['suspend', 'single', 'halt', 'stop']) {
      expect(err1(`startup_failure_action = ${bad}`)).toBe(
        `${F}:1: startup_failure_action: unknown action "${bad}" (not valid for startup_failure_action) ` +
          '(allowed: ignore, syslog, exec /absolute/path, warn_once, warn_once_continue)',
      );
    }
  });

  describe.skipIf(!isRoot)('exec program checks (upstream check_exe_name), as root', () => {
    const prog = (name: string, mode: number, uid = 0) => {
      const p = join(tmp, name);
      writeFileSync(p, '#!/bin/sh\n');
      chmodSync(p, mode);
      chownSync(p, uid, 0);
      return p;
    };
    const check = (p: string) =>
      parseAgentConfig(`disk_full_action = exec ${p}\n`, F, { checkExecutables: true }).diskFullAction;
    const allowed =
      '(allowed: a root-owned regular file with mode 0750 or 0755 (owner rwx, group r-x, others not writable))';

    it('accepts root-owned 0750 and 0755', () => {
      const a = prog('ok750', 0o750);
      const b = prog('ok755', 0o755);
      expect(check(a)).toEqual({ kind: 'exec', path: a });
      expect(check(b)).toEqual({ kind: 'exec', path: b });
    });

    it('rejects wrong modes, other owners, non-files and missing files', () => {
      const p777 = prog('bad777', 0o777);
      expect(errorOf(() => check(p777)).message).toBe(
        `${F}:1: disk_full_action: exec program ${p777} has mode 0777 ${allowed}`,
      );
      expect(() => check(prog('bad700', 0o700))).toThrow('has mode 0700');
      const other = prog('other', 0o750, 1000);
      expect(errorOf(() => check(other)).message).toBe(
        `${F}:1: disk_full_action: exec program ${other} is owned by uid 1000, not by root ${allowed}`,
      );
      expect(() => check(tmp)).toThrow('is not a regular file');
      expect(errorOf(() => check(join(tmp, 'missing'))).message).toBe(
        `${F}:1: disk_full_action: cannot stat exec program ${join(tmp, 'missing')}: ENOENT (no such file or directory) ${allowed}`,
      );
    });

    it('are skipped by default', () => {
      expect(parse1('disk_full_action = exec /nonexistent/alert').diskFullAction).toEqual({
        kind: 'exec',
        path: '/nonexistent/alert',
      });
    });
  });
});

describe('cross-checks', () => {
  it('mode = forward requires format = managed, naming the later line', () => {
    const e = errorOf(() => parseAgentConfig('mode = forward\n# x\nformat = ascii\n', F));
    expect(e.message).toBe(
      `${F}:3: mode: mode = forward requires format = managed (as upstream), but format is ascii ` +
        '(allowed: mode = immediate with format = ascii)',
    );
  });

  it('transport = krb5 requires format = managed (also via enable_krb5)', () => {
    expect(errorOf(() => parseAgentConfig('format = ascii\ntransport = krb5\n', F)).message).toBe(
      `${F}:2: transport: transport = krb5 requires format = managed, but format is ascii ` +
        '(allowed: transport = tcp with format = ascii)',
    );
    expect(() => parseAgentConfig('format = ascii\nenable_krb5 = yes\n', F)).toThrow(
      'transport = krb5 requires',
    );
  });

  it('reconnect_initial_ms may not exceed reconnect_max_ms', () => {
    expect(
      errorOf(() => parseAgentConfig('reconnect_max_ms = 100\nreconnect_initial_ms = 200\n', F)).message,
    ).toBe(
      `${F}:2: reconnect_initial_ms: reconnect_initial_ms (200) is larger than reconnect_max_ms (100) ` +
        '(allowed: at most reconnect_max_ms (100))',
    );
  });
});

describe('loadAgentConfig: file handling', () => {
  it('a missing file is an error unless allowMissing', () => {
    const p = join(tmp, 'nope.conf');
    const e = errorOf(() => loadAgentConfig(p));
    expect(e.message).toBe(`${p}: config file does not exist; create it or pass --config`);
    expect(loadAgentConfig(p, { allowMissing: true })).toEqual(DEFAULTS);
  });

  it('an unreadable path (a directory) names the file and errno', () => {
    const dir = join(tmp, 'adir');
    mkdirSync(dir);
    expect(errorOf(() => loadAgentConfig(dir, { checkOwnership: false })).message).toBe(
      `${dir}: cannot read config file: EISDIR (illegal operation on a directory)`,
    );
  });

  it('a path below a regular file names the file and errno', () => {
    const file = join(tmp, 'plain');
    writeFileSync(file, '');
    const p = join(file, 'audisp-remote.conf');
    expect(errorOf(() => loadAgentConfig(p)).message).toBe(
      `${p}: cannot open config file: ENOTDIR (not a directory)`,
    );
  });

  it('reads and parses a file', () => {
    const p = join(tmp, 'good.conf');
    writeFileSync(p, 'remote_server = 192.0.2.10\nheartbeat_timeout = 30\n', { mode: 0o640 });
    expect(loadAgentConfig(p)).toEqual({
      ...DEFAULTS,
      remoteServer: [{ host: '192.0.2.10', port: null }],
      heartbeatTimeout: 30,
    });
  });

  it('errors in a loaded file name the path', () => {
    const p = join(tmp, 'bad.conf');
    writeFileSync(p, 'remote_server = a\nport = 70000\n');
    expect(errorOf(() => loadAgentConfig(p)).message).toBe(
      `${p}:2: port: 70000 is out of range (allowed: 1..65535)`,
    );
  });

  it('checkOwnership: rejects a non-regular file', () => {
    const dir = join(tmp, 'adir2');
    mkdirSync(dir);
    expect(errorOf(() => loadAgentConfig(dir, { checkOwnership: true })).message).toBe(
      `${dir}: config file is not a regular file (allowed: a regular file)`,
    );
  });

  it.skipIf(!isRoot)('checkOwnership: rejects world-writable and non-root-owned files', () => {
    const ww = join(tmp, 'ww.conf');
    writeFileSync(ww, '');
    chmodSync(ww, 0o666);
    expect(errorOf(() => loadAgentConfig(ww, { checkOwnership: true })).message).toBe(
      `${ww}: config file is world-writable (mode 0666) (allowed: no write permission for others; fix with chmod o-w)`,
    );
    expect(loadAgentConfig(ww, { checkOwnership: false })).toEqual(DEFAULTS);
    const owned = join(tmp, 'owned.conf');
    writeFileSync(owned, '');
    chownSync(owned, 1000, 1000);
    expect(errorOf(() => loadAgentConfig(owned, { checkOwnership: true })).message).toBe(
      `${owned}: config file is owned by uid 1000, not by root (allowed: owner root (uid 0); fix with chown root)`,
    );
  });
});

describe('formatEffectiveConfig', () => {
  it('prints every key in reference order, extensions after a comment line', () => {
    const text = formatEffectiveConfig(defaultAgentConfig());
    const lines = text.trimEnd().split('\n');
    const keys = lines.map((l) => /^#? *([a-z0-9_]+)(?: =| is not set)/.exec(l)?.[1]).filter(Boolean);
    expect(keys).toEqual(AGENT_KEYS);
    const sep = lines.indexOf('# auditrelay extensions (not understood by upstream audisp-remote)');
    expect(sep).toBeGreaterThan(0);
    expect(lines[sep + 1]).toBe('max_in_flight = 4096');
    expect(lines).toContain('local_port = any');
    expect(lines).toContain('queue_max_bytes = 1G');
    expect(lines).toContain('status_listen = off');
    expect(lines).toContain('network_failure_action = stop');
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(127);
  });

  it('round-trips the defaults', () => {
    const cfg = defaultAgentConfig();
    expect(parseAgentConfig(formatEffectiveConfig(cfg), 'effective')).toEqual(cfg);
  });

  it('round-trips a config with every key changed', () => {
    const text = [
      'remote_server = 2001:db8::7',
      'port = 6060',
      'local_port = 1023',
      'transport = krb5',
      'mode = forward',
      'queue_file = /var/spool/x.log',
      'queue_depth = 99',
      'network_retry_time = 2',
      'max_tries_per_record = 4',
      'max_time_per_record = 6',
      'heartbeat_timeout = 30',
      'network_failure_action = exec /usr/local/sbin/netfail',
      'disk_low_action = syslog',
      'disk_full_action = suspend',
      'disk_error_action = single',
      'remote_ending_action = exec /usr/local/sbin/ending',
      'generic_error_action = halt',
      'generic_warning_action = warn_once_continue',
      'queue_error_action = ignore',
      'overflow_action = halt',
      'startup_failure_action = exec /usr/local/sbin/startup',
      'krb5_principal = auditd/collector.example',
      'krb5_client_name = relay',
      'krb5_key_file = /etc/audit/relay.key',
      'tls_auth = x509',
      'tls_crypto_profile = system',
      'tls_psk_file = /etc/audit/psk.key',
      'tls_psk_identity = host-1',
      'tls_cipher_suites = TLS_CHACHA20_POLY1305_SHA256',
      'tls_key_exchange = P-256:X25519',
      'tls_ca_file = /etc/audit/ca.pem',
      'tls_cert_file = /etc/audit/cert.pem',
      'tls_key_file = /etc/audit/cert.key',
      'tls_crl_file = /etc/audit/ca.crl',
      'tls_server_name = collector.example',
      'max_in_flight = 1',
      'queue_dir = /srv/q',
      'fsync = always',
      'fsync_interval_ms = 1000',
      'queue_max_bytes = 3000',
      'reconnect_initial_ms = 50',
      'reconnect_max_ms = 60000',
      'drain_timeout = 0',
      'failback_interval = 0',
      'forward_eoe = yes',
      'record_ids = no',
      'agent_id = host-1.example',
      'input = tail:/var/log/other.log',
      'tail_state_file = /var/lib/other.state',
      'tail_start = beginning',
      'tail_poll_ms = 50',
      'state_file = /var/run/other.state',
      'status_listen = [::1]:9100',
      'health_link_down_timeout = 30',
      'health_queue_threshold = 75',
      'log_level = trace',
      'log_target = syslog',
    ].join('\n');
    expect(() => parseAgentConfig(text, F)).toThrow('3000 is out of range');
    const cfg = parseAgentConfig(text.replace('queue_max_bytes = 3000', 'queue_max_bytes = 20000'), F);
    // format must stay managed with mode = forward and transport = krb5; ascii is round-tripped below
    const unchanged = Object.entries(cfg).filter(
      ([k, v]) => k !== 'format' && JSON.stringify(v) === JSON.stringify(DEFAULTS[k as keyof AgentConfig]),
    );
    expect(unchanged).toEqual([]);
    const out = formatEffectiveConfig(cfg);
    expect(out).toContain('enable_krb5 = yes');
    expect(out).toContain('queue_max_bytes = 20000');
    expect(parseAgentConfig(out, 'effective')).toEqual(cfg);
  });

  it('round-trips format = ascii', () => {
    const cfg = parseAgentConfig('format = ascii\n', F);
    expect(parseAgentConfig(formatEffectiveConfig(cfg), 'effective')).toEqual(cfg);
  });

  it('round-trips the Debian file with remote_server set', () => {
    const text = readFileSync(FIXTURE, 'utf8').replace(/^remote_server = *$/m, 'remote_server = logs');
    const cfg = parseAgentConfig(text, FIXTURE);
    expect(parseAgentConfig(formatEffectiveConfig(cfg), 'effective')).toEqual(cfg);
  });
});
