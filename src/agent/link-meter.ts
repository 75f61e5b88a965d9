/**
 * What the sessions measure of the links, for status and metrics: bytes written and read, replies by type, the
 * time of the last acknowledgement and each record's acknowledgement latency (send to ACK). One per agent, kept
 * across links and restarts of the connection actor. It holds no fact of the connection machine (whether the link
 * is up is the machine's state): only counts of what passed on the wire.
 */

/** Reply types as counted (`typeName` of src/protocol/constants.ts, e.g. `ACK`, `DISKFULL`). */
export type ReplyType = string;

/** Distinct reply types counted (auditd has 6); the rest as `other`. */
export const MAX_REPLY_TYPES = 16;

export class LinkMeter {
  /** Bytes written to links (headers included; records sent again after a reconnect count again). */
  bytesSent = 0;
  /** Bytes read from links (replies). */
  bytesReceived = 0;
  /** Replies by type (heartbeats' replies included). */
  readonly replies = new Map<ReplyType, number>();
  /** When the last record was acknowledged (ms since the epoch), null before the first. */
  lastAckAt: number | null = null;
  /** Receives each record's acknowledgement latency in seconds (the metrics' histogram). */
  readonly #latency = new Set<(seconds: number) => void>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  sent(bytes: number): void {
    this.bytesSent += bytes;
  }

  received(bytes: number): void {
    this.bytesReceived += bytes;
  }

  /** A reply; types beyond the first MAX_REPLY_TYPES seen count as `other` (a server chooses them: bounded). */
  reply(type: ReplyType): void {
    const key = this.replies.has(type) || this.replies.size < MAX_REPLY_TYPES ? type : 'other';
    this.replies.set(key, (this.replies.get(key) ?? 0) + 1);
  }

  /** A record was acknowledged `latencyMs` after it was written. */
  acked(latencyMs: number): void {
    this.lastAckAt = this.#now();
    const seconds = Math.max(0, latencyMs) / 1000;
    for (const f of this.#latency) f(seconds);
  }

  onLatency(f: (seconds: number) => void): () => void {
    this.#latency.add(f);
    return () => this.#latency.delete(f);
  }
}
