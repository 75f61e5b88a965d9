/**
 * The queue is the single source of truth for what is not yet delivered.
 *
 * Layout at any time, oldest first:  [ in flight (sent, unacknowledged) | unsent ]
 * Acknowledgements arrive in order (auditd replies in request order), so the in-flight records are
 * always the head of the queue; `ack()` removes the head, `rewind()` makes every unacknowledged
 * record unsent again (after a reconnect they are sent once more, in order).
 */
import type { EventEmitter } from 'node:events';

export interface QueuedRecord {
  /** Position in the queue's lifetime sequence; increases by one per appended record. */
  readonly id: number;
  readonly payload: Buffer;
}

export type QueueStatus = 'empty' | 'holding' | 'full' | 'error';

/**
 * What becomes of records accepted but not yet acknowledged when the process ends (README, "Stopping and
 * kill -9"):
 * - `crash-safe`: on disk from the moment they are accepted (the durable queue, `mode = forward`): kept through a
 *   clean stop and through kill -9;
 * - `clean-stop`: in memory, written to disk (`queue_dir`) by `close()` at a clean stop and sent first after the
 *   next start (`mode = immediate`); kill -9 loses them;
 * - `none`: in memory only, lost when the process ends (a bare memory queue: tests, the demo).
 */
export type QueuePersistence = 'crash-safe' | 'clean-stop' | 'none';

export interface QueueEvents {
  /** New unsent records are available (emitted once when the unsent part stops being empty). */
  readable: [];
  /** The status changed. */
  status: [status: QueueStatus];
  /** Room was freed after the queue was full. */
  drain: [];
}

export interface RecordQueue extends EventEmitter<QueueEvents> {
  /** Appends a record. Returns false when the queue is full (the record was NOT taken). */
  append(payload: Buffer): boolean;
  /**
   * Appends records in order as `append()` would, stopping at the first one refused; returns how many were
   * taken (the durable queue writes them with one write).
   */
  appendMany(payloads: readonly Buffer[]): number;
  /** The next unsent record, moving it to the in-flight part; undefined when none. */
  takeNext(): QueuedRecord | undefined;
  /** Acknowledges the oldest in-flight record, which must have this id. */
  ack(id: number): void;
  /** Every in-flight record becomes unsent again, to be sent in the same order. */
  rewind(): void;
  /**
   * Makes the acknowledgements so far survive a crash of the process where the queue keeps records on disk (a
   * no-op for records in memory); called by the session after each batch of replies, before it sends more.
   */
  flushAcks(): void;
  /** Records not yet acknowledged (in flight + unsent). */
  readonly depth: number;
  /** Bytes of payload not yet acknowledged. */
  readonly bytes: number;
  readonly inFlight: number;
  readonly unsent: number;
  readonly status: QueueStatus;
  readonly capacity: number;
  /** What `capacity` counts: records (the memory queues) or bytes of segment files (the durable queue). */
  readonly capacityUnit: 'records' | 'bytes';
  /** How much of `capacity` is used now, in `capacityUnit` (status and metrics: the queue's fill). */
  readonly used: number;
  /** Records appended / acknowledged since the queue was opened (counters for status and metrics). */
  readonly totalAppended: number;
  readonly totalAcked: number;
  /** What becomes of the records not yet acknowledged when the process ends. */
  readonly persistence: QueuePersistence;
  /** The last error met (I/O, corruption found on disk), also logged; null when none. Status `error` says it lasts. */
  readonly lastError: Error | null;
  /**
   * Closes the queue. `held`: records the input read but the queue refused (it was full), oldest first; a queue
   * that writes its records to disk at a clean stop keeps them after its own. Resolves with what could not be
   * kept (0 for a crash-safe queue with nothing held).
   */
  close(held?: readonly Buffer[]): Promise<{ lost: number }>;
}
