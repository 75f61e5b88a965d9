/**
 * An in-memory queue bounded by a number of records (upstream's `queue_depth`).
 * Records live in a growable ring so append, takeNext and ack are O(1).
 */
import { EventEmitter } from 'node:events';
import { QueueError } from '../errors.js';
import type { QueuedRecord, QueueEvents, QueuePersistence, QueueStatus, RecordQueue } from './types.js';

export class MemoryQueue extends EventEmitter<QueueEvents> implements RecordQueue {
  #ring: (QueuedRecord | undefined)[] = new Array(64);
  /** Index in #ring of the oldest unacknowledged record. */
  #head = 0;
  #count = 0;
  #inFlight = 0;
  #bytes = 0;
  #nextId = 1;
  #status: QueueStatus = 'empty';
  readonly capacity: number;
  /** Records live in memory only: lost when the process ends (see SpillOnStopQueue for `mode = immediate`). */
  readonly persistence: QueuePersistence = 'none';
  readonly capacityUnit = 'records' as const;
  /** A memory queue has no I/O to fail. */
  readonly lastError: Error | null = null;
  totalAppended = 0;
  totalAcked = 0;

  constructor(capacity: number) {
    super();
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError('capacity must be a positive integer');
    this.capacity = capacity;
  }

  get used(): number {
    return this.depth;
  }
  get depth(): number {
    return this.#count;
  }
  get bytes(): number {
    return this.#bytes;
  }
  get inFlight(): number {
    return this.#inFlight;
  }
  get unsent(): number {
    return this.#count - this.#inFlight;
  }
  get status(): QueueStatus {
    return this.#status;
  }

  append(payload: Buffer): boolean {
    if (this.#count >= this.capacity) return false;
    if (this.#count === this.#ring.length) this.#grow();
    const rec: QueuedRecord = { id: this.#nextId++, payload };
    this.#ring[(this.#head + this.#count) % this.#ring.length] = rec;
    this.#count++;
    this.totalAppended++;
    this.#bytes += payload.length;
    if (this.#count - this.#inFlight === 1) this.emit('readable');
    this.#updateStatus();
    return true;
  }

  appendMany(payloads: readonly Buffer[]): number {
    let n = 0;
    while (n < payloads.length && this.append(payloads[n]!)) n++;
    return n;
  }

  takeNext(): QueuedRecord | undefined {
    if (this.#inFlight === this.#count) return undefined;
    const rec = this.#ring[(this.#head + this.#inFlight) % this.#ring.length];
    this.#inFlight++;
    return rec;
  }

  ack(id: number): void {
    const rec = this.#inFlight > 0 ? this.#ring[this.#head] : undefined;
    if (!rec || rec.id !== id) {
      throw new QueueError(`acknowledged record ${id} is not the oldest in flight (${rec?.id ?? 'none'})`);
    }
    this.#ring[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#ring.length;
    this.#count--;
    this.totalAcked++;
    this.#inFlight--;
    this.#bytes -= rec.payload.length;
    const wasFull = this.#status === 'full';
    this.#updateStatus();
    if (wasFull) this.emit('drain');
  }

  rewind(): void {
    const had = this.#inFlight;
    this.#inFlight = 0;
    if (had > 0 && this.#count === had) this.emit('readable');
  }

  /** Nothing to make durable: the records are in memory. */
  flushAcks(): void {}

  /** The records not yet acknowledged, oldest first (in flight, then unsent). */
  *undelivered(): Generator<Buffer> {
    for (let i = 0; i < this.#count; i++) yield this.#ring[(this.#head + i) % this.#ring.length]!.payload;
  }

  /** Nothing is kept: what was not acknowledged, and what was held, is lost. */
  async close(held: readonly Buffer[] = []): Promise<{ lost: number }> {
    return { lost: this.#count + held.length };
  }

  #grow(): void {
    const bigger: (QueuedRecord | undefined)[] = new Array(Math.min(this.#ring.length * 2, this.capacity));
    for (let i = 0; i < this.#count; i++) bigger[i] = this.#ring[(this.#head + i) % this.#ring.length];
    this.#ring = bigger;
    this.#head = 0;
  }

  #updateStatus(): void {
    const next: QueueStatus = this.#count === 0 ? 'empty' : this.#count >= this.capacity ? 'full' : 'holding';
    if (next !== this.#status) {
      this.#status = next;
      this.emit('status', next);
    }
  }
}
