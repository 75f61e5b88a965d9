/**
 * What the reader and queue machines' actors and actions do for real: the reader attaches to the input
 * pump, the queue machine watches the queue's status. The reports are the machines' decisions; this
 * module only executes them.
 */
import { fromCallback } from 'xstate';
import { type CalmReport, type QueueMachineEvent, queueMachine } from '../../machines/queue.js';
import { readerMachine } from '../../machines/reader.js';
import type { InputPump } from '../input/input-pump.js';
import type { Logger } from '../log.js';
import type { QueueStatus, RecordQueue } from '../queue/types.js';
import type { ActionRunner } from './actions.js';
import type { AgentSettings } from './settings.js';

export function readerLogic(d: { input: InputPump; log: Logger; onEnded: () => void }) {
  return readerMachine.provide({
    actors: {
      source: fromCallback(({ sendBack }) => d.input.attach(sendBack)),
    },
    actions: {
      // The queue machine logs the full episode once; these flip at the rate of acknowledgements.
      reportPaused: () => d.log.debug('input paused: the queue refuses records'),
      reportResumed: () => d.log.debug('input resumed: the queue has room'),
      // After the reader's own completion has reached the supervisor (a stop can end the run at once).
      reportEnded: () => queueMicrotask(d.onEnded),
      reportEndOfInput: () => d.onEnded(),
    },
  });
}

export function queueLogic(d: {
  queue: RecordQueue;
  log: Logger;
  actions: ActionRunner;
  settings: () => AgentSettings;
  /** Records read but not yet taken by the queue. */
  held: () => number;
}) {
  const { queue } = d;
  const event = (status: QueueStatus): QueueMachineEvent => {
    switch (status) {
      case 'empty':
        return { type: 'QUEUE_EMPTY' };
      case 'holding':
        return { type: 'QUEUE_HOLDING' };
      case 'full':
        return { type: 'QUEUE_FULL' };
      case 'error':
        return {
          type: 'QUEUE_ERROR',
          reason: queue.lastError?.message ?? 'queue error',
        };
    }
  };
  return queueMachine.provide({
    actors: {
      watch: fromCallback(({ sendBack }) => {
        const onStatus = (s: QueueStatus) => sendBack(event(s));
        queue.on('status', onStatus);
        onStatus(queue.status);
        return () => queue.off('status', onStatus);
      }),
    },
    actions: {
      // The queue refuses records only at its bound: input pauses (nothing read is dropped) and
      // overflow_action runs, as upstream's does when its queue is full. Once per episode (machines/queue.ts).
      reportFull: () => {
        const action = d.settings().actions.overflow;
        const message =
          'queue is full: input paused until the server acknowledges records (nothing is dropped)';
        const detail = { depth: queue.depth, bytes: queue.bytes, held: d.held() };
        if (action.kind === 'ignore') d.log.info(detail, message);
        else d.actions.run('overflow_action', action, message, detail);
      },
      reportCalm: (_, r: CalmReport) =>
        d.log.info(
          { depth: queue.depth, durationMs: r.durationMs, refusals: r.refusals },
          `queue is no longer full after ${r.durationMs} ms; it refused records ${r.refusals} time(s) meanwhile and the input waited each time`,
        ),
      reportError: ({ event }) =>
        d.actions.run(
          'queue_error_action',
          d.settings().actions.queueError,
          `queue error: ${event.type === 'QUEUE_ERROR' ? event.reason : 'unknown'}; records already queued are kept`,
          { depth: queue.depth },
        ),
    },
  });
}
