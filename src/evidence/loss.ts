/**
 * Loss you can see (docs/loss.md): the pure logic shared by the collector's live accounting (HostTable,
 * src/collector/hosts.ts) and `auditrelay report` (src/evidence/report.ts). Nothing here does I/O.
 *
 * Three kinds of evidence of loss, from what the records carry:
 *
 * 1. **Record identities** (docs/record-id, RECORD-ID.md): an auditrelay agent numbers its records (`seq`,
 *    monotonic per agent id across its restarts); the collector writes ` rid=<agent>:<seq>` at the end of each
 *    record line. Numbers that never arrived between the first and the last one seen are a gap: records lost
 *    between the agent's queue and the log (or written by another collector after a failover: `report` reads all
 *    the logs together, union by agent id). A new `boot` in a session's hello is a restart of the agent.
 * 2. **The kernel's and auditd's own reports**, which travel as records: `CONFIG_CHANGE op=set audit_lost=0 old=N`
 *    (the kernel's lost counter, N events lost since it was last reset, written when `auditctl --reset-lost` or an
 *    auditd resets it), a `lost=N` field in a `CONFIG_CHANGE` or `DAEMON_*` record, `DAEMON_ABORT` (auditd stopped
 *    on an error), `DAEMON_ERR` (auditd hit an error, e.g. it could not write its log); `DAEMON_START`,
 *    `DAEMON_END` and `DAEMON_RESUME` are counted as what they are (auditd started, stopped, resumed logging), not
 *    as loss. Our agent emits no loss markers of its own: when its queue is full it stops reading its input
 *    (auditd's dispatcher then queues, and past `q_depth` drops records for every plugin, logged to syslog only).
 * 3. **Audit serial numbers** (`msg=audit(T:SERIAL)`): the kernel numbers events, one serial per event, per boot.
 *    Serials missing between two events of one boot are events that were numbered but never arrived (rate limit,
 *    kauditd's queue, auditd's dispatcher, the link). A hint, not proof: loss before an event gets its serial
 *    (backlog limit) does not show, and two hosts writing without `node=` look like one. auditd's own `DAEMON_*`
 *    records use auditd's counter and are left out. Used by `report` only.
 *
 * Memory is bounded everywhere: numbers seen are kept as ranges, at most `maxRanges` per sequence; past that the
 * two oldest ranges are merged and the records between them are counted as missing but no longer listed
 * (`forgottenMissing`, `forgottenBelow`): a late record there is then taken for a duplicate.
 */

/** A record identity as the collector writes it: ` rid=<agent>:<seq>`. */
export interface Rid {
  agent: string;
  seq: number;
}

/** An agent id (RECORD-ID.md): 1 to 64 of `A-Z a-z 0-9 . _ -`. */
export const AGENT_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** The ` rid=AGENT:SEQ` field at the very end of a line (where the collector appends it), or null. */
const RID_AT_END = / rid=([A-Za-z0-9._-]{1,64}):(\d{1,16})$/;

/**
 * The record identity the collector appended to a log line, or null. Only the last field counts: the collector
 * appends it after everything else (the identity stamp, the ENRICHED part).
 */
export function ridOfLine(line: string): Rid | null {
  if (line.lastIndexOf(' rid=') < 0) return null;
  const m = RID_AT_END.exec(line);
  if (!m) return null;
  const seq = Number(m[2]);
  if (!Number.isSafeInteger(seq)) return null;
  return { agent: m[1]!, seq };
}

/** A set of non-negative integers as sorted, disjoint, inclusive ranges; at most `maxRanges` of them. */
export class SeqRanges {
  /** Flat [lo0, hi0, lo1, hi1, ...], sorted. */
  #r: number[] = [];
  readonly #maxRanges: number;
  /** Numbers missing between ranges that were merged to stay within the bound (no longer listed). */
  forgottenMissing = 0;
  /** Everything below this was merged (0: nothing). */
  forgottenBelow = 0;

  constructor(maxRanges: number) {
    this.#maxRanges = Math.max(2, maxRanges);
  }

  get empty(): boolean {
    return this.#r.length === 0;
  }

  get min(): number {
    return this.#r.length > 0 ? this.#r[0]! : Number.NaN;
  }

  get max(): number {
    return this.#r.length > 0 ? this.#r[this.#r.length - 1]! : Number.NaN;
  }

  /** Ranges held now. */
  get ranges(): number {
    return this.#r.length / 2;
  }

