/**
 * Health: what `/health`, `auditrelay status`, the status page's banner and the `auditrelay_health_*` metrics say.
 * A list of reasons, each with a stable code, a level and whether it fails the check (docs/status.md, "Health"):
 *
 * - `down`: records do not reach their destination (agent: no working link for longer than
 *   `health_link_down_timeout`, sending suspended by a failure action, the server refusing records; collector:
 *   not listening, logging suspended, disk full, disk error);
 * - `degraded`: they do, but something needs a look (a backlog past `health_queue_threshold`, a full queue, a
 *   link lost moments ago, a disk below space_left, silent hosts…).
 *
 * `healthy` (HTTP 200, exit 0) is false when any reason `fails`; every `down` reason fails, and some `degraded`
 * ones do (a queue past its threshold: records will be lost if it goes on). The status is the worst level.
 *
 * Nothing here holds a fact a machine holds: the agent's health is computed, when asked, from the connection
 * machine's state, the queue, and the time the observer saw the link leave its working states (LinkWatch, a fold
 * of the transitions the machine went through).
 */
import type { Agent } from '../agent/agent.js';
import type { StateObserver, Transition } from './observer.js';

export type HealthStatus = 'healthy' | 'degraded' | 'down';

export interface HealthReason {
  /** Stable: alerts and tests match it (docs/status.md lists them). */
  code: string;
  level: 'degraded' | 'down';
  /** /health answers 503 and `auditrelay status` exits non-zero. */
  fails: boolean;
  message: string;
}

export interface Health {
  status: HealthStatus;
  healthy: boolean;
  reasons: HealthReason[];
}

/** Every reason code, per role (the metrics have one 0/1 series per code, present whether it holds or not). */
export const AGENT_HEALTH_CODES = [
  'link_down',
  'reconnecting',
  'suspended',
  'server_refusing',
  'queue_full',
  'queue_threshold',
  'queue_error',
  'restarting',
  'not_running',
] as const;
export const COLLECTOR_HEALTH_CODES = [
  'not_listening',
  'log_suspended',
  'disk_full',
  'disk_error',
  'admin_disk_low',
  'disk_low',
  'evidence_failed',
  'evidence_lagging',
  'silent_hosts',
] as const;

export function summarize(reasons: HealthReason[]): Health {
  const status: HealthStatus = reasons.some((r) => r.level === 'down')
    ? 'down'
    : reasons.length > 0
      ? 'degraded'
      : 'healthy';
  return { status, healthy: !reasons.some((r) => r.fails), reasons };
}

/** The body of /health: the status, then one line per reason. */
export function healthText(h: Health): string {
  const head = h.healthy ? h.status : `${h.status} (unhealthy)`;
  return `${[head, ...h.reasons.map((r) => `${r.code}: ${r.message}`)].join('\n')}\n`;
}

/** Connection states in which the server answers on the link. */
export function linkUp(state: string | undefined): boolean {
  return state === 'online.connected' || state === 'online.serverFull' || state === 'online.draining';
}

/**
 * Since when the connection has been without a working link, and since when it is in its current state: a fold
 * of the connection machine's transitions as the observer reports them (the machine itself keeps no times).
 */
export class LinkWatch {
  /** When the link stopped working (or the watch started without one); null while it works. */
  downSince: number | null;
  /** When the connection entered its current state. */
  stateSince: number;
  readonly #observer: StateObserver;
  readonly #onTransition: (t: Transition) => void;

  constructor(observer: StateObserver, now: () => number = Date.now) {
    this.#observer = observer;
    const t0 = now();
    this.downSince = linkUp(observer.states.get('connection')) ? null : t0;
    this.stateSince = t0;
    this.#onTransition = (t) => {
      if (t.actor !== 'connection') return;
      const at = Date.parse(t.time);
      this.stateSince = at;
      if (linkUp(t.to)) this.downSince = null;
      else this.downSince ??= at;
    };
    observer.on('transition', this.#onTransition);
  }

  close(): void {
    this.#observer.off('transition', this.#onTransition);
  }
}

export interface AgentHealthThresholds {
  /** A link down longer than this fails the check. */
  linkDownMs: number;
  /** A queue fuller than this (0..1) fails the check. */
  queueFill: number;
}

