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
 *
 * Loss (docs/loss.md): the collector tells the table about every session's hello (`noteSession(agent, boot)`) and
 * every written record's identity (`noteRecord(host, rid)`); `count()` also reads every written record for the
 * kernel's and auditd's own loss reports. Per host: records that never arrived (gaps in an agent's sequence),
 * records that arrived after a later one (filling a gap), agent restarts, events the kernel reported lost, auditd's
 * aborts, errors, starts. The sequence logic is src/evidence/loss.ts (shared with `auditrelay report`). Agents are
 * bounded like hosts (`maxHosts`), and each agent's sequence to MAX_LIVE_RANGES ranges.
 */
import {
  AgentSequence,
  countSignal,
  emptySignalCounts,
  lossSignalOfLine,
  type Rid,
  type SignalCounts,
  signalsShowLoss,
} from '../evidence/loss.js';

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
  /** What is known about its losses; null until the first record identity or loss report. */
  loss: HostLoss | null;
}

/** Per-host loss counters (monotonic, except `missing`). */
export interface HostLoss extends SignalCounts {
  /** Records of its agents' sequences skipped over when a later one was written: never arrived (yet). */
  gapRecords: number;
  /** Gaps opened. */
  gaps: number;
  /** Records written after a later one of the same agent: they filled a gap. */
  lateRecords: number;
  /** Records written with an identity. */
  ridRecords: number;
  /** Restarts of its agents (a later boot in a session's hello). */
  restarts: number;
}

/** Ranges of an agent's sequence kept live (then the oldest gaps are counted but no longer listed). */
export const MAX_LIVE_RANGES = 64;

interface LiveAgent {
  seq: AgentSequence;
  /** The host its latest record was accounted under. */
  host: HostEntry | null;
  /** Restarts seen before its host was known. */
  pendingRestarts: number;
  /** Last gap warning (ms), and records of gaps since then not named in a warning. */
  warnedAt: number;
  unwarned: number;
}

/** At most one warning per agent (gaps) or host (loss reports) per minute. */
const LOSS_WARN_INTERVAL_MS = 60_000;

function newHostLoss(): HostLoss {
  return { ...emptySignalCounts(), gapRecords: 0, gaps: 0, lateRecords: 0, ridRecords: 0, restarts: 0 };
}

function lossOf(h: HostEntry): HostLoss {
  if (h.loss === null) h.loss = newHostLoss();
  return h.loss;
}

/** Records that never arrived, as far as is known now. */
export function missingNow(l: HostLoss): number {
  return Math.max(0, l.gapRecords - l.lateRecords);
}

/** Something was lost (or may have been): records missing, the kernel's count, auditd aborted or failed. */
export function showsLoss(l: HostLoss): boolean {
  return missingNow(l) > 0 || signalsShowLoss(l);
}

export interface HostLossView {
  missing: number;
  gaps: number;
  lateRecords: number;
  restarts: number;
  kernelLost: number;
  auditdAborts: number;
  auditdErrors: number;
  auditdStarts: number;
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
  /** Loss seen for it (null: no record identity, no loss report so far). */
  loss: HostLossView | null;
}

export interface HostsSummary {
  hosts: number;
  connected: number;
  silent: number;
  /** Records accounted under OTHER_HOST (the table was full). */
  overflowRecords: number;
  maxHosts: number;
  silenceTimeoutSeconds: number;
  /** Hosts with records missing, a kernel loss count, or an auditd abort or error. */
  hostsWithLoss: number;
  /** Records missing now, all hosts. */
  missingRecords: number;
  /** Events the kernel reported lost, all hosts. */
  kernelLost: number;
  /** Agents whose sequences are followed (at most max_hosts). */
  agents: number;
  /** Records (and hellos) of agents beyond that: not followed. */
  untrackedRecords: number;
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
  readonly #agents = new Map<string, LiveAgent>();
  readonly #reportWarnedAt = new WeakMap<HostEntry, number>();
  #untrackedRecords = 0;

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
        loss: null,
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

