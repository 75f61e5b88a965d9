/**
 * The collector's configuration, modelled on auditd.conf's network and log-management keys (audit-userspace 3.0.9
 * `auditd-config.c`, meanings from auditd.conf(5) of 3.0.9 and 4.2.1) in the same file syntax, plus auditrelay's
 * own keys. The other auditd.conf keys are accepted and ignored with a warning, so an existing auditd.conf can be
 * used as is; keys auditd does not know are errors.
 */
import { resolve as resolvePath } from 'node:path';
import { IDENTITY_POLICIES, type IdentityPolicy } from '../collector/identity.js';
import { ConfigError, FileSafetyError, UsageError } from '../errors.js';
import { checkActionScript } from '../fs/safe-files.js';
import {
  DEFAULT_CIPHER_SUITES,
  NO_PQC_REASON,
  parseCipherSuites,
  parseKeyExchange,
  type TlsProfile,
} from '../tls/options.js';
import { PSK_IDENTITY_ALLOWED, pskIdentityProblem } from '../tls/psk.js';
import { type ReadConfigOptions, readConfigFile, runningAsRoot } from './file.js';
import { AUDITD_MAX_LINE_LENGTH, type ConfigEntry, parseConfigText } from './parser.js';
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
  parseHostPort,
  parseIntInRange,
  parseKeyword,
  parseNonEmptyString,
  parseStatusListen,
  parseYesNo,
  requireValue,
} from './values.js';

export type CollectorTransport = 'tcp' | 'krb5' | 'tls';

/**
 * auditd's failure actions (`space_left_action`, `admin_space_left_action`, `disk_full_action`,
 * `disk_error_action`); `exec` carries its script. What the collector does for each: docs/collector.md, "Log
 * management".
 */
export const DISK_ACTION_KINDS = [
  'ignore',
  'syslog',
  'rotate',
  'email',
  'exec',
  'suspend',
  'single',
  'halt',
] as const;
export type DiskActionKind = (typeof DISK_ACTION_KINDS)[number];
export type DiskAction = { kind: Exclude<DiskActionKind, 'exec'> } | { kind: 'exec'; path: string };
/** `max_log_file_action` (auditd 3.0.9; `exec` as in 4.2). */
export const SIZE_ACTION_KINDS = ['ignore', 'syslog', 'suspend', 'rotate', 'keep_logs', 'exec'] as const;
export type SizeActionKind = (typeof SIZE_ACTION_KINDS)[number];
export type SizeAction = { kind: Exclude<SizeActionKind, 'exec'> } | { kind: 'exec'; path: string };
/** `space_left` / `admin_space_left`: MiB, or a percentage of the file system holding log_file; 0 = off. */
export type SpaceAmount = { mib: number } | { percent: number };
/** auditd.conf `flush` values. */
export type FlushMode = 'none' | 'incremental' | 'incremental_async' | 'data' | 'sync';
export const FLUSH_MODES = ['none', 'incremental', 'incremental_async', 'data', 'sync'] as const;

