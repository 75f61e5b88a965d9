/**
 * The agent's configuration: every key of upstream's audisp-remote.conf (audit-userspace 3.0.9, as Debian 12
 * ships it) with upstream's code defaults, ranges and value sets, plus auditrelay's own keys in the same syntax.
 * docs/configuration.md describes each key and every difference from upstream.
 */
import { statSync } from 'node:fs';
import { isIP } from 'node:net';
import { ConfigError } from '../errors.js';
import {
  DEFAULT_TAIL_STATE_FILE,
  formatInputSpec,
  INPUT_ALLOWED,
  type InputSpec,
  parseInputSpec,
} from '../input/spec.js';
import { LOG_TARGETS, type LogTarget } from '../log.js';
import { AGENT_ID_RE } from '../protocol/record-id.js';
import {
  DEFAULT_CIPHER_SUITES,
  NO_PQC_REASON,
  parseCipherSuites,
  parseKeyExchange,
  type TlsProfile,
} from '../tls/options.js';
import { PSK_IDENTITY_ALLOWED, pskIdentityProblem } from '../tls/psk.js';
import { describeErrno, formatMode, type ReadConfigOptions, readConfigFile, runningAsRoot } from './file.js';
import { AGENT_MAX_LINE_LENGTH, type ConfigEntry, parseConfigText } from './parser.js';
import {
  fail,
  formatByteSize,
  formatHostPort,
  type HostPort,
  INT_MAX,
  isHostOrAddress,
  LOG_LEVELS,
  type LogLevel,
  noOption,
  parseAbsolutePath,
  parseByteSize,
  parseIntInRange,
  parseKeyword,
  parseNonEmptyString,
  parseStatusListen,
  parseYesNo,
  requireValue,
} from './values.js';

// ---------------------------------------------------------------------------------------------------------
// Failure actions (reference §5.2)

export type FailureAction =
  | { kind: 'ignore' }
  | { kind: 'syslog' }
  | { kind: 'exec'; path: string }
  | { kind: 'warn_once' }
  | { kind: 'warn_once_continue' }
  | { kind: 'suspend' }
  | { kind: 'single' }
  | { kind: 'halt' }
  | { kind: 'stop' };
export type FailureActionKind = FailureAction['kind'];
/** remote_ending_action additionally accepts `reconnect`. */
export type RemoteEndingAction = FailureAction | { kind: 'reconnect' };
/** overflow_action: ignore, syslog, suspend, single, halt. */
export type OverflowAction = Extract<
  FailureAction,
  { kind: 'ignore' | 'syslog' | 'suspend' | 'single' | 'halt' }
>;
/** startup_failure_action: ignore, syslog, exec, warn_once, warn_once_continue. */
export type StartupFailureAction = Extract<
  FailureAction,
  { kind: 'ignore' | 'syslog' | 'exec' | 'warn_once' | 'warn_once_continue' }
>;

export const FAILURE_ACTION_KINDS = [
  'ignore',
  'syslog',
  'exec',
  'warn_once',
  'warn_once_continue',
  'suspend',
  'single',
  'halt',
  'stop',
] as const satisfies readonly FailureActionKind[];
export const REMOTE_ENDING_ACTION_KINDS = [...FAILURE_ACTION_KINDS, 'reconnect'] as const;
export const OVERFLOW_ACTION_KINDS = [
  'ignore',
  'syslog',
  'suspend',
  'single',
  'halt',
] as const satisfies readonly OverflowAction['kind'][];
export const STARTUP_FAILURE_ACTION_KINDS = [
  'ignore',
  'syslog',
  'exec',
  'warn_once',
  'warn_once_continue',
] as const satisfies readonly StartupFailureAction['kind'][];

export type Transport = 'tcp' | 'krb5' | 'tls';
/** One entry of remote_server: a host name or address, and its port (null: the `port` key). */
export interface RemoteServer {
  host: string;
  port: number | null;
}
/** Entries of remote_server at most. */
export const MAX_REMOTE_SERVERS = 16;
/** tls_auth: upstream's psk, or auditrelay's mutual X.509 (docs/tls.md). */
export type TlsAuth = 'psk' | 'x509';
export type Mode = 'immediate' | 'forward';
export type Format = 'managed' | 'ascii';
export type FsyncPolicy = 'always' | 'interval' | 'never';
export type { HostPort, LogLevel };

// ---------------------------------------------------------------------------------------------------------
// The config

