/**
 * Moves bytes from an input stream through the record splitter into the queue. It outlives the
 * reader actor: a restarted reader re-attaches to the same pump, so a partial line and records the
 * queue refused are never lost across a restart.
 */
import type { Readable } from 'node:stream';
import type { ReaderEvent } from '../../machines/reader.js';
import type { Logger } from '../log.js';
import type { RecordQueue } from '../queue/types.js';
import { RecordSplitter } from './record-splitter.js';

export interface InputPumpOptions {
  stream: Readable;
  queue: RecordQueue;
  maxRecord: number;
  forwardEoe: boolean;
  log: Logger;
  /** What the stream is, for log lines (e.g. "stdin"). */
  name: string;
}

export class InputPump {
  readonly #o: InputPumpOptions;
  readonly splitter: RecordSplitter;
  /** Records the queue refused (it was full); appended first when it has room again. */
  #held: Buffer[] = [];
  /** Records of the input chunk being split, appended together once the chunk is done. */
  #batch: Buffer[] | null = null;
  /** Pending resume after the pause that follows each chunk. */
  #yield: NodeJS.Immediate | null = null;
  #eof = false;
  #send: ((e: ReaderEvent) => void) | null = null;
  #eofSent = false;
  #detach: (() => void) | null = null;
  bytesRead = 0;

  constructor(options: InputPumpOptions) {
    this.#o = options;
    const { log, name } = options;
    this.splitter = new RecordSplitter({
      maxRecord: options.maxRecord,
      forwardEoe: options.forwardEoe,
      onRecord: (rec) => this.#offer(rec),
      onDiscard: (reason, d) => log.debug({ input: name, line: d.line, reason }, 'input line dropped'),
      onAdjust: (reason, d) =>
        log.warn(
          { input: name, line: d.line, reason, count: d.count },
          reason === 'split'
            ? `input line ${d.line} is longer than ${options.maxRecord - 1} bytes: sent as several records`
            : `input line ${d.line} contains ${d.count} NUL byte(s): replaced by spaces`,
        ),
    });
  }

  get held(): number {
    return this.#held.length;
  }

  /** The records held (read, refused by a full queue), oldest first: for the queue to keep at a clean stop. */
  get heldRecords(): readonly Buffer[] {
    return this.#held;
  }

  get ended(): boolean {
    return this.#eof && this.#held.length === 0;
  }

