/**
 * `auditrelay sink` (docs/scale-out.md): reads the stream (an ordered JetStream consumer) and writes it into an auditd-format
 * log file, exactly once across its own crashes, each host's records in the stream's order. With
 * `sink_log_layout = per_host` it writes one file per host instead (host-files.ts: names, bounds, and the cursor
 * that makes a batch spread over many files exactly once); what follows is the single file.
 *
 * - The log is the cursor: an ordered consumer (name prefix `sink_consumer` and a random part, every subject `<STREAM>.>`) starts at
 *   the sequence after the log's last one and delivers strictly in stream order; batches of up to SINK_BATCH
 *   messages are written in one write and fsync'd (the LogStore with fsync = always, so the collector's rotation
 *   keys and disk actions apply) before the next is fetched. Nothing is acknowledged to the server: what is
 *   written is what the log says. (A durable consumer with acknowledgements was measured first: after a kill -9
 *   the messages the dead sink had fetched come back only after the ack wait, behind newer ones, so the log would
 *   lose the per-host order, or, with AckPolicy All, the newer batch's acknowledgement covers them and they are
 *   never written: 945 of 20,000 records lost in the crash test.)
 * - Each line is the record as the collector accepted it (sanitised again here: the stream is input like any
 *   other), then ` rid=<agent>:<seq>` when the record has an identity, then ` js_seq=<stream sequence>`.
 * - Recovery: at start the log's tail (after the writer repaired a torn last line) gives the last stream sequence
 *   written (`js_seq=`; when the current file is empty, from the newest rotated one, LOG.1). A message at or below
 *   it is one written before a crash whose acknowledgement was lost: acknowledged, not written again.
 * - A log whose last sequence is beyond the stream's last one does not belong to the stream (it was re-created):
 *   the sink refuses to start (AR_JETSTREAM) rather than skip records.
 */