/** The agent's health now. */
export function agentHealth(
  agent: Agent,
  watch: LinkWatch,
  thresholds: AgentHealthThresholds,
  now = Date.now(),
): Health {
  const reasons: HealthReason[] = [];
  const s = agent.status();
  const state = s.state;
  const failure = s.lastFailure ? `; last failure: ${s.lastFailure}` : '';
  if (!agent.healthy() && state !== 'restarting') {
    reasons.push({
      code: 'not_running',
      level: 'down',
      fails: true,
      message: `the agent's actors are not running (${state}): it is stopping or has given up`,
    });
  } else if (state === 'restarting') {
    reasons.push({
      code: 'restarting',
      level: 'degraded',
      fails: false,
      message: 'the connection actor failed and is being restarted by the supervisor',
    });
  }
  const secs = (ms: number) => `${Math.round(ms / 1000)} s`;
  if (state === 'suspended') {
    reasons.push({
      code: 'suspended',
      level: 'down',
      fails: true,
      message: `sending is suspended by a failure action (= suspend) for ${secs(now - watch.stateSince)}${failure}; SIGUSR2 resumes at once`,
    });
  } else if (state === 'online.serverFull') {
    reasons.push({
      code: 'server_refusing',
      level: 'down',
      fails: true,
      message: `the server ${s.server} refuses records (its disk is full or in error) for ${secs(now - watch.stateSince)}${failure}; they stay queued and are probed every second`,
    });
  } else if (watch.downSince !== null && state !== 'stopped') {
    const down = now - watch.downSince;
    const since = new Date(watch.downSince).toISOString();
    if (down >= thresholds.linkDownMs) {
      reasons.push({
        code: 'link_down',
        level: 'down',
        fails: true,
        message: `no working link to ${s.server} for ${secs(down)} (since ${since}; threshold ${secs(thresholds.linkDownMs)})${failure}`,
      });
    } else {
      reasons.push({
        code: 'reconnecting',
        level: 'degraded',
        fails: false,
        message: `no working link to ${s.server} for ${secs(down)} (${state}; unhealthy after ${secs(thresholds.linkDownMs)})${failure}`,
      });
    }
  }
  const fill = s.queueCapacity > 0 ? s.queueUsed / s.queueCapacity : 0;
  const what = `${s.queueDepth} record(s) queued, ${Math.round(fill * 100)} % of ${s.queueCapacity} ${s.queueCapacityUnit}`;
  if (agent.queue.status === 'error') {
    reasons.push({
      code: 'queue_error',
      level: 'degraded',
      fails: true,
      message: `the queue cannot store records: ${agent.queue.lastError?.message ?? 'error'} (${what})`,
    });
  }
  if (agent.queue.status === 'full' || s.held > 0) {
    reasons.push({
      code: 'queue_full',
      level: 'degraded',
      fails: true,
      message: `the queue is full: ${what}${s.held > 0 ? `, ${s.held} more read and held` : ''}; the input is paused (auditd's own queue fills next)`,
    });
  } else if (fill >= thresholds.queueFill) {
    reasons.push({
      code: 'queue_threshold',
      level: 'degraded',
      fails: true,
      message: `backlog past health_queue_threshold (${Math.round(thresholds.queueFill * 100)} %): ${what}`,
    });
  }
  return summarize(reasons);
}

/** What the collector's health is computed from (src/collector/collector.ts). */
export interface CollectorHealthSource {
  readonly listening: boolean;
  /** `jetstream`: no log (its reasons do not apply); the stream's connection is the output's health. */
  readonly output: 'file' | 'jetstream';
  jetstreamStatus(): { connected: boolean; stream: string } | null;
  logStatus(): {
    file: string;
    suspended: string | null;
    diskLow: boolean;
    adminDiskLow: boolean;
    diskFull: boolean;
    freeBytes: number | null;
  };
  /** The last failed log write not followed by a successful one (null when the last write succeeded). */
  readonly lastWriteError: { code: string; time: string } | null;
  evidenceStatus(): { lagging: boolean; failed: string | null } | null;
  hostsStatus(n: number): { silent: number };
}

export function collectorHealth(c: CollectorHealthSource): Health {
  const reasons: HealthReason[] = [];
  if (!c.listening) {
    reasons.push({
      code: 'not_listening',
      level: 'down',
      fails: true,
      message: 'the collector is not listening for clients',
    });
  }
  if (c.output === 'file') logReasons(c.logStatus(), c.lastWriteError, reasons);
  const js = c.jetstreamStatus();
  if (js && !js.connected) {
    reasons.push({
      code: 'stream_unavailable',
      level: 'down',
      fails: true,
      message: `no connection to NATS JetStream (stream ${js.stream}): records are answered DISKERROR (clients keep them)`,
    });
  }
  const ev = c.evidenceStatus();
  if (ev?.failed) {
    reasons.push({
      code: 'evidence_failed',
      level: 'degraded',
      fails: true,
      message: `the evidence has stopped (${ev.failed}): records are logged but not chained`,
    });
  } else if (ev?.lagging) {
    reasons.push({
      code: 'evidence_lagging',
      level: 'degraded',
      fails: false,
      message: 'the evidence lags the log (it catches up by re-reading it)',
    });
  }
  const silent = c.hostsStatus(0).silent;
  if (silent > 0) {
    reasons.push({
      code: 'silent_hosts',
      level: 'degraded',
      fails: false,
      message: `${silent} host(s) silent for longer than host_silence_timeout (auditrelay status lists them)`,
    });
  }
  return summarize(reasons);
}

/** The log's reasons (output = file). */
function logReasons(
  log: ReturnType<CollectorHealthSource['logStatus']>,
  err: CollectorHealthSource['lastWriteError'],
  reasons: HealthReason[],
): void {
  if (log.suspended) {
    reasons.push({
      code: 'log_suspended',
      level: 'down',
      fails: true,
      message: `logging to ${log.file} is suspended by ${log.suspended} = suspend: records are answered DISKERROR (clients keep them); free space, then SIGUSR2`,
    });
  }
  if (log.diskFull) {
    reasons.push({
      code: 'disk_full',
      level: 'down',
      fails: true,
      message: `the disk of ${log.file} is full: records are answered DISKFULL (clients keep them)`,
    });
  }
  if (err && !log.diskFull && !log.suspended) {
    reasons.push({
      code: 'disk_error',
      level: 'down',
      fails: true,
      message: `writing ${log.file} failed (${err.code}, ${err.time}) and no write succeeded since: records are answered DISKERROR`,
    });
  }
  const free = log.freeBytes === null ? '' : ` (${Math.round(log.freeBytes / 1024 ** 2)} MiB free)`;
  if (log.adminDiskLow) {
    reasons.push({
      code: 'admin_disk_low',
      level: 'degraded',
      fails: true,
      message: `free space of ${log.file}'s file system below admin_space_left${free}`,
    });
  } else if (log.diskLow) {
    reasons.push({
      code: 'disk_low',
      level: 'degraded',
      fails: false,
      message: `free space of ${log.file}'s file system below space_left${free}: clients get DISKLOW`,
    });
  }
}
