/**
 * The evidence store (src/evidence/writer.ts, docs/evidence.md) as the collector's log store drives it: opened
 * before the first write, told about each write (the bytes, per client batch, in write order), about each rotation
 * and the clean stop.
 *
 * Hashing costs several microseconds per record, more than the rest of the collector's work per record, so by
 * default the EvidenceWriter runs in a worker thread (src/evidence/evidence-worker.ts): the event loop writes the
 * log and acknowledges, the worker chains the same bytes in the same order, with the same code and format.
 * `inline` runs it on the event loop (for tests and the benchmark's comparison). The worker may fall behind by at
 * most BACKLOG_BYTES: beyond that the log store waits before its next write (`waitForRoom`), so memory stays
 * bounded and a saturated collector is paced by hashing instead of growing. If the worker dies, its error is
 * logged and the evidence lags (the next start chains the rest by re-reading the log, as after a crash); the log
 * itself goes on.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { EvidenceError, FileSafetyError } from '../errors.js';
import type { WorkerReply, WorkerRequest } from '../evidence/evidence-worker.js';
import { type EvidenceStatus, EvidenceWriter, type EvidenceWriterOptions } from '../evidence/writer.js';
import type { Logger } from '../log.js';
import { PACKAGE_ROOT } from '../paths.js';

/** Bytes the worker may be behind the log before writes wait for it. */
export const BACKLOG_BYTES = 16 << 20;

export interface EvidenceSettings {
  keyFile: string;
  /** 0: checkpoints only at rotation and stop. */
  checkpointIntervalMs: number;
  /** Default 'worker'. */
  mode?: 'worker' | 'inline';
  /** Distinct hosts kept by the chain (the collector's max_hosts). */
  maxHosts?: number;
}

export interface EvidenceSinkStatus extends EvidenceStatus {
  mode: 'worker' | 'inline';
  /** Bytes written to the log and not chained yet (worker). */
  backlogBytes: number;
  /** The worker stopped unexpectedly (the evidence lags until the next start). */
  failed: string | null;
}

/** Client batches of one write: the host and the byte range of `data`. */
export type EvidenceParts = [host: string, start: number, end: number][];

export interface EvidenceSink {
  readonly verifierKey: string;
  /** After a successful write of `data` to the log. The sink may take `data` (it is not used after this call). */
  append(data: Buffer, parts: EvidenceParts): void;
  /** Resolves when the backlog allows another write. */
  waitForRoom(): Promise<void>;
  /** Resolves when everything appended so far is chained (before the log file is renamed). */
  flush(): Promise<void>;
  /** The log was rotated: after the last write to the old file, before the first to the new one. */
  rotate(): Promise<void>;
  /** Clean stop, after the last write: the final checkpoint. */
  close(): Promise<void>;
  status(): EvidenceSinkStatus;
}

export async function openEvidence(logFile: string, s: EvidenceSettings, log: Logger): Promise<EvidenceSink> {
  const options: EvidenceWriterOptions = {
    logFile,
    keyFile: s.keyFile,
    checkpointIntervalMs: s.checkpointIntervalMs,
    ...(s.maxHosts !== undefined ? { maxHosts: s.maxHosts } : {}),
  };
  const sink =
    s.mode === 'inline' ? InlineEvidence.open(options, log) : await WorkerEvidence.open(options, log);
  log.info(
    { log: logFile, keyFile: s.keyFile, key: sink.verifierKey, mode: sink.status().mode },
    `evidence: chaining ${logFile} (verify with \`auditrelay verify --key '${sink.verifierKey}' ${logFile}\`)`,
  );
  return sink;
}

class InlineEvidence implements EvidenceSink {
  readonly #w: EvidenceWriter;

  private constructor(w: EvidenceWriter) {
    this.#w = w;
  }

  static open(options: EvidenceWriterOptions, log: Logger): InlineEvidence {
    return new InlineEvidence(EvidenceWriter.open({ ...options, log: log.child({ component: 'evidence' }) }));
  }

  get verifierKey(): string {
    return this.#w.verifierKey;
  }

  append(data: Buffer, parts: EvidenceParts): void {
    for (const [host, start, end] of parts) this.#w.append(host, data.subarray(start, end));
  }

