/**
 * What the status listener serves for each role: the status (`/status`, the page, `auditrelay status`), its
 * health (`/health`) and the rates the page shows. Built by src/cli.ts around a running agent or collector.
 */
import type { Agent } from '../agent/agent.js';
import type { Collector } from '../collector/collector.js';
import { packageVersion } from '../paths.js';
import {
  type AgentHealthThresholds,
  agentHealth,
  collectorHealth,
  type Health,
  LinkWatch,
} from './health.js';

/** Records per second over the last RATE_WINDOW_MS, from a monotonic counter sampled every second. */
export const RATE_WINDOW_MS = 10_000;
const SAMPLE_MS = 1_000;

export class RateMeter {
  readonly #read: () => number;
  readonly #now: () => number;
  readonly #samples: { t: number; n: number }[] = [];
  readonly #timer: NodeJS.Timeout;

  constructor(read: () => number, now: () => number = Date.now) {
    this.#read = read;
    this.#now = now;
    this.sample();
    this.#timer = setInterval(() => this.sample(), SAMPLE_MS);
    this.#timer.unref();
  }

  sample(): void {
    const t = this.#now();
    this.#samples.push({ t, n: this.#read() });
    while (this.#samples.length > 2 && t - this.#samples[1]!.t >= RATE_WINDOW_MS) this.#samples.shift();
  }

  /** Per second over the window (0 until two samples a second apart exist). */
  get perSecond(): number {
    const first = this.#samples[0]!;
    const t = this.#now();
    const dt = t - first.t;
    if (dt < SAMPLE_MS / 2) return 0;
    return Math.round(((this.#read() - first.n) * 1000 * 10) / dt) / 10;
  }

  close(): void {
    clearInterval(this.#timer);
  }
}

export interface StatusView {
  status(): Record<string, unknown>;
  /** The status for the page's event stream (the collector leaves its host list out). */
  eventStatus?(): Record<string, unknown>;
  health(): Health;
  close(): void;
}

/** The agent's view; `thresholds` is read at every call (a SIGHUP may change them). */
export function agentView(agent: Agent, thresholds: () => AgentHealthThresholds): StatusView {
  const watch = new LinkWatch(agent.observer);
  const rate = new RateMeter(() => agent.queue.totalAcked);
  const health = () => agentHealth(agent, watch, thresholds());
  return {
    status: () => ({
      version: packageVersion(),
      ...agent.status(),
      recordsPerSecond: rate.perSecond,
      linkDownSince: watch.downSince === null ? null : new Date(watch.downSince).toISOString(),
      health: health(),
    }),
    health,
    close: () => {
      watch.close();
      rate.close();
    },
  };
}

/** Hosts listed in /status (silent ones first); /metrics has all of them. */
export const HOSTS_IN_STATUS = 1000;

/** The collector's view: counters, the log, the evidence, per-host accounting (up to HOSTS_IN_STATUS hosts). */
export function collectorView(collector: Collector): StatusView {
  const rate = new RateMeter(() => collector.stats.records);
  const health = () => collectorHealth(collector);
  const status = (hosts: number) => {
    const { list, ...summary } = collector.hostsStatus(hosts);
    return {
      version: packageVersion(),
      listen: collector.listenAddress,
      ...collector.stats,
      recordsPerSecond: rate.perSecond,
      replies: { ...collector.replies },
      lastWriteError: collector.lastWriteError,
      log: collector.output === 'file' ? collector.logStatus() : null,
      evidence: collector.evidenceStatus(),
      jetstream: collector.jetstreamStatus(),
      hosts: summary,
      ...(hosts > 0 ? { hostList: list } : {}),
      health: health(),
    };
  };
  return {
    status: () => status(HOSTS_IN_STATUS),
    eventStatus: () => status(0),
    health,
    close: () => rate.close(),
  };
}