export interface AgentConfig {
  // --- upstream keys (audisp-remote.conf) ---
  /**
   * The servers, in order of preference (`HOST[:PORT][, HOST[:PORT]...]`; a port of null = `port`); null = key
   * absent (upstream then connects to the loopback address). The agent uses the first that works (failover).
   */
  remoteServer: RemoteServer[] | null;
  port: number;
  /** Source port to bind before connecting; 0 = any (`local_port = any`). */
  localPort: number;
  transport: Transport;
  mode: Mode;
  queueFile: string;
  queueDepth: number;
  format: Format;
  /** Seconds. */
  networkRetryTime: number;
  maxTriesPerRecord: number;
  /** Seconds. */
  maxTimePerRecord: number;
  /** Seconds; 0 = no heartbeat. */
  heartbeatTimeout: number;
  networkFailureAction: FailureAction;
  diskLowAction: FailureAction;
  diskFullAction: FailureAction;
  diskErrorAction: FailureAction;
  remoteEndingAction: RemoteEndingAction;
  genericErrorAction: FailureAction;
  genericWarningAction: FailureAction;
  queueErrorAction: FailureAction;
  overflowAction: OverflowAction;
  startupFailureAction: StartupFailureAction;
  /** Server principal; null = derived from krb5ClientName and remoteServer, as upstream. */
  krb5Principal: string | null;
  krb5ClientName: string;
  krb5KeyFile: string;
  /** transport = tls (audit 4.2): how the link is authenticated. */
  tlsAuth: TlsAuth;
  /** `pqc` cannot be met on Node 20 (a configuration error, src/tls/options.ts). */
  tlsCryptoProfile: TlsProfile;
  /** Hex key file (root-owned, 0400); required with tls_auth = psk. */
  tlsPskFile: string | null;
  tlsPskIdentity: string | null;
  /** null = the profile's suites. */
  tlsCipherSuites: string[] | null;
  /** null = the profile's groups. */
  tlsKeyExchange: string[] | null;
  // --- auditrelay extensions ---
  maxInFlight: number;
  queueDir: string;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  queueMaxBytes: number;
  reconnectInitialMs: number;
  reconnectMaxMs: number;
  /** Seconds to wait for acknowledgements at shutdown. */
  drainTimeout: number;
  /** Seconds on a secondary server before the preferred (first) one is tried again; 0 = stay. */
  failbackInterval: number;
  /** tls_auth = x509: the CA certificates that sign the server's certificate (PEM). */
  tlsCaFile: string | null;
  /** tls_auth = x509: our certificate chain (PEM) and its private key (root-owned, 0400). */
  tlsCertFile: string | null;
  tlsKeyFile: string | null;
  /** tls_auth = x509: certificate revocation list(s) (PEM) checked against the server's certificate. */
  tlsCrlFile: string | null;
  /** tls_auth = x509: the name the server's certificate must carry; null = remote_server. */
  tlsServerName: string | null;
  forwardEoe: boolean;
  /** Record identities (docs/protocol.md): the hello, and RECORD_ID messages to a collector that takes them. */
  recordIds: boolean;
  /** The agent's id in record identities; null = auto (created once in queue_dir/agent-id). */
  agentId: string | null;
  /** Where records come from: stdin (plugin), the af_unix plugin's socket, or a tailed audit.log. */
  input: InputSpec;
  tailStateFile: string;
  tailStart: 'end' | 'beginning';
  tailPollMs: number;
  /** Where SIGUSR1 writes the state report (like upstream's /run/audit/remote.state). */
  stateFile: string;
  /** null = no status listener. */
  statusListen: HostPort | null;
  /** Seconds without a working link after which /health says unhealthy (docs/status.md, "Health"). */
  healthLinkDownTimeout: number;
  /** Percent of the queue's capacity from which /health says unhealthy. */
  healthQueueThreshold: number;
  logLevel: LogLevel;
  /** Where the log goes: auto (from what stderr is), stderr, journal, syslog (src/log.ts, docs/logging.md). */
  logTarget: LogTarget;
}

/** Upstream's hard-coded path (audisp-remote takes no option for it). */
export const UPSTREAM_AGENT_CONFIG_PATH = '/etc/audit/audisp-remote.conf';

export const AGENT_DEFAULTS: Readonly<AgentConfig> = Object.freeze({
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
  queueMaxBytes: 1024 ** 3,
  reconnectInitialMs: 200,
  reconnectMaxMs: 30_000,
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
  tailStateFile: DEFAULT_TAIL_STATE_FILE,
  tailStart: 'end',
  tailPollMs: 1000,
  stateFile: '/run/auditrelay/agent.state',
  statusListen: null,
  healthLinkDownTimeout: 60,
  healthQueueThreshold: 90,
  logLevel: 'info',
  logTarget: 'auto',
} satisfies AgentConfig);

/** Ranges of the numeric keys, for validation and documentation. */
export const AGENT_RANGES = {
  port: [1, 65535],
  local_port: [0, 65535],
  queue_depth: [1, INT_MAX],
  network_retry_time: [1, INT_MAX],
  max_tries_per_record: [1, INT_MAX],
  max_time_per_record: [1, INT_MAX],
  heartbeat_timeout: [0, INT_MAX],
  max_in_flight: [1, 65535],
  fsync_interval_ms: [1, 60_000],
  queue_max_bytes: [16 * 1024, 1024 * 1024 ** 3],
  reconnect_initial_ms: [1, 3_600_000],
  reconnect_max_ms: [1, 3_600_000],
  drain_timeout: [0, 3600],
  failback_interval: [0, 86_400],
  tail_poll_ms: [10, 60_000],
  health_link_down_timeout: [1, 86_400],
  health_queue_threshold: [1, 100],
} as const satisfies Record<string, readonly [number, number]>;

