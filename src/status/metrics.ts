/**
 * Prometheus metrics (prom-client), one registry per agent or collector so that several can live in
 * one process (tests). Values are read from the running component at scrape time. Conventions
 * (https://prometheus.io/docs/practices/naming/): base units in the name (`_seconds`, `_bytes`, `_records`,
 * `_ratio`), `_total` on counters, `_timestamp_seconds` for times, and every state or condition as a 0/1 series
 * that is always there (one per possible value, 0 when not current), so a series never vanishes when the link
 * drops and an alert on `== 1` or `== 0` always has data. Each registry also carries `auditrelay_build_info` and
 * prom-client's process metrics (`process_*`, `nodejs_*`).
 */

import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { AnyStateMachine } from 'xstate';
import { INERT_LOGICS } from '../agent/children.js';
import type { LinkMeter } from '../agent/link-meter.js';
import {
  COLLECTOR_REPLY_TYPES,
  type CollectorReplyType,
  type CollectorStats,
} from '../collector/collector.js';
import type { EvidenceSinkStatus } from '../collector/evidence-sink.js';
import { type HostEntry, type HostsSummary, missingNow } from '../collector/hosts.js';
import type { LogStoreStatus } from '../collector/log-store.js';
import { packageVersion } from '../paths.js';
import { extractGraph, reachableStates } from '../statechart/analysis.js';
import { AGENT_HEALTH_CODES, COLLECTOR_HEALTH_CODES, type Health } from './health.js';

export interface AgentMetricsSource {
  status(): {
    recordsQueued: number;
    recordsAcked: number;
    connects: number;
    failures: number;
    restarts: number;
    queueDepth: number;
    queueBytes: number;
    inFlight: number;
    window: number | null;
    rttMs: number | null;
    held: number;
    queueCapacity?: number;
    queueCapacityUnit?: 'records' | 'bytes';
    queueUsed?: number;
    /** The remote_server entry in use (failover); null before the connection machine runs. */
    serverIndex?: number | null;
  };
  states(): Map<string, string>;
  /** Bytes, replies, the last ACK and the ACK latency histogram (src/agent/link-meter.ts). */
  meter?: LinkMeter;
  health?: () => Health;
}

export interface CollectorMetricsSource {
  stats: CollectorStats;
  replies?: Record<CollectorReplyType, number>;
  readonly listening?: boolean;
  readonly lastWriteError?: { code: string; time: string } | null;
  logStatus?(): LogStoreStatus;
  evidenceStatus?(): EvidenceSinkStatus | null;
  hosts?: { entries(): Iterable<HostEntry>; summary(): HostsSummary };
}

/** Upper bounds of the ACK latency histogram, in seconds (a loopback ACK is well under a millisecond). */
export const ACK_LATENCY_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** A counter whose value is copied from a monotonic source at scrape time. */
function mirroredCounter(registry: Registry, name: string, help: string, read: () => number): void {
  let last = 0;
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = read();
      if (now > last) this.inc(now - last);
      last = Math.max(last, now);
    },
  });
}

/** A counter per label value, copied at scrape time; every value in `values` is present from the start. */
function mirroredLabelledCounter(
  registry: Registry,
  name: string,
  help: string,
  label: string,
  values: readonly string[],
  read: () => Iterable<[string, number]>,
): void {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      const current = new Map(read());
      for (const v of new Set([...values, ...current.keys()])) {
        const now = current.get(v) ?? 0;
        const before = last.get(v);
        if (before !== undefined && now <= before) continue;
        this.inc({ [label]: v }, now - (before ?? 0));
        last.set(v, now);
      }
    },
  });
}

function gauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}

/** `auditrelay_build_info{version, node_version, role} 1` and prom-client's process metrics. */
function common(r: Registry, role: 'agent' | 'collector'): void {
  new Gauge({
    name: 'auditrelay_build_info',
    help: 'Always 1; the labels say which auditrelay and which Node.js run',
    labelNames: ['version', 'node_version', 'role'],
    registers: [r],
  }).set({ version: packageVersion(), node_version: process.versions.node, role }, 1);
  collectDefaultMetrics({ register: r });
}

