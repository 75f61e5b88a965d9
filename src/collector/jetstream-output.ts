/**
 * output = jetstream (docs/scale-out.md): each accepted record is published to the stream on the subject of its
 * host, and its batch is answered only after the stream acknowledged every record of it.
 *
 * - Message id (Nats-Msg-Id): the record identity `<agent>:<seq>` (src/protocol/record-id.ts), so the stream drops a record it
 *   already holds whichever collector publishes it again, within the stream's duplicate window. A record without
 *   an identity (audisp-remote, an older agent) gets `~<collector instance>:<n>`, which covers this collector's own
 *   retries (not a resend by its client).
 * - Order: a batch's records are published in order on one connection (pipelined); failed ones are published again,
 *   in order, with the same ids, before the next batch. A stream keeps a subject's records in the order the leader
 *   received them, so each host's records stay in order (checked by the crash test). One exception was measured:
 *   after a collector's kill -9 the records it had in flight may still be staged at the leader (answered
 *   `duplicate` with sequence 0) when the agent's resend reaches it through another server, and the resend's
 *   later records were stored ahead of them. So a host this output has not stored a record of yet (a new
 *   connection, a restart, a failover), or whose last publish failed, publishes its first record alone and the rest
 *   only once that one is stored; an order break that still happens is detected, logged and counted
 *   (`orderWarnings`).
 * - A stall (a stream leader election takes 3–8 s, NATS unreachable): the batch is retried with the same ids for
 *   `retryMs` (3 s: below the 5 s an agent waits for a reply); after that its records are answered DISKERROR
 *   `stream unavailable` and not acknowledged. Our agent keeps the link and sends its oldest record once a second
 *   until one is accepted (machines/connection.ts, `serverFull`), then its whole window; audisp-remote closes and
 *   keeps its records. Nothing is lost and, with record identities, nothing is stored twice.
 * - A full stream (its max_bytes / max_msgs with discard new): DISKFULL `stream full` at once, logged.
 * - A duplicate is only a duplicate with the sequence of the record the stream holds. A clustered stream (measured
 *   on nats-server 2.15.1) stages a message id before it stores the message and keeps it when the store is refused
 *   (a full stream; a failing proposal): a publish with that id is then answered `duplicate` with sequence 0 for
 *   the whole duplicate window although nothing is stored. Such an answer counts as not stored: the record is
 *   published again; when the same id is still answered that way after POISONED_ID_MS (a staged proposal of the
 *   current leader is decided within seconds), it is published under `<id>/1` (then `/2`, …) at once, in the same
 *   batch: deterministic, so another collector publishing the same record chooses the same id and the stream still
 *   keeps one. The derived id is kept for the record (a resend after a refused batch goes under it: its own id is
 *   still refused). A record refused for a full stream is such an id from the refusal on (its POISONED_ID_MS
 *   counts from then).
 * - Known refused ids keep the order: a record whose id was refused before leads like a host's first record, with
 *   the refused records right after it (they fare alike: all refused again, or all renamed and published again at
 *   once); the host's later records wait until they are stored. So a window resent once the stream has room again
 *   does not store its later records ahead of them (seen with the real agent: after a full stream each resent
 *   window broke the order again, and progress fell to the agent's one probe a second).
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
import { formatRid } from '../protocol/record-id.js';
import type { WriteOutcome } from './log-store.js';
import type { OutputBatch, OutputError, RecordOutput } from './output.js';
import { WarnLimiter } from './warn-limiter.js';

/** How long a batch is retried before its records are answered DISKERROR (an agent waits 5 s for a reply). */
export const JETSTREAM_RETRY_MS = 3000;
/** One publish attempt waits this long for the stream's acknowledgement. */
export const JETSTREAM_PUBLISH_TIMEOUT_MS = 1500;
/** Pause between two attempts of a batch. */
export const JETSTREAM_RETRY_PAUSE_MS = 200;
/** An id answered `duplicate` with sequence 0 this long is taken as refused for good (see the module comment). */
export const POISONED_ID_MS = 10_000;
/** Ids followed for that rule at most. */
const POISON_TRACKED = 100_000;
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
  /** Answers `duplicate` with sequence 0: nothing stored under the id (see the module comment). */
  unstoredDuplicates: number;
  /** Records published under a derived id (`<id>/N`) because their id stayed refused. */
  renamedIds: number;
  lastError: string | null;
}

interface Item {
  subject: string;
  data: Buffer;
  /** The record's own id (its identity, or this collector's), whatever it is published under. */
  base: string;
  id: string;
}