  /**
   * Adds `n`. Returns what it was: 'new' (extends or opens a range), 'dup' (already in the set), with `skipped`:
   * how many numbers it jumped over past the highest so far (a new gap), and `filled`: 1 when it landed in a gap.
   */
  add(n: number): { kind: 'new' | 'dup'; skipped: number; filled: number } {
    const r = this.#r;
    const len = r.length;
    if (len === 0) {
      r.push(n, n);
      return { kind: 'new', skipped: 0, filled: 0 };
    }
    const hi = r[len - 1]!;
    // The common case first: the next number in order.
    if (n === hi + 1) {
      r[len - 1] = n;
      return { kind: 'new', skipped: 0, filled: 0 };
    }
    if (n > hi) {
      r.push(n, n);
      this.#bound();
      return { kind: 'new', skipped: n - hi - 1, filled: 0 };
    }
    // Binary search: the last range whose lo <= n.
    let a = 0;
    let b = len / 2 - 1;
    let at = -1;
    while (a <= b) {
      const m = (a + b) >> 1;
      if (r[2 * m]! <= n) {
        at = m;
        a = m + 1;
      } else b = m - 1;
    }
    if (at >= 0 && n <= r[2 * at + 1]!) return { kind: 'dup', skipped: 0, filled: 0 };
    if (n < this.forgottenBelow) return { kind: 'dup', skipped: 0, filled: 0 };
    // n lies before range at+1 (and after range at, if any).
    const next = at + 1;
    const joinsPrev = at >= 0 && r[2 * at + 1]! === n - 1;
    const joinsNext = next < len / 2 && r[2 * next]! === n + 1;
    const below = at < 0; // below the lowest range: not a gap being filled, the sequence starts earlier
    if (joinsPrev && joinsNext) {
      r[2 * at + 1] = r[2 * next + 1]!;
      r.splice(2 * next, 2);
    } else if (joinsPrev) r[2 * at + 1] = n;
    else if (joinsNext) r[2 * next] = n;
    else {
      r.splice(2 * next, 0, n, n);
      this.#bound();
    }
    return { kind: 'new', skipped: 0, filled: below ? 0 : 1 };
  }

  /** Numbers missing between the lowest and the highest (listed and forgotten). */
  missing(): number {
    let m = this.forgottenMissing;
    const r = this.#r;
    for (let i = 2; i < r.length; i += 2) m += r[i]! - r[i - 1]! - 1;
    return m;
  }

  /** Numbers present. */
  count(): number {
    let c = 0;
    const r = this.#r;
    for (let i = 0; i < r.length; i += 2) c += r[i + 1]! - r[i]! + 1;
    return c - this.forgottenMissing;
  }

  /** The gaps still listed, lowest first, as inclusive [from, to]; at most `limit`. */
  gaps(limit = Number.POSITIVE_INFINITY): [number, number][] {
    const out: [number, number][] = [];
    const r = this.#r;
    for (let i = 2; i < r.length && out.length < limit; i += 2) out.push([r[i - 1]! + 1, r[i]! - 1]);
    return out;
  }

