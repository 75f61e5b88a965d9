/**
 * The queue's visible state, driven by the queue's own status events (the data path never goes through
 * this machine: records are appended and acknowledged directly, so a busy host pays no per-record
 * statechart cost).
 *
 *   empty ⇄ holding;  empty / holding ─QUEUE_FULL─▶ full;  any ─QUEUE_ERROR─▶ error ─status─▶ empty / holding / full
 *   full.refusing ─QUEUE_HOLDING / QUEUE_EMPTY─▶ full.easing ─QUEUE_FULL─▶ full.refusing
 *   full.easing ─after(calm)─▶ holding or empty
 *
 * Under overload the queue's status flips between full and holding at the rate of the acknowledgements.
 * `full` is one episode: it is entered once (overflow_action, one log line) and left once the queue has
 * refused nothing for `QUEUE_CALM_MS` (one line, with how often it refused meanwhile), so the log shows one
 * line per change of state, not one per flip.
 */
import { assign, fromCallback, setup } from 'xstate';

/** The queue must have refused nothing for this long before a full episode ends. */
export const QUEUE_CALM_MS = 1_000;

export type QueueMachineEvent =
  | { type: 'QUEUE_EMPTY' }
  | { type: 'QUEUE_HOLDING' }
  | { type: 'QUEUE_FULL' }
  | { type: 'QUEUE_ERROR'; reason: string };

export interface QueueContext {
  /** When the current full episode began (ms since the epoch), or null. */
  fullSince: number | null;
  /** How many times the queue became full in the current episode. */
  refusals: number;
  /** Whether the queue was empty the last time it reported (where `full.easing` goes when calm). */
  empty: boolean;
}

/** What the runtime logs when a full episode ends. */
export interface CalmReport {
  durationMs: number;
  refusals: number;
}

export const queueMachine = setup({
  types: {
    context: {} as QueueContext,
    events: {} as QueueMachineEvent,
  },
  actors: {
    /** Watches the queue and reports its status changes. Provided by the runtime. */
    watch: fromCallback<QueueMachineEvent>(() => () => {}),
  },
  guards: {
    wasEmpty: ({ context }) => context.empty,
  },
  delays: {
    calm: QUEUE_CALM_MS,
  },
  actions: {
    /** The runtime runs overflow_action (one line: the queue refuses records, the input is paused). */
    reportFull: () => {},
    /** The runtime logs that the episode ended, with its counts. */
    reportCalm: (_, _params: CalmReport) => {},
    /** The runtime runs queue_error_action. */
    reportError: () => {},
    startEpisode: assign({ fullSince: () => Date.now(), refusals: 1 }),
    countRefusal: assign({ refusals: ({ context }) => context.refusals + 1 }),
    endEpisode: assign({ fullSince: null, refusals: 0 }),
    noteLevel: assign({ empty: ({ event }) => event.type === 'QUEUE_EMPTY' }),
  },
}).createMachine({
  id: 'queue',
  context: { fullSince: null, refusals: 0, empty: true },
  invoke: { id: 'watch', src: 'watch' },
  initial: 'empty',
  on: {
    QUEUE_ERROR: { target: '.error', actions: 'reportError' },
  },
  states: {
    empty: {
      on: {
        QUEUE_HOLDING: { target: 'holding' },
        QUEUE_FULL: { target: 'full' },
      },
    },
    holding: {
      on: {
        QUEUE_EMPTY: { target: 'empty' },
        QUEUE_FULL: { target: 'full' },
      },
    },
    full: {
      entry: ['startEpisode', 'reportFull'],
      exit: [
        {
          type: 'reportCalm',
          params: ({ context }) => ({
            durationMs: Date.now() - (context.fullSince ?? Date.now()),
            refusals: context.refusals,
          }),
        },
        'endEpisode',
      ],
      initial: 'refusing',
      states: {
        refusing: {
          on: {
            QUEUE_HOLDING: { target: 'easing', actions: 'noteLevel' },
            QUEUE_EMPTY: { target: 'easing', actions: 'noteLevel' },
          },
        },
        easing: {
          after: {
            calm: [{ guard: 'wasEmpty', target: '#queue.empty' }, { target: '#queue.holding' }],
          },
          on: {
            QUEUE_HOLDING: { actions: 'noteLevel' },
            QUEUE_EMPTY: { actions: 'noteLevel' },
            QUEUE_FULL: { target: 'refusing', actions: 'countRefusal' },
          },
        },
      },
    },
    error: {
      on: {
        QUEUE_EMPTY: { target: 'empty' },
        QUEUE_HOLDING: { target: 'holding' },
        QUEUE_FULL: { target: 'full' },
      },
    },
  },
});

export type QueueMachine = typeof queueMachine;
