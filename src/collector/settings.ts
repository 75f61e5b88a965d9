/** Collector settings from the config file (auditd.conf syntax) and the command line. */

import type { HostPort, LogLevel } from '../config/agent-config.js';
import {
  type CollectorConfig,
  collectorSyncPolicy,
  defaultCollectorConfig,
  loadCollectorConfig,
  withCollectorOverrides,
} from '../config/collector-config.js';
import { parseHostPort } from '../config/values.js';
import { UsageError } from '../errors.js';
import type { JetStreamSettings } from '../jetstream/nats.js';
import type { CollectorSettings } from './collector.js';
import { DEFAULT_KRB5_COLLECTOR_SETTINGS } from './krb5.js';
import type { FsyncPolicy } from './log-writer.js';
import type { TlsCollectorSettings } from './tls.js';

export interface CollectorCommandOptions {
  config?: string | undefined;
  listen?: string | undefined;
  log?: string | undefined;
  /** --status-listen HOST:PORT */
  statusListen?: string | undefined;
  /** --evidence-key-file FILE */
  evidenceKeyFile?: string | undefined;
}

export interface ResolvedCollectorSettings extends CollectorSettings {
  logLevel: LogLevel;
  statusListen: HostPort | null;
  warnings: string[];
  /** The configuration the settings come from (the command line applied), for a reload's comparison. */
  config: CollectorConfig;
}

/**
 * The settings of `collector` from its command line: the file (if any) with the options applied over it. Called
 * again at each SIGHUP with the same options, so the command line keeps overriding the file.
 */
export function collectorSettings(options: CollectorCommandOptions): ResolvedCollectorSettings {
  let cfg: CollectorConfig = defaultCollectorConfig();
  let warnings: string[] = [];
  if (options.config !== undefined) {
    const loaded = loadCollectorConfig(options.config);
    cfg = loaded.config;
    warnings = loaded.warnings.map((w) => w.text);
  } else if (options.listen === undefined || options.log === undefined) {
    throw new UsageError('collector needs --listen HOST:PORT and --log FILE (or --config FILE)');
  }
  cfg = withCollectorOverrides(cfg, {
    listen: options.listen,
    log: options.log,
    evidenceKeyFile: options.evidenceKeyFile,
  });
  let statusListen = cfg.statusListen;
  if (options.statusListen !== undefined) {
    const r = parseHostPort(options.statusListen, 0);
    if (typeof r === 'string') throw new UsageError(`--status-listen: ${r}`);
    statusListen = r;
  }
  cfg = { ...cfg, statusListen };
  return { ...fromConfig(cfg), logLevel: cfg.logLevel, statusListen, warnings, config: cfg };
}

/**
 * auditd's flush modes mapped to the collector's fsync policy. Acknowledgements always follow the
 * write; with `data`, `sync` and `incremental` they also follow the fsync of their batch (records
 * arriving together share one fsync, so this is at least as strict as auditd's every-`freq`).
 */
export function fromConfig(cfg: CollectorConfig): CollectorSettings {
  const sync = collectorSyncPolicy(cfg);
  const fsync: FsyncPolicy =
    sync.fsync === 'never' ? 'never' : sync.fsync === 'always' || sync.waitBeforeAck ? 'always' : 'interval';
  return {
    host: cfg.tcpListenAddress,
    port: cfg.tcpListenPort,
    logFile: cfg.logFile,
    maxPerAddr: cfg.tcpMaxPerAddr,
    clientMaxIdleMs: cfg.tcpClientMaxIdle * 1000,
    maxPayload: cfg.maxMessageSize,
    fsync,
    fsyncIntervalMs: 200,
    listenBacklog: cfg.tcpListenQueue,
    clientPorts:
      cfg.tcpClientPorts.min === 0 && cfg.tcpClientPorts.max === 65535
        ? null
        : [cfg.tcpClientPorts.min, cfg.tcpClientPorts.max],
    memoryBudget: cfg.memoryBudget,
    maxConnections: cfg.tcpMaxConnections,
    staleAfterMs: cfg.staleSessionTimeout * 1000,
    logManagement: {
      maxLogFileBytes: cfg.maxLogFile * 1024 * 1024,
      numLogs: cfg.numLogs,
      maxLogFileAction: cfg.maxLogFileAction,
      spaceLeft: cfg.spaceLeft,
      spaceLeftAction: cfg.spaceLeftAction,
      adminSpaceLeft: cfg.adminSpaceLeft,
      adminSpaceLeftAction: cfg.adminSpaceLeftAction,
      diskFullAction: cfg.diskFullAction,
      diskErrorAction: cfg.diskErrorAction,
      actionMailAcct: cfg.actionMailAcct,
    },
    evidence:
      cfg.evidence && cfg.output === 'file'
        ? {
            keyFile: cfg.evidenceKeyFile,
            checkpointIntervalMs: cfg.evidenceCheckpointInterval * 1000,
            maxHosts: cfg.maxHosts,
          }
        : null,
    hostSilenceMs: cfg.hostSilenceTimeout * 1000,
    maxHosts: cfg.maxHosts,
    recordIds: cfg.recordIds,
    krb5:
      cfg.transport === 'krb5'
        ? {
            ...DEFAULT_KRB5_COLLECTOR_SETTINGS,
            service: cfg.krb5Principal,
            keyFile: cfg.krb5KeyFile,
            handshakeTimeoutMs: cfg.handshakeTimeout * 1000,
            allowedPrincipals: cfg.krb5AllowedPrincipals,
            appendPrincipal: cfg.krb5AppendPrincipal,
            ...(cfg.maxPendingHandshakes !== null ? { maxPendingHandshakes: cfg.maxPendingHandshakes } : {}),
          }
        : null,
    tls: cfg.transport === 'tls' ? tlsCollectorSettings(cfg) : null,
    ...(cfg.identityPolicy !== null ? { identityPolicy: cfg.identityPolicy } : {}),
    jetstream: cfg.output === 'jetstream' ? jetstreamSettings(cfg) : null,
  };
}

/** output = jetstream and the sink: the stream's settings from the configuration. */
export function jetstreamSettings(cfg: CollectorConfig): JetStreamSettings {
  return {
    servers: cfg.jetstreamServers,
    stream: cfg.jetstreamStream,
    replicas: cfg.jetstreamReplicas,
    duplicateWindowMs: cfg.jetstreamDuplicateWindow * 1000,
  };
}

/** TLS handshakes in progress at most unless max_pending_handshakes says otherwise (docs/tls.md). */
export const DEFAULT_TLS_MAX_PENDING_HANDSHAKES = 256;

/** transport = TLS: the keys as configured; the files are read when the collector starts (and on SIGHUP). */
export function tlsCollectorSettings(cfg: CollectorConfig): TlsCollectorSettings {
  return {
    auth: cfg.tlsAuth,
    profile: cfg.tlsCryptoProfile,
    cipherSuites: cfg.tlsCipherSuites,
    keyExchange: cfg.tlsKeyExchange,
    pskFile: cfg.tlsPskFile,
    pskIdentity: cfg.tlsPskIdentity,
    allowedClients: cfg.tlsAllowedClients,
    caFile: cfg.tlsCaFile,
    certFile: cfg.tlsCertFile,
    keyFile: cfg.tlsKeyFile,
    crlFile: cfg.tlsCrlFile,
    allowedNames: cfg.tlsAllowedNames,
    handshakeTimeoutMs: cfg.handshakeTimeout * 1000,
    maxPendingHandshakes: cfg.maxPendingHandshakes ?? DEFAULT_TLS_MAX_PENDING_HANDSHAKES,
  };
}
