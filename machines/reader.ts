/**
 * The input reader: frames its source into records and hands them to the queue. It never stops
 * draining its source except while the queue refuses records (a blocked plugin stalls auditd, so
 * `paused` is visible on the status page; the queue machine logs the full episode).
 *
 *   reading ─QUEUE_FULL─▶ paused ─QUEUE_DRAIN─▶ reading
 *   reading / paused ─EOF─▶ ended (final)        READ_ERROR ─▶ failed (the supervisor restarts it)
 *   END_OF_INPUT (the input ended while records are held): reported at once, so the stop does not wait
 *   for the queue to take them (it may never, with the server down)
 */
import { assign, fromCallback, setup } from 'xstate';
import { ActorFailedError } from '../src/errors.js';

export type ReaderEvent =
  | { type: 'QUEUE_FULL' }
  | { type: 'QUEUE_DRAIN' }
  /** The input ended while records the queue refused are still held: the stop begins now. */
  | { type: 'END_OF_INPUT' }
  /** The input ended and everything read is in the queue. */
  | { type: 'EOF' }
  | { type: 'READ_ERROR'; reason: string };

export interface ReaderContext {
  error: string | null;
}

export const readerMachine = setup({
  types: {
    context: {} as ReaderContext,
    events: {} as ReaderEvent,
  },
  actors: {
    /** Reads the source, frames records, appends them to the queue. Provided by the runtime. */
    source: fromCallback<ReaderEvent>(() => () => {}),
  },
  actions: {
    /** The input ended (end of file, or SIGTERM closed it): the runtime asks the supervisor to shut down. */
    reportEnded: () => {},
    /** The same, while records are still held for the queue (they are handed over as it makes room). */
    reportEndOfInput: () => {},
    reportPaused: () => {},
    reportResumed: () => {},
    /** Throws, so the supervisor sees the failure and restarts the reader within its intensity. */
    escalate: ({ context }) => {
      throw new ActorFailedError(`input read failed: ${context.error}`);
    },
    recordError: assign({
      error: ({ event }) => (event.type === 'READ_ERROR' ? event.reason : null),
    }),
  },
}).createMachine({
  id: 'reader',
  context: { error: null },
  invoke: { id: 'source', src: 'source' },
  initial: 'reading',
  states: {
    reading: {
      on: {
        QUEUE_FULL: { target: 'paused', actions: 'reportPaused' },
      },
    },
    paused: {
      on: {
        QUEUE_DRAIN: { target: 'reading', actions: 'reportResumed' },
      },
    },
    ended: {
      type: 'final',
      entry: 'reportEnded',
    },
    failed: {
      entry: ['recordError', 'escalate'],
    },
  },
  on: {
    END_OF_INPUT: { actions: 'reportEndOfInput' },
    EOF: { target: '.ended' },
    READ_ERROR: { target: '.failed' },
  },
});

export type ReaderMachine = typeof readerMachine;