  /**
   * Records written for `h`. `lines` (the written lines, optionally interleaved with newline buffers of length 1)
   * are read for the kernel's and auditd's loss reports (a few byte comparisons per record).
   */
  count(h: HostEntry, records: number, bytes: number, lines?: readonly Buffer[]): void {
    h.records += records;
    h.bytes += bytes;
    if (h.name === OTHER_HOST) this.#overflowRecords += records;
    if (lines) for (const line of lines) if (line.length > 1) this.noteLine(h, line);
  }

  /** One written record line of `h`: counted when it is a loss report (CONFIG_CHANGE audit_lost, DAEMON_*). */
  noteLine(h: HostEntry, line: Buffer): void {
    const signal = lossSignalOfLine(line);
    if (!signal) return;
    countSignal(lossOf(h), signal);
    if (signal.kind === 'kernel-lost' || signal.kind === 'daemon-abort' || signal.kind === 'daemon-error') {
      const now = this.#now();
      if (now - (this.#reportWarnedAt.get(h) ?? -LOSS_WARN_INTERVAL_MS) < LOSS_WARN_INTERVAL_MS) return;
      this.#reportWarnedAt.set(h, now);
      this.#log.warn(
        { host: h.name, type: signal.type, lost: signal.lost },
        signal.kind === 'kernel-lost'
          ? `host ${h.name} reports that its kernel lost ${signal.lost} audit event(s) (${signal.type}); raise its backlog limit (auditctl -b) or lower the event rate`
          : `host ${h.name}: its auditd reports ${signal.type === 'DAEMON_ABORT' ? 'that it stopped on an error' : 'an error'} (${signal.type}); events may be missing there`,
      );
    }
  }

  /**
   * A session's hello (RECORD-ID.md): its agent id and boot (ms of the agent's start). A later boot than the
   * last one seen for that agent is counted as a restart of the agent (on its host, once its records say which).
   */
  noteSession(agent: string, boot: number): void {
    const a = this.#agent(agent);
    if (!a?.seq.noteBoot(boot)) return;
    if (a.host) {
      lossOf(a.host).restarts++;
      this.#log.info(
        { host: a.host.name, agent, boot: new Date(boot).toISOString(), restarts: a.seq.restarts },
        `agent ${agent} of host ${a.host.name} restarted (started ${new Date(boot).toISOString()})`,
      );
    } else a.pendingRestarts++;
  }

