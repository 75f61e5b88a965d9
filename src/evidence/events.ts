/**
 * Groups audit records into events and turns each event into one JSON document (docs/events.md, schema
 * docs/schema/event-v1.schema.json).
 *
 * An event is the set of records with the same node and the same `msg=audit(SECONDS.MILLIS:SERIAL)` stamp. Records
 * of different events interleave in a log, an event's EOE may be missing (plugins and remote logs never carry it),
 * and on hostile input anything goes; so an event is open until one of:
 *
 * - its EOE record arrives (`end: "eoe"`), or its PROCTITLE record, which the kernel writes last before EOE
 *   (`"proctitle"`); a record of a type that userspace sends alone (USER_*, CRED_*, DAEMON_*...) is an event by
 *   itself (`"single"`);
 * - the node's audit clock (the newest stamp seen from that node) passes the event's last record by `lagMs`, or
 *   `expireIdle()` finds it untouched since the previous call (`"timeout"`);
 * - more than `maxOpenEvents` events are open, or their records take more than `maxBufferedBytes`: the oldest goes
 *   out (`"evicted"`); an event reaching `maxEventRecords` records or `maxEventBytes` goes out and the next record
 *   starts a new part (`"oversize"`);
 * - `flush()` at the end of the input (`"flush"`).
 *
 * A record that arrives after its event went out starts a new part of that event (`part: 2`, 3...) as long as the
 * id is still among the last `recentlyClosed` ids; an EOE for an event already out is dropped.
 * Memory is bounded by maxBufferedBytes (plus the bounded bookkeeping), whatever the input.
 *
 * The class is synchronous and streaming: the CLI (`auditrelay events`) feeds it lines, and so can the collector
 * and the sink for an events output.
 */
import { parseBody, parseHeader, type RecordHeader } from './audit-record.js';
import { isSingleRecordType } from './record-types.js';

export const EVENT_SCHEMA_VERSION = 1;

export type EndReason = 'eoe' | 'proctitle' | 'single' | 'timeout' | 'evicted' | 'oversize' | 'flush';

export interface EventRecord {
  type: string;
  fields: Record<string, string>;
  hex?: Record<string, string>;
  msg?: Record<string, string>;
  msg_text?: string;
  text?: string;
  dup?: [string, string][];
  enriched?: Record<string, string>;
  raw?: string;
}

export interface EventProcess {
  args?: string[];
  args_count?: number;
  args_incomplete?: true;
  title?: string;
  title_args?: string[];
}

/** One event as written (docs/events.md). Key order is the output order. */
export interface AuditEvent {
  schema_version: number;
  id: string;
  node: string | null;
  '@timestamp': string;
  serial: number;
  end: EndReason;
  part?: number;
  keys?: string[];
  process?: EventProcess;
  records: EventRecord[];
}

export interface EventGrouperOptions {
  emit(event: AuditEvent): void;
  /** Events open at once; the oldest is written out beyond this. Default 8192. */
  maxOpenEvents?: number;
  /** Bytes of record text held by open events; the oldest are written out beyond this. Default 32 MiB. */
  maxBufferedBytes?: number;
  /** Records in one event part. Default 4096 (an execve with 2 MB of arguments makes about 600). */
  maxEventRecords?: number;
  /** Bytes in one event part. Default 8 MiB. */
  maxEventBytes?: number;
  /** Audit-time grouping window: an event is complete once its node's clock is this far past it. Default 2000. */
  lagMs?: number;
  /** Ids remembered after an event went out, to number late parts. Default 8192. */
  recentlyClosed?: number;
  /** Add each record's original line as `raw`. */
  raw?: boolean;
}

export interface GrouperStats {
  records: number;
  events: number;
  /** Lines that are not audit records (no `type=`/`msg=audit(...)`). */
  notRecords: number;
  /** EOE records whose event was already written out, or never seen. */
  eoeDropped: number;
  /** Events written with part > 1 (records that came after their event was out). */
  lateParts: number;
  byEnd: Record<EndReason, number>;
}