  /** Gaps listed now. */
  get gapCount(): number {
    return Math.max(0, this.#r.length / 2 - 1);
  }

  #bound(): void {
    const r = this.#r;
    if (r.length / 2 <= this.#maxRanges) return;
    // Merge the two oldest ranges: the gap between them is counted, no longer listed.
    this.forgottenMissing += r[2]! - r[1]! - 1;
    r[1] = r[3]!;
    r.splice(2, 2);
    this.forgottenBelow = r[1]! + 1;
  }
}

/** What a record says about loss by itself (kind 2 of the module comment); null for almost every record. */
export interface LossSignal {
  /** The record type (`CONFIG_CHANGE`, `DAEMON_ABORT`...). */
  type: string;
  kind: 'kernel-lost' | 'daemon-abort' | 'daemon-error' | 'daemon-start' | 'daemon-end' | 'daemon-resume';
  /** Events the report says were lost (kernel-lost only). */
  lost: number;
}

const LOST_RESET = /(?:^|\s)op=set audit_lost=\d+ old=(\d+)(?:\s|$)/;
const LOST_FIELD = /(?:^|\s)lost=(\d{1,15})(?:\s|$)/;

/**
 * The loss signal of a record, from its type and body (the text after `msg=audit(...): `); null when it has none.
 * A `CONFIG_CHANGE` without a lost count, and every other type, is no signal.
 */
export function lossSignalOf(type: string, body: string): LossSignal | null {
  if (type === 'CONFIG_CHANGE') {
    const reset = LOST_RESET.exec(body);
    if (reset) {
      const lost = Number(reset[1]);
      return lost > 0 ? { type, kind: 'kernel-lost', lost } : null;
    }
    const f = LOST_FIELD.exec(body);
    if (f && Number(f[1]) > 0) return { type, kind: 'kernel-lost', lost: Number(f[1]) };
    return null;
  }
  if (!type.startsWith('DAEMON_')) return null;
  const f = LOST_FIELD.exec(body);
  if (f && Number(f[1]) > 0) return { type, kind: 'kernel-lost', lost: Number(f[1]) };
  switch (type) {
    case 'DAEMON_ABORT':
      return { type, kind: 'daemon-abort', lost: 0 };
    case 'DAEMON_ERR':
      return { type, kind: 'daemon-error', lost: 0 };
    case 'DAEMON_START':
      return { type, kind: 'daemon-start', lost: 0 };
    case 'DAEMON_END':
      return { type, kind: 'daemon-end', lost: 0 };
    case 'DAEMON_RESUME':
      return { type, kind: 'daemon-resume', lost: 0 };
    default:
      return null;
  }
}

/** `bytes` (ASCII) at `at` in `line`: a plain loop (Buffer's compare and toString cost far more on short spans). */
function bytesAt(line: Buffer, at: number, bytes: Uint8Array): boolean {
  const n = bytes.length;
  if (line.length < at + n) return false;
  for (let i = 0; i < n; i++) if (line[at + i] !== bytes[i]) return false;
  return true;
}

const NODE_EQ = Buffer.from('node=');
const TYPE_EQ = Buffer.from('type=');
const CONFIG_CHANGE = Buffer.from('CONFIG_CHANGE ');
const DAEMON = Buffer.from('DAEMON_');

/**
 * The loss signal of a raw record line (`[node=N ]type=T msg=audit(...): body`), for the collector's hot path:
 * a few byte comparisons for every record that is not `CONFIG_CHANGE` or `DAEMON_*`.
 */
export function lossSignalOfLine(line: Buffer): LossSignal | null {
  let p = 0;
  if (bytesAt(line, 0, NODE_EQ)) {
    p = 5;
    // Node names are short; a loop beats indexOf on them. Bounded: a name is at most 255 bytes here.
    const stop = Math.min(line.length, 5 + 256);
    while (p < stop && line[p] !== 0x20) p++;
    if (line[p] !== 0x20) return null;
    p++;
  }
  if (!bytesAt(line, p, TYPE_EQ)) return null;
  const t = p + 5;
  if (!bytesAt(line, t, CONFIG_CHANGE) && !bytesAt(line, t, DAEMON)) return null;
  const text = line.toString('latin1');
  const typeEnd = text.indexOf(' ', t);
  if (typeEnd < 0) return null;
  const close = text.indexOf(')', typeEnd);
  const body = close < 0 ? text.slice(typeEnd + 1) : text.slice(close + 1);
  return lossSignalOf(text.slice(t, typeEnd), body);
}

/** Per-host counts of the loss signals (kind 2). */
export interface SignalCounts {
  kernelLost: number;
  kernelLossReports: number;
  daemonAborts: number;
  daemonErrors: number;
  daemonStarts: number;
  daemonEnds: number;
  daemonResumes: number;
}

export function emptySignalCounts(): SignalCounts {
  return {
    kernelLost: 0,
    kernelLossReports: 0,
    daemonAborts: 0,
    daemonErrors: 0,
    daemonStarts: 0,
    daemonEnds: 0,
    daemonResumes: 0,
  };
}

export function countSignal(c: SignalCounts, s: LossSignal): void {
  switch (s.kind) {
    case 'kernel-lost':
      c.kernelLost += s.lost;
      c.kernelLossReports++;
      break;
    case 'daemon-abort':
      c.daemonAborts++;
      break;
    case 'daemon-error':
      c.daemonErrors++;
      break;
    case 'daemon-start':
      c.daemonStarts++;
      break;
    case 'daemon-end':
      c.daemonEnds++;
      break;
    case 'daemon-resume':
      c.daemonResumes++;
      break;
  }
}

/** The signals that mean something was (or may have been) lost: the kernel's count, auditd's aborts and errors. */
export function signalsShowLoss(c: SignalCounts): boolean {
  return c.kernelLost > 0 || c.daemonAborts > 0 || c.daemonErrors > 0;
}

/** One agent's sequence (kind 1). */
export class AgentSequence {
  readonly agent: string;
  readonly seqs: SeqRanges;
  records = 0;
  duplicates = 0;
  /** Boot (ms) of its latest session (live only; null: not known). */
  boot: number | null = null;
  restarts = 0;