export interface CollectorConfig {
  // --- auditd.conf keys ---
  /** Port to listen on. 1..65535 in the file; 0 (a free port) only through withCollectorOverrides. */
  tcpListenPort: number;
  /** listen() backlog. */
  tcpListenQueue: number;
  /** Concurrent connections allowed per source address. */
  tcpMaxPerAddr: number;
  /** Accepted client source ports, inclusive. */
  tcpClientPorts: { min: number; max: number };
  /** Seconds without data after which a client is closed; 0 = never. */
  tcpClientMaxIdle: number;
  transport: CollectorTransport;
  /** Service name of the server principal. */
  krb5Principal: string;
  krb5KeyFile: string;
  /** transport = TLS (auditd 4.2): psk (upstream) or x509 (auditrelay). */
  tlsAuth: 'psk' | 'x509';
  tlsCryptoProfile: TlsProfile;
  /** Single-PSK key file (hex, root-owned, 0400). */
  tlsPskFile: string | null;
  /** The one client identity accepted when tls_allowed_clients is not set. */
  tlsPskIdentity: string | null;
  /** The allowed-clients file (identity enabled|disabled [key=/path] [node=...]). */
  tlsAllowedClients: string | null;
  tlsCipherSuites: string[] | null;
  tlsKeyExchange: string[] | null;
  /** Where received records are written. */
  logFile: string;
  flush: FlushMode;
  /** Records between flushes for flush = incremental / incremental_async. */
  freq: number;
  /** Size in MiB at which max_log_file_action runs; 0 = no limit. */
  maxLogFile: number;
  /** Log files kept by `rotate` (the current one included), as auditd; < 2: no rotation. */
  numLogs: number;
  maxLogFileAction: SizeAction;
  spaceLeft: SpaceAmount;
  spaceLeftAction: DiskAction;
  adminSpaceLeft: SpaceAmount;
  adminSpaceLeftAction: DiskAction;
  diskFullAction: DiskAction;
  diskErrorAction: DiskAction;
  /** Address for the `email` action. */
  actionMailAcct: string;
  // --- auditrelay extensions ---
  /** Address to bind; default 127.0.0.1 (see docs/configuration.md). */
  tcpListenAddress: string;
  /** Seconds a new connection may take to complete its handshake (KRB5 or TLS). */
  handshakeTimeout: number;
  /** Largest accepted record payload, bytes. */
  maxMessageSize: number;
  /** transport = KRB5: only these client principals, on top of auditd's rule; null = auditd's rule alone. */
  krb5AllowedPrincipals: string[] | null;
  /** transport = KRB5: append ` krb5=<principal>` to logged records, as auditd does. */
  krb5AppendPrincipal: boolean;
  statusListen: HostPort | null;
  logLevel: LogLevel;
  /** Bytes the collector may hold for all clients together (records not yet written, replies not yet sent). */
  memoryBudget: number;
  /** Connections at most. */
  tcpMaxConnections: number;
  /** Seconds a session must be silent (nothing pending) before a new connection from its address replaces it. */
  staleSessionTimeout: number;
  /** tls_auth = x509: CA certificates that sign client certificates, ours and its key, the CRL (PEM files). */
  tlsCaFile: string | null;
  tlsCertFile: string | null;
  tlsKeyFile: string | null;
  tlsCrlFile: string | null;
  /** tls_auth = x509: certificate names (SAN DNS or CN, `*.domain`) allowed in; null = any the CA signed. */
  tlsAllowedNames: string[] | null;
  /** What a record's node= must be (docs/tls.md); null = stamp for TLS and KRB5, off for TCP. */
  identityPolicy: IdentityPolicy | null;
  /** Handshakes in progress at most (tls, krb5); null = 256 for TLS, 1024 for KRB5. */
  maxPendingHandshakes: number | null;
  /** The tamper-evident store beside the log (docs/evidence.md). */
  evidence: boolean;
  evidenceKeyFile: string;
  /** Seconds between signed checkpoints; 0 = only at rotation and stop. */
  evidenceCheckpointInterval: number;
  /** Seconds without a record or heartbeat after which a host is reported silent; 0 = off. */
  hostSilenceTimeout: number;
  /** Hosts accounted at most (memory bound); further ones are counted as `(other)`. */
  maxHosts: number;
  /** Where accepted records go: the log file, or a NATS JetStream stream (docs/scale-out.md). */
  output: 'file' | 'jetstream';
  /** output = jetstream and the sink: `nats://HOST:PORT` URLs. */
  jetstreamServers: string[];
  /** The stream (created when missing); its subjects are `<STREAM>.<host>`. */
  jetstreamStream: string;
  /** Replicas of the stream when it is created. */
  jetstreamReplicas: number;
  /** Seconds the stream remembers message ids (record identities) to drop a resent record, when it is created. */
  jetstreamDuplicateWindow: number;
  /** The sink's durable consumer. */
  sinkConsumer: string;
  /** The sink: one log file (log_file), or one file per host in sinkLogDir (docs/scale-out.md). */
  sinkLogLayout: 'single' | 'per_host';
  /** The sink with per_host: the private directory of the host files. */
  sinkLogDir: string;
  /** The sink with per_host: host files open at most (the least recently used is closed). */
  sinkMaxOpenLogs: number;
  /** Record identities (docs/protocol.md): the `rid` capability, resends dropped, ` rid=` in the log. */
  recordIds: boolean;
}

export interface ConfigWarning {
  file: string;
  line: number;
  key: string;
  message: string;
  /** `file:line: key: message`, ready to log. */
  text: string;
}

export interface LoadedCollectorConfig {
  config: CollectorConfig;
  /** Keys accepted but ignored, and other non-fatal findings. */
  warnings: ConfigWarning[];
}

/** auditd's config file. */
export const UPSTREAM_COLLECTOR_CONFIG_PATH = '/etc/audit/auditd.conf';

export const COLLECTOR_DEFAULTS: Readonly<CollectorConfig> = Object.freeze({
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
  memoryBudget: 64 * 1024 ** 2,
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
  maxHosts: 100_000,
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
} satisfies CollectorConfig);

/** auditd's own log: the collector warns when log_file is it (both would write, rotate and read the same file). */
export const AUDITD_LOG_FILE = '/var/log/audit/audit.log';

/** A listen backlog below this lets a burst of connecting clients wait 1 s or more for a SYN retry. */
export const SMALL_LISTEN_QUEUE = 128;

export const COLLECTOR_RANGES = {
  tcp_listen_port: [1, 65535],
  tcp_listen_queue: [1, 65535],
  tcp_max_per_addr: [1, 1024],
  tcp_client_ports: [0, 65535],
  tcp_client_max_idle: [0, INT_MAX],
  freq: [0, INT_MAX],
  handshake_timeout: [1, 3600],
  max_message_size: [64, 1024 * 1024],
  memory_budget: [1024 * 1024, 64 * 1024 ** 3],
  tcp_max_connections: [1, 1048576],
  stale_session_timeout: [1, 3600],
  max_pending_handshakes: [1, 65536],
  max_log_file: [0, 1048576],
  num_logs: [0, 999],
  evidence_checkpoint_interval: [0, 86400],
  host_silence_timeout: [0, INT_MAX],
  max_hosts: [1, 10_000_000],
  jetstream_replicas: [1, 5],
  jetstream_duplicate_window: [1, 86_400],
  sink_max_open_logs: [1, 65_536],
} as const satisfies Record<string, readonly [number, number]>;

export function defaultCollectorConfig(): CollectorConfig {
  return structuredClone(COLLECTOR_DEFAULTS) as CollectorConfig;
}

/**
 * How the collector makes written records durable, derived from auditd.conf's flush/freq:
 * - none → never fsync (records reach the page cache; the kernel writes them back).
 * - incremental → fsync after every `freq` records, before acknowledging the record that triggered it.
 * - incremental_async → same cadence, but the fsync runs in the background and acknowledgements do not wait.
 * - data → fdatasync after every record, before its acknowledgement (auditd: O_DSYNC).
 * - sync → fsync after every record, before its acknowledgement (auditd: O_SYNC).
 */
