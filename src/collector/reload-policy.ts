/**
 * What a SIGHUP does with each key of the collector's configuration: the one table for the command line (which
 * keys it keeps as they were, and says so) and for the collector (`Collector.reload`).
 *
 * - `live`: applied at once without dropping a client: limits and rules from the next message or connection on,
 *   log management and flushing at the next write, a new log_file opened (its evidence with it), the status
 *   listener re-listened, Kerberos' allow-list and TLS' keys, allowed clients and certificates (a client they now
 *   leave out is closed);
 * - `listener`: the listening socket is replaced: the new one accepts before the old one stops (connected clients
 *   stay; only the same port on another address has an instant without a listener, which is logged);
 * - `restart`: needs a restart of the collector; a SIGHUP keeps the running value and logs the key.
 *
 * The table is typed over every key of CollectorConfig: a new key does not compile until it is classified.
 */
import type { CollectorConfig } from '../config/collector-config.js';

export type CollectorReloadPolicy = 'live' | 'listener' | 'restart';

export const COLLECTOR_RELOAD_POLICY: Readonly<Record<keyof CollectorConfig, CollectorReloadPolicy>> = {
  tcpListenPort: 'listener',
  tcpListenQueue: 'listener',
  tcpListenAddress: 'listener',
  tcpMaxPerAddr: 'live',
  tcpClientPorts: 'live',
  tcpClientMaxIdle: 'live',
  // The transport's credential (keytab, service) is acquired at start; connected clients depend on it.
  transport: 'restart',
  krb5Principal: 'restart',
  krb5KeyFile: 'restart',
  handshakeTimeout: 'live',
  krb5AllowedPrincipals: 'live',
  krb5AppendPrincipal: 'live',
  logFile: 'live',
  flush: 'live',
  freq: 'live',
  maxLogFile: 'live',
  numLogs: 'live',
  maxLogFileAction: 'live',
  spaceLeft: 'live',
  spaceLeftAction: 'live',
  adminSpaceLeft: 'live',
  adminSpaceLeftAction: 'live',
  diskFullAction: 'live',
  diskErrorAction: 'live',
  actionMailAcct: 'live',
  // A connection keeps the decoder it was accepted with: the new limit applies to connections made after it.
  maxMessageSize: 'live',
  statusListen: 'live',
  logLevel: 'live',
  memoryBudget: 'live',
  tcpMaxConnections: 'live',
  staleSessionTimeout: 'live',
  // The signing key and the checkpoint timer belong to the open evidence chain.
  evidence: 'restart',
  evidenceKeyFile: 'restart',
  evidenceCheckpointInterval: 'restart',
  hostSilenceTimeout: 'live',
  maxHosts: 'live',
  // Applies to the next session's hello (sessions keep what they agreed) and to the next record's line.
  recordIds: 'live',
  // TLS (Collector.reloadTls): keys, allowed clients, certificates and CRL are read again and apply to the next
  // handshake; a client whose identity is no longer allowed is disconnected at once. The kind of authentication
  // decides what every connected client proved: a restart.
  tlsAuth: 'restart',
  tlsCryptoProfile: 'live',
  tlsPskFile: 'live',
  tlsPskIdentity: 'live',
  tlsAllowedClients: 'live',
  tlsCipherSuites: 'live',
  tlsKeyExchange: 'live',
  tlsCaFile: 'live',
  tlsCertFile: 'live',
  tlsKeyFile: 'live',
  tlsCrlFile: 'live',
  tlsAllowedNames: 'live',
  maxPendingHandshakes: 'live',
  identityPolicy: 'live',
  // The output and its stream are chosen at start: records in flight belong to them.
  output: 'restart',
  jetstreamServers: 'restart',
  jetstreamStream: 'restart',
  jetstreamReplicas: 'restart',
  jetstreamDuplicateWindow: 'restart',
  // The sink's key (`auditrelay sink` reads the same syntax); the collector does not use it.
  sinkConsumer: 'restart',
  sinkLogLayout: 'restart',
  sinkLogDir: 'restart',
  sinkMaxOpenLogs: 'restart',
};

export interface CollectorReloadPlan {
  live: string[];
  listener: string[];
  restart: string[];
}

/** `maxLogFile` → `max_log_file`. */
export const collectorKeyName = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

const differs = (a: unknown, b: unknown) => JSON.stringify(a) !== JSON.stringify(b);

/** The changed keys, by auditd.conf name, sorted by what applying them takes. */
export function collectorReloadPlan(prev: CollectorConfig, next: CollectorConfig): CollectorReloadPlan {
  const plan: CollectorReloadPlan = { live: [], listener: [], restart: [] };
  for (const key of Object.keys(COLLECTOR_RELOAD_POLICY) as (keyof CollectorConfig)[]) {
    if (differs(prev[key], next[key])) plan[COLLECTOR_RELOAD_POLICY[key]].push(collectorKeyName(key));
  }
  return plan;
}

/** `next` with every restart-only key as it is in `running` (what a SIGHUP applies). */
export function keepCollectorRestartKeys(running: CollectorConfig, next: CollectorConfig): CollectorConfig {
  const out = { ...next } as Record<keyof CollectorConfig, unknown>;
  for (const key of Object.keys(COLLECTOR_RELOAD_POLICY) as (keyof CollectorConfig)[]) {
    if (COLLECTOR_RELOAD_POLICY[key] === 'restart') out[key] = running[key];
  }
  return out as unknown as CollectorConfig;
}
