/**
 * What a SIGHUP does with each key of the agent's configuration: the one table for the command line
 * (which keys it keeps as they were) and for the agent (whether the link must be re-opened).
 *
 * - `live`: applied at once, on the running link (timeouts of the connection machine, backoff, failure
 *   actions, log level, the drain deadline of the next stop);
 * - `relink`: applied by re-opening the link (`RELINK` to the connection machine: not a failure, no
 *   backoff); everything not acknowledged is sent again on the new link;
 * - `restart`: needs a restart of the agent; a SIGHUP keeps the running value and says so.
 *
 * The table is typed over every key of AgentConfig: a new key does not compile until it is classified.
 */
import type { AgentConfig } from '../config/agent-config.js';

export type ReloadPolicy = 'live' | 'relink' | 'restart';

export const RELOAD_POLICY: Readonly<Record<keyof AgentConfig, ReloadPolicy>> = {
  remoteServer: 'relink',
  port: 'relink',
  localPort: 'relink',
  // The transport's credentials and the record size limit are set up when the agent starts.
  transport: 'restart',
  mode: 'restart',
  // Upstream's queue file; the running agent does not use it (import-queue does).
  queueFile: 'live',
  queueDepth: 'restart',
  format: 'relink',
  networkRetryTime: 'live',
  maxTriesPerRecord: 'live',
  // The connect and handshake deadlines apply at the next attempt; the reply deadline needs a new session.
  maxTimePerRecord: 'relink',
  heartbeatTimeout: 'relink',
  networkFailureAction: 'live',
  diskLowAction: 'live',
  diskFullAction: 'live',
  diskErrorAction: 'live',
  remoteEndingAction: 'live',
  genericErrorAction: 'live',
  genericWarningAction: 'live',
  queueErrorAction: 'live',
  overflowAction: 'live',
  startupFailureAction: 'live',
  krb5Principal: 'relink',
  krb5ClientName: 'relink',
  krb5KeyFile: 'relink',
  // TLS keys and certificates are read at every handshake: a new link applies them.
  tlsAuth: 'relink',
  tlsCryptoProfile: 'relink',
  tlsPskFile: 'relink',
  tlsPskIdentity: 'relink',
  tlsCipherSuites: 'relink',
  tlsKeyExchange: 'relink',
  tlsCaFile: 'relink',
  tlsCertFile: 'relink',
  tlsKeyFile: 'relink',
  tlsCrlFile: 'relink',
  tlsServerName: 'relink',
  maxInFlight: 'relink',
  queueDir: 'restart',
  fsync: 'restart',
  fsyncIntervalMs: 'restart',
  queueMaxBytes: 'restart',
  reconnectInitialMs: 'live',
  reconnectMaxMs: 'live',
  drainTimeout: 'live',
  failbackInterval: 'live',
  // The input's record splitter is built when the agent starts.
  forwardEoe: 'restart',
  // The agent's identity is read once at start (queue_dir/agent-id); its records keep the numbers they have.
  recordIds: 'restart',
  agentId: 'restart',
  input: 'restart',
  tailStateFile: 'restart',
  tailStart: 'restart',
  tailPollMs: 'restart',
  stateFile: 'restart',
  statusListen: 'restart',
  // Read by the status listener at every /health.
  healthLinkDownTimeout: 'live',
  healthQueueThreshold: 'live',
  logLevel: 'live',
  // The log's destination (syslog socket, journald stream) is chosen once, before anything is logged.
  logTarget: 'restart',
};

/** The changed keys, by upstream name (`max_in_flight`), sorted by what applying them takes. */
export interface ReloadPlan {
  live: string[];
  relink: string[];
  restart: string[];
}

/** `maxInFlight` → `max_in_flight`. */
export const configKeyName = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

const differs = (a: unknown, b: unknown) => JSON.stringify(a) !== JSON.stringify(b);

export function reloadPlan(prev: AgentConfig, next: AgentConfig): ReloadPlan {
  const plan: ReloadPlan = { live: [], relink: [], restart: [] };
  for (const key of Object.keys(RELOAD_POLICY) as (keyof AgentConfig)[]) {
    if (differs(prev[key], next[key])) plan[RELOAD_POLICY[key]].push(configKeyName(key));
  }
  return plan;
}

/** `next` with every restart-only key as it is in `running` (what a SIGHUP applies). */
export function keepRestartKeys(running: AgentConfig, next: AgentConfig): AgentConfig {
  const out = { ...next } as Record<keyof AgentConfig, unknown>;
  for (const key of Object.keys(RELOAD_POLICY) as (keyof AgentConfig)[]) {
    if (RELOAD_POLICY[key] === 'restart') out[key] = running[key];
  }
  return out as unknown as AgentConfig;
}
