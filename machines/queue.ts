/**
 * The queue's visible state, driven by the queue itself (the data path never goes through this
 * machine: records are appended and acknowledged directly, so a busy host pays no per-record
 * statechart cost). `spilling` is for the durable queue: records on disk beyond the memory window.
 *
 *   empty ⇄ holding ⇄ full;  any ─QUEUE_ERROR─▶ error ─QUEUE_RECOVERED─▶ holding
 */
import { fromCallback, setup } from 'xstate';

export type QueueMachineEvent =
  | { type: 'QUEUE_EMPTY' }
  | { type: 'QUEUE_HOLDING' }
  | { type: 'QUEUE_SPILLING' }
  | { type: 'QUEUE_FULL' }
  | { type: 'QUEUE_ERROR'; reason: string }
  | { type: 'QUEUE_RECOVERED' };

export const queueMachine = setup({
  types: {
    events: {} as QueueMachineEvent,
  },
  actors: {
    /** Watches the queue and reports its status changes. Provided by the runtime. */
    watch: fromCallback<QueueMachineEvent>(() => () => {}),
  },
  actions: {
    /** The runtime runs overflow_action / queue_error_action. */
    reportFull: () => {},
    reportError: () => {},
  },
}).createMachine({
  id: 'queue',
  invoke: { id: 'watch', src: 'watch' },
  initial: 'empty',
  on: {
    QUEUE_EMPTY: { target: '.empty' },
    QUEUE_HOLDING: { target: '.holding' },
    QUEUE_SPILLING: { target: '.spilling' },
    QUEUE_FULL: { target: '.full', actions: 'reportFull' },
    QUEUE_ERROR: { target: '.error', actions: 'reportError' },
  },
  states: {
    empty: {},
    holding: {},
    spilling: {},
    full: {},
    error: {
      on: {
        QUEUE_RECOVERED: { target: 'holding' },
      },
    },
  },
});

export type QueueMachine = typeof queueMachine;