/**
 * `auditrelay_healthy` (1/0), `auditrelay_health_status{status}` (one of healthy/degraded/down is 1) and
 * `auditrelay_health_reason{code}` (1 while the reason holds), each present at every scrape.
 */
function healthMetrics(r: Registry, health: () => Health, codes: readonly string[]): void {
  const read = health;
  gauge(r, 'auditrelay_healthy', 'What /health says: 1 healthy (200), 0 unhealthy (503)', () =>
    read().healthy ? 1 : 0,
  );
  new Gauge({
    name: 'auditrelay_health_status',
    help: 'The status shown at the top of the page (1 = current): healthy, degraded or down',
    labelNames: ['status'],
    registers: [r],
    collect() {
      const h = read();
      for (const status of ['healthy', 'degraded', 'down']) this.set({ status }, h.status === status ? 1 : 0);
    },
  });
  new Gauge({
    name: 'auditrelay_health_reason',
    help: 'A reason of the health check holds now (1) or not (0); codes in docs/status.md',
    labelNames: ['code'],
    registers: [r],
    collect() {
      const h = read();
      for (const code of codes) this.set({ code }, h.reasons.some((x) => x.code === code) ? 1 : 0);
    },
  });
}

let knownStates: Map<string, string[]> | null = null;
/** Every state each agent machine can be in (its leaves, as the observer names them), from the definitions. */
export function agentMachineStates(): Map<string, string[]> {
  if (knownStates) return knownStates;
  knownStates = new Map();
  for (const [name, logic] of Object.entries(INERT_LOGICS)) {
    const graph = extractGraph({ name, machine: logic as AnyStateMachine, source: '' });
    const reachable = reachableStates(graph);
    knownStates.set(
      name,
      graph.states
        .filter((st) => (st.type === 'atomic' || st.type === 'final') && reachable.has(st.id))
        .map((st) => st.path),
    );
  }
  return knownStates;
}