import { randomBytes } from 'node:crypto';
import { type Consumer, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { EvidenceParts, EvidenceSettings } from '../collector/evidence-sink.js';
import { type LogManagementSettings, LogStore } from '../collector/log-store.js';
import { sanitizeRecord } from '../collector/sanitize.js';
import { JetStreamUnavailableError } from '../errors.js';
import {
  connectNats,
  ensureStream,
  type JetStreamSettings,
  natsReason,
  sleep,
  streamSubjects,
  tokenBytes,
} from '../jetstream/nats.js';
import type { Logger } from '../log.js';
import { parseRid } from '../protocol/record-id.js';
import { CURSOR_FILE, type HostLine, HostLogs, lastSeqOf } from './host-files.js';

/** Messages fetched, written and acknowledged together at most. */
export const SINK_BATCH = 1000;
/** How long a fetch waits for its batch to fill. */
export const SINK_FETCH_EXPIRES_MS = 1000;
/** How often the sink logs its progress. */
const SINK_REPORT_MS = 30_000;
/** Bytes of the log's tail read at start to find the last stream sequence. */
const TAIL_BYTES = 1 << 20;

/** Where the sink writes: one file (`sink_log_layout = single`), or one file per host in a directory. */
export type SinkLayout =
  | { kind: 'single'; logFile: string }
  | { kind: 'per_host'; dir: string; maxOpen: number };

export interface SinkSettings {
  jetstream: JetStreamSettings;
  consumer: string;
  layout: SinkLayout;
  management: LogManagementSettings;
  /** Single layout only (per-host files carry no evidence: host-files.ts). */
  evidence: EvidenceSettings | null;
}

export interface SinkStats {
  written: number;
  /** Messages at or below the last sequence already in the log (redelivered after a crash): not written again. */
  skipped: number;
  batches: number;
  lastSeq: number;
}

export class Sink {
  readonly #s: SinkSettings;
  readonly #log: Logger;
  readonly #store: LogStore | null;
  readonly #hosts: HostLogs | null;
  /** What the log messages call the output: the log file, or the directory. */
  readonly #where: string;
  readonly #abort = new AbortController();
  #nc: NatsConnection | null = null;
  #running: Promise<void> | null = null;
  readonly stats: SinkStats = { written: 0, skipped: 0, batches: 0, lastSeq: 0 };

  constructor(settings: SinkSettings, log: Logger) {
    this.#s = settings;
    this.#log = log;
    const layout = settings.layout;
    if (layout.kind === 'single') {
      this.#where = layout.logFile;
      this.#hosts = null;
      this.#store = new LogStore({
        path: layout.logFile,
        fsync: 'always',
        fsyncIntervalMs: 200,
        log,
        maxTornTailBytes: 2 * TAIL_BYTES,
        management: settings.management,
        evidence: settings.evidence,
      });
    } else {
      this.#where = `${layout.dir}/`;
      this.#store = null;
      this.#hosts = new HostLogs({
        dir: layout.dir,
        maxOpen: layout.maxOpen,
        management: settings.management,
        log,
      });
    }
  }

  /** The single layout's log store (null with per_host). */
  get store(): LogStore | null {
    return this.#store;
  }

  /** The per-host files (null with the single layout). */
  get hosts(): HostLogs | null {
    return this.#hosts;
  }

  /**
   * Opens the log and finds where it ends, connects (waiting for NATS as long as it takes, unless stopped), checks
   * the stream and the consumer; then consumes until stop(). Resolves when the consumer runs.
   */
  async start(): Promise<void> {
    if (this.#store && this.#s.layout.kind === 'single') {
      await this.#store.open();
      this.stats.lastSeq = await lastWrittenSeq(this.#s.layout.logFile);
    } else {
      this.stats.lastSeq = await this.#hosts!.start();
    }
    const where = this.#where;
    this.#log.info(
      { log: where, lastSeq: this.stats.lastSeq },
      this.stats.lastSeq > 0
        ? `sink: ${where} ${this.#hosts ? `(${CURSOR_FILE}) has every stream sequence up to` : 'ends with stream sequence'} ${this.stats.lastSeq}: continuing after it`
        : `sink: ${where} has no record of the stream yet`,
    );
    const js = this.#s.jetstream;
    this.#nc = await connectNats(
      js.servers,
      `auditrelay-sink-${this.#s.consumer}`,
      this.#log,
      this.#abort.signal,
    );
    const info = await this.#retry('stream', () => ensureStream(this.#nc!, js, this.#log));
    if (info.state.last_seq < this.stats.lastSeq) {
      throw new JetStreamUnavailableError(
        this.#hosts
          ? `${this.#where}${CURSOR_FILE} says stream sequences up to ${this.stats.lastSeq} are written, but stream ${js.stream} ends at ${info.state.last_seq}: the stream was re-created or the directory belongs to another stream; move the directory away (or set sink_log_dir to a new one) and start again`
          : `${this.#where} ends with stream sequence ${this.stats.lastSeq}, but stream ${js.stream} ends at ${info.state.last_seq}: the stream was re-created or the log belongs to another stream; move the log away (or set log_file to a new file) and start again`,
      );
    }
    const consumer = await this.#retry('consumer', () => this.#consumer());
    this.#running = this.#run(consumer);
  }

  async #retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (err instanceof JetStreamUnavailableError || this.#abort.signal.aborted) throw err;
        if (attempt % 10 === 0) {
          this.#log.warn(
            { error: natsReason(err) },
            `sink: cannot set up the ${what} (${natsReason(err)}); retrying`,
          );
        }
        await sleep(Math.min(5000, 250 * 2 ** Math.min(attempt, 4)), this.#abort.signal);
      }
    }
  }

  /**
   * An ordered consumer from the sequence after the log's last one (its name starts with `sink_consumer`): it
   * delivers strictly in stream order and starts again by itself at the next sequence after a gap (a lost
   * delivery, a reconnect), so the log can be its only cursor.
   */
  async #consumer(): Promise<Consumer> {
    const nc = this.#nc!;
    const { stream } = this.#s.jetstream;
    const start = this.stats.lastSeq + 1;
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    const first = (await jsm.streams.info(stream)).state.first_seq;
    if (this.stats.lastSeq > 0 && first > start) {
      this.#log.error(
        { stream, from: start, to: first - 1 },
        `sink: stream ${stream} no longer holds sequences ${start}..${first - 1} (removed by its limits, max_age or max_bytes, before the sink wrote them): they are not in ${this.#where}; continuing at ${first}`,
      );
    }
    return jetstream(nc).consumers.get(stream, {
      // Unique per process: a crashed sink's consumer lingers until the server drops it for inactivity.
      name_prefix: `${this.#s.consumer}_${randomBytes(4).toString('hex')}`,
      // One filter, given as a string: the client sends it as `filter_subject`. As a list (`filter_subjects`, the
      // multi-filter form) nats-server 2.15.1 sometimes delivered about 250 messages a second with a core busy, for
      // the whole catch-up of a sink restarted after the crash test's kills (each fetch of 1,000 ended at its 1 s
      // expiry with ~750 left); `filter_subject` and no filter, asked of the same stream at the same moment, read
      // 12,000 messages in under 2 s.
      filter_subjects: streamSubjects(stream),
      ...(this.stats.lastSeq > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start }
        : { deliver_policy: DeliverPolicy.All }),
    });
  }

  async #run(consumer: Consumer): Promise<void> {
    const signal = this.#abort.signal;
    let reported = Date.now();
    while (!signal.aborted) {
      if (Date.now() - reported >= SINK_REPORT_MS) {
        reported = Date.now();
        this.#log.info(
          { ...this.stats },
          `sink: ${this.stats.written} record(s) written, up to stream sequence ${this.stats.lastSeq}`,
        );
      }
      try {
        const batch = await consumer.fetch({ max_messages: SINK_BATCH, expires: SINK_FETCH_EXPIRES_MS });
        const msgs = [];
        for await (const m of batch) msgs.push(m);
        if (msgs.length === 0) continue;
        await this.#write(msgs);
      } catch (err) {
        if (signal.aborted) break;
        this.#log.warn(
          { error: natsReason(err) },
          `sink: fetching from the stream failed (${natsReason(err)}); retrying`,
        );
        await sleep(500, signal);
      }
    }
  }

  async #write(
    msgs: {
      seq: number;
      subject: string;
      data: Uint8Array;
      headers?: { get(k: string): string } | undefined;
    }[],
  ): Promise<void> {
    const lines: HostLine[] = [];
    let top = this.stats.lastSeq;
    for (const m of msgs) {
      if (m.seq <= top) {
        this.stats.skipped++;
        continue;
      }
      top = m.seq;
      const id = m.headers?.get('Nats-Msg-Id') ?? '';
      // `<agent>:<seq>`, or `<agent>:<seq>/N` when a collector had to publish it under a derived id.
      const rid = id ? parseRid(id.replace(/\/[0-9]+$/, '')) : null;
      const { line } = sanitizeRecord(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
      const text = Buffer.concat([
        line,
        Buffer.from(`${rid ? ` rid=${rid.agent}:${rid.seq}` : ''} js_seq=${m.seq}\n`),
      ]);
      const token = m.subject.slice(m.subject.indexOf('.') + 1);
      lines.push({ host: tokenBytes(token) ?? Buffer.from(token, 'utf8'), seq: m.seq, text });
    }
    if (lines.length > 0 || (this.#hosts && top > this.stats.lastSeq)) {
      for (;;) {
        try {
          if (this.#hosts) {
            const r = await this.#hosts.write(lines, top);
            this.stats.written += r.written;
            this.stats.skipped += r.skipped;
          } else {
            await this.#writeSingle(lines);
            this.stats.written += lines.length;
          }
          break;
        } catch (err) {
          // Not written (or not all): nothing moves on; the same batch is written again (what is there is skipped).
          this.#log.error(
            { error: (err as Error).message },
            `sink: cannot write ${lines.length} record(s) to ${this.#where} (${(err as Error).message}); retrying in 1 s`,
          );
          await sleep(1000, this.#abort.signal);
          if (this.#abort.signal.aborted) throw err;
        }
      }
    }
    this.stats.lastSeq = top;
    this.stats.batches++;
  }

  /** One write of the whole batch into the single log (`parts`: whose bytes are whose, for the evidence). */
  async #writeSingle(lines: HostLine[]): Promise<void> {
    const parts: EvidenceParts = [];
    let at = 0;
    for (const l of lines) {
      const host = l.host.toString('utf8');
      const last = parts[parts.length - 1];
      if (last && last[0] === host && last[2] === at) last[2] = at + l.text.length;
      else parts.push([host, at, at + l.text.length]);
      at += l.text.length;
    }
    await this.#store!.write(Buffer.concat(lines.map((l) => l.text)), parts);
  }

  /** SIGUSR1. */
  async rotate(reason: string): Promise<void> {
    if (this.#store) await this.#store.rotate(reason);
    else this.#log.warn(`${reason}: the per-host files rotate by max_log_file only; nothing rotated`);
  }

  /** Finishes the batch being written (and acknowledges it), closes the connection and the log. */
  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#running?.catch(() => {});
    const nc = this.#nc;
    if (nc && !nc.isClosed()) await nc.close().catch(() => {});
    await this.#store?.close();
    await this.#hosts?.close();
    this.#log.info(this.stats, 'sink stopped');
  }
}

/**
 * The last stream sequence (`js_seq=`) in `file`'s tail; when the file has no line, in `file.1`; 0 when neither
 * has one. A non-empty file whose tail has no `js_seq=` is not a sink's log: refused. (host-files.ts `lastSeqOf`:
 * the same for every layout, never through a symbolic link.)
 */
export function lastWrittenSeq(file: string): Promise<number> {
  return lastSeqOf(file, TAIL_BYTES);
}
