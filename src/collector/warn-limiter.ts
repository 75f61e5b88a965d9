/**
 * One warning per key (a client and a kind of event) per interval, with a count: the first event of a key is
 * logged at once, later ones within `intervalMs` are only counted, and the count is logged when the interval ends
 * (or when the key is flushed, e.g. at disconnect). A hostile client can therefore not turn its records into
 * megabytes of the collector's own log, and the operator still learns how often it happened.
 *
 * Memory: one entry per key with events in the current interval; entries without events are dropped when their
 * interval ends, and `flushPrefix` drops a client's keys when it disconnects.
 */
import type { Logger } from '../log.js';

interface Entry {
  /** Events after the first one, not yet reported. */
  suppressed: number;
  fields: Record<string, unknown>;
  /** Message for the summary line: receives the count. */
  summary: (count: number) => string;
  timer: NodeJS.Timeout;
}

export class WarnLimiter {
  readonly #entries = new Map<string, Entry>();
  readonly #log: Logger;
  readonly intervalMs: number;
  /** Events counted and not logged on their own, in total. */
  suppressedTotal = 0;

  constructor(log: Logger, intervalMs: number) {
    this.#log = log;
    this.intervalMs = intervalMs;
  }

  /**
   * Records one event of `key`. The first in an interval is logged with `fields` and `first`; the others are
   * counted and reported by `summary(count)` when the interval ends.
   */
  warn(
    key: string,
    fields: Record<string, unknown>,
    first: string,
    summary: (count: number) => string,
  ): void {
    const entry = this.#entries.get(key);
    if (entry) {
      entry.suppressed++;
      entry.fields = fields;
      this.suppressedTotal++;
      return;
    }
    this.#log.warn({ ...fields, intervalMs: this.intervalMs }, first);
    const timer = setTimeout(() => this.#end(key), this.intervalMs);
    timer.unref();
    this.#entries.set(key, { suppressed: 0, fields, summary, timer });
  }

  /** Reports and forgets every key starting with `prefix` (a client that went away). */
  flushPrefix(prefix: string): void {
    for (const key of [...this.#entries.keys()]) if (key.startsWith(prefix)) this.#end(key);
  }

  /** Reports and forgets everything (shutdown). */
  flushAll(): void {
    for (const key of [...this.#entries.keys()]) this.#end(key);
  }

  #end(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.#entries.delete(key);
    if (entry.suppressed > 0) {
      this.#log.warn({ ...entry.fields, count: entry.suppressed }, entry.summary(entry.suppressed));
    }
  }
}