  constructor(agent: string, maxRanges: number) {
    this.agent = agent;
    this.seqs = new SeqRanges(maxRanges);
  }

  /** A record with this seq was written. */
  note(seq: number): { kind: 'new' | 'dup'; skipped: number; filled: number } {
    this.records++;
    const r = this.seqs.add(seq);
    if (r.kind === 'dup') this.duplicates++;
    return r;
  }

  /**
   * A session's hello: `boot` is the agent's process start. A later boot than the one known is a restart; an
   * earlier one is an old session still open (ignored).
   */
  noteBoot(boot: number): boolean {
    if (this.boot === null) {
      this.boot = boot;
      return false;
    }
    if (boot <= this.boot) return false;
    this.boot = boot;
    this.restarts++;
    return true;
  }
}

/**
 * Audit serials of one host (kind 3), split into boots: two events belong to the same boot unless their serials
 * run against their times (a later event with a much lower serial: the kernel started counting again), or they
 * are far apart in time and serial both (then nothing links them). At most `maxEpochs` boots, oldest dropped.
 */
export class SerialEpochs {
  readonly #epochs: SerialEpoch[] = [];
  readonly #maxRanges: number;
  readonly #maxEpochs: number;
  /** Boots dropped to stay within the bound, and their missing serials. */
  droppedEpochs = 0;
  droppedMissing = 0;

  constructor(maxRanges: number, maxEpochs: number) {
    this.#maxRanges = maxRanges;
    this.#maxEpochs = Math.max(1, maxEpochs);
  }

  /** An event record: time in ms, its serial. */
  add(timeMs: number, serial: number): void {
    for (const e of this.#epochs) {
      if (e.accepts(timeMs, serial)) {
        e.add(timeMs, serial);
        return;
      }
    }
    const e = new SerialEpoch(this.#maxRanges);
    e.add(timeMs, serial);
    this.#epochs.push(e);
    if (this.#epochs.length > this.#maxEpochs) {
      // The one with the oldest events goes.
      let oldest = 0;
      for (let i = 1; i < this.#epochs.length; i++)
        if (this.#epochs[i]!.minT < this.#epochs[oldest]!.minT) oldest = i;
      const [gone] = this.#epochs.splice(oldest, 1);
      this.droppedEpochs++;
      this.droppedMissing += gone!.serials.missing();
    }
  }

  /** Boots, oldest first. */
  epochs(): SerialEpoch[] {
    return [...this.#epochs].sort((a, b) => a.minT - b.minT);
  }

  missing(): number {
    let m = this.droppedMissing;
    for (const e of this.#epochs) m += e.serials.missing();
    return m;
  }
}

/** Serials a boot's counter may run behind its time order (events are numbered when they start, written when they end). */
export const SERIAL_SLACK = 1000;
/** Time (ms) events may be written out of order. */
export const TIME_SLACK_MS = 10_000;
/** Farther apart in time than this, and in serial by more than SERIAL_SLACK: not linked (a new boot, as far as we know). */
export const LINK_WINDOW_MS = 3_600_000;

export class SerialEpoch {
  readonly serials: SeqRanges;
  minT = Number.POSITIVE_INFINITY;
  maxT = Number.NEGATIVE_INFINITY;
  /** Lowest and highest serial. */
  minS = Number.POSITIVE_INFINITY;
  maxS = Number.NEGATIVE_INFINITY;

  constructor(maxRanges: number) {
    this.serials = new SeqRanges(maxRanges);
  }

  accepts(t: number, s: number): boolean {
    // Later (or as late) than the latest event, with a serial well below it: the counter started again.
    if (t >= this.maxT - TIME_SLACK_MS && s < this.maxS - SERIAL_SLACK) return false;
    // Earlier than the earliest, with a serial well above it: the same, seen from the other side.
    if (t <= this.minT + TIME_SLACK_MS && s > this.minS + SERIAL_SLACK) return false;
    // Far from this boot's events in time: linked only when the serials continue (a quiet host).
    const far = t > this.maxT + LINK_WINDOW_MS || t < this.minT - LINK_WINDOW_MS;
    if (far) {
      const near =
        (s >= this.maxS && s - this.maxS <= SERIAL_SLACK) ||
        (s <= this.minS && this.minS - s <= SERIAL_SLACK);
      if (!near) return false;
    }
    return true;
  }

  add(t: number, s: number): void {
    this.serials.add(s);
    if (s < this.minS) this.minS = s;
    if (s > this.maxS) this.maxS = s;
    if (t < this.minT) this.minT = t;
    if (t > this.maxT) this.maxT = t;
  }
}
