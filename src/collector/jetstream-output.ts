/**
 * output = jetstream (docs/scale-out.md): each accepted record is published to the stream on the subject of its
 * host, and its batch is answered only after the stream acknowledged every record of it.
 *
 * - Message id (Nats-Msg-Id): the record identity `<agent>:<seq>` (record-id.ts), so the stream drops a record it
 *   already holds whichever collector publishes it again, within the stream's duplicate window. A record without
 *   an identity (audisp-remote, an older agent) gets `~<collector instance>:<n>`, which covers this collector's own
 *   retries (not a resend by its client).
 * - Order: a batch's records are published in order on one connection (pipelined); failed ones are published again,
 *   in order, with the same ids, before the next batch. A stream keeps a subject's records in the order the leader
 *   received them, so each host's records stay in order (checked by the crash test).
 * - A stall (a stream leader election takes 3–8 s, NATS unreachable): the batch is retried with the same ids for
 *   `retryMs` (3 s: below the 5 s an agent waits for a reply); after that its records are answered DISKERROR
 *   `stream unavailable` and not acknowledged. Our agent keeps the link and sends its oldest record once a second
 *   until one is accepted (machines/connection.ts, `serverFull`), then its whole window; audisp-remote closes and
 *   keeps its records. Nothing is lost and, with record identities, nothing is stored twice.
 * - A full stream (its max_bytes / max_msgs with discard new): DISKFULL `stream full` at once, logged.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { type JetStreamClient, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  connectNats,
  ensureStream,
  hostSubject,
  isStreamFull,
  type JetStreamSettings,
  natsReason,
  sleep,
} from '../jetstream/nats.js';
import type { Logger } from '../log.js';
import type { WriteOutcome } from './log-store.js';
import type { OutputBatch, OutputError, RecordOutput } from './output.js';
import { formatRid } from './record-id.js';
import { WarnLimiter } from './warn-limiter.js';

/** How long a batch is retried before its records are answered DISKERROR (an agent waits 5 s for a reply). */
export const JETSTREAM_RETRY_MS = 3000;
/** One publish attempt waits this long for the stream's acknowledgement. */
export const JETSTREAM_PUBLISH_TIMEOUT_MS = 1500;
/** Pause between two attempts of a batch. */
export const JETSTREAM_RETRY_PAUSE_MS = 200;
/** Subjects remembered (host → subject) at most. */
const SUBJECT_CACHE = 100_000;

export interface JetStreamOutputStatus {
  stream: string;
  connected: boolean;
  server: string | null;
  /** The stream is known to exist (created or found). */
  ready: boolean;
  published: number;
  /** Publishes the stream answered as duplicates (a record it already held). */
  duplicates: number;
  /** Publish attempts that failed and were retried with the same id. */
  retries: number;
  /** Records answered DISKERROR (stall past the retry time) or DISKFULL (full stream). */
  refused: number;
  /** A later record of a host was stored while an earlier one was not (should stay 0; see the module comment). */
  orderWarnings: number;
  lastError: string | null;
}

interface Item {
  subject: string;
  data: Buffer;
  id: string;
}

export interface JetStreamOutputOptions {
  retryMs?: number;
  publishTimeoutMs?: number;
}