  waitForRoom(): Promise<void> {
    return Promise.resolve();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  async rotate(): Promise<void> {
    this.#w.rotate();
  }

  async close(): Promise<void> {
    this.#w.close();
  }

  status(): EvidenceSinkStatus {
    return { ...this.#w.status(), mode: 'inline', backlogBytes: 0, failed: null };
  }
}

/** The compiled worker entry; from the sources (tests run them), the build of it. */
function workerEntry(): URL {
  const here = new URL('../evidence/evidence-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = path.join(PACKAGE_ROOT, 'dist', 'src', 'evidence', 'evidence-worker.js');
  if (existsSync(built)) return new URL(`file://${built}`);
  throw new EvidenceError(
    `the evidence worker (${fileURLToPath(here)}) is not there: run \`npm run build\`, or set evidence = no`,
  );
}

class WorkerEvidence implements EvidenceSink {
  readonly #worker: Worker;
  readonly #log: Logger;
  readonly verifierKey: string;
  #status: EvidenceStatus;
  #backlog = 0;
  #failed: string | null = null;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #roomWaiters: (() => void)[] = [];
  #closed = false;
  /** Appends not posted yet: one message per event-loop turn carries them all (postMessage costs tens of µs). */
  #unposted: { data: Buffer; parts: EvidenceParts }[] = [];
  #postScheduled = false;

  private constructor(worker: Worker, log: Logger, verifierKey: string, status: EvidenceStatus) {
    this.#worker = worker;
    this.#log = log;
    this.verifierKey = verifierKey;
    this.#status = status;
    worker.on('message', (m: WorkerReply) => this.#onMessage(m));
    worker.on('error', (err) => this.#fail(`the evidence worker failed: ${err.message}`));
    worker.on('exit', (code) => {
      if (!this.#closed) this.#fail(`the evidence worker exited (${code})`);
    });
  }

  static open(options: EvidenceWriterOptions, log: Logger): Promise<WorkerEvidence> {
    const elog = log.child({ component: 'evidence' });
    const worker = new Worker(workerEntry(), { workerData: options, stdout: false, stderr: false });
    return new Promise((resolve, reject) => {
      const early: WorkerReply[] = [];
      const onMessage = (m: WorkerReply) => {
        if (m.type === 'log') {
          logFromWorker(elog, m);
          return;
        }
        if (m.type === 'failed') {
          cleanup();
          void worker.terminate();
          reject(
            m.name === 'FileSafetyError' ? new FileSafetyError(m.message) : new EvidenceError(m.message),
          );
          return;
        }
        if (m.type === 'opened') {
          cleanup();
          const sink = new WorkerEvidence(worker, elog, m.verifierKey, m.status);
          for (const e of early) sink.#onMessage(e);
          resolve(sink);
          return;
        }
        early.push(m);
      };
      const onError = (err: Error) => {
        cleanup();
        reject(new EvidenceError(`the evidence worker could not start: ${err.message}`, { cause: err }));
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new EvidenceError(`the evidence worker exited (${code}) before it opened the evidence`));
      };
      const cleanup = () => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  append(data: Buffer, parts: EvidenceParts): void {
    if (this.#failed !== null || this.#closed || data.length === 0) return;
    this.#backlog += data.length;
    this.#unposted.push({ data, parts });
    if (this.#postScheduled) return;
    this.#postScheduled = true;
    setImmediate(() => this.#post());
  }

  /** Posts the appends of this turn in one message (in order; the worker chains them as separate writes). */
  #post(): void {
    this.#postScheduled = false;
    const list = this.#unposted.splice(0);
    if (list.length === 0 || this.#failed !== null) return;
    let data: Buffer;
    let parts: EvidenceParts;
    if (list.length === 1) {
      ({ data, parts } = list[0]!);
    } else {
      data = Buffer.concat(list.map((x) => x.data));
      parts = [];
      let at = 0;
      for (const x of list) {
        for (const [host, start, end] of x.parts) parts.push([host, at + start, at + end]);
        at += x.data.length;
      }
    }
    // A buffer that owns its memory is handed over without a copy; one inside a pool is copied first.
    const own =
      data.byteOffset === 0 && data.byteLength === data.buffer.byteLength
        ? data
        : Buffer.from(Uint8Array.prototype.slice.call(data));
    const msg: WorkerRequest = { type: 'append', data: own, parts };
    try {
      this.#worker.postMessage(msg, [own.buffer as ArrayBuffer]);
    } catch {
      this.#worker.postMessage(msg);
    }
  }

  waitForRoom(): Promise<void> {
    if (this.#backlog <= BACKLOG_BYTES || this.#failed !== null) return Promise.resolve();
    return new Promise((resolve) => this.#roomWaiters.push(resolve));
  }

  flush(): Promise<void> {
    return this.#request('flush');
  }

  rotate(): Promise<void> {
    return this.#request('rotate');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#request('close');
    } finally {
      this.#closed = true;
      await this.#worker.terminate();
    }
  }

  status(): EvidenceSinkStatus {
    return { ...this.#status, mode: 'worker', backlogBytes: this.#backlog, failed: this.#failed };
  }

  #request(type: 'flush' | 'rotate' | 'close' | 'checkpoint'): Promise<void> {
    if (this.#failed !== null || this.#closed) return Promise.resolve();
    this.#post(); // what was appended goes first
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ type, id } satisfies WorkerRequest);
    });
  }

  #onMessage(m: WorkerReply): void {
    switch (m.type) {
      case 'log':
        logFromWorker(this.#log, m);
        return;
      case 'progress':
        this.#status = m.status;
        this.#backlog -= m.bytes;
        if (this.#backlog <= BACKLOG_BYTES / 2 && this.#roomWaiters.length > 0) {
          for (const w of this.#roomWaiters.splice(0)) w();
        }
        return;
      case 'done': {
        this.#status = m.status;
        const p = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        if (m.error !== undefined) this.#log.error({ error: m.error }, `evidence: ${m.error}`);
        p?.resolve();
        return;
      }
      default:
        return;
    }
  }

  /** The worker is gone: the log goes on; the evidence lags until the next start re-reads the log. */
  #fail(why: string): void {
    if (this.#failed !== null) return;
    this.#failed = why;
    this.#log.error(
      { error: why },
      `evidence: ${why}; the log is still written, its records are chained at the next start (by re-reading the log)`,
    );
    for (const p of this.#pending.values()) p.resolve();
    this.#pending.clear();
    for (const w of this.#roomWaiters.splice(0)) w();
  }
}

function logFromWorker(log: Logger, m: Extract<WorkerReply, { type: 'log' }>): void {
  log[m.level](m.obj, m.msg);
}
