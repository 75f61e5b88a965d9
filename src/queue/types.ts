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
   * Optional: appends records in order as `append()` would, stopping at the first one refused; returns how
   * many were taken (the durable queue writes them with one write).
   */
  appendMany?(payloads: readonly Buffer[]): number;
  /** The next unsent record, moving it to the in-flight part; undefined when none. */
  takeNext(): QueuedRecord | undefined;
  /** Acknowledges the oldest in-flight record, which must have this id. */
  ack(id: number): void;
  /** Every in-flight record becomes unsent again, to be sent in the same order. */
  rewind(): void;
  /**
   * Optional: make the acknowledgements so far survive a crash of the process (the durable queue); called
   * by the session after each batch of replies, before it sends more.
   */
  flushAcks?(): void;
  /** Records not yet acknowledged (in flight + unsent). */
  readonly depth: number;
  /** Bytes of payload not yet acknowledged. */
  readonly bytes: number;
  readonly inFlight: number;
  readonly unsent: number;
  readonly status: QueueStatus;
  readonly capacity: number;
  /** Records appended / acknowledged since the queue was opened (counters for status and metrics). */
  readonly totalAppended: number;
  readonly totalAcked: number;
  close(): Promise<void>;
}
