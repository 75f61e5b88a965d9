/**
 * Per-host accounting (docs/collector.md, "Hosts"): for every host that sends to the collector, the records and
 * bytes written for it, its connections, when it was last heard from, and whether it has been silent for longer
 * than `host_silence_timeout` — so that a dead agent is noticed centrally (metric, status, one log line per host
 * and silence), not weeks later.
 *
 * Who a host is, in this order (src/collector/collector.ts resolves it per session):
 *   1. the identity its session authenticated as (`ClientSession.identity`: a krb5 principal; a TLS identity);
 *   2. else the node name its records carry (`node=NAME` at the start of the first record of the session);
 *   3. else its address.
 * A session without an identity is accounted under the node name last seen from its address (or the address)
 * until its first record says otherwise; an entry created only for that and never used again is dropped.
 *
 * Memory is bounded: at most `maxHosts` entries. A host beyond that is accounted under OTHER_HOST, with one
 * warning per interval naming it (names come from unauthenticated records, so a hostile client could otherwise
 * make the table grow without end). Node names are reduced to printable ASCII (`%HH` for other bytes) and 255
 * bytes, so they are safe in log lines, JSON and metric labels.
 */

export const OTHER_HOST = '(other)';
/** Longest host name kept (a DNS name has at most 253 characters). */
export const MAX_HOST_NAME = 255;

export type HostKind = 'krb5' | 'tls' | 'node' | 'address' | 'other';

export interface HostEntry {
  readonly name: string;
  readonly kind: HostKind;
  records: number;
  bytes: number;
  /** Sessions of this host open now. */
  connected: number;
  /** Connections accepted for it so far. */
  sessions: number;
  firstSeen: number;
  /** Last record or heartbeat (ms since the epoch). */
  lastSeen: number;
  /** When it was reported silent (null: it is not). */
  silentSince: number | null;
  /** Created for a session whose first record then named another host, and used for nothing else. */
  provisional: boolean;
}

export interface HostView {
  host: string;
  kind: HostKind;
  records: number;
  bytes: number;
  connected: boolean;
  connections: number;
  lastSeen: string;
  silentSeconds: number | null;
}

export interface HostsSummary {
  hosts: number;
  connected: number;
  silent: number;
  /** Records accounted under OTHER_HOST (the table was full). */
  overflowRecords: number;
  maxHosts: number;
  silenceTimeoutSeconds: number;
}

export interface HostLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface HostTableOptions {
  maxHosts: number;
  /** 0 = no silence detection. */
  silenceMs: number;
  log: HostLogger;
  now?: () => number;
}

/** `node=NAME` at the start of a record line, reduced to a safe name; null when there is none. */
export function nodeNameOf(line: Buffer): string | null {
  // "node=" in bytes
  if (
    line.length < 6 ||
    line[0] !== 0x6e ||
    line[1] !== 0x6f ||
    line[2] !== 0x64 ||
    line[3] !== 0x65 ||
    line[4] !== 0x3d
  )
    return null;
  let end = line.indexOf(0x20, 5);
  if (end < 0) end = line.length;
  if (end === 5) return null;
  return safeHostName(line.subarray(5, Math.min(end, 5 + MAX_HOST_NAME)));
}

/** Printable ASCII as is, every other byte (and '%') as %HH. */
export function safeHostName(bytes: Buffer | string): string {
  const b = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
  let out = '';
  for (const c of b) {
    out +=
      c > 0x20 && c < 0x7f && c !== 0x25 ? String.fromCharCode(c) : `%${c.toString(16).padStart(2, '0')}`;
  }
  return out.length > MAX_HOST_NAME ? out.slice(0, MAX_HOST_NAME) : out;
}

export class HostTable {
  readonly #hosts = new Map<string, HostEntry>();
  /** Address → the node name its last session's records carried (bounded like the table). */
  readonly #nodeOfAddress = new Map<string, string>();
  readonly #log: HostLogger;
  readonly #now: () => number;
  #maxHosts: number;
  #silenceMs: number;
  #silent = 0;
  #overflowRecords = 0;
  #overflowWarnedAt = 0;
  #overflowSince = 0;

  constructor(o: HostTableOptions) {
    this.#maxHosts = o.maxHosts;
    this.#silenceMs = o.silenceMs;
    this.#log = o.log;
    this.#now = o.now ?? Date.now;
  }

  get size(): number {
    return this.#hosts.size;
  }

