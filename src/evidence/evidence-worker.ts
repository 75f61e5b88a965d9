/**
 * The evidence writer in a worker thread (src/collector/evidence-sink.ts starts it): the collector's event loop
 * writes the log and acknowledges; this thread hashes and chains what was written, in the same order, with the same
 * EvidenceWriter (so the format is exactly the in-thread one). Messages from the collector, in order:
 *
 *   { type: 'append', data, parts: [host, start, end][] }   the bytes of one log write, per client batch
 *   { type: 'flush' | 'rotate' | 'checkpoint' | 'close', id } answered with { type: 'done', id, status }
 *
 * Every append is answered with { type: 'progress', bytes, status } once chained, so the collector knows how far
 * behind this thread is (it bounds that backlog). Log lines go to the collector's logger as { type: 'log' }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { EvidenceWriter, type EvidenceWriterOptions } from './writer.js';

export type WorkerRequest =
  | { type: 'append'; data: Uint8Array; parts: [string, number, number][] }
  | { type: 'flush' | 'rotate' | 'checkpoint' | 'close'; id: number };

export type WorkerReply =
  | { type: 'opened'; verifierKey: string; status: ReturnType<EvidenceWriter['status']> }
  | { type: 'failed'; name: string; message: string }
  | { type: 'progress'; bytes: number; status: ReturnType<EvidenceWriter['status']> }
  | { type: 'done'; id: number; status: ReturnType<EvidenceWriter['status']>; error?: string }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; obj: object; msg: string };

const port = parentPort;
if (port) run();

function run(): void {
  const post = (m: WorkerReply) => port!.postMessage(m);
  const log = {
    info: (obj: object, msg: string) => post({ type: 'log', level: 'info', obj, msg }),
    warn: (obj: object, msg: string) => post({ type: 'log', level: 'warn', obj, msg }),
    error: (obj: object, msg: string) => post({ type: 'log', level: 'error', obj, msg }),
  };
  let w: EvidenceWriter;
  try {
    w = EvidenceWriter.open({ ...(workerData as EvidenceWriterOptions), log });
  } catch (err) {
    const e = err as Error;
    post({ type: 'failed', name: e?.name ?? 'Error', message: e?.message ?? String(err) });
    port!.close();
    return;
  }
  post({ type: 'opened', verifierKey: w.verifierKey, status: w.status() });
  port!.on('message', (m: WorkerRequest) => {
    if (m.type === 'append') {
      const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
      try {
        for (const [host, start, end] of m.parts) w.append(host, data.subarray(start, end));
      } catch (err) {
        log.error(
          { error: (err as Error).message },
          `evidence: records not chained: ${(err as Error).message}`,
        );
      }
      post({ type: 'progress', bytes: data.length, status: w.status() });
      return;
    }
    let error: string | undefined;
    try {
      if (m.type === 'rotate') w.rotate();
      else if (m.type === 'checkpoint') w.checkpoint();
      else if (m.type === 'close') w.close();
    } catch (err) {
      error = (err as Error).message;
    }
    post({ type: 'done', id: m.id, status: w.status(), ...(error !== undefined ? { error } : {}) });
    if (m.type === 'close') port!.close();
  });
}