interface OpenEvent {
  key: string;
  node: string | null;
  nodeKey: string;
  first: RecordHeader;
  lines: string[];
  headers: RecordHeader[];
  bytes: number;
  /** Audit time (ms) of the newest record. */
  lastMs: number;
  /** expireIdle() generation when the last record arrived. */
  touched: number;
  part: number;
}

interface NodeState {
  clockMs: number;
  scannedAtMs: number;
  events: Set<OpenEvent>;
}

export class EventGrouper {
  readonly #emit: (event: AuditEvent) => void;
  readonly #maxOpen: number;
  readonly #maxBuffered: number;
  readonly #maxRecords: number;
  readonly #maxEventBytes: number;
  readonly #lagMs: number;
  readonly #recentMax: number;
  readonly #raw: boolean;
  readonly #open = new Map<string, OpenEvent>();
  readonly #nodes = new Map<string, NodeState>();
  /** key → last part written, insertion-ordered (oldest first). */
  readonly #closed = new Map<string, number>();
  #buffered = 0;
  #generation = 0;
  readonly stats: GrouperStats = {
    records: 0,
    events: 0,
    notRecords: 0,
    eoeDropped: 0,
    lateParts: 0,
    byEnd: { eoe: 0, proctitle: 0, single: 0, timeout: 0, evicted: 0, oversize: 0, flush: 0 },
  };

  constructor(options: EventGrouperOptions) {
    this.#emit = options.emit;
    this.#maxOpen = positive(options.maxOpenEvents ?? 8192, 'maxOpenEvents');
    this.#maxBuffered = positive(options.maxBufferedBytes ?? 32 * 1024 * 1024, 'maxBufferedBytes');
    this.#maxRecords = positive(options.maxEventRecords ?? 4096, 'maxEventRecords');
    this.#maxEventBytes = positive(options.maxEventBytes ?? 8 * 1024 * 1024, 'maxEventBytes');
    this.#lagMs = options.lagMs ?? 2000;
    this.#recentMax = options.recentlyClosed ?? 8192;
    this.#raw = options.raw ?? false;
  }

  /** Events currently open (for tests and metrics). */
  get openEvents(): number {
    return this.#open.size;
  }

  get bufferedBytes(): number {
    return this.#buffered;
  }

