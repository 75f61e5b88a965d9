/**
 * The input reader: frames its source into records and hands them to the queue. It never stops
 * draining its source except while the queue refuses records (a blocked plugin stalls auditd, so
 * `paused` is visible on the status page and logged).
 *
 *   reading ─QUEUE_FULL─▶ paused ─QUEUE_DRAIN─▶ reading
 *   reading / paused ─EOF─▶ ended (final)        READ_ERROR ─▶ failed (the supervisor restarts it)
 */
import { assign, fromCallback, setup } from 'xstate';

export type ReaderEvent =
  | { type: 'QUEUE_FULL' }
  | { type: 'QUEUE_DRAIN' }
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
    /** The runtime flushes the last partial line and tells the connection to drain. */
    reportEnded: () => {},
    reportPaused: () => {},
    reportResumed: () => {},
    /** Throws, so the supervisor sees the failure and restarts the reader within its intensity. */
    escalate: ({ context }) => {
      throw new Error(`input read failed: ${context.error}`);
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
    EOF: { target: '.ended' },
    READ_ERROR: { target: '.failed' },
  },
});

export type ReaderMachine = typeof readerMachine;
