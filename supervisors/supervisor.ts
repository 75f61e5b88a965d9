/**
 * A one-for-one supervisor for XState actors (XState v5 has no restart strategy of its own).
 *
 * Each child lives in its own region of a parallel state:
 *
 *   running ─error, within intensity─▶ restarting ─after(restartDelay)─▶ running
 *   running ─error, past intensity──▶ failed ⇒ the whole supervisor goes to `escalated` (final)
 *   running ─done─▶ done (final); when every region is done the supervisor is `stopped` (final)
 *   a significant child done ─▶ `stopped` at once (Erlang's auto_shutdown = any_significant)
 *
 *   SHUTDOWN (once): the supervisor is `stopping`; the runtime is told (`onShutdown`: it asks the children
 *   to finish) and after `timeoutMs` the supervisor is `stopped` whatever the children do (SHUTDOWN_TIMEOUT),
 *   which stops every child. That bound cannot be lost by a restart: it is the supervisor's own timer.
 *
 * A child's input is computed at every (re)start from what the supervisor knows then (`stopping`), so a
 * restarted child starts with the current facts, not with those of the first start.
 *
 * Restart intensity is Erlang's: at most `maxRestarts` restarts of one child within `windowMs`.
 * The process owning the supervisor exits non-zero on `escalated`, so auditd or systemd restart it;
 * nothing is lost by that because the queue's state is outside the actors.
 */
import { type AnyActorLogic, assign, raise, setup } from 'xstate';

export const DEFAULT_MAX_RESTARTS = 5;
export const DEFAULT_RESTART_WINDOW_MS = 60_000;
export const DEFAULT_RESTART_DELAY_MS = 100;

/** What the supervisor tells a child's input function at each (re)start. */
export interface SupervisorFacts {
  /** SHUTDOWN was received: the system is stopping. */
  stopping: boolean;
}

export interface ChildSpec {
  /** Region name, invoke id and systemId (so the runtime finds it with `system.get(id)`). */
  id: string;
  logic: AnyActorLogic;
  /** The child's input, evaluated at every (re)start. */
  input?: (facts: SupervisorFacts) => unknown;
  /** When this child finishes, the supervisor stops (and every other child with it). */
  significant?: boolean;
}

export interface SupervisorOptions {
  maxRestarts?: number;
  windowMs?: number;
  restartDelayMs?: number;
  /** Clock for the intensity window (tests). */
  now?: () => number;
  /** Called when a child is about to be restarted (for logs and metrics). */
  onRestart?: (child: string, error: string, restartsInWindow: number) => void;
  /** Called once, when SHUTDOWN is received (with its reason): the runtime asks its children to finish. */
  onShutdown?: (reason: string) => void;
}

export interface SupervisorContext {
  /** Restart times per child, pruned to the window. */
  restarts: Record<string, number[]>;
  /** The last error of each child, for the status report. */
  lastError: Record<string, string>;
  /** The child that exceeded its restart intensity, if any. */
  escalatedBy: string | null;
  stopping: boolean;
  /** How long a shutdown may take before everything is stopped. */
  shutdownTimeoutMs: number;
  /** The shutdown ran out of time. */
  timedOut: boolean;
}

export interface SupervisorOutput {
  escalatedBy: string | null;
  lastError: Record<string, string>;
  timedOut: boolean;
}

export type SupervisorEvent =
  | { type: 'ESCALATE' }
  | { type: 'SHUTDOWN'; timeoutMs: number; reason: string }
  | { type: 'SHUTDOWN_TIMEOUT' };

type ChildErrorEvent = { type: `xstate.error.actor.${string}`; error: unknown };