export function agentMetrics(src: AgentMetricsSource): Registry {
  const r = new Registry();
  common(r, 'agent');
  const s = () => src.status();
  mirroredCounter(r, 'auditrelay_records_queued_total', 'Records read and queued', () => s().recordsQueued);
  mirroredCounter(
    r,
    'auditrelay_records_acked_total',
    'Records acknowledged by the server',
    () => s().recordsAcked,
  );
  mirroredCounter(
    r,
    'auditrelay_connects_total',
    'Links on which the server answered (the first reply: the session works)',
    () => s().connects,
  );
  mirroredCounter(r, 'auditrelay_link_failures_total', 'Failed attempts and lost links', () => s().failures);
  mirroredCounter(
    r,
    'auditrelay_actor_restarts_total',
    'Actors restarted by the supervisor',
    () => s().restarts,
  );
  gauge(r, 'auditrelay_queue_records', 'Records not yet acknowledged', () => s().queueDepth);
  gauge(r, 'auditrelay_queue_bytes', 'Payload bytes not yet acknowledged', () => s().queueBytes);
  const first = s();
  if (first.queueCapacity !== undefined) {
    const unit = first.queueCapacityUnit ?? 'records';
    gauge(
      r,
      `auditrelay_queue_capacity_${unit}`,
      unit === 'records'
        ? 'Records the queue holds at most (queue_depth)'
        : 'Bytes of queue files the durable queue holds at most (queue_max_bytes)',
      () => s().queueCapacity ?? 0,
    );
    gauge(
      r,
      'auditrelay_queue_fill_ratio',
      `How full the queue is (0..1: used ${unit} / capacity); health_queue_threshold applies to it`,
      () => {
        const v = s();
        return v.queueCapacity ? (v.queueUsed ?? 0) / v.queueCapacity : 0;
      },
    );
  }
  gauge(r, 'auditrelay_in_flight_records', 'Records sent and not yet acknowledged', () => s().inFlight);
  gauge(
    r,
    'auditrelay_window_records',
    'Records the window allows in flight now (sized from the measured RTT and ack rate; max_in_flight is its ceiling; 0 while the server refuses records)',
    () => s().window ?? 0,
  );
  gauge(
    r,
    'auditrelay_rtt_seconds',
    'Smoothed round-trip time of acknowledged records',
    () => (s().rttMs ?? 0) / 1000,
  );
  gauge(r, 'auditrelay_input_held_records', 'Records read but refused by a full queue', () => s().held);
  const known = agentMachineStates();
  gauge(
    r,
    'auditrelay_server_index',
    'Entry of remote_server in use or being tried (0: the first, preferred one; -1: none)',
    () => s().serverIndex ?? -1,
  );
  new Gauge({
    name: 'auditrelay_state',
    help: 'State of each statechart: one series per state it can be in, 1 for the current one, 0 for the others',
    labelNames: ['machine', 'state'],
    registers: [r],
    collect() {
      const current = src.states();
      for (const [machine, states] of known) {
        const now = current.get(machine);
        for (const state of states) this.set({ machine, state }, state === now ? 1 : 0);
        // A state the definitions do not list (none today) is still shown while current.
        if (now !== undefined && !states.includes(now)) this.set({ machine, state: now }, 1);
      }
    },
  });
  gauge(
    r,
    'auditrelay_link_up',
    'The server answers on the link (connection in online.connected, online.serverFull or online.draining) (1) or not (0)',
    () => {
      const c = src.states().get('connection');
      return c === 'online.connected' || c === 'online.serverFull' || c === 'online.draining' ? 1 : 0;
    },
  );
  const meter = src.meter;
  if (meter) {
    mirroredCounter(
      r,
      'auditrelay_sent_bytes_total',
      'Bytes written to the server (headers included; records sent again after a reconnect count again)',
      () => meter.bytesSent,
    );
    mirroredCounter(
      r,
      'auditrelay_received_bytes_total',
      'Bytes read from the server (replies)',
      () => meter.bytesReceived,
    );
    mirroredLabelledCounter(
      r,
      'auditrelay_replies_total',
      "Replies from the server by type (ACK, DISKLOW, DISKFULL, DISKERROR, ENDING; heartbeats' replies included)",
      'type',
      ['ACK', 'DISKLOW', 'DISKFULL', 'DISKERROR', 'ENDING'],
      () => meter.replies,
    );
    gauge(
      r,
      'auditrelay_last_ack_timestamp_seconds',
      'When the server last acknowledged a record (Unix time; 0 = not yet)',
      () => (meter.lastAckAt ?? 0) / 1000,
    );
    const latency = new Histogram({
      name: 'auditrelay_ack_latency_seconds',
      help: 'Time from writing a record to the link to its acknowledgement',
      buckets: ACK_LATENCY_BUCKETS,
      registers: [r],
    });
    meter.onLatency((seconds) => latency.observe(seconds));
  }
  if (src.health) healthMetrics(r, src.health, AGENT_HEALTH_CODES);
  return r;
}

