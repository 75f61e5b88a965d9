/**
 * A one-for-one supervisor for XState actors (XState v5 has no restart strategy of its own).
 *
 * Each child lives in its own region of a parallel state:
 *
 *   running ─error, within intensity─▶ restarting ─after(restartDelay)─▶ running
 *   running ─error, past intensity──▶ failed ⇒ the whole supervisor goes to `escalated` (final)
 *   running ─done─▶ done (final); when every region is done the supervisor is `stopped` (final)
 *
 * Restart intensity is Erlang's: at most `maxRestarts` restarts of one child within `windowMs`.
 * The process owning the supervisor exits non-zero on `escalated`, so auditd or systemd restart it;
 * nothing is lost by that because the queue's state is outside the actors.
 */
import { type AnyActorLogic, assign, raise, setup } from 'xstate';

export const DEFAULT_MAX_RESTARTS = 5;
export const DEFAULT_RESTART_WINDOW_MS = 60_000;
export const DEFAULT_RESTART_DELAY_MS = 100;

export interface ChildSpec {
  /** Region name, invoke id and systemId (so the runtime finds it with `system.get(id)`). */
  id: string;
  logic: AnyActorLogic;
  input?: unknown;
}

export interface SupervisorOptions {
  maxRestarts?: number;
  windowMs?: number;
  restartDelayMs?: number;
  /** Clock for the intensity window (tests). */
  now?: () => number;
  /** Called when a child is about to be restarted (for logs and metrics). */
  onRestart?: (child: string, error: string, restartsInWindow: number) => void;
}

export interface SupervisorContext {
  /** Restart times per child, pruned to the window. */
  restarts: Record<string, number[]>;
  /** The last error of each child, for the status report. */
  lastError: Record<string, string>;
  /** The child that exceeded its restart intensity, if any. */
  escalatedBy: string | null;
}

type ChildErrorEvent = { type: `xstate.error.actor.${string}`; error: unknown };

export function createSupervisor(children: ChildSpec[], options: SupervisorOptions = {}) {
  const maxRestarts = options.maxRestarts ?? DEFAULT_MAX_RESTARTS;
  const windowMs = options.windowMs ?? DEFAULT_RESTART_WINDOW_MS;
  const now = options.now ?? Date.now;

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
              input: child.input,
              onDone: { target: 'done' },
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
          done: { type: 'final' as const },
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
      events: {} as { type: 'ESCALATE' } | ChildErrorEvent,
    },
    actors: Object.fromEntries(children.map((c) => [c.id, c.logic])),
    guards: {
      withinIntensity: ({ context }, params: { child: string }) =>
        recent(context.restarts[params.child], now()).length < maxRestarts,
    },
    delays: {
      restartDelay: options.restartDelayMs ?? DEFAULT_RESTART_DELAY_MS,
    },
    actions: {
      escalate: raise({ type: 'ESCALATE' }),
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
    context: { restarts: {}, lastError: {}, escalatedBy: null },
    initial: 'supervising',
    states: {
      supervising: {
        type: 'parallel',
        states: regions,
        onDone: { target: 'stopped' },
        on: { ESCALATE: { target: 'escalated' } },
      },
      stopped: { type: 'final' },
      escalated: { type: 'final' },
    },
    output: ({ context }) => ({ escalatedBy: context.escalatedBy, lastError: context.lastError }),
  });
}

function errorText(event: { type: string; error?: unknown }): string {
  const e = (event as ChildErrorEvent).error;
  return e instanceof Error ? e.message : String(e ?? event.type);
}