  reconfigure(maxHosts: number, silenceMs: number): void {
    this.#maxHosts = maxHosts;
    if (silenceMs !== this.#silenceMs) {
      this.#silenceMs = silenceMs;
      if (silenceMs === 0) {
        for (const h of this.#hosts.values()) h.silentSince = null;
        this.#silent = 0;
      }
    }
  }

  /** The host a session without identity is accounted under until its first record: its address's last node. */
  provisionalName(address: string): { name: string; kind: HostKind } {
    const node = this.#nodeOfAddress.get(address);
    return node !== undefined ? { name: node, kind: 'node' } : { name: address, kind: 'address' };
  }

  /** A session of host `name` joins (its first message). */
  attach(name: string, kind: HostKind): HostEntry {
    const now = this.#now();
    let h = this.#hosts.get(name);
    if (!h) {
      if (this.#hosts.size >= this.#maxHosts && name !== OTHER_HOST) {
        this.#warnOverflow(name, now);
        return this.attach(OTHER_HOST, 'other');
      }
      h = {
        name,
        kind,
        records: 0,
        bytes: 0,
        connected: 0,
        sessions: 0,
        firstSeen: now,
        lastSeen: now,
        silentSince: null,
        provisional: false,
      };
      this.#hosts.set(name, h);
    }
    h.connected++;
    h.sessions++;
    this.seen(h, now);
    return h;
  }

  /** A session of `h` ended. */
  detach(h: HostEntry): void {
    h.connected = Math.max(0, h.connected - 1);
  }

  /**
   * The session's first record named another host than the one it was accounted under (`from`): it moves to
   * `name`. `from` is dropped when nothing but this session ever used it.
   */
  move(from: HostEntry, name: string, kind: HostKind, address: string): HostEntry {
    if (kind === 'node') this.#rememberNode(address, name);
    if (from.name === name) return from;
    from.connected = Math.max(0, from.connected - 1);
    from.sessions = Math.max(0, from.sessions - 1);
    if (from.records === 0 && from.connected === 0 && from.sessions === 0 && from.name !== OTHER_HOST) {
      // Dropped first, so that it does not take the place of the host it really is in a full table.
      from.provisional = true;
      if (from.silentSince !== null) this.#silent--;
      this.#hosts.delete(from.name);
    }
    const to = this.attach(name, kind);
    return to;
  }

  /** A record or heartbeat from `h`. */
  seen(h: HostEntry, now = this.#now()): void {
    h.lastSeen = now;
    if (h.silentSince === null) return;
    this.#silent--;
    const silentFor = Math.round((now - h.silentSince + this.#silenceMs) / 1000);
    h.silentSince = null;
    this.#log.info(
      { host: h.name, silentSeconds: silentFor },
      `host ${h.name} is sending again after ${silentFor} s of silence`,
    );
  }

  /** Records written for `h`. */
  count(h: HostEntry, records: number, bytes: number): void {
    h.records += records;
    h.bytes += bytes;
    if (h.name === OTHER_HOST) this.#overflowRecords += records;
  }

  /** Marks hosts silent for longer than the timeout: one warning per host and silence. */
  sweep(now = this.#now()): void {
    if (this.#silenceMs <= 0) return;
    for (const h of this.#hosts.values()) {
      if (h.silentSince !== null || now - h.lastSeen <= this.#silenceMs) continue;
      h.silentSince = now;
      this.#silent++;
      const secs = Math.round((now - h.lastSeen) / 1000);
      this.#log.warn(
        {
          host: h.name,
          kind: h.kind,
          lastSeen: new Date(h.lastSeen).toISOString(),
          connected: h.connected > 0,
          records: h.records,
          silenceTimeoutSeconds: this.#silenceMs / 1000,
        },
        `host ${h.name} has sent nothing (no record, no heartbeat) for ${secs} s, longer than host_silence_timeout = ${this.#silenceMs / 1000} s (last seen ${new Date(h.lastSeen).toISOString()}, ${h.connected > 0 ? 'still connected' : 'not connected'}): is its agent running?`,
      );
    }
  }

  summary(): HostsSummary {
    let connected = 0;
    for (const h of this.#hosts.values()) if (h.connected > 0) connected++;
    return {
      hosts: this.#hosts.size,
      connected,
      silent: this.#silent,
      overflowRecords: this.#overflowRecords,
      maxHosts: this.#maxHosts,
      silenceTimeoutSeconds: this.#silenceMs / 1000,
    };
  }

  /** Every host (silent ones first, then by name); at most `limit`. */
  list(limit = Number.POSITIVE_INFINITY): HostView[] {
    const now = this.#now();
    const all = [...this.#hosts.values()].sort((a, b) =>
      (a.silentSince === null) !== (b.silentSince === null)
        ? a.silentSince === null
          ? 1
          : -1
        : a.name < b.name
          ? -1
          : a.name > b.name
            ? 1
            : 0,
    );
    return all.slice(0, limit).map((h) => ({
      host: h.name,
      kind: h.kind,
      records: h.records,
      bytes: h.bytes,
      connected: h.connected > 0,
      connections: h.connected,
      lastSeen: new Date(h.lastSeen).toISOString(),
      silentSeconds: h.silentSince === null ? null : Math.round((now - h.lastSeen) / 1000),
    }));
  }

  /** The entries themselves (metrics read them at scrape time). */
  entries(): IterableIterator<HostEntry> {
    return this.#hosts.values();
  }

  // --- Record identities (RECORD-ID.md; docs/protocol.md). The collector reports them here; per-host loss
  // accounting (what a host's numbers say about records never received) is built on these two hooks.

  /** A session of host `h` said hello: its agent id and boot (a new boot of a known agent = it restarted). */
  agentSession(_h: HostEntry, _agent: string, _boot: number): void {}

  /**
   * Records of host `h` with identities, in order: `seqs` of `agent` were written (`duplicate` false), or were
   * acknowledged without being written again because they were written already (`duplicate` true).
   */
  recordIds(_h: HostEntry, _agent: string, _seqs: readonly number[], _duplicate: boolean): void {}

  #rememberNode(address: string, node: string): void {
    this.#nodeOfAddress.delete(address);
    this.#nodeOfAddress.set(address, node);
    if (this.#nodeOfAddress.size > this.#maxHosts) {
      const oldest = this.#nodeOfAddress.keys().next().value;
      if (oldest !== undefined) this.#nodeOfAddress.delete(oldest);
    }
  }

  #warnOverflow(name: string, now: number): void {
    this.#overflowSince++;
    if (now - this.#overflowWarnedAt < 60_000) return;
    this.#log.warn(
      { host: name, maxHosts: this.#maxHosts, newHosts: this.#overflowSince },
      `the host table is full (max_hosts = ${this.#maxHosts}): ${this.#overflowSince} new host(s) since the last warning, e.g. ${name}, are accounted as ${OTHER_HOST}; raise max_hosts if this many hosts are real (unauthenticated clients name themselves with node=)`,
    );
    this.#overflowWarnedAt = now;
    this.#overflowSince = 0;
  }
}