export class JetStreamOutput implements RecordOutput {
  readonly kind = 'jetstream';
  readonly #s: JetStreamSettings;
  readonly #log: Logger;
  readonly #warn: WarnLimiter;
  readonly #instance = randomBytes(6).toString('hex');
  readonly #retryMs: number;
  readonly #publishTimeoutMs: number;
  #counter = 0;
  #nc: NatsConnection | null = null;
  #js: JetStreamClient | null = null;
  /** Resolves when connected and the stream exists; set by open(). */
  #ready: Promise<void> | null = null;
  #isReady = false;
  #closed = false;
  readonly #abort = new AbortController();
  #failing = false;
  readonly #subjects = new Map<string, string>();
  readonly #stats = {
    published: 0,
    duplicates: 0,
    retries: 0,
    refused: 0,
    orderWarnings: 0,
    lastError: null as string | null,
  };

  constructor(settings: JetStreamSettings, log: Logger, options: JetStreamOutputOptions = {}) {
    this.#s = settings;
    this.#log = log;
    this.#warn = new WarnLimiter(log, 10_000);
    this.#retryMs = options.retryMs ?? JETSTREAM_RETRY_MS;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? JETSTREAM_PUBLISH_TIMEOUT_MS;
  }

  status(): JetStreamOutputStatus {
    return {
      stream: this.#s.stream,
      connected: this.#nc !== null && !this.#nc.isClosed(),
      server: this.#nc?.getServer() ?? null,
      ready: this.#isReady,
      ...this.#stats,
    };
  }

  /** Starts connecting (for ever) and creating the stream; records wait for it (up to the retry time). */
  open(): Promise<void> {
    this.#ready = this.#connect();
    this.#ready.catch(() => {});
    return Promise.resolve();
  }

  async #connect(): Promise<void> {
    const where = this.#s.servers.join(', ');
    this.#log.info(
      { servers: this.#s.servers, stream: this.#s.stream },
      `output = jetstream: connecting to ${where}`,
    );
    const nc = await connectNats(
      this.#s.servers,
      `auditrelay-collector-${this.#instance}`,
      this.#log,
      this.#abort.signal,
    );
    if (this.#closed) {
      await nc.close();
      return;
    }
    this.#nc = nc;
    this.#js = jetstream(nc, { timeout: this.#publishTimeoutMs });
    for (let attempt = 0; !this.#closed; attempt++) {
      try {
        await ensureStream(nc, this.#s, this.#log);
        this.#isReady = true;
        return;
      } catch (err) {
        this.#stats.lastError = natsReason(err);
        this.#warn.warn(
          'stream',
          { stream: this.#s.stream, error: this.#stats.lastError },
          `JetStream: cannot use stream ${this.#s.stream} (${this.#stats.lastError}); records are answered DISKERROR until it can be used (agents keep them); retrying`,
          (n) => `JetStream: stream ${this.#s.stream} still unusable (${n} more attempts)`,
        );
        await sleep(Math.min(5000, 250 * 2 ** Math.min(attempt, 5)), this.#abort.signal);
      }
    }
  }

  opened(): Promise<void> {
    return Promise.resolve();
  }

  #subject(host: string): string {
    let s = this.#subjects.get(host);
    if (s === undefined) {
      if (this.#subjects.size >= SUBJECT_CACHE) this.#subjects.clear();
      s = hostSubject(this.#s.stream, host);
      this.#subjects.set(host, s);
    }
    return s;
  }

  async write(batch: OutputBatch): Promise<WriteOutcome> {
    const items: Item[] = [];
    for (const g of batch.groups) {
      const subject = this.#subject(g.host);
      for (let i = 0, r = 0; i < g.lines.length; i += 2, r++) {
        const rid = g.rids?.[r] ?? null;
        items.push({
          subject,
          data: g.lines[i]!,
          id: rid ? formatRid(rid) : `~${this.#instance}:${++this.#counter}`,
        });
      }
    }
    const deadline = Date.now() + this.#retryMs;
    if (!this.#isReady) {
      const ready = this.#ready ?? Promise.reject(new Error('not opened'));
      const left = Math.max(0, deadline - Date.now());
      const ok = await Promise.race([ready.then(() => true), delay(left).then(() => false)]).catch(
        () => false,
      );
      if (!ok) {
        this.#stats.refused += items.length;
        throw this.#unavailable(
          this.#nc === null ? 'NATS not reachable' : `stream ${this.#s.stream} not usable yet`,
          items.length,
        );
      }
    }
    const js = this.#js!;
    let pending = items;
    for (;;) {
      const results = await Promise.allSettled(
        pending.map((it) =>
          js.publish(it.subject, it.data, { msgID: it.id, timeout: this.#publishTimeoutMs }),
        ),
      );
      const failed: Item[] = [];
      let full: unknown = null;
      let reason: unknown = null;
      const okAfterFailure = new Set<string>();
      const failedSubjects = new Set<string>();
      results.forEach((r, i) => {
        const it = pending[i]!;
        if (r.status === 'fulfilled') {
          this.#stats.published++;
          if (r.value.duplicate) this.#stats.duplicates++;
          if (failedSubjects.has(it.subject)) okAfterFailure.add(it.subject);
          return;
        }
        failed.push(it);
        failedSubjects.add(it.subject);
        reason ??= r.reason;
        if (isStreamFull(r.reason)) full ??= r.reason;
      });
      if (okAfterFailure.size > 0) {
        this.#stats.orderWarnings += okAfterFailure.size;
        this.#log.error(
          { subjects: [...okAfterFailure].slice(0, 10) },
          `JetStream: a later record of ${okAfterFailure.size} host(s) was stored while an earlier one was not; the earlier one is published again now, after it (per-host order broken once)`,
        );
      }
      if (failed.length === 0) {
        if (this.#failing) {
          this.#failing = false;
          this.#log.info(
            { stream: this.#s.stream },
            `JetStream: stream ${this.#s.stream} accepts records again`,
          );
        }
        return 'ack';
      }
      this.#stats.lastError = natsReason(reason);
      if (full !== null) {
        this.#stats.refused += failed.length;
        this.#failing = true;
        this.#warn.warn(
          'full',
          { stream: this.#s.stream, error: natsReason(full), records: failed.length },
          `JetStream: stream ${this.#s.stream} is full (${natsReason(full)}): ${failed.length} record(s) answered DISKFULL "stream full"; agents keep them and retry; raise the stream's limits (max_bytes, max_msgs, max_age) or remove what is consumed`,
          (n) => `JetStream: stream ${this.#s.stream} still full (${n} more refused batches)`,
        );
        throw Object.assign(new Error(`stream ${this.#s.stream} full: ${natsReason(full)}`), {
          code: 'ENOSPC',
          replyText: 'stream full',
        }) as OutputError;
      }
      if (Date.now() + JETSTREAM_RETRY_PAUSE_MS >= deadline) {
        this.#stats.refused += failed.length;
        throw this.#unavailable(this.#stats.lastError, failed.length);
      }
      this.#stats.retries += failed.length;
      await delay(JETSTREAM_RETRY_PAUSE_MS);
      pending = failed;
    }
  }

  #unavailable(why: string, records: number): OutputError {
    this.#failing = true;
    this.#warn.warn(
      'unavailable',
      { stream: this.#s.stream, error: why, records },
      `JetStream: stream ${this.#s.stream} did not acknowledge ${records} record(s) within ${this.#retryMs} ms (${why}): answered DISKERROR "stream unavailable"; agents keep them and send them again (same record ids: stored once)`,
      (n) =>
        `JetStream: stream ${this.#s.stream} still unavailable (${n} more refused batches; last: ${why})`,
    );
    return Object.assign(new Error(`stream ${this.#s.stream} unavailable: ${why}`), {
      code: 'ESTREAM',
      replyText: 'stream unavailable',
    }) as OutputError;
  }

  rotate(reason: string): Promise<void> {
    this.#log.info({ reason }, `${reason}: output = jetstream has no log file to rotate`);
    return Promise.resolve();
  }

  resume(_reason: string): Promise<boolean> {
    return Promise.resolve(false);
  }

  reconfigure(): Promise<string[]> {
    return Promise.resolve([]);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#abort.abort();
    this.#warn.flushAll();
    const nc = this.#nc;
    this.#nc = null;
    if (nc && !nc.isClosed()) await nc.drain().catch(() => nc.close());
  }
}