/** A fresh copy of the defaults (remote_server unset). */
export function defaultAgentConfig(): AgentConfig {
  return structuredClone(AGENT_DEFAULTS) as AgentConfig;
}

// ---------------------------------------------------------------------------------------------------------
// Keys

interface ApplyContext {
  file: string;
  /** Check `exec` targets on disk (upstream's check_exe_name). */
  checkExecutables: boolean;
}

interface KeyDef {
  apply(cfg: AgentConfig, e: ConfigEntry, ctx: ApplyContext): void;
  /** The value as written back by formatEffectiveConfig; null = print a comment line instead. */
  format(cfg: AgentConfig): string | null;
  /** Comment printed when format returns null. */
  unset?: (cfg: AgentConfig) => string;
}

const int =
  (key: keyof typeof AGENT_RANGES, field: NumericField): KeyDef['apply'] =>
  (cfg, e, ctx) => {
    const [min, max] = AGENT_RANGES[key];
    cfg[field] = parseIntInRange(e, ctx.file, min, max);
  };

type NumericField = {
  [K in keyof AgentConfig]: AgentConfig[K] extends number ? K : never;
}[keyof AgentConfig];

type ActionField = {
  [K in keyof AgentConfig]: AgentConfig[K] extends RemoteEndingAction ? K : never;
}[keyof AgentConfig];

const action = (field: ActionField, words: readonly string[]): KeyDef => ({
  apply: (cfg, e, ctx) => {
    (cfg as unknown as Record<string, RemoteEndingAction>)[field] = parseAction(e, ctx, words);
  },
  format: (cfg) => formatAction(cfg[field]),
});

/**
 * audit 4.2's TLS keys (audisp-remote.conf(5)), with upstream's parse rules: tls_psk_file an absolute path,
 * tls_auth and tls_crypto_profile keywords, tls_require_pqc yes/no (yes = profile pqc). What Node 20 cannot do
 * (the pqc profile, ML-KEM groups) is an error that says why (src/tls/options.ts). `x509` is auditrelay's.
 */