/** `src` is read at every scrape (a Collector itself will do); `health`, when given, adds the health series. */
export function collectorMetrics(src: CollectorMetricsSource, health?: () => Health): Registry {
  const r = new Registry();
  common(r, 'collector');
  mirroredCounter(
    r,
    'auditrelay_collector_records_total',
    'Records written and acknowledged',
    () => src.stats.records,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_heartbeats_total',
    'Heartbeats acknowledged',
    () => src.stats.heartbeats,
  );
  mirroredCounter(r, 'auditrelay_collector_accepted_total', 'Connections accepted', () => src.stats.accepted);
  mirroredCounter(
    r,
    'auditrelay_collector_sanitized_total',
    'Records with control bytes or line breaks written as \\xHH escapes',
    () => src.stats.sanitized,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_protocol_errors_total',
    'Connections closed for a protocol violation',
    () => src.stats.protocolErrors,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_krb5_sessions_total',
    'Kerberos handshakes completed and authorised',
    () => src.stats.krb5Sessions,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_krb5_failures_total',
    'Kerberos handshakes refused, failed or timed out',
    () => src.stats.krb5Failures,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_tls_sessions_total',
    'TLS handshakes completed and authorised',
    () => src.stats.tlsSessions,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_tls_failures_total',
    'TLS handshakes refused, failed, timed out or closed for a newer one',
    () => src.stats.tlsFailures,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_tls_revoked_total',
    'TLS sessions disconnected because a reload removed their identity or their certificate expired',
    () => src.stats.tlsRevoked,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_identity_mismatches_total',
    "Records whose node= does not belong to the connection's identity",
    () => src.stats.identityMismatches,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_identity_refused_total',
    'Records refused for their node= (identity_policy = reject)',
    () => src.stats.identityRefused,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_identity_rewritten_total',
    "Records given the identity's node= (identity_policy = rewrite)",
    () => src.stats.identityRewritten,
  );
  gauge(r, 'auditrelay_collector_clients', 'Connected clients', () => src.stats.clients);
  gauge(
    r,
    'auditrelay_collector_buffered_bytes',
    'Bytes held for clients (records not yet written, replies not yet sent, incomplete messages)',
    () => src.stats.bufferedBytes,
  );
  gauge(
    r,
    'auditrelay_collector_paused_clients',
    'Clients not read from now (over their share, the memory budget, or not reading their replies)',
    () => src.stats.pausedClients,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_refused_limit_total',
    'Connections refused over tcp_max_connections or the descriptor limit',
    () => src.stats.refusedLimit,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_refused_same_address_total',
    'Connections refused because their address had enough live sessions',
    () => src.stats.refusedSameAddress,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_replaced_stale_total',
    'Silent sessions closed for a newer connection from their address',
    () => src.stats.replacedStale,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_idle_closed_total',
    'Clients closed by tcp_client_max_idle',
    () => src.stats.idleClosed,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_write_failed_records_total',
    'Records answered with DISKFULL or DISKERROR because the log could not be written',
    () => src.stats.writeFailures,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_write_errors_total',
    'Log writes that failed (no space, an I/O error, logging suspended)',
    () => src.stats.writeErrors ?? 0,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_received_bytes_total',
    'Bytes read from clients (after TLS or Kerberos unwrapping)',
    () => src.stats.bytesReceived ?? 0,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_sent_bytes_total',
    'Bytes of replies written to clients',
    () => src.stats.bytesSent ?? 0,
  );
  const replies = src.replies;
  if (replies) {
    mirroredLabelledCounter(
      r,
      'auditrelay_collector_replies_total',
      "Replies sent by type (REFUSED: identity_policy = reject; heartbeats' ACKs included)",
      'type',
      COLLECTOR_REPLY_TYPES,
      () => Object.entries(replies),
    );
  }
  if (src.listening !== undefined) {
    gauge(r, 'auditrelay_collector_listening', 'The listener is open (1) or not (0)', () =>
      src.listening ? 1 : 0,
    );
  }
  if (src.lastWriteError !== undefined) {
    gauge(
      r,
      'auditrelay_collector_disk_error',
      'The last log write failed and none succeeded since (1) or not (0)',
      () => (src.lastWriteError ? 1 : 0),
    );
  }
  mirroredCounter(
    r,
    'auditrelay_collector_duplicate_records_total',
    'Records with an identity acknowledged without being written again: written already (resends, record_ids)',
    () => src.stats.duplicates,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_disk_low_replies_total',
    'Records written while the disk was below space_left (answered with DISKLOW)',
    () => src.stats.diskLowReplies,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_reloads_total',
    'Configuration reloads (SIGHUP)',
    () => src.stats.reloads,
  );
  if (src.logStatus) logMetrics(r, () => src.logStatus!());
  if (src.evidenceStatus) evidenceMetrics(r, () => src.evidenceStatus!());
  if (src.hosts) hostMetrics(r, src.hosts);
  if (health) healthMetrics(r, health, COLLECTOR_HEALTH_CODES);
  return r;
}