export type CollectorSyncPolicy =
  | { fsync: 'never' }
  | { fsync: 'every'; records: number; waitBeforeAck: boolean }
  | { fsync: 'always'; dataOnly: boolean };

export function collectorSyncPolicy(cfg: Pick<CollectorConfig, 'flush' | 'freq'>): CollectorSyncPolicy {
  switch (cfg.flush) {
    case 'none':
      return { fsync: 'never' };
    case 'incremental':
      return { fsync: 'every', records: Math.max(1, cfg.freq), waitBeforeAck: true };
    case 'incremental_async':
      return { fsync: 'every', records: Math.max(1, cfg.freq), waitBeforeAck: false };
    case 'data':
      return { fsync: 'always', dataOnly: true };
    case 'sync':
      return { fsync: 'always', dataOnly: false };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Keys

interface KeyDef {
  apply(cfg: CollectorConfig, e: ConfigEntry, file: string): void;
  /** null: unset, printed as a comment line. */
  format(cfg: CollectorConfig): string | null;
}

type NumericField = {
  [K in keyof CollectorConfig]: CollectorConfig[K] extends number ? K : never;
}[keyof CollectorConfig];

const int = (key: keyof typeof COLLECTOR_RANGES, field: NumericField): KeyDef => ({
  apply: (cfg, e, file) => {
    const [min, max] = COLLECTOR_RANGES[key];
    cfg[field] = parseIntInRange(e, file, min, max);
  },
  format: (cfg) => String(cfg[field]),
});

/** auditd 4.2's TLS keys (auditd.conf(5)) with its parse rules; what Node 20 cannot do is an error saying why. */
const TLS_KEYS: Record<string, KeyDef> = {
  tls_auth: {
    apply: (cfg, e, file) => {
      cfg.tlsAuth = parseKeyword(e, file, ['psk', 'x509'] as const);
    },
    format: (cfg) => cfg.tlsAuth,
  },
  tls_crypto_profile: {
    apply: (cfg, e, file) => {
      if (e.value.toLowerCase() === 'pqc') {
        fail(e, file, `the pqc profile cannot be met: ${NO_PQC_REASON}`, 'compatible, system');
      }
      cfg.tlsCryptoProfile = parseKeyword(e, file, ['compatible', 'system'] as const);
    },
    format: (cfg) => cfg.tlsCryptoProfile,
  },
  tls_psk_file: {
    apply: (cfg, e, file) => {
      cfg.tlsPskFile = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.tlsPskFile,
  },
  tls_psk_identity: {
    apply: (cfg, e, file) => {
      const v = parseNonEmptyString(e, file, PSK_IDENTITY_ALLOWED);
      const problem = pskIdentityProblem(v);
      if (problem !== null) fail(e, file, problem, PSK_IDENTITY_ALLOWED);
      cfg.tlsPskIdentity = v;
    },
    format: (cfg) => cfg.tlsPskIdentity,
  },
  tls_allowed_clients: {
    apply: (cfg, e, file) => {
      cfg.tlsAllowedClients = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.tlsAllowedClients,
  },
  tls_cipher_suites: {
    apply: (cfg, e, file) => {
      const allowed = `a colon-separated list of TLS 1.3 suites with at least one SHA-256 suite, e.g. ${DEFAULT_CIPHER_SUITES.join(':')}`;
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      const r = parseCipherSuites(v);
      if (typeof r === 'string') fail(e, file, r, allowed);
      cfg.tlsCipherSuites = r;
    },
    format: (cfg) => (cfg.tlsCipherSuites ? cfg.tlsCipherSuites.join(':') : null),
  },
  tls_key_exchange: {
    apply: (cfg, e, file) => {
      const allowed = 'a colon-separated list of groups, e.g. X25519:P-256';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      const r = parseKeyExchange(v);
      if (typeof r === 'string') fail(e, file, r, allowed);
      cfg.tlsKeyExchange = r;
    },
    format: (cfg) => (cfg.tlsKeyExchange ? cfg.tlsKeyExchange.join(':') : null),
  },
  tls_require_pqc: {
    // auditd: yes = tls_crypto_profile pqc, no = no effect (a one-directional alias).
    apply: (_cfg, e, file) => {
      if (parseYesNo(e, file)) fail(e, file, `tls_require_pqc = yes cannot be met: ${NO_PQC_REASON}`, 'no');
    },
    format: () => 'no',
  },
};

const pemKey = (field: 'tlsCaFile' | 'tlsCertFile' | 'tlsKeyFile' | 'tlsCrlFile'): KeyDef => ({
  apply: (cfg, e, file) => {
    cfg[field] = parseAbsolutePath(e, file);
  },
  format: (cfg) => cfg[field],
});

/** auditrelay's mutual X.509 (tls_auth = x509), in auditd.conf syntax (docs/tls.md). */
const TLS_X509_KEYS: Record<string, KeyDef> = {
  tls_ca_file: pemKey('tlsCaFile'),
  tls_cert_file: pemKey('tlsCertFile'),
  tls_key_file: pemKey('tlsKeyFile'),
  tls_crl_file: pemKey('tlsCrlFile'),
  tls_allowed_names: {
    apply: (cfg, e, file) => {
      const allowed =
        'a comma-separated list of certificate names (SAN DNS name or CN), e.g. web1.example.com,*.db.example.com';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      const list = v.split(',').map((n) => n.trim());
      const bad = list.find((n) => !/^(\*\.)?[A-Za-z0-9_.-]+$/.test(n));
      if (bad !== undefined) fail(e, file, `"${bad}" is not a certificate name`, allowed);
      cfg.tlsAllowedNames = list;
    },
    format: (cfg) => (cfg.tlsAllowedNames ? cfg.tlsAllowedNames.join(',') : null),
  },
};

const AUDITD_KEYS: Record<string, KeyDef> = {
  tcp_listen_port: int('tcp_listen_port', 'tcpListenPort'),
  tcp_listen_queue: int('tcp_listen_queue', 'tcpListenQueue'),
  tcp_max_per_addr: int('tcp_max_per_addr', 'tcpMaxPerAddr'),
  tcp_client_ports: {
    apply: (cfg, e, file) => {
      cfg.tcpClientPorts = parseClientPorts(e, file);
    },
    format: (cfg) =>
      cfg.tcpClientPorts.min === cfg.tcpClientPorts.max
        ? String(cfg.tcpClientPorts.min)
        : `${cfg.tcpClientPorts.min}-${cfg.tcpClientPorts.max}`,
  },
  tcp_client_max_idle: int('tcp_client_max_idle', 'tcpClientMaxIdle'),
  transport: {
    apply: (cfg, e, file) => {
      cfg.transport = parseKeyword(e, file, ['tcp', 'krb5', 'tls'] as const);
    },
    format: (cfg) => cfg.transport.toUpperCase(),
  },
  enable_krb5: {
    // Deprecated alias, upstream's order semantics: yes sets transport = KRB5 here, no changes nothing.
    apply: (cfg, e, file) => {
      if (parseYesNo(e, file)) cfg.transport = 'krb5';
    },
    format: (cfg) => (cfg.transport === 'krb5' ? 'yes' : 'no'),
  },
  krb5_principal: {
    apply: (cfg, e, file) => {
      cfg.krb5Principal = parseNonEmptyString(e, file, 'a Kerberos service name such as auditd');
    },
    format: (cfg) => cfg.krb5Principal,
  },
  krb5_key_file: {
    apply: (cfg, e, file) => {
      cfg.krb5KeyFile = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.krb5KeyFile,
  },
  ...TLS_KEYS,
  log_file: {
    apply: (cfg, e, file) => {
      cfg.logFile = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.logFile,
  },
  flush: {
    apply: (cfg, e, file) => {
      cfg.flush = parseKeyword(e, file, FLUSH_MODES);
    },
    format: (cfg) => cfg.flush.toUpperCase(),
  },
  freq: int('freq', 'freq'),
  max_log_file: int('max_log_file', 'maxLogFile'),
  num_logs: int('num_logs', 'numLogs'),
  max_log_file_action: {
    apply: (cfg, e, file) => {
      cfg.maxLogFileAction = parseAction(e, file, SIZE_ACTION_KINDS) as SizeAction;
    },
    format: (cfg) => formatAction(cfg.maxLogFileAction),
  },
  space_left: {
    apply: (cfg, e, file) => {
      cfg.spaceLeft = parseSpace(e, file);
    },
    format: (cfg) => formatSpace(cfg.spaceLeft),
  },
  space_left_action: {
    apply: (cfg, e, file) => {
      cfg.spaceLeftAction = parseAction(e, file, DISK_ACTION_KINDS) as DiskAction;
    },
    format: (cfg) => formatAction(cfg.spaceLeftAction),
  },
  admin_space_left: {
    apply: (cfg, e, file) => {
      cfg.adminSpaceLeft = parseSpace(e, file);
    },
    format: (cfg) => formatSpace(cfg.adminSpaceLeft),
  },
  admin_space_left_action: {
    apply: (cfg, e, file) => {
      cfg.adminSpaceLeftAction = parseAction(e, file, DISK_ACTION_KINDS) as DiskAction;
    },
    format: (cfg) => formatAction(cfg.adminSpaceLeftAction),
  },
  disk_full_action: {
    // auditd: email is not an action for a full disk.
    apply: (cfg, e, file) => {
      cfg.diskFullAction = parseAction(
        e,
        file,
        DISK_ACTION_KINDS.filter((k) => k !== 'email'),
      ) as DiskAction;
    },
    format: (cfg) => formatAction(cfg.diskFullAction),
  },
  disk_error_action: {
    // auditd: neither email nor rotate for a write error.
    apply: (cfg, e, file) => {
      cfg.diskErrorAction = parseAction(
        e,
        file,
        DISK_ACTION_KINDS.filter((k) => k !== 'email' && k !== 'rotate'),
      ) as DiskAction;
    },
    format: (cfg) => formatAction(cfg.diskErrorAction),
  },
  action_mail_acct: {
    apply: (cfg, e, file) => {
      const allowed = 'an e-mail address or local account: letters, digits and @ . - _ + (at least 2)';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      if (v.length < 2 || !/^[A-Za-z0-9@._+-]+$/.test(v)) fail(e, file, `"${v}" is not an address`, allowed);
      if (v.includes('@') && !/@[^@]*\.[^@.]+$/.test(v))
        fail(e, file, `"${v}" needs a "." after the "@"`, allowed);
      cfg.actionMailAcct = v;
    },
    format: (cfg) => cfg.actionMailAcct,
  },
};

const EXTENSION_KEYS: Record<string, KeyDef> = {
  tcp_listen_address: {
    apply: (cfg, e, file) => {
      const allowed = 'an IP address (127.0.0.1, 0.0.0.0, ::1, ::) or a host name, without brackets or port';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      if (!isHostOrAddress(v)) fail(e, file, `"${v}" is not a valid address or host name`, allowed);
      cfg.tcpListenAddress = v;
    },
    format: (cfg) => cfg.tcpListenAddress,
  },
  handshake_timeout: int('handshake_timeout', 'handshakeTimeout'),
  krb5_allowed_principals: {
    apply: (cfg, e, file) => {
      const allowed =
        'a comma-separated list of principals, e.g. auditd/web1.example.com@EXAMPLE.COM,auditd/web2…';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      const list = v.split(',').map((p) => p.trim());
      const bad = list.find((p) => !/^[^\s@,/]+(\/[^\s@,]+)?@[^\s@,]+$/.test(p));
      if (bad !== undefined)
        fail(e, file, `"${bad}" is not a full principal name (name/instance@REALM)`, allowed);
      cfg.krb5AllowedPrincipals = list;
    },
    format: (cfg) => (cfg.krb5AllowedPrincipals ? cfg.krb5AllowedPrincipals.join(',') : null),
  },
  krb5_append_principal: {
    apply: (cfg, e, file) => {
      cfg.krb5AppendPrincipal = parseYesNo(e, file);
    },
    format: (cfg) => (cfg.krb5AppendPrincipal ? 'yes' : 'no'),
  },
  max_message_size: int('max_message_size', 'maxMessageSize'),
  memory_budget: {
    apply: (cfg, e, file) => {
      const [min, max] = COLLECTOR_RANGES.memory_budget;
      cfg.memoryBudget = parseByteSize(e, file, min, max);
    },
    format: (cfg) => formatByteSize(cfg.memoryBudget),
  },
  tcp_max_connections: int('tcp_max_connections', 'tcpMaxConnections'),
  stale_session_timeout: int('stale_session_timeout', 'staleSessionTimeout'),
  ...TLS_X509_KEYS,
  identity_policy: {
    apply: (cfg, e, file) => {
      cfg.identityPolicy = parseKeyword(e, file, IDENTITY_POLICIES);
    },
    format: (cfg) => cfg.identityPolicy,
  },
  max_pending_handshakes: {
    apply: (cfg, e, file) => {
      const [min, max] = COLLECTOR_RANGES.max_pending_handshakes;
      cfg.maxPendingHandshakes = parseIntInRange(e, file, min, max);
    },
    format: (cfg) => (cfg.maxPendingHandshakes === null ? null : String(cfg.maxPendingHandshakes)),
  },
  evidence: {
    apply: (cfg, e, file) => {
      cfg.evidence = parseYesNo(e, file);
    },
    format: (cfg) => (cfg.evidence ? 'yes' : 'no'),
  },
  evidence_key_file: {
    apply: (cfg, e, file) => {
      cfg.evidenceKeyFile = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.evidenceKeyFile,
  },
  evidence_checkpoint_interval: int('evidence_checkpoint_interval', 'evidenceCheckpointInterval'),
  host_silence_timeout: int('host_silence_timeout', 'hostSilenceTimeout'),
  max_hosts: int('max_hosts', 'maxHosts'),
  output: {
    apply: (cfg, e, file) => {
      cfg.output = parseKeyword(e, file, ['file', 'jetstream'] as const);
    },
    format: (cfg) => cfg.output,
  },
  jetstream_servers: {
    apply: (cfg, e, file) => {
      const allowed = 'nats://HOST:PORT[, nats://HOST:PORT ...] (IPv6 in brackets)';
      const v = requireValue(e, file, allowed);
      const list = v
        .split(',')
        .map((u) => u.trim())
        .filter((u) => u !== '');
      for (const u of list) {
        const m = /^nats:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(u);
        if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535)
          fail(e, file, `"${u}" is not nats://HOST:PORT`, allowed);
      }
      if (list.length === 0) fail(e, file, 'no server given', allowed);
      cfg.jetstreamServers = list;
    },
    format: (cfg) => cfg.jetstreamServers.join(', '),
  },
  jetstream_stream: {
    apply: (cfg, e, file) => {
      const allowed = 'a stream name: 1 to 64 letters, digits, "_" or "-"';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(v)) fail(e, file, `"${v}" is not a stream name`, allowed);
      cfg.jetstreamStream = v;
    },
    format: (cfg) => cfg.jetstreamStream,
  },
  jetstream_replicas: int('jetstream_replicas', 'jetstreamReplicas'),
  jetstream_duplicate_window: int('jetstream_duplicate_window', 'jetstreamDuplicateWindow'),
  sink_consumer: {
    apply: (cfg, e, file) => {
      const allowed = 'a consumer name: 1 to 64 letters, digits, "_" or "-"';
      const v = requireValue(e, file, allowed);
      noOption(e, file);
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(v)) fail(e, file, `"${v}" is not a consumer name`, allowed);
      cfg.sinkConsumer = v;
    },
    format: (cfg) => cfg.sinkConsumer,
  },
  sink_log_layout: {
    apply: (cfg, e, file) => {
      cfg.sinkLogLayout = parseKeyword(e, file, ['single', 'per_host'] as const);
    },
    format: (cfg) => cfg.sinkLogLayout,
  },
  sink_log_dir: {
    apply: (cfg, e, file) => {
      cfg.sinkLogDir = parseAbsolutePath(e, file);
    },
    format: (cfg) => cfg.sinkLogDir,
  },
  sink_max_open_logs: int('sink_max_open_logs', 'sinkMaxOpenLogs'),
  record_ids: {
    apply: (cfg, e, file) => {
      cfg.recordIds = parseYesNo(e, file);
    },
    format: (cfg) => (cfg.recordIds ? 'yes' : 'no'),
  },
  status_listen: {
    apply: (cfg, e, file) => {
      cfg.statusListen = parseStatusListen(e, file);
    },
    format: (cfg) => (cfg.statusListen ? formatHostPort(cfg.statusListen) : 'off'),
  },
  log_level: {
    apply: (cfg, e, file) => {
      cfg.logLevel = parseKeyword(e, file, LOG_LEVELS);
    },
    format: (cfg) => cfg.logLevel,
  },
};

const LOCAL_ONLY = 'it applies to local kernel events; the collector only receives network records';
const DISPATCHER = "it configures auditd's plugin dispatcher; the collector has none";

/** auditd.conf keys (3.0.9 and newer) that are accepted and ignored, with the reason given in the warning. */
export const COLLECTOR_IGNORED_KEYS: Readonly<Record<string, string>> = Object.freeze({
  local_events: LOCAL_ONLY,
  priority_boost: LOCAL_ONLY,
  disp_qos: LOCAL_ONLY,
  name_format: 'network records are never prefixed with a node name (upstream neither)',
  name: 'network records are never prefixed with a node name (upstream neither)',
  end_of_event_timeout: LOCAL_ONLY,
  report_interval: LOCAL_ONLY,
  dispatcher: DISPATCHER,
  plugin_dir: DISPATCHER,
  q_depth: DISPATCHER,
  overflow_action: DISPATCHER,
  max_restarts: DISPATCHER,
  distribute_network: DISPATCHER,
  write_logs: 'the collector always writes log_file',
  log_format: 'received records are written verbatim (upstream does the same for network records)',
  log_group:
    'the collector keeps its logs 0600 (0400 once rotated) and owned by root; give readers access through their directory or an ACL',
  verify_email: "action_mail_acct's characters are checked; its domain is not looked up",
  use_libwrap:
    'libwrap (hosts.allow/deny) is not supported; use tcp_listen_address, tcp_client_ports or a firewall',
});

export const COLLECTOR_AUDITD_KEYS: readonly string[] = Object.keys(AUDITD_KEYS);
export const COLLECTOR_EXTENSION_KEYS: readonly string[] = Object.keys(EXTENSION_KEYS);
/** Keys with an effect, in output order. */
export const COLLECTOR_KEYS: readonly string[] = [...COLLECTOR_AUDITD_KEYS, ...COLLECTOR_EXTENSION_KEYS];
const KEY_DEFS: Record<string, KeyDef> = { ...AUDITD_KEYS, ...EXTENSION_KEYS };

/** `N` or `N-M`, each 0..65535, N ≤ M (auditd's tcp_client_ports_parser). */
function parseClientPorts(e: ConfigEntry, file: string): { min: number; max: number } {
  const allowed = 'a port N or a range N-M, 0..65535, N <= M';
  const v = requireValue(e, file, allowed);
  noOption(e, file);
  const m = /^([0-9]+)(?:-([0-9]+))?$/.exec(v);
  if (!m) fail(e, file, `"${v}" is neither a port nor a range N-M`, allowed);
  const toPort = (s: string) => (s.length > 5 ? Number.POSITIVE_INFINITY : Number(s));
  const min = toPort(m[1]!);
  const max = m[2] === undefined ? min : toPort(m[2]);
  if (min > 65535 || max > 65535) fail(e, file, `${v} is out of range`, allowed);
  if (min > max) fail(e, file, `range ${v} is reversed`, allowed);
  return { min, max };
}

/**
 * A failure action: one of `kinds` (case-insensitive); `exec /path` takes the script as the fourth token, checked
 * as auditd checks it (absolute, a regular file owned by root, mode 0750, 0755, 0555 or 0550) and, beyond auditd,
 * in a directory nobody else can write (src/fs/safe-files.ts `checkActionScript`).
 */
function parseAction(
  e: ConfigEntry,
  file: string,
  kinds: readonly string[],
): { kind: string } | { kind: 'exec'; path: string } {
  const allowed = kinds.map((k) => (k === 'exec' ? 'exec /path/to/script' : k)).join(', ');
  const v = requireValue(e, file, allowed).toLowerCase();
  if (!kinds.includes(v)) fail(e, file, `unknown value "${e.value}"`, allowed);
  if (v !== 'exec') {
    noOption(e, file);
    return { kind: v };
  }
  const script = e.option;
  if (script === undefined) fail(e, file, 'exec needs the path of a script', 'exec /path/to/script');
  if (!script.startsWith('/'))
    fail(e, file, `"${script}" is not an absolute path`, 'exec /path/to/script (absolute)');
  try {
    checkActionScript(script, e.key);
  } catch (err) {
    if (err instanceof FileSafetyError) fail(e, file, err.message);
    throw err;
  }
  return { kind: 'exec', path: script };
}

function formatAction(a: { kind: string; path?: string }): string {
  return a.kind === 'exec' ? `EXEC ${a.path}` : a.kind.toUpperCase();
}

/** auditd's space_left_parser: digits, or 1..99 followed by `%`; 0 = off. */
function parseSpace(e: ConfigEntry, file: string): SpaceAmount {
  const allowed = `MiB as a whole number (0 = off), or a percentage of the file system 1%..99%`;
  const v = requireValue(e, file, allowed);
  noOption(e, file);
  const m = /^([0-9]+)(%?)$/.exec(v);
  if (!m) fail(e, file, `"${v}" is neither a number of MiB nor a percentage`, allowed);
  const digits = m[1]!.replace(/^0+(?=[0-9])/, '');
  const n = digits.length > 9 ? Number.POSITIVE_INFINITY : Number(digits);
  if (m[2] === '%') {
    if (n < 1 || n > 99) fail(e, file, `${v} is out of range`, allowed);
    return { percent: n };
  }
  if (n > 1024 ** 3) fail(e, file, `${v} is out of range`, allowed);
  return { mib: n };
}

function formatSpace(a: SpaceAmount): string {
  return 'percent' in a ? `${a.percent}%` : String(a.mib);
}

// ---------------------------------------------------------------------------------------------------------
// Public API

/** Parses the text of an auditd.conf-style file. `file` is used in messages. */
export function parseCollectorConfig(text: string, file: string): LoadedCollectorConfig {
  const entries = parseConfigText(text, file, {
    keys: [...COLLECTOR_KEYS, ...Object.keys(COLLECTOR_IGNORED_KEYS)],
    maxLineLength: AUDITD_MAX_LINE_LENGTH,
    allowLongComments: true,
    listKeys: ['jetstream_servers'],
  });
  const config = defaultCollectorConfig();
  const warnings: ConfigWarning[] = [];
  const warn = (line: number, key: string, message: string) =>
    warnings.push({ file, line, key, message, text: `${file}:${line}: ${key}: ${message}` });
  const lastLine = new Map<string, number>();
  for (const e of entries) {
    const def = KEY_DEFS[e.key];
    if (def) {
      def.apply(config, e, file);
      lastLine.set(e.key, e.line);
      continue;
    }
    requireValue(e, file, 'a value');
    warn(e.line, e.key, `ignored: ${COLLECTOR_IGNORED_KEYS[e.key]}`);
  }
  // auditd's sanity_check: incremental flushing needs freq > 0 (error); freq without it is only a warning.
  const incremental = config.flush === 'incremental' || config.flush === 'incremental_async';
  if (incremental && config.freq === 0) {
    const line = Math.max(lastLine.get('flush') ?? 0, lastLine.get('freq') ?? 0) || undefined;
    throw new ConfigError(`flush = ${config.flush} needs freq > 0, but freq is 0`, {
      file,
      line,
      key: 'freq',
      value: '0',
      allowed: `1..${INT_MAX} with incremental flushing, or flush = none, data or sync`,
    });
  }
  if (config.transport === 'tls') checkTls(config, file, lastLine);
  const queueLine = lastLine.get('tcp_listen_queue');
  if (queueLine !== undefined && config.tcpListenQueue < SMALL_LISTEN_QUEUE) {
    warn(
      queueLine,
      'tcp_listen_queue',
      `${config.tcpListenQueue} is small: when more clients connect at once (after a restart or a network outage) the kernel drops their SYNs and each waits 1 s or more to retry; remove the line (default ${COLLECTOR_DEFAULTS.tcpListenQueue}) or raise it`,
    );
  }
  // auditd's sanity_check: space_left must be larger than admin_space_left (checked again at run time when
  // either is a percentage of the file system).
  const { spaceLeft: low, adminSpaceLeft: admin } = config;
  if ('mib' in low && 'mib' in admin && admin.mib > 0 && low.mib > 0 && low.mib <= admin.mib) {
    throw new ConfigError(
      `space_left (${low.mib} MiB) must be larger than admin_space_left (${admin.mib} MiB)`,
      {
        file,
        line: Math.max(lastLine.get('space_left') ?? 0, lastLine.get('admin_space_left') ?? 0) || undefined,
        key: 'space_left',
        allowed: 'a larger space_left, or a smaller admin_space_left',
      },
    );
  }
  if ('percent' in low && 'percent' in admin && low.percent <= admin.percent) {
    throw new ConfigError(
      `space_left (${low.percent}%) must be larger than admin_space_left (${admin.percent}%)`,
      {
        file,
        line: Math.max(lastLine.get('space_left') ?? 0, lastLine.get('admin_space_left') ?? 0) || undefined,
        key: 'space_left',
        allowed: 'a larger space_left, or a smaller admin_space_left',
      },
    );
  }
  const logLine = lastLine.get('log_file');
  if (logLine !== undefined && resolvePath(config.logFile) === AUDITD_LOG_FILE) {
    warn(
      logLine,
      'log_file',
      `${AUDITD_LOG_FILE} is the log of this host's own auditd: if auditd runs here, both write, rotate and size-check the same file and ausearch mixes this host's events with the received ones; use ${COLLECTOR_DEFAULTS.logFile} (the default)`,
    );
  }
  for (const key of [
    'space_left_action',
    'admin_space_left_action',
    'disk_full_action',
    'disk_error_action',
  ]) {
    const at = lastLine.get(key);
    const action = {
      space_left_action: config.spaceLeftAction,
      admin_space_left_action: config.adminSpaceLeftAction,
      disk_full_action: config.diskFullAction,
      disk_error_action: config.diskErrorAction,
    }[key]!;
    if (at !== undefined && (action.kind === 'single' || action.kind === 'halt')) {
      warn(
        at,
        key,
        `${action.kind}: the collector does not change this server's run level for its clients' records (nothing on the clients would be protected by it); it suspends logging instead (clients keep their records) and logs at error level`,
      );
    }
  }
  if (config.sinkLogLayout === 'per_host') {
    const ev = lastLine.get('evidence');
    if (ev !== undefined && config.evidence) {
      warn(
        ev,
        'evidence',
        'sink_log_layout = per_host keeps no evidence for the host files (docs/scale-out.md, "One file per host"); use sink_log_layout = single where the tamper-evident store is needed',
      );
    }
    for (const key of ['space_left', 'admin_space_left']) {
      const at = lastLine.get(key);
      if (at !== undefined) {
        warn(
          at,
          key,
          'not checked with sink_log_layout = per_host (each of thousands of files would act on the same file system); a full disk still fails the write (disk_full_action) and the sink retries',
        );
      }
    }
  }
  const freqLine = lastLine.get('freq');
  if (!incremental && config.freq !== 0 && freqLine !== undefined) {
    warn(freqLine, 'freq', `freq = ${config.freq} has no effect with flush = ${config.flush}`);
  }
  return { config, warnings };
}

/** auditd's sanity checks for transport = TLS (the files themselves are read when the collector starts). */
function checkTls(cfg: CollectorConfig, file: string, lastLine: Map<string, number>): void {
  const line = (...keys: string[]) => Math.max(0, ...keys.map((k) => lastLine.get(k) ?? 0)) || undefined;
  if (cfg.tlsAuth === 'psk') {
    if (cfg.tlsAllowedClients === null && cfg.tlsPskFile === null) {
      throw new ConfigError(
        'transport = TLS requires tls_psk_file (or tls_allowed_clients with key= files)',
        {
          file,
          line: line('transport'),
          key: 'tls_psk_file',
          allowed:
            'the absolute path of a 0400 root-owned file holding the key in hex (openssl rand -hex 32)',
        },
      );
    }
    if (cfg.tlsAllowedClients === null && cfg.tlsPskIdentity === null) {
      throw new ConfigError(
        'tls_psk_identity is required when tls_psk_file is set and tls_allowed_clients is not',
        {
          file,
          line: line('transport', 'tls_psk_file'),
          key: 'tls_psk_identity',
          allowed: PSK_IDENTITY_ALLOWED,
        },
      );
    }
    return;
  }
  for (const [key, value] of [
    ['tls_ca_file', cfg.tlsCaFile],
    ['tls_cert_file', cfg.tlsCertFile],
    ['tls_key_file', cfg.tlsKeyFile],
  ] as const) {
    if (value === null) {
      throw new ConfigError(`tls_auth = x509 requires ${key}`, {
        file,
        line: line('transport', 'tls_auth'),
        key,
        allowed: 'an absolute path to a PEM file',
      });
    }
  }
}

export interface LoadCollectorOptions extends ReadConfigOptions {}

/**
 * Reads and parses the collector config file. A missing file is an error unless `allowMissing` (then defaults);
 * the ownership rule (root-owned, not world-writable, regular file) applies when `checkOwnership`, which defaults
 * to true when running as root.
 */
export function loadCollectorConfig(path: string, opts: LoadCollectorOptions = {}): LoadedCollectorConfig {
  const text = readConfigFile(path, {
    allowMissing: opts.allowMissing ?? false,
    checkOwnership: opts.checkOwnership ?? runningAsRoot(),
  });
  if (text === null) return { config: defaultCollectorConfig(), warnings: [] };
  return parseCollectorConfig(text, path);
}

export interface CollectorOverrides {
  /** `--listen HOST:PORT` (IPv6 as `[::1]:60`; port 0 = a free port). */
  listen?: string | undefined;
  /** `--log FILE`; relative paths are resolved against the working directory. */
  log?: string | undefined;
  /** `--evidence-key-file FILE` (relative: against the working directory). */
  evidenceKeyFile?: string | undefined;
}

/** Returns a copy of `cfg` with the command-line options applied. Throws UsageError on bad input. */
export function withCollectorOverrides(cfg: CollectorConfig, overrides: CollectorOverrides): CollectorConfig {
  const out = structuredClone(cfg);
  if (overrides.listen !== undefined) {
    const r = parseHostPort(overrides.listen, 0);
    if (typeof r === 'string') throw new UsageError(`--listen: ${r}`);
    out.tcpListenAddress = r.host;
    out.tcpListenPort = r.port;
  }
  if (overrides.log !== undefined) {
    if (overrides.log === '') throw new UsageError('--log: the file name is empty');
    out.logFile = resolvePath(overrides.log);
  }
  if (overrides.evidenceKeyFile !== undefined) {
    if (overrides.evidenceKeyFile === '') throw new UsageError('--evidence-key-file: the file name is empty');
    out.evidenceKeyFile = resolvePath(overrides.evidenceKeyFile);
  }
  return out;
}

/** The collector config in auditd.conf syntax; parses back to an equal config. */
export function formatCollectorConfig(cfg: CollectorConfig): string {
  const out: string[] = ['# Effective auditrelay collector configuration (auditd.conf syntax)'];
  for (const [key, def] of Object.entries(AUDITD_KEYS)) {
    const value = def.format(cfg);
    out.push(value === null ? `# ${key} is not set` : `${key} = ${value}`);
  }
  out.push('# auditrelay extensions (not understood by auditd)');
  for (const [key, def] of Object.entries(EXTENSION_KEYS)) {
    const value = def.format(cfg);
    out.push(value === null ? `# ${key} is not set` : `${key} = ${value}`);
  }
  return `${out.join('\n')}\n`;
}
