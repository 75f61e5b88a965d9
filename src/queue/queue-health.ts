/**
 * The durable queue's health: which of its I/O paths is failing (writing records, syncing them, reading the
 * backlog back, saving the ack cursor), the last error met, one log line when a path starts failing and one when
 * it works again, and the retry invitation while a failure lasts.
 *
 * A failing write, sync or read makes the queue's status `error`; a cursor that cannot be saved is a warning only
 * (its consequence is resends after a restart, never a loss).
 */
import { FileSafetyError } from '../errors.js';

/** The part of a pino logger the queue uses. */
export interface QueueLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const noop = () => {};
export const SILENT: QueueLogger = { debug: noop, info: noop, warn: noop, error: noop };

export type QueuePath = 'write' | 'sync' | 'read' | 'ack';

const RECOVERED: Record<QueuePath, string> = {
  write: 'queue: writing works again',
  sync: 'queue: data sync works again',
  read: 'queue: reading works again',
  ack: 'queue: the acknowledgement position is saved again',
};

/**
 * The error to keep: a plain I/O error (EIO, ENOSPC…) that safe-files wrapped while opening a file is kept as
 * the system error itself (its `code` is the errno); a refusal for safety (a link, a FIFO, a planted file) stays
 * a FileSafetyError.
 */
export function asError(err: unknown): Error {
  if (err instanceof FileSafetyError) {
    const cause = err.cause as NodeJS.ErrnoException | undefined;
    if (
      cause instanceof Error &&
      typeof cause.code === 'string' &&
      !['ELOOP', 'ENXIO', 'EEXIST'].includes(cause.code)
    ) {
      return cause;
    }
  }
  return err instanceof Error ? err : new Error(String(err));
}

export interface QueueHealthOptions {
  dir: string;
  log: QueueLogger;
  retryMs: number;
  /** The status may have changed (a write, sync or read path failed or recovered). */
  onChange: () => void;
  /** While a write (read) failure lasts: invite the caller to try again. */
  onRetry: (write: boolean, read: boolean) => void;
}

export class QueueHealth {
  /** The last I/O error met (also logged); null when none happened yet. */
  lastError: Error | null = null;
  readonly #o: QueueHealthOptions;
  readonly #failing = new Map<QueuePath, Error>();
  #retryTimer: NodeJS.Timeout | null = null;
  #retryWrite = false;
  #retryRead = false;
  #closed = false;

  constructor(options: QueueHealthOptions) {
    this.#o = options;
  }

  /** A write, sync or read path is failing: the queue's status is `error`. */
  get inError(): boolean {
    return this.#failing.has('write') || this.#failing.has('sync') || this.#failing.has('read');
  }

  failing(path: QueuePath): boolean {
    return this.#failing.has(path);
  }

  /**
   * Records a failure of `path`. Returns true when the path was working until now: the caller then logs its
   * one line (it knows what to say); later failures of the same path only update lastError.
   */
  fail(path: QueuePath, err: unknown): boolean {
    const e = asError(err);
    this.lastError = e;
    if (this.#failing.has(path)) return false;
    this.#failing.set(path, e);
    if (path !== 'ack') this.#o.onChange();
    return true;
  }

  /** Something went wrong that does not last (corruption found and stepped over): lastError only. */
  note(err: unknown): void {
    this.lastError = asError(err);
  }

  /** `path` worked: logs the recovery once. */
  ok(path: QueuePath): void {
    if (!this.#failing.delete(path)) return;
    this.#o.log.info({ dir: this.#o.dir }, RECOVERED[path]);
    if (path !== 'ack') this.#o.onChange();
  }

  /** Invites the caller to retry a refused append (`write`) or a failed read (`read`) after retryMs. */
  scheduleRetry(what: 'write' | 'read'): void {
    if (what === 'write') this.#retryWrite = true;
    else this.#retryRead = true;
    if (this.#retryTimer || this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#closed) return;
      const write = this.#retryWrite;
      const read = this.#retryRead;
      this.#retryWrite = false;
      this.#retryRead = false;
      this.#o.onRetry(write, read);
    }, this.#o.retryMs);
    this.#retryTimer.unref();
  }

  close(): void {
    this.#closed = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }
}