function logMetrics(r: Registry, read: () => LogStoreStatus): void {
  gauge(r, 'auditrelay_collector_log_bytes', 'Size of the current log file', () => read().bytes);
  mirroredCounter(
    r,
    'auditrelay_collector_log_rotations_total',
    'Log rotations (SIGUSR1, max_log_file, a rename by another program, an action)',
    () => read().rotations,
  );
  gauge(
    r,
    'auditrelay_collector_log_suspended',
    'Logging suspended by a disk action (records answered with DISKERROR) (1) or not (0)',
    () => (read().suspended ? 1 : 0),
  );
  gauge(
    r,
    'auditrelay_collector_disk_low',
    'Free space below space_left (records answered with DISKLOW) (1) or not (0)',
    () => (read().diskLow ? 1 : 0),
  );
  gauge(r, 'auditrelay_collector_disk_admin_low', 'Free space below admin_space_left (1) or not (0)', () =>
    read().adminDiskLow ? 1 : 0,
  );
  gauge(
    r,
    'auditrelay_collector_disk_full',
    'A write failed for lack of space and none succeeded since (1) or not (0)',
    () => (read().diskFull ? 1 : 0),
  );
  gauge(
    r,
    'auditrelay_collector_log_free_bytes',
    "Free space of the log's file system at the last check",
    () => read().freeBytes ?? 0,
  );
}

function evidenceMetrics(r: Registry, read: () => EvidenceSinkStatus | null): void {
  gauge(
    r,
    'auditrelay_collector_evidence_records',
    'Records in the evidence tree (all segments)',
    () => read()?.records ?? 0,
  );
  gauge(
    r,
    'auditrelay_collector_evidence_checkpoint_records',
    'Records covered by the last signed checkpoint',
    () => read()?.checkpointSize ?? 0,
  );
  gauge(
    r,
    'auditrelay_collector_evidence_checkpoint_timestamp_seconds',
    'When the last checkpoint was signed (Unix time; 0 = none yet)',
    () => {
      const t = read()?.checkpointTime;
      return t ? Date.parse(t) / 1000 : 0;
    },
  );
  gauge(
    r,
    'auditrelay_collector_evidence_lagging',
    'The evidence lags the log (a side-file write failed, or its worker stopped) (1) or not (0)',
    () => {
      const s = read();
      return s && (s.lagging || s.failed !== null) ? 1 : 0;
    },
  );
  gauge(
    r,
    'auditrelay_collector_evidence_backlog_bytes',
    'Bytes written to the log and not chained yet',
    () => read()?.backlogBytes ?? 0,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_evidence_reread_total',
    'Records chained by re-reading the log (crash recovery, write errors)',
    () => read()?.reread ?? 0,
  );
}