export function createSupervisor(children: ChildSpec[], options: SupervisorOptions = {}) {
  const maxRestarts = options.maxRestarts ?? DEFAULT_MAX_RESTARTS;
  const windowMs = options.windowMs ?? DEFAULT_RESTART_WINDOW_MS;
  const now = options.now ?? Date.now;
  const anySignificant = children.some((c) => c.significant);

  const recent = (times: number[] | undefined, t: number) => (times ?? []).filter((x) => t - x < windowMs);

  const regions = Object.fromEntries(
    children.map((child) => [
      child.id,
      {
        initial: 'running',
        states: {
          running: {
            invoke: {
              id: child.id,
              systemId: child.id,
              src: child.id,
              input: ({ context }: { context: SupervisorContext }) =>
                child.input?.({ stopping: context.stopping }),
              onDone: child.significant ? { target: '#supervisor.stopped' } : { target: 'done' },
              onError: [
                {
                  guard: { type: 'withinIntensity' as const, params: { child: child.id } },
                  target: 'restarting',
                  actions: { type: 'recordRestart' as const, params: { child: child.id } },
                },
                {
                  target: 'failed',
                  actions: { type: 'recordEscalation' as const, params: { child: child.id } },
                },
              ],
            },
          },
          restarting: {
            after: { restartDelay: { target: 'running' } },
          },
          ...(child.significant ? {} : { done: { type: 'final' as const } }),
          failed: {
            entry: 'escalate' as const,
          },
        },
      },
    ]),
  );

  return setup({
    types: {
      context: {} as SupervisorContext,
      events: {} as SupervisorEvent | ChildErrorEvent,
      output: {} as SupervisorOutput,
    },
    actors: Object.fromEntries(children.map((c) => [c.id, c.logic])),
    guards: {
      withinIntensity: ({ context }, params: { child: string }) =>
        recent(context.restarts[params.child], now()).length < maxRestarts,
      notStopping: ({ context }) => !context.stopping,
    },
    delays: {
      restartDelay: options.restartDelayMs ?? DEFAULT_RESTART_DELAY_MS,
      shutdownTimeout: ({ context }) => context.shutdownTimeoutMs,
    },
    actions: {
      escalate: raise({ type: 'ESCALATE' }),
      beginShutdown: assign({
        stopping: true,
        shutdownTimeoutMs: ({ event }) => (event.type === 'SHUTDOWN' ? event.timeoutMs : 0),
      }),
      notifyShutdown: ({ event }) => options.onShutdown?.(event.type === 'SHUTDOWN' ? event.reason : ''),
      armShutdownTimer: raise({ type: 'SHUTDOWN_TIMEOUT' }, { delay: 'shutdownTimeout' }),
      markTimedOut: assign({ timedOut: true }),
      recordRestart: assign(({ context, event }, params: { child: string }) => {
        const t = now();
        const restarts = [...recent(context.restarts[params.child], t), t];
        options.onRestart?.(params.child, errorText(event), restarts.length);
        return {
          restarts: { ...context.restarts, [params.child]: restarts },
          lastError: { ...context.lastError, [params.child]: errorText(event) },
        };
      }),
      recordEscalation: assign(({ context, event }, params: { child: string }) => ({
        escalatedBy: params.child,
        lastError: { ...context.lastError, [params.child]: errorText(event) },
      })),
    },
  }).createMachine({
    id: 'supervisor',
    context: {
      restarts: {},
      lastError: {},
      escalatedBy: null,
      stopping: false,
      shutdownTimeoutMs: 0,
      timedOut: false,
    },
    initial: 'supervising',
    states: {
      supervising: {
        type: 'parallel',
        states: regions,
        // With a significant child, the supervisor stops when that child finishes (every region being
        // done would need it done too).
        ...(anySignificant ? {} : { onDone: { target: 'stopped' } }),
        on: {
          ESCALATE: { target: 'escalated' },
          SHUTDOWN: {
            guard: 'notStopping',
            actions: ['beginShutdown', 'notifyShutdown', 'armShutdownTimer'],
          },
          SHUTDOWN_TIMEOUT: { target: 'stopped', actions: 'markTimedOut' },
        },
      },
      stopped: { type: 'final' },
      escalated: { type: 'final' },
    },
    output: ({ context }) => ({
      escalatedBy: context.escalatedBy,
      lastError: context.lastError,
      timedOut: context.timedOut,
    }),
  });
}

function errorText(event: { type: string; error?: unknown }): string {
  const e = (event as ChildErrorEvent).error;
  return e instanceof Error ? e.message : String(e ?? event.type);
}