  /**
   * Starts (or resumes, after a reader restart) feeding the queue; returns the detach function. A stream
   * that has failed cannot be read again: attaching to it reports READ_ERROR at once, so a restarted reader
   * fails fast and the supervisor escalates instead of waiting forever for data that cannot come.
   */
  attach(send: (e: ReaderEvent) => void): () => void {
    const { stream, queue } = this.#o;
    // One consumer at a time: a reader that failed may not have had its cleanup run.
    this.#detach?.();
    this.#send = send;
    this.#eofSent = false;
    const broken = this.#broken();
    if (broken) {
      const detach = () => {
        if (this.#detach === detach) {
          this.#detach = null;
          this.#send = null;
        }
      };
      this.#detach = detach;
      // After the actor has started: an event sent while it starts would reach a machine not yet running.
      queueMicrotask(() => {
        if (this.#detach === detach) send({ type: 'READ_ERROR', reason: broken });
      });
      return detach;
    }
    const onData = (chunk: Buffer) => {
      this.bytesRead += chunk.length;
      const batch: Buffer[] = [];
      this.#batch = batch;
      try {
        this.splitter.push(chunk);
      } finally {
        this.#batch = null;
      }
      try {
        this.#offerMany(batch);
      } catch (err) {
        // The queue failed (not the input): what it did not take is held, and the reader is restarted.
        stream.pause();
        send({ type: 'READ_ERROR', reason: `the queue refused records: ${(err as Error).message}` });
        return;
      }
      // Let replies and sends have their turn between input chunks: a stream with a lot buffered would
      // otherwise deliver chunk after chunk (megabytes) in one go while the server waits for records.
      if (this.#held.length === 0 && !this.#eof) {
        stream.pause();
        this.#yield ??= setImmediate(() => {
          this.#yield = null;
          if (this.#held.length === 0 && !this.#eof && this.#detach === detach) stream.resume();
        });
      }
    };
    const onEnd = () => {
      this.splitter.end();
      this.#eof = true;
      this.#maybeEnded();
    };
    const onError = (err: NodeJS.ErrnoException) =>
      send({ type: 'READ_ERROR', reason: `${this.#o.name}: ${err.code ?? err.message}` });
    const onQueueDrain = () => {
      try {
        this.#flushHeld();
      } catch (err) {
        send({ type: 'READ_ERROR', reason: `the queue refused records: ${(err as Error).message}` });
      }
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    queue.on('drain', onQueueDrain);
    // The stream ended while no reader was attached (between a failure and the restart).
    if (stream.readableEnded && !this.#eof) onEnd();
    if (this.#held.length > 0) {
      send({ type: 'QUEUE_FULL' });
      this.#flushHeld();
    } else if (!this.#eof) {
      stream.resume();
    }
    this.#maybeEnded();
    const detach = () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      queue.off('drain', onQueueDrain);
      if (this.#detach === detach) {
        this.#detach = null;
        this.#send = null;
      }
    };
    this.#detach = detach;
    return detach;
  }

  /** The run is over: nothing is reported any more (a reader that failed may never have detached). */
  detach(): void {
    this.#detach?.();
  }

  /** Why the stream can never be read again (it failed, or was destroyed before its end), or null. */
  #broken(): string | null {
    const { stream, name } = this.#o;
    const err = stream.errored as NodeJS.ErrnoException | null;
    if (err) return `${name}: ${err.code ?? err.message}`;
    if (stream.destroyed && !stream.readableEnded && !this.#eof) return `${name} was closed before its end`;
    return null;
  }

  /** Stop reading (SIGTERM): what was read stays queued; nothing more is read. */
  close(): void {
    const { stream } = this.#o;
    stream.pause();
    if (!this.#eof) {
      this.#eof = true;
      this.splitter.end();
      this.#maybeEnded();
    }
  }

  #offer(record: Buffer): void {
    if (this.#batch) this.#batch.push(record);
    else this.#offerMany([record]);
  }

  /**
   * Appends in order; what the queue refuses is held (and the input paused) until it has room. If the
   * queue throws, every record of this call is held before the error goes on.
   */
  #offerMany(records: Buffer[]): void {
    if (records.length === 0) return;
    let accepted = 0;
    try {
      accepted = this.#held.length === 0 ? this.#append(records) : 0;
    } catch (err) {
      for (const r of records) this.#held.push(r);
      throw err;
    }
    if (accepted === records.length) return;
    const wasEmpty = this.#held.length === 0;
    for (let i = accepted; i < records.length; i++) this.#held.push(records[i]!);
    if (wasEmpty) {
      this.#o.stream.pause();
      this.#send?.({ type: 'QUEUE_FULL' });
    }
  }

  /** How many of `records` the queue took (from the first, in order). */
  #append(records: readonly Buffer[]): number {
    return this.#o.queue.appendMany(records);
  }

  #flushHeld(): void {
    if (this.#held.length > 0) this.#held.splice(0, this.#append(this.#held));
    if (this.#held.length > 0) return;
    this.#send?.({ type: 'QUEUE_DRAIN' });
    if (!this.#eof) this.#o.stream.resume();
    this.#maybeEnded();
  }

  /** EOF once per attached reader (it ends the reader); END_OF_INPUT while records are still held. */
  #maybeEnded(): void {
    if (this.ended) {
      if (!this.#eofSent) this.#send?.({ type: 'EOF' });
      this.#eofSent = this.#send !== null;
    } else if (this.#eof) this.#send?.({ type: 'END_OF_INPUT' });
  }
}
