/**
 * Prometheus metrics (prom-client), one registry per agent or collector so that several can live in
 * one process (tests). Values are read from the running component at scrape time.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { CollectorStats } from '../collector/collector.js';

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
  };
  states(): Map<string, string>;
}

export interface CollectorMetricsSource {
  stats: CollectorStats;
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
  return r;
}