const TLS_KEYS: Record<string, KeyDef> = {
  tls_psk_file: {
    apply: (cfg, e, ctx) => {
      cfg.tlsPskFile = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.tlsPskFile,
    unset: () => '# tls_psk_file is not set (required with transport = tls and tls_auth = psk)',
  },
  tls_psk_identity: {
    apply: (cfg, e, ctx) => {
      const v = parseNonEmptyString(e, ctx.file, PSK_IDENTITY_ALLOWED);
      const problem = pskIdentityProblem(v);
      if (problem !== null) fail(e, ctx.file, problem, PSK_IDENTITY_ALLOWED);
      cfg.tlsPskIdentity = v;
    },
    format: (cfg) => cfg.tlsPskIdentity,
    unset: () => '# tls_psk_identity is not set (required with transport = tls and tls_auth = psk)',
  },
  tls_cipher_suites: {
    apply: (cfg, e, ctx) => {
      const allowed = `a colon-separated list of TLS 1.3 suites with at least one SHA-256 suite, e.g. ${DEFAULT_CIPHER_SUITES.join(':')}`;
      const v = requireValue(e, ctx.file, allowed);
      noOption(e, ctx.file);
      const r = parseCipherSuites(v);
      if (typeof r === 'string') fail(e, ctx.file, r, allowed);
      cfg.tlsCipherSuites = r;
    },
    format: (cfg) => (cfg.tlsCipherSuites ? cfg.tlsCipherSuites.join(':') : null),
    unset: () => "# tls_cipher_suites is not set: the profile's suites",
  },
  tls_key_exchange: {
    apply: (cfg, e, ctx) => {
      const allowed = 'a colon-separated list of groups, e.g. X25519:P-256';
      const v = requireValue(e, ctx.file, allowed);
      noOption(e, ctx.file);
      const r = parseKeyExchange(v);
      if (typeof r === 'string') fail(e, ctx.file, r, allowed);
      cfg.tlsKeyExchange = r;
    },
    format: (cfg) => (cfg.tlsKeyExchange ? cfg.tlsKeyExchange.join(':') : null),
    unset: () => "# tls_key_exchange is not set: the profile's groups",
  },
  tls_require_pqc: {
    // Upstream: yes = tls_crypto_profile pqc, no = no effect (a one-directional alias).
    apply: (_cfg, e, ctx) => {
      if (parseYesNo(e, ctx.file))
        fail(e, ctx.file, `tls_require_pqc = yes cannot be met: ${NO_PQC_REASON}`, 'no');
    },
    format: () => 'no',
  },
  tls_auth: {
    apply: (cfg, e, ctx) => {
      cfg.tlsAuth = parseKeyword(e, ctx.file, ['psk', 'x509'] as const);
    },
    format: (cfg) => cfg.tlsAuth,
  },
  tls_crypto_profile: {
    apply: (cfg, e, ctx) => {
      if (e.value.toLowerCase() === 'pqc') {
        fail(e, ctx.file, `the pqc profile cannot be met: ${NO_PQC_REASON}`, 'compatible, system');
      }
      cfg.tlsCryptoProfile = parseKeyword(e, ctx.file, ['compatible', 'system'] as const);
    },
    format: (cfg) => cfg.tlsCryptoProfile,
  },
};

const pathKey = (field: 'tlsCaFile' | 'tlsCertFile' | 'tlsKeyFile' | 'tlsCrlFile', what: string): KeyDef => ({
  apply: (cfg, e, ctx) => {
    cfg[field] = parseAbsolutePath(e, ctx.file);
  },
  format: (cfg) => cfg[field],
  unset: () => `# ${configKeyOf(field)} is not set${what}`,
});
const configKeyOf = (field: string) => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** auditrelay's mutual X.509 (tls_auth = x509), in upstream's syntax (docs/tls.md). */
const TLS_X509_KEYS: Record<string, KeyDef> = {
  tls_ca_file: pathKey('tlsCaFile', ' (required with tls_auth = x509)'),
  tls_cert_file: pathKey('tlsCertFile', ' (required with tls_auth = x509)'),
  tls_key_file: pathKey('tlsKeyFile', ' (required with tls_auth = x509)'),
  tls_crl_file: pathKey('tlsCrlFile', ': no revocation list'),
  tls_server_name: {
    apply: (cfg, e, ctx) => {
      const allowed = 'the DNS name or IP address the server certificate carries';
      const v = requireValue(e, ctx.file, allowed);
      noOption(e, ctx.file);
      if (!isHostOrAddress(v)) fail(e, ctx.file, `"${v}" is not a host name or address`, allowed);
      cfg.tlsServerName = v;
    },
    format: (cfg) => cfg.tlsServerName,
    unset: (cfg) =>
      `# tls_server_name is not set: the server certificate must name ${cfg.remoteServer?.[0]?.host ?? '127.0.0.1'}`,
  },
};

/** Upstream keys in the order of the reference table (§5.1), then ours. */
const UPSTREAM_KEYS: Record<string, KeyDef> = {
  remote_server: {
    apply: (cfg, e, ctx) => {
      noOption(e, ctx.file);
      cfg.remoteServer = parseRemoteServers(e, ctx.file);
    },
    format: (cfg) => formatRemoteServers(cfg.remoteServer),
    unset: () => '# remote_server is not set: upstream then connects to the loopback address',
  },
  port: { apply: int('port', 'port'), format: (cfg) => String(cfg.port) },
  local_port: {
    apply: (cfg, e, ctx) => {
      if (e.value.toLowerCase() === 'any') {
        noOption(e, ctx.file);
        cfg.localPort = 0;
        return;
      }
      const [min, max] = AGENT_RANGES.local_port;
      if (e.value !== '' && !/^[0-9]+$/.test(e.value)) {
        fail(e, ctx.file, `"${e.value}" is neither "any" nor a decimal integer`, `any, or ${min}..${max}`);
      }
      cfg.localPort = parseIntInRange(e, ctx.file, min, max);
    },
    format: (cfg) => (cfg.localPort === 0 ? 'any' : String(cfg.localPort)),
  },
  transport: {
    apply: (cfg, e, ctx) => {
      cfg.transport = parseKeyword(e, ctx.file, ['tcp', 'krb5', 'tls'] as const);
    },
    format: (cfg) => cfg.transport,
  },
  mode: {
    apply: (cfg, e, ctx) => {
      cfg.mode = parseKeyword(e, ctx.file, ['immediate', 'forward'] as const);
    },
    format: (cfg) => cfg.mode,
  },
  queue_file: {
    apply: (cfg, e, ctx) => {
      cfg.queueFile = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.queueFile,
  },
  queue_depth: { apply: int('queue_depth', 'queueDepth'), format: (cfg) => String(cfg.queueDepth) },
  format: {
    apply: (cfg, e, ctx) => {
      cfg.format = parseKeyword(e, ctx.file, ['managed', 'ascii'] as const);
    },
    format: (cfg) => cfg.format,
  },
  network_retry_time: {
    apply: int('network_retry_time', 'networkRetryTime'),
    format: (cfg) => String(cfg.networkRetryTime),
  },
  max_tries_per_record: {
    apply: int('max_tries_per_record', 'maxTriesPerRecord'),
    format: (cfg) => String(cfg.maxTriesPerRecord),
  },
  max_time_per_record: {
    apply: int('max_time_per_record', 'maxTimePerRecord'),
    format: (cfg) => String(cfg.maxTimePerRecord),
  },
  heartbeat_timeout: {
    apply: int('heartbeat_timeout', 'heartbeatTimeout'),
    format: (cfg) => String(cfg.heartbeatTimeout),
  },
  network_failure_action: action('networkFailureAction', FAILURE_ACTION_KINDS),
  disk_low_action: action('diskLowAction', FAILURE_ACTION_KINDS),
  disk_full_action: action('diskFullAction', FAILURE_ACTION_KINDS),
  disk_error_action: action('diskErrorAction', FAILURE_ACTION_KINDS),
  remote_ending_action: action('remoteEndingAction', REMOTE_ENDING_ACTION_KINDS),
  generic_error_action: action('genericErrorAction', FAILURE_ACTION_KINDS),
  generic_warning_action: action('genericWarningAction', FAILURE_ACTION_KINDS),
  queue_error_action: action('queueErrorAction', FAILURE_ACTION_KINDS),
  overflow_action: action('overflowAction', OVERFLOW_ACTION_KINDS),
  startup_failure_action: action('startupFailureAction', STARTUP_FAILURE_ACTION_KINDS),
  enable_krb5: {
    // Deprecated alias, with upstream's order semantics: `yes` sets transport = krb5 at this point of the file
    // (a later `transport` line overrides it), `no` changes nothing (it does not reset transport to tcp).
    apply: (cfg, e, ctx) => {
      if (parseYesNo(e, ctx.file)) cfg.transport = 'krb5';
    },
    format: (cfg) => (cfg.transport === 'krb5' ? 'yes' : 'no'),
  },
  krb5_principal: {
    apply: (cfg, e, ctx) => {
      cfg.krb5Principal = parseNonEmptyString(e, ctx.file, 'a Kerberos service principal such as auditd');
    },
    format: (cfg) => cfg.krb5Principal,
    unset: (cfg) =>
      `# krb5_principal is not set: derived as ${cfg.krb5ClientName}@${cfg.remoteServer?.[0]?.host ?? '<remote_server>'}`,
  },
  krb5_client_name: {
    apply: (cfg, e, ctx) => {
      cfg.krb5ClientName = parseNonEmptyString(e, ctx.file, 'a principal name component such as auditd');
    },
    format: (cfg) => cfg.krb5ClientName,
  },
  krb5_key_file: {
    apply: (cfg, e, ctx) => {
      cfg.krb5KeyFile = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.krb5KeyFile,
  },
  ...TLS_KEYS,
};

const EXTENSION_KEYS: Record<string, KeyDef> = {
  max_in_flight: { apply: int('max_in_flight', 'maxInFlight'), format: (cfg) => String(cfg.maxInFlight) },
  queue_dir: {
    apply: (cfg, e, ctx) => {
      cfg.queueDir = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.queueDir,
  },
  fsync: {
    apply: (cfg, e, ctx) => {
      cfg.fsync = parseKeyword(e, ctx.file, ['always', 'interval', 'never'] as const);
    },
    format: (cfg) => cfg.fsync,
  },
  fsync_interval_ms: {
    apply: int('fsync_interval_ms', 'fsyncIntervalMs'),
    format: (cfg) => String(cfg.fsyncIntervalMs),
  },
  queue_max_bytes: {
    apply: (cfg, e, ctx) => {
      const [min, max] = AGENT_RANGES.queue_max_bytes;
      cfg.queueMaxBytes = parseByteSize(e, ctx.file, min, max);
    },
    format: (cfg) => formatByteSize(cfg.queueMaxBytes),
  },
  reconnect_initial_ms: {
    apply: int('reconnect_initial_ms', 'reconnectInitialMs'),
    format: (cfg) => String(cfg.reconnectInitialMs),
  },
  reconnect_max_ms: {
    apply: int('reconnect_max_ms', 'reconnectMaxMs'),
    format: (cfg) => String(cfg.reconnectMaxMs),
  },
  drain_timeout: { apply: int('drain_timeout', 'drainTimeout'), format: (cfg) => String(cfg.drainTimeout) },
  failback_interval: {
    apply: int('failback_interval', 'failbackInterval'),
    format: (cfg) => String(cfg.failbackInterval),
  },
  ...TLS_X509_KEYS,
  forward_eoe: {
    apply: (cfg, e, ctx) => {
      cfg.forwardEoe = parseYesNo(e, ctx.file);
    },
    format: (cfg) => (cfg.forwardEoe ? 'yes' : 'no'),
  },
  record_ids: {
    apply: (cfg, e, ctx) => {
      cfg.recordIds = parseYesNo(e, ctx.file);
    },
    format: (cfg) => (cfg.recordIds ? 'yes' : 'no'),
  },
  agent_id: {
    apply: (cfg, e, ctx) => {
      noOption(e, ctx.file);
      const allowed = 'auto, or 1 to 64 of A-Z a-z 0-9 . _ -';
      const v = requireValue(e, ctx.file, allowed);
      if (v === 'auto') {
        cfg.agentId = null;
        return;
      }
      if (!AGENT_ID_RE.test(v)) fail(e, ctx.file, `"${v}" is not an agent id`, allowed);
      cfg.agentId = v;
    },
    format: (cfg) => cfg.agentId ?? 'auto',
  },
  input: {
    apply: (cfg, e, ctx) => {
      const spec = parseInputSpec(e.value);
      if (typeof spec === 'string') fail(e, ctx.file, spec, INPUT_ALLOWED);
      cfg.input = spec;
    },
    format: (cfg) => formatInputSpec(cfg.input),
  },
  tail_state_file: {
    apply: (cfg, e, ctx) => {
      cfg.tailStateFile = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.tailStateFile,
  },
  tail_start: {
    apply: (cfg, e, ctx) => {
      cfg.tailStart = parseKeyword(e, ctx.file, ['end', 'beginning'] as const);
    },
    format: (cfg) => cfg.tailStart,
  },
  tail_poll_ms: { apply: int('tail_poll_ms', 'tailPollMs'), format: (cfg) => String(cfg.tailPollMs) },
  state_file: {
    apply: (cfg, e, ctx) => {
      cfg.stateFile = parseAbsolutePath(e, ctx.file);
    },
    format: (cfg) => cfg.stateFile,
  },
  status_listen: {
    apply: (cfg, e, ctx) => {
      cfg.statusListen = parseStatusListen(e, ctx.file);
    },
    format: (cfg) => (cfg.statusListen ? formatHostPort(cfg.statusListen) : 'off'),
  },
  health_link_down_timeout: {
    apply: int('health_link_down_timeout', 'healthLinkDownTimeout'),
    format: (cfg) => String(cfg.healthLinkDownTimeout),
  },
  health_queue_threshold: {
    apply: int('health_queue_threshold', 'healthQueueThreshold'),
    format: (cfg) => String(cfg.healthQueueThreshold),
  },
  log_level: {
    apply: (cfg, e, ctx) => {
      cfg.logLevel = parseKeyword(e, ctx.file, LOG_LEVELS);
    },
    format: (cfg) => cfg.logLevel,
  },
  log_target: {
    apply: (cfg, e, ctx) => {
      cfg.logTarget = parseKeyword(e, ctx.file, LOG_TARGETS);
    },
    format: (cfg) => cfg.logTarget,
  },
};

/** Every key the agent accepts, upstream's (reference order) then auditrelay's. */
export const AGENT_UPSTREAM_KEYS: readonly string[] = Object.keys(UPSTREAM_KEYS);
export const AGENT_EXTENSION_KEYS: readonly string[] = Object.keys(EXTENSION_KEYS);
export const AGENT_KEYS: readonly string[] = [...AGENT_UPSTREAM_KEYS, ...AGENT_EXTENSION_KEYS];
const KEY_DEFS: Record<string, KeyDef> = { ...UPSTREAM_KEYS, ...EXTENSION_KEYS };

// ---------------------------------------------------------------------------------------------------------
// Value parsers specific to the agent

const REMOTE_SERVER_ALLOWED =
  'HOST[:PORT][, HOST[:PORT]...]: host names or IP addresses in order of preference, an IPv6 address in brackets when a port follows ([2001:db8::1]:60)';

/**
 * remote_server: one host (upstream's syntax, a bare IPv6 address included) or a list in order of preference,
 * each `HOST`, `HOST:PORT`, `[IPV6]` or `[IPV6]:PORT`.
 */
function parseRemoteServers(e: ConfigEntry, file: string): RemoteServer[] {
  const v = e.value;
  if (v === '') {
    fail(
      e,
      file,
      'remote_server is empty; Debian ships /etc/audit/audisp-remote.conf with it empty and it must be set ' +
        'to the collector (upstream exits with status 6 too)',
      REMOTE_SERVER_ALLOWED,
    );
  }
  if (isIP(v) === 6) return [{ host: v, port: null }];
  const out: RemoteServer[] = [];
  for (const raw of v.split(',')) {
    const item = raw.trim();
    if (item === '') fail(e, file, `"${v}" has an empty entry`, REMOTE_SERVER_ALLOWED);
    let host: string;
    let portText: string | null = null;
    if (item.startsWith('[')) {
      const m = /^\[([^\]]*)\](?::(.*))?$/.exec(item);
      if (!m || isIP(m[1]!) !== 6) {
        fail(e, file, `"${item}" is neither [IPV6] nor [IPV6]:PORT`, REMOTE_SERVER_ALLOWED);
      }
      host = m[1]!;
      portText = m[2] ?? null;
    } else {
      if (isIP(item) === 6) {
        fail(
          e,
          file,
          `"${item}": write an IPv6 address in a list in brackets ([${item}])`,
          REMOTE_SERVER_ALLOWED,
        );
      }
      const colon = item.lastIndexOf(':');
      host = colon < 0 ? item : item.slice(0, colon);
      portText = colon < 0 ? null : item.slice(colon + 1);
      if (!isHostOrAddress(host)) {
        fail(e, file, `"${host}" is not a valid host name or address`, REMOTE_SERVER_ALLOWED);
      }
    }
    let port: number | null = null;
    if (portText !== null) {
      port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
      if (!(port >= 1 && port <= 65535)) {
        fail(e, file, `"${item}": the port "${portText}" is not in 1..65535`, REMOTE_SERVER_ALLOWED);
      }
    }
    if (out.some((s) => s.host === host && s.port === port)) {
      fail(e, file, `"${item}" is listed twice`, REMOTE_SERVER_ALLOWED);
    }
    out.push({ host, port });
  }
  if (out.length > MAX_REMOTE_SERVERS) {
    fail(e, file, `${out.length} servers: at most ${MAX_REMOTE_SERVERS}`, REMOTE_SERVER_ALLOWED);
  }
  return out;
}

/** remote_server as written: one host as upstream writes it, else the list (IPv6 in brackets). */
export function formatRemoteServers(list: readonly RemoteServer[] | null): string | null {
  if (!list || list.length === 0) return null;
  if (list.length === 1 && list[0]!.port === null) return list[0]!.host;
  return list
    .map((s) => {
      const h = isIP(s.host) === 6 ? `[${s.host}]` : s.host;
      return s.port === null ? h : `${h}:${s.port}`;
    })
    .join(', ');
}

function parseAction(e: ConfigEntry, ctx: ApplyContext, words: readonly string[]): RemoteEndingAction {
  const allowed = words.map((w) => (w === 'exec' ? 'exec /absolute/path' : w)).join(', ');
  if (e.value === '') fail(e, ctx.file, 'missing value after "="', allowed);
  const word = e.value.toLowerCase();
  if (!words.includes(word)) {
    const hint =
      word === 'reconnect'
        ? '; reconnect is valid only for remote_ending_action'
        : FAILURE_ACTION_KINDS.includes(word as FailureActionKind)
          ? ` (not valid for ${e.key})`
          : '';
    fail(e, ctx.file, `unknown action "${e.value}"${hint}`, allowed);
  }
  if (word !== 'exec') {
    if (e.option !== undefined) {
      fail(
        e,
        ctx.file,
        `action "${word}" takes no argument, got "${e.option}" (only exec takes a path)`,
        allowed,
      );
    }
    return { kind: word } as RemoteEndingAction;
  }
  const path = e.option;
  if (path === undefined)
    fail(e, ctx.file, 'exec needs the path of the program to run', 'exec /absolute/path');
  if (!path.startsWith('/')) {
    fail(e, ctx.file, `exec path "${path}" is not absolute`, 'exec /absolute/path');
  }
  if (ctx.checkExecutables) checkExecutable(e, ctx.file, path);
  return { kind: 'exec', path };
}

/** Upstream's check_exe_name: a root-owned regular file, owner rwx, group r-x, no write for others. */
function checkExecutable(e: ConfigEntry, file: string, path: string): void {
  const allowed =
    'a root-owned regular file with mode 0750 or 0755 (owner rwx, group r-x, others not writable)';
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch (err) {
    fail(e, file, `cannot stat exec program ${path}: ${describeErrno(err)}`, allowed);
  }
  if (!st.isFile()) fail(e, file, `exec program ${path} is not a regular file`, allowed);
  if (st.uid !== 0) fail(e, file, `exec program ${path} is owned by uid ${st.uid}, not by root`, allowed);
  if ((st.mode & 0o772) !== 0o750) {
    fail(e, file, `exec program ${path} has mode ${formatMode(st.mode)}`, allowed);
  }
}

function formatAction(a: RemoteEndingAction): string {
  return a.kind === 'exec' ? `exec ${a.path}` : a.kind;
}

// ---------------------------------------------------------------------------------------------------------
// Public API

export interface ParseAgentOptions {
  /**
   * Check `exec` programs on disk as upstream does (exists, regular, root-owned, mode 0750/0755).
   * Default false (parsing is then free of file-system access).
   */
  checkExecutables?: boolean;
}

/** Parses the text of an audisp-remote.conf-style file. `file` is used in error messages. */
export function parseAgentConfig(text: string, file: string, opts: ParseAgentOptions = {}): AgentConfig {
  const entries = parseConfigText(text, file, {
    keys: AGENT_KEYS,
    maxLineLength: AGENT_MAX_LINE_LENGTH,
    // `remote_server = a, b:61`: a list with spaces after its commas.
    listKeys: ['remote_server'],
  });
  const cfg = defaultAgentConfig();
  const ctx: ApplyContext = { file, checkExecutables: opts.checkExecutables ?? false };
  const lastLine = new Map<string, number>();
  for (const e of entries) {
    KEY_DEFS[e.key]!.apply(cfg, e, ctx);
    lastLine.set(e.key, e.line);
    if (e.key === 'enable_krb5') lastLine.set('transport', e.line);
  }
  crossCheck(cfg, file, lastLine);
  return cfg;
}

function crossCheck(cfg: AgentConfig, file: string, lastLine: Map<string, number>): void {
  const lineOf = (...keys: string[]) => Math.max(0, ...keys.map((k) => lastLine.get(k) ?? 0)) || undefined;
  if (cfg.mode === 'forward' && cfg.format !== 'managed') {
    throw new ConfigError('mode = forward requires format = managed (as upstream), but format is ascii', {
      file,
      line: lineOf('mode', 'format'),
      key: 'mode',
      value: cfg.mode,
      allowed: 'mode = immediate with format = ascii',
    });
  }
  if (cfg.transport === 'krb5' && cfg.format !== 'managed') {
    throw new ConfigError('transport = krb5 requires format = managed, but format is ascii', {
      file,
      line: lineOf('transport', 'format'),
      key: 'transport',
      value: cfg.transport,
      allowed: 'transport = tcp with format = ascii',
    });
  }
  if (cfg.transport === 'tls') checkTls(cfg, file, lineOf);
  if (cfg.reconnectInitialMs > cfg.reconnectMaxMs) {
    throw new ConfigError(
      `reconnect_initial_ms (${cfg.reconnectInitialMs}) is larger than reconnect_max_ms (${cfg.reconnectMaxMs})`,
      {
        file,
        line: lineOf('reconnect_initial_ms', 'reconnect_max_ms'),
        key: 'reconnect_initial_ms',
        value: String(cfg.reconnectInitialMs),
        allowed: `at most reconnect_max_ms (${cfg.reconnectMaxMs})`,
      },
    );
  }
}

/** upstream's sanity_check for transport = tls, and ours for x509. */
function checkTls(cfg: AgentConfig, file: string, lineOf: (...keys: string[]) => number | undefined): void {
  const at = (key: string, message: string, allowed: string, ...keys: string[]): never => {
    throw new ConfigError(message, { file, line: lineOf('transport', ...keys), key, allowed });
  };
  if (cfg.format !== 'managed') {
    at(
      'transport',
      'transport = tls requires format = managed (as upstream), but format is ascii',
      'format = managed',
      'format',
    );
  }
  if (cfg.tlsAuth === 'psk') {
    if (cfg.tlsPskFile === null) {
      at(
        'tls_psk_file',
        'transport = tls requires tls_psk_file',
        'the absolute path of a 0400 root-owned file holding the key in hex (openssl rand -hex 32)',
        'tls_auth',
      );
    }
    if (cfg.tlsPskIdentity === null) {
      at(
        'tls_psk_identity',
        'tls_psk_identity is required when tls_psk_file is set',
        PSK_IDENTITY_ALLOWED,
        'tls_psk_file',
      );
    }
    return;
  }
  for (const [key, value] of [
    ['tls_ca_file', cfg.tlsCaFile],
    ['tls_cert_file', cfg.tlsCertFile],
    ['tls_key_file', cfg.tlsKeyFile],
  ] as const) {
    if (value === null)
      at(key, `tls_auth = x509 requires ${key}`, 'an absolute path to a PEM file', 'tls_auth');
  }
}

export interface LoadAgentOptions extends ReadConfigOptions {
  /** A missing file yields the defaults instead of an error (upstream's behaviour). Default false. */
  allowMissing?: boolean;
  /**
   * Enforce upstream's ownership rules on the config file (root-owned, not world-writable, regular file) and on
   * `exec` programs. Default: true when running as root, false otherwise.
   */
  checkOwnership?: boolean;
}

/**
 * Reads and parses the agent config file. Throws ConfigError (exit status 6) when the file is missing (unless
 * allowMissing), unreadable, fails the ownership check, or has a bad line.
 */
export function loadAgentConfig(path: string, opts: LoadAgentOptions = {}): AgentConfig {
  const checkOwnership = opts.checkOwnership ?? runningAsRoot();
  const text = readConfigFile(path, { allowMissing: opts.allowMissing ?? false, checkOwnership });
  if (text === null) return defaultAgentConfig();
  return parseAgentConfig(text, path, { checkExecutables: checkOwnership });
}

/**
 * The effective config in the file syntax, one key per line, every key: upstream's keys in the order of the
 * reference table, then auditrelay's after a comment line. Unset optional keys are printed as comment lines.
 * The output parses back to an equal config.
 */
export function formatEffectiveConfig(cfg: AgentConfig): string {
  const out: string[] = ['# Effective auditrelay agent configuration (audisp-remote.conf syntax)'];
  const emit = (defs: Record<string, KeyDef>) => {
    for (const [key, def] of Object.entries(defs)) {
      const value = def.format(cfg);
      out.push(value === null ? (def.unset?.(cfg) ?? `# ${key} is not set`) : `${key} = ${value}`);
    }
  };
  emit(UPSTREAM_KEYS);
  out.push('# auditrelay extensions (not understood by upstream audisp-remote)');
  emit(EXTENSION_KEYS);
  return `${out.join('\n')}\n`;
}
