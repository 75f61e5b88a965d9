/**
 * `auditrelay events [FILE...]`: audit logs (or stdin) to one JSON document per event on stdout (JSON Lines).
 * Files are read in the order given through one grouper, so an event that spans a rotation (audit.log.1 then
 * audit.log) is still one event. Lines that are not records (comments, syslog lines, `type=X msg=?`) are reported
 * on stderr with file and line number, never silently dropped; blank lines are ignored.
 */
import { createReadStream } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { EvidenceError } from '../errors.js';
import { type AuditEvent, EventGrouper, type EventGrouperOptions } from './events.js';
import { LineSplitter } from './lines.js';

/** Longest line read; auditd's records are at most ~8970 bytes, so this only stops hostile input. */
export const MAX_LINE_BYTES = 1024 * 1024;
/** Per input, this many skipped lines are named one by one; the rest are counted. */
const MAX_NAMED_SKIPS = 10;

export interface EventsInput {
  /** For messages ("-" or "stdin" for standard input). */
  name: string;
  stream: Readable;
  /** A live stream (stdin): events untouched for 1–2 s are written out without waiting for more input. */
  live?: boolean;
}

export interface EventsRunOptions extends Omit<EventGrouperOptions, 'emit'> {
  out: Writable;
  warn(message: string): void;
  /** Interval of expireIdle() for live inputs. Default 1000 ms. */
  idleTickMs?: number;
}

export interface EventsRunResult {
  events: number;
  records: number;
  skipped: number;
}

export async function writeEvents(
  inputs: EventsInput[],
  options: EventsRunOptions,
): Promise<EventsRunResult> {
  let pending: string[] = [];
  let pendingBytes = 0;
  const grouper = new EventGrouper({
    ...options,
    emit(event: AuditEvent) {
      const text = `${JSON.stringify(event)}\n`;
      pending.push(text);
      pendingBytes += text.length;
    },
  });
  const out = options.out;
  // A reader that goes away (`| head`) ends the run quietly: EPIPE is rethrown from drain() and reported by the caller.
  let outError: Error | null = null;
  const onOutError = (err: Error) => {
    outError = err;
  };
  out.on('error', onOutError);
  const drain = async (): Promise<void> => {
    if (outError) throw outError;
    if (pending.length === 0) return;
    const text = pending.join('');
    pending = [];
    pendingBytes = 0;
    if (!out.write(text)) await waitDrain(out);
  };
  let skipped = 0;
  for (const input of inputs) {
    let named = 0;
    let skippedHere = 0;
    const skip = (lineNo: number, why: string) => {
      skipped++;
      skippedHere++;
      if (named++ < MAX_NAMED_SKIPS) options.warn(`${input.name}:${lineNo}: ${why}; skipped`);
    };
    const splitter = new LineSplitter({
      maxLineBytes: MAX_LINE_BYTES,
      onLine(buf, lineNo) {
        const line = buf.toString('utf8');
        if (line.trim() === '') return;
        if (!grouper.push(line)) skip(lineNo, `not an audit record (${describe(line)})`);
      },
      onTooLong(lineNo, bytes) {
        skip(lineNo, `line of ${bytes} bytes is longer than ${MAX_LINE_BYTES} (not an audit record)`);
      },
    });
    let timer: NodeJS.Timeout | null = null;
    if (input.live) {
      timer = setInterval(() => {
        grouper.expireIdle();
        void drain();
      }, options.idleTickMs ?? 1000);
      timer.unref();
    }
    try {
      for await (const chunk of input.stream) {
        splitter.push(chunk as Buffer);
        if (pendingBytes > 0) await drain();
      }
      splitter.end();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EPIPE' || err === outError) throw err;
      await drain().catch(() => {});
      throw new EvidenceError(`cannot read ${input.name}: ${code ?? (err as Error).message}`, { cause: err });
    } finally {
      if (timer) clearInterval(timer);
    }
    if (skippedHere > MAX_NAMED_SKIPS) {
      options.warn(`${input.name}: ${skippedHere} lines were not audit records and were skipped in all`);
    }
    await drain();
  }
  grouper.flush();
  await drain();
  out.off('error', onOutError);
  return { events: grouper.stats.events, records: grouper.stats.records, skipped };
}

/** A short description of a line that is not a record, for the warning. */
function describe(line: string): string {
  if (line.startsWith('#')) return 'a comment';
  if (!/\btype=/.test(line)) return 'no type= field';
  if (!/msg=audit\(/.test(line)) return 'no msg=audit(SECONDS.MILLIS:SERIAL) stamp';
  return 'the stamp or the type is malformed';
}

function waitDrain(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      out.off('drain', onDrain);
      out.off('error', done);
      out.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(Object.assign(new Error('output closed'), { code: 'EPIPE' }));
    out.once('drain', onDrain);
    out.once('error', done);
    out.once('close', onClose);
  });
}

/** Opens FILE arguments ('-' is stdin) as inputs. Errors surface when the stream is read. */
export function openEventInputs(files: string[], stdin: Readable): EventsInput[] {
  if (files.length === 0) return [{ name: 'stdin', stream: stdin, live: true }];
  return files.map((f) =>
    f === '-' ? { name: 'stdin', stream: stdin, live: true } : { name: f, stream: createReadStream(f) },
  );
}