  /**
   * A record of `h` was written, with its identity (null: a client without record identities, e.g.
   * audisp-remote). A number past the highest one of its agent opens a gap (counted and logged); a number inside
   * a gap fills it (a late record: after a reconnection or a failover).
   */
  noteRecord(h: HostEntry, rid: Rid | null): void {
    if (rid === null) return;
    const a = this.#agent(rid.agent);
    if (!a) return;
    const loss = lossOf(h);
    if (a.host !== h) {
      a.host = h;
      loss.restarts += a.pendingRestarts;
      a.pendingRestarts = 0;
    }
    loss.ridRecords++;
    const before = a.seq.seqs.max;
    const r = a.seq.note(rid.seq);
    if (r.skipped > 0) {
      loss.gapRecords += r.skipped;
      loss.gaps++;
      const now = this.#now();
      if (now - a.warnedAt < LOSS_WARN_INTERVAL_MS) a.unwarned += r.skipped;
      else {
        const more = a.unwarned > 0 ? ` (and ${a.unwarned} more in gaps since the last warning)` : '';
        this.#log.warn(
          {
            host: h.name,
            agent: rid.agent,
            from: before + 1,
            to: rid.seq - 1,
            records: r.skipped,
            more: a.unwarned,
          },
          `host ${h.name}: records ${before + 1}..${rid.seq - 1} of agent ${rid.agent} (${r.skipped}) never arrived before record ${rid.seq}${more}: lost, or sent to another collector (auditrelay report over every collector's logs tells)`,
        );
        a.warnedAt = now;
        a.unwarned = 0;
      }
    }
    loss.lateRecords += r.filled;
  }

  /**
   * What the collector knew of an agent before it restarted (e.g. the highest number in its log's tail), so that
   * a gap across the collector's restart is seen. Numbers before it are not counted as missing.
   */
  seedAgent(agent: string, highestSeq: number): void {
    const a = this.#agent(agent);
    if (a?.seq.seqs.empty) a.seq.seqs.add(highestSeq);
  }

  #agent(agent: string): LiveAgent | null {
    let a = this.#agents.get(agent);
    if (a) return a;
    if (this.#agents.size >= this.#maxHosts) {
      this.#untrackedRecords++;
      return null;
    }
    a = {
      seq: new AgentSequence(agent, MAX_LIVE_RANGES),
      host: null,
      pendingRestarts: 0,
      warnedAt: Number.NEGATIVE_INFINITY,
      unwarned: 0,
    };
    this.#agents.set(agent, a);
    return a;
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
    let hostsWithLoss = 0;
    let missingRecords = 0;
    let kernelLost = 0;
    for (const h of this.#hosts.values()) {
      if (h.connected > 0) connected++;
      if (h.loss) {
        if (showsLoss(h.loss)) hostsWithLoss++;
        missingRecords += missingNow(h.loss);
        kernelLost += h.loss.kernelLost;
      }
    }
    return {
      hosts: this.#hosts.size,
      connected,
      silent: this.#silent,
      overflowRecords: this.#overflowRecords,
      maxHosts: this.#maxHosts,
      silenceTimeoutSeconds: this.#silenceMs / 1000,
      hostsWithLoss,
      missingRecords,
      kernelLost,
      agents: this.#agents.size,
      untrackedRecords: this.#untrackedRecords,
    };
  }

  /** Every host (silent ones first, then those with loss, then by name); at most `limit`. */
  list(limit = Number.POSITIVE_INFINITY): HostView[] {
    const now = this.#now();
    const lossy = (h: HostEntry) => h.loss !== null && showsLoss(h.loss);
    const all = [...this.#hosts.values()].sort((a, b) =>
      (a.silentSince === null) !== (b.silentSince === null)
        ? a.silentSince === null
          ? 1
          : -1
        : lossy(a) !== lossy(b)
          ? lossy(a)
            ? -1
            : 1
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
      loss: h.loss === null ? null : lossView(h.loss),
    }));
  }

  /** The entries themselves (metrics read them at scrape time). */
  entries(): IterableIterator<HostEntry> {
    return this.#hosts.values();
  }

  // --- Record identities (docs/protocol.md): the collector reports them here; the loss accounting above is
  // built on them.

  /** A session of host `h` said hello: its agent id and boot (a new boot of a known agent = it restarted). */
  agentSession(_h: HostEntry, agent: string, boot: number): void {
    this.noteSession(agent, boot);
  }

  /**
   * Records of host `h` with identities, in order: `seqs` of `agent` were written (`duplicate` false), or were
   * acknowledged without being written again because they were written already (`duplicate` true: no news for
   * the loss accounting).
   */
  recordIds(h: HostEntry, agent: string, seqs: readonly number[], duplicate: boolean): void {
    if (duplicate) return;
    for (const seq of seqs) this.noteRecord(h, { agent, seq });
  }

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

export function lossView(l: HostLoss): HostLossView {
  return {
    missing: missingNow(l),
    gaps: l.gaps,
    lateRecords: l.lateRecords,
    restarts: l.restarts,
    kernelLost: l.kernelLost,
    auditdAborts: l.daemonAborts,
    auditdErrors: l.daemonErrors,
    auditdStarts: l.daemonStarts,
  };
}
