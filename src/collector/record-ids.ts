/**
 * The collector's side of record identities (docs/protocol.md "Record identities", docs/collector.md "Every record
 * once"): the highest record number written per agent, so that a record written already (a resend after a lost
 * acknowledgement, an agent restarted after kill -9) is acknowledged and not written again.
 *
 * - Exactness: an agent sends its records in order and sends again only from its oldest unacknowledged one, so
 *   every record below the highest number written for it was written too: "seq ≤ highest ⇒ written already".
 *   The check is made when a batch is handed to the log writer (one batch at a time), against what is written and
 *   what that batch holds, so two sessions of one agent (an old one not yet noticed dead, and its successor)
 *   cannot both write a record. A write that fails changes nothing.
 * - Scope: an entry remembers where its agent spoke from (its session's identity: TLS/Kerberos name, else the
 *   address). Another scope claiming the same agent id (an agent that moved, or a client pretending) starts from
 *   nothing instead of inheriting (or raising) the highest number: at worst a resend is written twice, a record is
 *   never dropped because someone else claimed a high number.
 * - Bounded: at most `maxAgents` entries, the least recently written dropped first (it can only cause a duplicate).
 * - Across a restart: rebuilt at start from the last ` rid=<agent>:<seq>` fields of the log (the last
 *   `TAIL_SCAN_BYTES` of log_file, and of log_file.1 when log_file is shorter). What is in the log is exactly what
 *   was written, so the rebuilt numbers are right; an agent whose last record is further back can only get a
 *   duplicate, never lose one. A rebuilt entry's scope is unknown: the first session that claims it adopts it.
 * - A record without an identity whose line ends with what reads as a rid field (its own text) gets ` rid=-`
 *   appended, so that no client can plant a number the rebuild would believe.
 */
import { closeSync, readSync } from 'node:fs';
import { errnoOf, openRegularForRead } from '../fs/safe-files.js';
import type { Hello } from '../protocol/record-id.js';

/** What a start reads of the log (and of log_file.1) to rebuild the table. */
export const TAIL_SCAN_BYTES = 16 << 20;
export const NO_RID_FIELD = Buffer.from(' rid=-');

/** The last field of a line, when it is a rid field. */
const RID_AT_END = / rid=([A-Za-z0-9._-]{1,64}):(\d{1,16})$/;

/** One session's identity claim: its hello, and where it spoke from. */
export interface RidSession extends Hello {
  scope: string;
}

interface Entry {
  /** null: rebuilt from the log; the first session that claims the agent adopts it. */
  scope: string | null;
  high: number;
}

export class RecordIdTable {
  #max: number;
  readonly #agents = new Map<string, Entry>();
  /** Records acknowledged without being written again, since start. */
  duplicates = 0;

  constructor(maxAgents: number) {
    this.#max = Math.max(1, maxAgents);
  }

  get size(): number {
    return this.#agents.size;
  }

  set maxAgents(n: number) {
    this.#max = Math.max(1, n);
    this.#trim();
  }

  /** The highest number written for this agent as seen from `scope` (0: none). */
  highest(agent: string, scope: string): number {
    const e = this.#agents.get(agent);
    if (!e) return 0;
    if (e.scope === null) {
      e.scope = scope;
      return e.high;
    }
    return e.scope === scope ? e.high : 0;
  }

  /** Records up to `seq` of this agent are written (from `scope`). */
  written(agent: string, scope: string, seq: number): void {
    const e = this.#agents.get(agent);
    if (e && (e.scope === scope || e.scope === null) && e.high >= seq) return;
    this.#agents.delete(agent);
    this.#agents.set(agent, {
      scope,
      high: e && (e.scope === scope || e.scope === null) ? Math.max(e.high, seq) : seq,
    });
    this.#trim();
  }

  /** An entry rebuilt from the log (scope unknown). */
  restore(agent: string, seq: number): void {
    const e = this.#agents.get(agent);
    if (e && e.high >= seq) return;
    this.#agents.delete(agent);
    this.#agents.set(agent, { scope: null, high: seq });
    this.#trim();
  }

  #trim(): void {
    while (this.#agents.size > this.#max) {
      const oldest = this.#agents.keys().next().value as string;
      this.#agents.delete(oldest);
    }
  }

  /** Rebuilds from the tail of the log: `files` newest first (log_file, then log_file.1). Returns agents found. */
  rebuild(
    files: readonly string[],
    budget = TAIL_SCAN_BYTES,
  ): { agents: number; bytes: number; found: ReadonlyMap<string, number> } {
    let left = budget;
    const found = new Map<string, number>();
    for (const file of files) {
      if (left <= 0) break;
      const tail = readTail(file, left);
      if (tail === null) continue;
      left -= tail.length;
      for (const [agent, seq] of ridsIn(tail)) {
        if ((found.get(agent) ?? 0) < seq) found.set(agent, seq);
      }
    }
    for (const [agent, seq] of found) this.restore(agent, seq);
    return { agents: found.size, bytes: budget - left, found };
  }
}

/** Every ` rid=agent:seq` that ends a complete line of `buf`. */
export function* ridsIn(buf: Buffer): Generator<[string, number]> {
  let start = 0;
  while (start < buf.length) {
    const nl = buf.indexOf(0x0a, start);
    if (nl < 0) break;
    // Only the end of the line matters: look at its last 100 bytes.
    const from = Math.max(start, nl - 100);
    const m = RID_AT_END.exec(buf.toString('latin1', from, nl));
    if (m) yield [m[1]!, Number(m[2])];
    start = nl + 1;
  }
}

/** True when a line (without its newline) ends with what the rebuild would read as a rid field. */
export function endsLikeRid(line: Buffer): boolean {
  const from = Math.max(0, line.length - 100);
  return RID_AT_END.test(line.toString('latin1', from));
}

/** The last `max` bytes of a regular file from its first complete line on; null when missing or unreadable. */
function readTail(file: string, max: number): Buffer | null {
  let fd: number;
  let size: number;
  try {
    const opened = openRegularForRead(file, 'log file');
    fd = opened.fd;
    size = opened.stat.size;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return null;
    throw err;
  }
  try {
    const len = Math.min(size, max);
    const buf = Buffer.allocUnsafe(len);
    let off = 0;
    while (off < len) {
      const n = readSync(fd, buf, off, len - off, size - len + off);
      if (n === 0) break;
      off += n;
    }
    const data = buf.subarray(0, off);
    if (len === size) return data;
    const nl = data.indexOf(0x0a);
    return nl < 0 ? Buffer.alloc(0) : data.subarray(nl + 1);
  } finally {
    closeSync(fd);
  }
}
