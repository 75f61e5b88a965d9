/**
 * What the collector's JetStream output and the sink share (docs/scale-out.md): the connection to the NATS
 * servers (reconnects for ever; a server list in any order), the stream's subjects (one per host), and the stream
 * created when it is missing (file storage, R`replicas`, de-duplication window, discard new: a full stream
 * refuses records instead of deleting ones nobody consumed).
 *
 * Subjects: `<STREAM>.<host token>`. A host name becomes one subject token reversibly: letters, digits and `-` as
 * they are, every other byte as `_` and two lower-case hex digits (`web1.example.com` → `web1_2eexample_2ecom`).
 */
import {
  DiscardPolicy,
  type JetStreamManager,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, nanos } from '@nats-io/transport-node';
import { JetStreamUnavailableError } from '../errors.js';
import type { Logger } from '../log.js';

export interface JetStreamSettings {
  /** `nats://HOST:PORT` URLs (any of them; the client learns the others from the cluster). */
  servers: string[];
  /** Stream name ([A-Za-z0-9_-]). */
  stream: string;
  /** Replicas when the stream is created (jetstream_replicas). */
  replicas: number;
  /** De-duplication window when the stream is created (jetstream_duplicate_window), ms. */
  duplicateWindowMs: number;
}

export const DEFAULT_JETSTREAM_REPLICAS = 3;
/** Two minutes is NATS's default; see docs/scale-out.md ("duplicate window") for why ten. */
export const DEFAULT_DUPLICATE_WINDOW_S = 600;

/** `web1.example.com` → `web1_2eexample_2ecom` (see the module comment). */
export function hostToken(host: string): string {
  if (host === '') return '_';
  let out = '';
  for (const byte of Buffer.from(host, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9-]/.test(c) ? c : `_${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/** The reverse of hostToken; null when `token` is not one. */
export function tokenHost(token: string): string | null {
  return tokenBytes(token)?.toString('utf8') ?? null;
}

/** The host name's bytes a token stands for (not decoded as UTF-8: two tokens never give the same bytes); null when `token` is not one. */
export function tokenBytes(token: string): Buffer | null {
  if (token === '_') return Buffer.alloc(0);
  const bytes: number[] = [];
  for (let i = 0; i < token.length; i++) {
    const c = token[i]!;
    if (c === '_') {
      const hex = token.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return null;
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else if (/[A-Za-z0-9-]/.test(c)) bytes.push(c.charCodeAt(0));
    else return null;
  }
  return Buffer.from(bytes);
}

export function hostSubject(stream: string, host: string): string {
  return `${stream}.${hostToken(host)}`;
}

/** The subjects the stream takes: `<STREAM>.>`. */
export function streamSubjects(stream: string): string {
  return `${stream}.>`;
}

/**
 * A connection that, once made, reconnects for ever. The first connection is tried again (every 0.25 s growing to
 * 5 s, each failure logged rate-limited) until it succeeds or `signal` aborts (then it rejects). Connection state
 * changes are logged.
 */
export async function connectNats(
  servers: string[],
  name: string,
  log: Logger,
  signal?: AbortSignal,
): Promise<NatsConnection> {
  let nc: NatsConnection | null = null;
  for (let attempt = 0; nc === null; attempt++) {
    if (signal?.aborted) throw new JetStreamUnavailableError('stopped before NATS could be reached');
    try {
      nc = await connect({
        servers,
        name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        reconnectJitter: 100,
        timeout: 2000,
        pingInterval: 5000,
        maxPingOut: 2,
      });
    } catch (err) {
      if (attempt === 0 || attempt % 20 === 0) {
        log.warn(
          { servers, error: natsReason(err), attempt: attempt + 1 },
          `cannot reach NATS at ${servers.join(', ')} (${natsReason(err)}); trying again`,
        );
      }
      await sleep(Math.min(5000, 250 * 2 ** Math.min(attempt, 5)), signal);
    }
  }
  log.info({ server: nc.getServer(), servers }, `connected to NATS at ${nc.getServer()}`);
  const conn = nc;
  void (async () => {
    for await (const s of conn.status()) {
      if (s.type === 'disconnect') log.warn({ server: s.server }, `NATS: disconnected from ${s.server}`);
      else if (s.type === 'reconnect') log.info({ server: s.server }, `NATS: reconnected to ${s.server}`);
      else if (s.type === 'error') log.warn({ error: String(s.error) }, `NATS: ${String(s.error)}`);
    }
  })().catch(() => {});
  return conn;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * The stream, created when missing (see the module comment). An existing stream is used as it is (its limits,
 * replicas and window are the operator's), but it must take `<STREAM>.>`.
 */
export async function ensureStream(
  nc: NatsConnection,
  s: JetStreamSettings,
  log: Logger,
): Promise<StreamInfo> {
  const jsm: JetStreamManager = await jetstreamManager(nc, { timeout: 5000 });
  const subject = streamSubjects(s.stream);
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(s.stream);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    const config: Partial<StreamConfig> & { name: string } = {
      name: s.stream,
      subjects: [subject],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.New,
      num_replicas: s.replicas,
      duplicate_window: nanos(s.duplicateWindowMs),
    };
    info = await jsm.streams.add(config);
    log.info(
      { stream: s.stream, replicas: s.replicas, duplicateWindowS: s.duplicateWindowMs / 1000, subject },
      `JetStream: created stream ${s.stream} (subjects ${subject}, file storage, ${s.replicas} replica(s), duplicate window ${s.duplicateWindowMs / 1000} s, discard new)`,
    );
    return info;
  }
  if (!info.config.subjects?.includes(subject)) {
    throw new JetStreamUnavailableError(
      `stream ${s.stream} exists but does not take the subjects ${subject} (it takes ${JSON.stringify(info.config.subjects ?? [])}): add ${subject} to it (nats stream edit ${s.stream} --subjects ...) or set jetstream_stream to another name`,
    );
  }
  return info;
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; code?: number; message?: string };
  return e?.name === 'StreamNotFoundError' || e?.code === 10059 || /stream not found/i.test(e?.message ?? '');
}

/** A one-line reason from a NATS or JetStream error. */
export function natsReason(err: unknown): string {
  const e = err as { message?: string; code?: unknown; cause?: unknown };
  const msg = e?.message ?? String(err);
  const cause = e?.cause as { message?: string } | undefined;
  return cause?.message && !msg.includes(cause.message) ? `${msg} (${cause.message})` : msg;
}

/** A publish refused because the stream reached a limit (max_bytes, max_msgs, …): not worth retrying at once. */
export function isStreamFull(err: unknown): boolean {
  const msg = natsReason(err);
  return /maximum (messages|bytes|messages per subject) exceeded|insufficient resources|resource limits exceeded/i.test(
    msg,
  );
}
