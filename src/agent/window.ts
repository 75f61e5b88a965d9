/**
 * The window: how many records the session may have in flight (sent, not yet acknowledged) on a link. It is
 * sized from what the session measures — the round-trip time of each acknowledged record and how fast
 * acknowledgements come — with `max_in_flight` as its ceiling. The rule is delay-based (as TCP Vegas is):
 *
 * - Every link starts at `initial` (1024, or the ceiling if lower: what a real auditd has always taken at
 *   once), which is also the floor: the window never goes below it.
 * - Time runs in *rounds* of about one RTT (at least 1 ms). At the end of a round the window compares the
 *   round's smallest RTT with the smallest RTT seen on the path (`minRtt`, remembered for `MIN_RTT_WINDOW_MS`).
 *   The difference is the time records wait in queues — our socket buffer, the network, the server's socket
 *   and the server itself — beyond the path's own delay.
 * - If the window was what limited the round (the session had more to send) and that queueing delay is within
 *   the tolerance (a quarter of `minRtt`, at least `TOLERANCE_MS`), the path can take more: the window grows,
 *   doubling per round until the first time the delay rose, then by an eighth per round.
 * - If the queueing delay is above twice the tolerance, the window is more than the path needs and only adds
 *   waiting: it shrinks by a quarter (not below the floor).
 *
 * This keeps about one path's worth of records in flight plus a small queue, so a long path is filled (at
 * 100 ms the window grows until ≈ rate × RTT) while the server is never handed more than it can take without
 * queueing: auditd drops the acknowledgements it cannot write at once (its socket is non-blocking and the
 * write's result ignored), and acknowledgements that queue up at the server are the first sign of that. A link
 * that ends with a reply out of sequence (a dropped acknowledgement) halves the window the next links may reach
 * (`cap`) for `CAP_HOLD_MS`.
 *
 * Bytes are bounded too: at most `maxBytes` of payload in flight, plus the record that passed it (a window of
 * large records stays bounded in memory).
 *
 * A DISKFULL/DISKERROR reply closes the window (`refuse`): nothing is sent until the connection machine asks
 * for a probe (`probe`: one record); the first record acknowledged after that opens it again at the floor.
 */

/** The window every link starts with, and the least it is ever made. */
export const INITIAL_WINDOW = 1024;
/** Payload bytes in flight at most (a window of large records stays bounded). */
export const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/** The path's smallest RTT is the smallest seen in this long (a route change is noticed within it). */
export const MIN_RTT_WINDOW_MS = 10_000;
/** Queueing delay always tolerated (scheduling jitter on a busy host), whatever the path's RTT. */
export const TOLERANCE_MS = 2;
/** After a reply out of sequence, the window may reach half of what it had for this long. */
export const CAP_HOLD_MS = 60_000;
/** A round is at least this long (a loopback RTT is a fraction of a millisecond). */
const MIN_ROUND_MS = 1;

export interface WindowOptions {
  /** `max_in_flight`. */
  ceiling: number;
  /** Start (and floor) of the window on every link; default min(ceiling, INITIAL_WINDOW). */
  initial?: number;
  maxBytes?: number;
}

export class FlowWindow {
  readonly ceiling: number;
  readonly floor: number;
  readonly maxBytes: number;
  #size: number;
  /** The most the window may reach now (below the ceiling after a reply out of sequence). */
  #cap: number;
  #capUntil = 0;
  /** Doubling per round until the queueing delay first rose on this link. */
  #startup = true;
  #refused = false;
  /** Records a probe may still send while refused. */
  #probes = 0;

  // Measurements.
  #minRtt = Number.POSITIVE_INFINITY;
  #minRttAt = 0;
  /** The smallest RTT of the current MIN_RTT_WINDOW_MS period, becomes `minRtt` when the period ends. */
  #nextMinRtt = Number.POSITIVE_INFINITY;
  #srtt = 0;
  // The current round.
  #roundStart = -1;
  #roundMinRtt = Number.POSITIVE_INFINITY;
  #roundAcks = 0;
  #roundLimited = false;
  /** Acknowledgements per second over the last round. */
  #rate = 0;

  constructor(o: WindowOptions) {
    this.ceiling = Math.max(1, o.ceiling);
    this.floor = Math.max(1, Math.min(this.ceiling, o.initial ?? INITIAL_WINDOW));
    this.maxBytes = o.maxBytes ?? MAX_IN_FLIGHT_BYTES;
    this.#size = this.floor;
    this.#cap = this.ceiling;
  }

  /** Records allowed in flight now (0 while refused, except a probe's one). */
  get size(): number {
    return this.#refused ? 0 : this.#size;
  }

  /** The window as it was last sized (for status and metrics; also while refused). */
  get sized(): number {
    return this.#size;
  }

  get refused(): boolean {
    return this.#refused;
  }

