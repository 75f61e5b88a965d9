/**
 * What the agent runtime needs, derived from the configuration file (src/config) by
 * `settingsFromConfig`. Keeping this apart lets tests and the demo build an agent directly.
 */
import type { InspectionEvent } from 'xstate';
import type { ConnectionPolicy, FailureKind } from '../../machines/connection.js';
import type { SupervisorOptions } from '../../supervisors/supervisor.js';
import type { AgentConfig } from '../config/agent-config.js';
import { agentPrincipals, KRB5_MAX_RECORD } from '../krb5/auditd.js';
import { MAX_SERVER_PAYLOAD } from '../protocol/constants.js';
import type { FailureAction } from './actions.js';
import type { Krb5AgentSettings } from './krb5-transport.js';
import type { TlsAgentSettings } from './tls-transport.js';

/** One server of remote_server, with what naming it needs (krb5's target, TLS's server name). */
export interface ServerSettings {
  host: string;
  port: number;
  krb5?: Krb5AgentSettings;
  tls?: TlsAgentSettings;
}

export interface AgentSettings {
  /** remote_server: in order of preference (the connection machine's `server` indexes it). */
  servers: ServerSettings[];
  /** local_port; 0 = any. */
  localPort: number;
  transport: 'tcp' | 'krb5' | 'tls';
  /** transport = krb5: principals, keytab and ticket renewal (docs/kerberos.md). */
  krb5?: Krb5AgentSettings;
  /** transport = tls: key or certificates (docs/tls.md). */
  tls?: TlsAgentSettings;
  format: 'managed' | 'ascii';
  maxInFlight: number;
  replyTimeoutMs: number;
  heartbeatMs: number;
  queueDepth: number;
  /** Largest record payload (bytes, with its newline); longer lines are split. */
  maxRecord: number;
  forwardEoe: boolean;
  drainTimeoutMs: number;
  /** The connection machine's timings and limits (backoff, network_retry_time, max_tries_per_record, …). */
  policy: Partial<ConnectionPolicy>;
  supervisor: SupervisorOptions;
  actions: {
    networkFailure: FailureAction;
    diskLow: FailureAction;
    diskFull: FailureAction;
    diskError: FailureAction;
    remoteEnding: FailureAction;
    genericError: FailureAction;
    genericWarning: FailureAction;
    startupFailure: FailureAction;
    overflow: FailureAction;
    queueError: FailureAction;
  };
  inputName: string;
  /** Inspection observer for the actor system (--inspect). */
  inspect?: (event: InspectionEvent) => void;
}

/** Maps the configuration file to runtime settings (see docs/configuration.md for each key). */
export function settingsFromConfig(cfg: AgentConfig, inputName = 'stdin'): AgentSettings {
  const suspendOn: FailureKind[] = [];
  if (cfg.diskFullAction.kind === 'suspend') suspendOn.push('disk-full');
  if (cfg.diskErrorAction.kind === 'suspend') suspendOn.push('disk-error');
  if (cfg.remoteEndingAction.kind === 'suspend') suspendOn.push('remote-ending');
  const secondsMs = (s: number) => Math.min(s, 2_000_000) * 1000;
  // Upstream connects to the loopback address when remote_server is not set.
  const list = cfg.remoteServer ?? [{ host: '127.0.0.1', port: null }];
  const servers: ServerSettings[] = list.map(({ host, port }) => ({
    host,
    port: port ?? cfg.port,
    ...(cfg.transport === 'krb5' ? { krb5: krb5Settings(cfg, host) } : {}),
    ...(cfg.transport === 'tls' ? { tls: tlsSettings(cfg, host) } : {}),
  }));
  const first = servers[0]!;
  return {
    servers,
    localPort: cfg.localPort,
    transport: cfg.transport,
    ...(first.krb5 ? { krb5: first.krb5 } : {}),
    ...(first.tls ? { tls: first.tls } : {}),
    format: cfg.format,
    maxInFlight: cfg.maxInFlight,
    replyTimeoutMs: secondsMs(cfg.maxTimePerRecord),
    heartbeatMs: secondsMs(cfg.heartbeatTimeout),
    queueDepth: cfg.queueDepth,
    // A wrapped message must still fit a real auditd's 8970-byte buffer.
    maxRecord: cfg.transport === 'krb5' ? KRB5_MAX_RECORD : MAX_SERVER_PAYLOAD,
    forwardEoe: cfg.forwardEoe,
    drainTimeoutMs: secondsMs(cfg.drainTimeout),
    policy: {
      backoffInitialMs: cfg.reconnectInitialMs,
      backoffMaxMs: cfg.reconnectMaxMs,
      retryFloorMs: secondsMs(cfg.networkRetryTime),
      maxTriesPerRecord: cfg.maxTriesPerRecord,
      connectTimeoutMs: secondsMs(cfg.maxTimePerRecord),
      failbackMs: secondsMs(cfg.failbackInterval),
      authTimeoutMs: secondsMs(cfg.maxTimePerRecord),
      suspendOn,
    },
    supervisor: {},
    actions: {
      networkFailure: cfg.networkFailureAction,
      diskLow: cfg.diskLowAction,
      diskFull: cfg.diskFullAction,
      diskError: cfg.diskErrorAction,
      remoteEnding: cfg.remoteEndingAction,
      genericError: cfg.genericErrorAction,
      genericWarning: cfg.genericWarningAction,
      startupFailure: cfg.startupFailureAction,
      overflow: cfg.overflowAction,
      queueError: cfg.queueErrorAction,
    },
    inputName,
  };
}

/** Upstream's principals: `<krb5_client_name>/<host name>` for us, krb5_principal (or the default) as target. */
function krb5Settings(cfg: AgentConfig, remoteServer: string): Krb5AgentSettings {
  const { client, target } = agentPrincipals({
    krb5Principal: cfg.krb5Principal,
    krb5ClientName: cfg.krb5ClientName,
    remoteServer,
  });
  return { clientPrincipal: client, target, keyFile: cfg.krb5KeyFile };
}

/** transport = tls: the keys as they are; the server's certificate must name tls_server_name or remote_server. */
export function tlsSettings(cfg: AgentConfig, remoteServer: string): TlsAgentSettings {
  return {
    auth: cfg.tlsAuth,
    profile: cfg.tlsCryptoProfile,
    cipherSuites: cfg.tlsCipherSuites,
    keyExchange: cfg.tlsKeyExchange,
    pskFile: cfg.tlsPskFile,
    pskIdentity: cfg.tlsPskIdentity,
    caFile: cfg.tlsCaFile,
    certFile: cfg.tlsCertFile,
    keyFile: cfg.tlsKeyFile,
    crlFile: cfg.tlsCrlFile,
    serverName: cfg.tlsServerName ?? remoteServer,
  };
}
