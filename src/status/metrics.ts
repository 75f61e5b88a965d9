/**
 * Prometheus metrics (prom-client), one registry per agent or collector so that several can live in
 * one process (tests). Values are read from the running component at scrape time.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { CollectorStats } from '../collector/collector.js';
import type { EvidenceSinkStatus } from '../collector/evidence-sink.js';
import type { HostEntry, HostsSummary } from '../collector/hosts.js';
import type { LogStoreStatus } from '../collector/log-store.js';

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
    /** The remote_server entry in use (failover); null before the connection machine runs. */
    serverIndex?: number | null;
  };
  states(): Map<string, string>;
}

export interface CollectorMetricsSource {
  stats: CollectorStats;
  logStatus?(): LogStoreStatus;
  evidenceStatus?(): EvidenceSinkStatus | null;
  hosts?: { entries(): Iterable<HostEntry>; summary(): HostsSummary };
}

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

export function agentMetrics(src: AgentMetricsSource): Registry {
  const r = new Registry();
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
  gauge(r, 'auditrelay_in_flight', 'Records sent and not yet acknowledged', () => s().inFlight);
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
  gauge(r, 'auditrelay_input_held', 'Records read but refused by a full queue', () => s().held);
  gauge(
    r,
    'auditrelay_server_index',
    'Entry of remote_server in use or being tried (0: the first, preferred one; -1: none)',
    () => s().serverIndex ?? -1,
  );
  new Gauge({
    name: 'auditrelay_state',
    help: 'Current state of each statechart (1 = active)',
    labelNames: ['machine', 'state'],
    registers: [r],
    collect() {
      this.reset();
      for (const [machine, state] of src.states()) this.set({ machine, state }, 1);
    },
  });
  return r;
}

export function collectorMetrics(src: CollectorMetricsSource): Registry {
  const r = new Registry();
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
    'auditrelay_collector_write_failures_total',
    'Records answered with DISKFULL or DISKERROR because the log could not be written',
    () => src.stats.writeFailures,
  );
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
    'auditrelay_collector_evidence_checkpoint_size',
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
  const perHostCounter = (name: string, help: string, read: (h: HostEntry) => number) => {
    const last = new Map<string, number>();
    new Counter({
      name,
      help,
      labelNames: ['host', 'kind'],
      registers: [r],
      collect() {
        const seen = new Set<string>();
        for (const h of hosts.entries()) {
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
  perHostGauge('auditrelay_collector_host_connected', 'Connections of the host open now', (h) => h.connected);
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