  /**
   * Adds one record line (without its newline). `defaultNode` stands for the node when the line has no `node=`
   * prefix (e.g. the peer a collector received it from); it is part of the event's identity and output.
   * Returns false (and counts it) when the line is not an audit record.
   */
  push(line: string, defaultNode: string | null = null): boolean {
    const h = parseHeader(line);
    if (!h) {
      this.stats.notRecords++;
      return false;
    }
    this.stats.records++;
    const node = h.node ?? defaultNode;
    const nodeKey = node ?? '';
    const key = `${nodeKey}\u0000${h.stamp}`;
    const ms = h.seconds * 1000 + h.millis;
    let ev = this.#open.get(key);
    if (h.type === 'EOE') {
      if (ev) this.#close(ev, 'eoe');
      else this.stats.eoeDropped++;
      this.#advanceClock(nodeKey, ms);
      return true;
    }
    if (ev && (ev.lines.length >= this.#maxRecords || ev.bytes + line.length > this.#maxEventBytes)) {
      this.#close(ev, 'oversize');
      ev = undefined;
    }
    if (!ev) {
      const part = (this.#closed.get(key) ?? 0) + 1;
      ev = {
        key,
        node,
        nodeKey,
        first: h,
        lines: [],
        headers: [],
        bytes: 0,
        lastMs: ms,
        touched: this.#generation,
        part,
      };
      this.#open.set(key, ev);
      let ns = this.#nodes.get(nodeKey);
      if (!ns) {
        ns = { clockMs: ms, scannedAtMs: ms, events: new Set() };
        this.#nodes.set(nodeKey, ns);
      }
      ns.events.add(ev);
    }
    ev.lines.push(line);
    ev.headers.push(h);
    ev.bytes += line.length;
    this.#buffered += line.length;
    if (ms > ev.lastMs) ev.lastMs = ms;
    ev.touched = this.#generation;
    if (isSingleRecordType(h.type) && ev.lines.length === 1) this.#close(ev, 'single');
    else if (h.type === 'PROCTITLE') this.#close(ev, 'proctitle');
    this.#advanceClock(nodeKey, ms);
    this.#enforceBounds();
    return true;
  }

  /**
   * Writes out every event that received no record since the previous call. A stream calls it on a timer (every
   * second for a one-to-two-second grouping window); files need not, their audit clock does the same.
   */
  expireIdle(): void {
    const gen = this.#generation;
    for (const ev of [...this.#open.values()]) if (ev.touched < gen) this.#close(ev, 'timeout');
    this.#generation++;
  }

  /** Writes out every open event (end of input), oldest first. */
  flush(): void {
    for (const ev of [...this.#open.values()]) this.#close(ev, 'flush');
  }

  #advanceClock(nodeKey: string, ms: number): void {
    const ns = this.#nodes.get(nodeKey);
    if (!ns) return;
    if (ms > ns.clockMs) ns.clockMs = ms;
    // Scan this node's events once its clock moved a quarter of the window since the last scan.
    if (ns.clockMs - ns.scannedAtMs < this.#lagMs / 4) return;
    ns.scannedAtMs = ns.clockMs;
    const limit = ns.clockMs - this.#lagMs;
    for (const ev of [...ns.events]) if (ev.lastMs < limit) this.#close(ev, 'timeout');
  }

  #enforceBounds(): void {
    while (this.#open.size > this.#maxOpen || this.#buffered > this.#maxBuffered) {
      const oldest = this.#open.values().next().value as OpenEvent | undefined;
      if (!oldest) break;
      this.#close(oldest, 'evicted');
    }
  }

  #close(ev: OpenEvent, end: EndReason): void {
    this.#open.delete(ev.key);
    this.#buffered -= ev.bytes;
    const ns = this.#nodes.get(ev.nodeKey);
    if (ns) {
      ns.events.delete(ev);
      if (ns.events.size === 0) this.#nodes.delete(ev.nodeKey);
    }
    this.#closed.delete(ev.key);
    this.#closed.set(ev.key, ev.part);
    if (this.#closed.size > this.#recentMax) {
      const oldest = this.#closed.keys().next().value as string;
      this.#closed.delete(oldest);
    }
    this.stats.events++;
    this.stats.byEnd[end]++;
    if (ev.part > 1) this.stats.lateParts++;
    this.#emit(buildEvent(ev, end, this.#raw));
  }
}

function positive(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${what} must be a positive integer, not ${n}`);
  return n;
}

function buildEvent(ev: OpenEvent, end: EndReason, raw: boolean): AuditEvent {
  const h = ev.first;
  const records: EventRecord[] = [];
  const execve: { argc?: string; whole: Map<number, Buffer>; chunks: Map<number, Map<number, Buffer>> } = {
    whole: new Map(),
    chunks: new Map(),
  };
  let sawExecve = false;
  let proctitle: Buffer | undefined;
  const keys: string[] = [];
  for (let i = 0; i < ev.lines.length; i++) {
    const line = ev.lines[i]!;
    const rh = ev.headers[i]!;
    const body = parseBody(line, rh);
    const rec: EventRecord = { type: rh.type, fields: body.fields };
    if (body.hex) rec.hex = body.hex;
    if (body.msg) rec.msg = body.msg;
    if (body.msgText !== undefined) rec.msg_text = body.msgText;
    if (body.text !== undefined) rec.text = body.text;
    if (body.dup) rec.dup = body.dup;
    if (body.enriched) rec.enriched = body.enriched;
    if (raw) rec.raw = line;
    records.push(rec);
    if (rh.type === 'EXECVE') {
      sawExecve = true;
      collectExecve(body.fields, body.bytes, execve);
    } else if (
      rh.type === 'PROCTITLE' &&
      proctitle === undefined &&
      Object.hasOwn(body.fields, 'proctitle')
    ) {
      proctitle = body.bytes?.get('proctitle') ?? Buffer.from(body.fields.proctitle!, 'utf8');
    }
    const key = Object.hasOwn(body.fields, 'key') ? body.fields.key : undefined;
    if (key !== undefined && key !== '(null)') {
      for (const k of key.split('\x01')) if (k !== '' && !keys.includes(k)) keys.push(k);
    }
  }
  // Key order is output order: records last.
  const out = {
    schema_version: EVENT_SCHEMA_VERSION,
    id: h.stamp,
    node: ev.node,
    '@timestamp': new Date(h.seconds * 1000 + h.millis).toISOString(),
    serial: h.serial,
    end,
  } as AuditEvent;
  if (ev.part > 1) out.part = ev.part;
  if (keys.length > 0) out.keys = keys;
  const proc: EventProcess = {};
  if (sawExecve) assembleArgs(execve, proc);
  if (proctitle !== undefined) {
    const parts = splitNul(proctitle);
    proc.title = parts.join(' ');
    proc.title_args = parts;
  }
  if (Object.keys(proc).length > 0) out.process = proc;
  out.records = records;
  return out;
}

const ARG_NAME = /^a(\d+)(?:\[(\d+)\])?$/;

function collectExecve(
  fields: Record<string, string>,
  bytes: Map<string, Buffer> | undefined,
  acc: { argc?: string; whole: Map<number, Buffer>; chunks: Map<number, Map<number, Buffer>> },
): void {
  for (const name of Object.keys(fields)) {
    if (name === 'argc') {
      acc.argc ??= fields[name];
      continue;
    }
    const m = ARG_NAME.exec(name);
    if (!m) continue;
    const n = Number(m[1]);
    if (n > 1_000_000) continue;
    const value = bytes?.get(name) ?? Buffer.from(fields[name]!, 'utf8');
    if (m[2] === undefined) {
      if (!acc.whole.has(n)) acc.whole.set(n, value);
    } else {
      let chunks = acc.chunks.get(n);
      if (!chunks) {
        chunks = new Map();
        acc.chunks.set(n, chunks);
      }
      const i = Number(m[2]);
      if (!chunks.has(i)) chunks.set(i, value);
    }
  }
}

function assembleArgs(
  acc: { argc?: string; whole: Map<number, Buffer>; chunks: Map<number, Map<number, Buffer>> },
  proc: EventProcess,
): void {
  const argc = acc.argc !== undefined && /^\d{1,7}$/.test(acc.argc) ? Number(acc.argc) : undefined;
  let highest = -1;
  for (const n of acc.whole.keys()) highest = Math.max(highest, n);
  for (const n of acc.chunks.keys()) highest = Math.max(highest, n);
  const count = Math.max(highest + 1, argc ?? 0);
  const args: string[] = [];
  let incomplete = false;
  for (let n = 0; n < count; n++) {
    const whole = acc.whole.get(n);
    if (whole) {
      args.push(whole.toString('utf8'));
      continue;
    }
    const chunks = acc.chunks.get(n);
    if (!chunks) {
      incomplete = true;
      args.push('');
      continue;
    }
    const order = [...chunks.keys()].sort((a, b) => a - b);
    if (order.some((i, k) => i !== k)) incomplete = true;
    args.push(Buffer.concat(order.map((i) => chunks.get(i)!)).toString('utf8'));
  }
  proc.args = args;
  if (argc !== undefined) proc.args_count = argc;
  if (incomplete) proc.args_incomplete = true;
}

function splitNul(buf: Buffer): string[] {
  const parts: string[] = [];
  let start = 0;
  for (let i = buf.indexOf(0); i >= 0; i = buf.indexOf(0, start)) {
    parts.push(buf.subarray(start, i).toString('utf8'));
    start = i + 1;
  }
  if (start < buf.length) parts.push(buf.subarray(start).toString('utf8'));
  return parts;
}