/** What the output needs of a JetStream client (tests give a fake one). */
export type JetStreamPublisher = Pick<JetStreamClient, 'publish'>;

export interface JetStreamOutputOptions {
  retryMs?: number;
  publishTimeoutMs?: number;
  /** Tests: publish through this instead of connecting to `servers` (the stream is taken as ready). */
  publisher?: JetStreamPublisher;
}

export class JetStreamOutput implements RecordOutput {
  readonly kind = 'jetstream';
  readonly #s: JetStreamSettings;
  readonly #log: Logger;
  readonly #warn: WarnLimiter;
  readonly #instance = randomBytes(6).toString('hex');
  readonly #retryMs: number;
  readonly #publishTimeoutMs: number;
  readonly #publisher: JetStreamPublisher | null;
  #counter = 0;
  #nc: NatsConnection | null = null;
  #js: JetStreamPublisher | null = null;
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
    unstoredDuplicates: 0,
    renamedIds: 0,
    lastError: null as string | null,
  };
  /** id → when the stream first answered it `duplicate` with sequence 0 (not stored). */
  readonly #zeroSince = new Map<string, number>();
  /** base id → the derived id it is published under now. */
  readonly #alias = new Map<string, string>();
  /** Subjects whose last publish was stored: their records go pipelined (the others lead with one record). */
  readonly #steady = new Set<string>();
  /** When the stream last refused a record for a limit. */
  #fullAt = Number.NEGATIVE_INFINITY;

  constructor(settings: JetStreamSettings, log: Logger, options: JetStreamOutputOptions = {}) {
    this.#s = settings;
    this.#log = log;
    this.#warn = new WarnLimiter(log, 10_000);
    this.#retryMs = options.retryMs ?? JETSTREAM_RETRY_MS;
    this.#publishTimeoutMs = options.publishTimeoutMs ?? JETSTREAM_PUBLISH_TIMEOUT_MS;
    this.#publisher = options.publisher ?? null;
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
    if (this.#publisher) {
      this.#js = this.#publisher;
      this.#isReady = true;
      this.#ready = Promise.resolve();
      return Promise.resolve();
    }
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
        const base = rid ? formatRid(rid) : `~${this.#instance}:${++this.#counter}`;
        items.push({ subject, data: g.lines[i]!, base, id: this.#alias.get(base) ?? base });
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
      // A host this output has not yet stored a record of, or whose last publish failed, sends its first record
      // alone: a resend after a crash or failover may begin with records another connection still has in flight,
      // and nothing of the host must be stored ahead of them (see the module comment, "Order"). So does a record
      // whose id the stream refused before, with the refused records right after it (they fare alike: all refused
      // again, or all renamed and published again at once): the host's other records wait until they are stored.
      const send: Item[] = [];
      const held: Item[] = [];
      /** Subjects with a lead in `send`: alone, or a run of refused ids. */
      const leads = new Map<string, 'alone' | 'run'>();
      const blocked = new Set<string>();
      for (const it of pending) {
        const refused = this.#zeroSince.has(it.id);
        const lead = leads.get(it.subject);
        if (blocked.has(it.subject)) held.push(it);
        else if (lead === 'run' && refused) send.push(it);
        else if (lead !== undefined) {
          blocked.add(it.subject);
          held.push(it);
        } else {
          if (refused) leads.set(it.subject, 'run');
          else if (!this.#steady.has(it.subject)) leads.set(it.subject, 'alone');
          send.push(it);
        }
      }
      const results = await Promise.allSettled(
        send.map((it) => js.publish(it.subject, it.data, { msgID: it.id, timeout: this.#publishTimeoutMs })),
      );
      const failed: Item[] = [];
      let full: unknown = null;
      let reason: unknown = null;
      /** Failed only because their id was refused for good: published again at once under a derived id. */
      let renamed = 0;
      const okAfterFailure = new Set<string>();
      const failedSubjects = new Set<string>();
      results.forEach((r, i) => {
        const it = send[i]!;
        if (r.status === 'fulfilled' && !(r.value.duplicate && r.value.seq === 0)) {
          if (!this.#steady.has(it.subject)) {
            if (this.#steady.size >= SUBJECT_CACHE) this.#steady.clear();
            this.#steady.add(it.subject);
          }
          this.#stats.published++;
          if (r.value.duplicate) this.#stats.duplicates++;
          if (failedSubjects.has(it.subject)) okAfterFailure.add(it.subject);
          this.#stored(it);
          return;
        }
        failed.push(it);
        failedSubjects.add(it.subject);
        this.#steady.delete(it.subject);
        if (r.status === 'fulfilled') {
          const e = new Error(`the stream answers id ${it.id} as a duplicate of a record it does not hold`);
          if (this.#unstored(it)) {
            renamed++;
            return;
          }
          reason ??= e;
          // Refused while the stream was full: still the full stream.
          if (Date.now() - this.#fullAt < POISONED_ID_MS * 3) full ??= e;
          return;
        }
        reason ??= r.reason;
        if (isStreamFull(r.reason)) {
          full ??= r.reason;
          // The stream keeps the refused id (see the module comment): its time counts from now.
          this.#refusedId(it.id);
        }
      });
      if (okAfterFailure.size > 0) {
        this.#stats.orderWarnings += okAfterFailure.size;
        this.#log.error(
          { subjects: [...okAfterFailure].slice(0, 10) },
          `JetStream: a later record of ${okAfterFailure.size} host(s) was stored while an earlier one was not; the earlier one is published again now, after it (per-host order broken once)`,
        );
      }
      if (failed.length === 0 && held.length > 0) {
        pending = held;
        continue;
      }
      if (failed.length > 0 && failed.length === renamed) {
        // Nothing refused but ids given up: the same records again at once, under their new ids, in order.
        const again = new Set([...failed, ...held]);
        pending = pending.filter((it) => again.has(it));
        continue;
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
        if (isStreamFull(full)) this.#fullAt = Date.now();
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
      // Still in the batch's order.
      const again = new Set([...failed, ...held]);
      pending = pending.filter((it) => again.has(it));
    }
  }

  /**
   * Stored under `it.id`. A derived id stays the record's (`#alias`): its own id is still refused by the stream, and
   * a resend (its batch refused for another record) must go where it is stored.
   */
  #stored(it: Item): void {
    if (this.#zeroSince.size > 0) this.#zeroSince.delete(it.id);
  }

  /** An id the stream refused (a full stream): it keeps it, and answers it `duplicate` with sequence 0 from now on. */
  #refusedId(id: string): void {
    if (this.#zeroSince.has(id)) return;
    if (this.#zeroSince.size >= POISON_TRACKED) this.#zeroSince.clear();
    this.#zeroSince.set(id, Date.now());
  }

  /**
   * Answered `duplicate` with sequence 0: after POISONED_ID_MS under the same id, the next derived id (true: to be
   * published again at once).
   */
  #unstored(it: Item): boolean {
    this.#stats.unstoredDuplicates++;
    const now = Date.now();
    const since = this.#zeroSince.get(it.id);
    if (since === undefined) {
      if (this.#zeroSince.size >= POISON_TRACKED) this.#zeroSince.clear();
      this.#zeroSince.set(it.id, now);
      return false;
    }
    if (now - since < POISONED_ID_MS) return false;
    this.#zeroSince.delete(it.id);
    const slash = it.id.lastIndexOf('/');
    const n = it.id === it.base ? 1 : Number(it.id.slice(slash + 1)) + 1;
    const next = `${it.base}/${n}`;
    if (this.#alias.size >= POISON_TRACKED) this.#alias.clear();
    this.#alias.set(it.base, next);
    it.id = next;
    this.#stats.renamedIds++;
    this.#warn.warn(
      'renamed',
      { stream: this.#s.stream, id: it.base, as: next },
      `JetStream: stream ${this.#s.stream} has answered record id ${it.base} as a duplicate without holding it for ${POISONED_ID_MS / 1000} s (NATS keeps the id of a refused publish for its duplicate window): publishing it as ${next}`,
      (n2) => `JetStream: ${n2} more record id(s) published under a derived id for the same reason`,
    );
    return true;
  }

  #unavailable(why: string, records: number): OutputError {
    const text = `JetStream: stream ${this.#s.stream} did not acknowledge ${records} record(s) within ${this.#retryMs} ms (${why}): answered DISKERROR "stream unavailable"; agents keep them and send them again (same record ids: stored once)`;
    // The first refusal of an episode is always logged; the rest of it rate-limited.
    if (!this.#failing) this.#log.warn({ stream: this.#s.stream, error: why, records }, text);
    else {
      this.#warn.warn(
        'unavailable',
        { stream: this.#s.stream, error: why, records },
        text,
        (n) =>
          `JetStream: stream ${this.#s.stream} still unavailable (${n} more refused batches; last: ${why})`,
      );
    }
    this.#failing = true;
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