  /** The path's smallest RTT in ms (null before the first acknowledgement). */
  get minRttMs(): number | null {
    return Number.isFinite(this.#minRtt) ? this.#minRtt : null;
  }

  get srttMs(): number | null {
    return this.#srtt > 0 ? this.#srtt : null;
  }

  /** Acknowledgements per second over the last round. */
  get ackRate(): number {
    return this.#rate;
  }

  /** A new link: the window starts again at the floor; what was measured of the path is kept. */
  restart(now: number): void {
    this.#size = this.floor;
    this.#startup = true;
    this.#refused = false;
    this.#probes = 0;
    this.#roundStart = -1;
    if (now >= this.#capUntil) this.#cap = this.ceiling;
  }

  /**
   * May one more record go out with `records` records and `inFlightBytes` bytes in flight? (The byte bound is
   * checked before the record is taken: it may be passed by one record.)
   */
  allows(records: number, inFlightBytes: number): boolean {
    if (this.#refused) return this.#probes > 0;
    return records < this.#size && inFlightBytes < this.maxBytes;
  }

  /** A record went out; `records` are now in flight. */
  sent(records: number): void {
    if (this.#refused && this.#probes > 0) this.#probes--;
    if (records >= this.#size) this.#roundLimited = true;
  }

  /**
   * Refill once this few are in flight: a quarter of the window free is worth a write (fewer, larger writes
   * than one per acknowledgement; a long path is kept full).
   */
  get refillAt(): number {
    return this.#size - Math.max(1, Math.floor(this.#size / 4));
  }

  /** The window was what limited sending (something was left to send when it was full). */
  limited(): void {
    this.#roundLimited = true;
  }

  /** A record was acknowledged `rttMs` after it was sent. Returns true when this ends a refusal. */
  acked(now: number, rttMs: number): boolean {
    const rtt = Math.max(0, rttMs);
    this.#srtt = this.#srtt === 0 ? rtt : this.#srtt + (rtt - this.#srtt) / 8;
    if (rtt < this.#nextMinRtt) this.#nextMinRtt = rtt;
    if (rtt <= this.#minRtt || now - this.#minRttAt > MIN_RTT_WINDOW_MS) {
      // A new low, or the period ended: the smallest of the last period is the path's minimum now.
      this.#minRtt = Math.min(rtt, this.#nextMinRtt);
      this.#minRttAt = now;
      this.#nextMinRtt = Number.POSITIVE_INFINITY;
    }
    if (this.#refused) {
      this.#refused = false;
      this.#probes = 0;
      this.#size = this.floor;
      this.#startup = true;
      this.#roundStart = -1;
      return true;
    }
    if (this.#roundStart < 0) {
      this.#roundStart = now;
      this.#roundMinRtt = rtt;
      this.#roundAcks = 1;
      this.#roundLimited = false;
      return false;
    }
    this.#roundAcks++;
    if (rtt < this.#roundMinRtt) this.#roundMinRtt = rtt;
    const elapsed = now - this.#roundStart;
    if (elapsed >= Math.max(MIN_ROUND_MS, this.#minRtt)) this.#endRound(now, elapsed);
    return false;
  }

  #endRound(now: number, elapsed: number): void {
    this.#rate = (this.#roundAcks * 1000) / elapsed;
    const tolerance = Math.max(TOLERANCE_MS, this.#minRtt / 4);
    const queueing = this.#roundMinRtt - this.#minRtt;
    if (queueing > 2 * tolerance) {
      this.#startup = false;
      this.#size = Math.max(this.floor, Math.floor((this.#size * 3) / 4));
    } else if (queueing <= tolerance && this.#roundLimited) {
      const grown = this.#startup ? this.#size * 2 : this.#size + Math.max(1, Math.floor(this.#size / 8));
      this.#size = Math.max(this.floor, Math.min(this.#cap, this.ceiling, grown));
    } else if (queueing > tolerance) {
      this.#startup = false;
    }
    this.#roundStart = now;
    this.#roundMinRtt = Number.POSITIVE_INFINITY;
    this.#roundAcks = 0;
    this.#roundLimited = false;
  }

  /** A DISKFULL/DISKERROR reply: nothing more is sent until a probe. */
  refuse(): void {
    this.#refused = true;
    this.#probes = 0;
  }

  /** The connection machine asks for a probe: one record may go while refused. */
  probe(): void {
    if (this.#refused) this.#probes = 1;
  }

  /**
   * The link ended with a reply out of sequence: the server dropped acknowledgements it could not write. The
   * window the next links may reach is half of this one's (at least the floor) for CAP_HOLD_MS.
   */
  sequenceGap(now: number): void {
    this.#cap = Math.max(this.floor, Math.floor(this.#size / 2));
    this.#capUntil = now + CAP_HOLD_MS;
  }
}