/** Per host (label `host`, and `kind`: krb5, tls, node, address, other), read at scrape time. */
function hostMetrics(r: Registry, hosts: NonNullable<CollectorMetricsSource['hosts']>): void {
  /** `only`: hosts without it have no series (e.g. loss counters for hosts never seen with a record identity). */
  const perHostCounter = (
    name: string,
    help: string,
    read: (h: HostEntry) => number,
    only?: (h: HostEntry) => boolean,
  ) => {
    const last = new Map<string, number>();
    new Counter({
      name,
      help,
      labelNames: ['host', 'kind'],
      registers: [r],
      collect() {
        const seen = new Set<string>();
        for (const h of hosts.entries()) {
          if (only && !only(h)) continue;
          seen.add(h.name);
          const now = read(h);
          const before = last.get(h.name) ?? 0;
          if (now > before) this.inc({ host: h.name, kind: h.kind }, now - before);
          else if (!last.has(h.name)) this.inc({ host: h.name, kind: h.kind }, 0);
          last.set(h.name, Math.max(before, now));
        }
        for (const name of [...last.keys()]) {
          if (seen.has(name)) continue;
          last.delete(name);
          for (const kind of ['krb5', 'tls', 'node', 'address', 'other']) this.remove({ host: name, kind });
        }
      },
    });
  };
  perHostCounter('auditrelay_collector_host_records_total', 'Records written for the host', (h) => h.records);
  perHostCounter(
    'auditrelay_collector_host_bytes_total',
    'Bytes written for the host (lines with their newline)',
    (h) => h.bytes,
  );
  const perHostGauge = (name: string, help: string, read: (h: HostEntry) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['host', 'kind'],
      registers: [r],
      collect() {
        this.reset();
        for (const h of hosts.entries()) this.set({ host: h.name, kind: h.kind }, read(h));
      },
    });
  perHostGauge(
    'auditrelay_collector_host_connections',
    'Connections of the host open now',
    (h) => h.connected,
  );
  perHostGauge(
    'auditrelay_collector_host_last_seen_timestamp_seconds',
    'Last record or heartbeat from the host (Unix time)',
    (h) => h.lastSeen / 1000,
  );
  perHostGauge(
    'auditrelay_collector_host_silent',
    'Silent for longer than host_silence_timeout (1) or not (0)',
    (h) => (h.silentSince === null ? 0 : 1),
  );
  // Loss (docs/loss.md): series only for hosts with a record identity or a loss report so far.
  const hasLoss = (h: HostEntry) => h.loss !== null;
  perHostCounter(
    'auditrelay_collector_host_gap_records_total',
    "Records of the host's agents that never arrived before a later one was written (gaps in the sequence; lost, or sent to another collector)",
    (h) => h.loss?.gapRecords ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_late_records_total',
    'Records written after a later one of the same agent (they filled a gap)',
    (h) => h.loss?.lateRecords ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_agent_restarts_total',
    "Restarts of the host's agents (a later boot in a session's hello)",
    (h) => h.loss?.restarts ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_kernel_lost_total',
    "Events the host's kernel reported lost (CONFIG_CHANGE audit_lost old=N, lost=N in DAEMON_* records)",
    (h) => h.loss?.kernelLost ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_auditd_aborts_total',
    'DAEMON_ABORT records of the host (its auditd stopped on an error)',
    (h) => h.loss?.daemonAborts ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_auditd_errors_total',
    'DAEMON_ERR records of the host (its auditd hit an error)',
    (h) => h.loss?.daemonErrors ?? 0,
    hasLoss,
  );
  perHostCounter(
    'auditrelay_collector_host_auditd_starts_total',
    'DAEMON_START records of the host (its auditd, and with it the agent, started)',
    (h) => h.loss?.daemonStarts ?? 0,
    hasLoss,
  );
  new Gauge({
    name: 'auditrelay_collector_host_missing_records',
    help: 'Records of the host missing now: gap records not filled by a late one',
    labelNames: ['host', 'kind'],
    registers: [r],
    collect() {
      this.reset();
      for (const h of hosts.entries())
        if (h.loss) this.set({ host: h.name, kind: h.kind }, missingNow(h.loss));
    },
  });
  gauge(
    r,
    'auditrelay_collector_hosts_with_loss',
    'Hosts with records missing, a kernel loss count, or an auditd abort or error',
    () => hosts.summary().hostsWithLoss,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_untracked_records_total',
    'Records and hellos of agents whose sequences are not followed (beyond max_hosts agents)',
    () => hosts.summary().untrackedRecords,
  );
  gauge(r, 'auditrelay_collector_hosts', 'Hosts known (at most max_hosts)', () => hosts.summary().hosts);
  gauge(
    r,
    'auditrelay_collector_hosts_connected',
    'Hosts with a connection open',
    () => hosts.summary().connected,
  );
  gauge(
    r,
    'auditrelay_collector_hosts_silent',
    'Hosts silent for longer than host_silence_timeout',
    () => hosts.summary().silent,
  );
  mirroredCounter(
    r,
    'auditrelay_collector_hosts_overflow_records_total',
    'Records of hosts beyond max_hosts (accounted as "(other)")',
    () => hosts.summary().overflowRecords,
  );
}
