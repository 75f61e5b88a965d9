/**
 * The connection statechart: one socket at a time, and every way of losing it leads back to
 * `backoff` and a new attempt. No state is without a way out (DESIGN §1).
 *
 *   disconnected ─CONNECT─▶ connecting ─dial done─▶ authenticating ─auth done─▶ online.connected
 *        connecting / authenticating: error or deadline ─▶ backoff
 *        online: LINK_LOST / REMOTE_ENDING / REPLY_TIMEOUT / PROTOCOL_ERROR / DISK_FULL / DISK_ERROR ─▶ backoff
 *        backoff ─after(backoffDelay)─▶ connecting
 *        suspended ─RESUME or after(suspendRetry)─▶ connecting
 *   STOP: online.connected ─▶ online.draining ─DRAINED─▶ closed; elsewhere, with nothing pending ─▶ closed
 *   DEADLINE (the drain deadline, from the runtime) ─▶ closed from anywhere.
 *
 * The machine holds only serialisable data. Sockets, queues and timers live in the actors and
 * actions that the runtime provides (`machine.provide`); the defaults here are inert so the
 * machine can be traversed, tested and drawn on its own.
 */
import { assign, fromCallback, fromPromise, sendTo, setup } from 'xstate';

/** Exponential backoff with full jitter (named constants, as grpc-js does). */
export const BACKOFF_INITIAL_MS = 200;
export const BACKOFF_MAX_MS = 30_000;
export const BACKOFF_FACTOR = 2;
/** A link that stayed up this long resets the backoff. */
export const STABLE_LINK_MS = 10_000;
/** A suspended connection tries again after this long even without SIGUSR2. */
export const SUSPEND_RETRY_MS = 60_000;
/** Attempts are counted up to this value only, which keeps the state space finite. */
export const MAX_COUNTED_ATTEMPTS = 16;

export type FailureKind =
  | 'dial'
  | 'dial-timeout'
  | 'auth'
  | 'auth-timeout'
  | 'link-lost'
  | 'remote-ending'
  | 'reply-timeout'
  | 'protocol'
  | 'disk-full'
  | 'disk-error';

export interface ConnectionPolicy {
  backoffInitialMs: number;
  backoffMaxMs: number;
  backoffFactor: number;
  connectTimeoutMs: number;
  authTimeoutMs: number;
  stableLinkMs: number;
  suspendRetryMs: number;
  /** Failures after which the configured action is `suspend` (sending stops until RESUME or the retry timer). */
  suspendOn: FailureKind[];
}

export interface ConnectionInput {
  policy?: Partial<ConnectionPolicy>;
  /** Start connecting at once instead of waiting for CONNECT. */
  autoConnect?: boolean;
}

export interface ConnectionContext {
  policy: ConnectionPolicy;
  /** Consecutive failed attempts since the last stable link (clamped to MAX_COUNTED_ATTEMPTS). */
  attempt: number;
  stopping: boolean;
  autoConnect: boolean;
  lastFailure: { kind: FailureKind; reason: string } | null;
}

export type SessionEvent =
  | { type: 'LINK_LOST'; reason: string }
  | { type: 'REMOTE_ENDING' }
  | { type: 'REPLY_TIMEOUT'; reason: string }
  | { type: 'PROTOCOL_ERROR'; reason: string }
  | { type: 'DISK_FULL'; reason: string }
  | { type: 'DISK_ERROR'; reason: string }
  | { type: 'DRAINED' };

export type ConnectionEvent =
  | { type: 'CONNECT' }
  | { type: 'STOP'; pending: number }
  | { type: 'DEADLINE' }
  | { type: 'RESUME' }
  | { type: 'CONFIGURE'; policy: Partial<ConnectionPolicy> }
  | SessionEvent;

/** A session that starts while stopping reports DRAINED as soon as nothing is left. */
export interface SessionInput {
  draining: boolean;
}

/** Events the machine sends down to its session actor. */
export type SessionCommand = { type: 'DRAIN' };

export const DEFAULT_POLICY: ConnectionPolicy = {
  backoffInitialMs: BACKOFF_INITIAL_MS,
  backoffMaxMs: BACKOFF_MAX_MS,
  backoffFactor: BACKOFF_FACTOR,
  connectTimeoutMs: 5_000,
  authTimeoutMs: 5_000,
  stableLinkMs: STABLE_LINK_MS,
  suspendRetryMs: SUSPEND_RETRY_MS,
  suspendOn: [],
};

/** Full jitter: uniform in [0, min(max, initial × factor^attempt)]. */
export function backoffDelay(policy: ConnectionPolicy, attempt: number, random: () => number = Math.random) {
  const ceiling = Math.min(policy.backoffMaxMs, policy.backoffInitialMs * policy.backoffFactor ** attempt);
  return Math.floor(random() * ceiling);
}

/** A readable reason: the event's own, or one that says what the deadline or reply meant. */
function describe(
  kind: FailureKind,
  policy: ConnectionPolicy,
  event: { type: string; reason?: string; error?: unknown },
): string {
  if ('reason' in event && event.reason) return event.reason;
  if (event.error instanceof Error) return event.error.message;
  if (event.error !== undefined) return String(event.error);
  if (kind === 'dial-timeout') return `connect did not complete within ${policy.connectTimeoutMs} ms`;
  if (kind === 'auth-timeout') return `the handshake did not complete within ${policy.authTimeoutMs} ms`;
  if (kind === 'remote-ending') return 'the server is shutting down (ENDING)';
  return event.type;
}

/** The actions of every failure transition: remember the failure, then let the runtime report it. */
const failure = (kind: FailureKind) => [
  { type: 'recordFailure' as const, params: { kind } },
  'reportFailure' as const,
];

/** To `suspended` when the configured action for this failure is `suspend`, else to `backoff`. */
const suspendOrBackoff = (kind: FailureKind) => [
  { guard: { type: 'suspendsOn' as const, params: { kind } }, target: 'suspended', actions: failure(kind) },
  { target: 'backoff', actions: failure(kind) },
];

export const connectionMachine = setup({
  types: {
    context: {} as ConnectionContext,
    input: {} as ConnectionInput,
    events: {} as ConnectionEvent,
  },
  actors: {
    /** Opens the transport (TCP connect). Provided by the runtime. */
    dial: fromPromise<void>(async () => {}),
    /** Runs the transport's handshake (nothing for tcp; GSS-API for krb5). Provided by the runtime. */
    authenticate: fromPromise<void>(async () => {}),
    /** Owns the open link: sends queued records, reads replies, heartbeats. Provided by the runtime. */
    session: fromCallback<SessionCommand, SessionInput>(() => () => {}),
  },
  guards: {
    stopping: ({ context }) => context.stopping,
    autoConnect: ({ context }) => context.autoConnect,
    nothingPending: ({ event }) => event.type === 'STOP' && event.pending === 0,
    suspendsOn: ({ context }, params: { kind: FailureKind }) =>
      context.policy.suspendOn.includes(params.kind),
  },
  delays: {
    backoffDelay: ({ context }) => backoffDelay(context.policy, context.attempt),
    connectTimeout: ({ context }) => context.policy.connectTimeoutMs,
    authTimeout: ({ context }) => context.policy.authTimeoutMs,
    stableLink: ({ context }) => context.policy.stableLinkMs,
    suspendRetry: ({ context }) => context.policy.suspendRetryMs,
  },
  actions: {
    /** The runtime logs, counts and runs the configured failure action. */
    reportFailure: () => {},
    /** The runtime notes a usable link (metrics, startup_failure_action bookkeeping). */
    reportConnected: () => {},
    markStopping: assign({ stopping: true }),
    /** SIGHUP: new timeouts and backoff apply from the next transition that uses them. */
    applyPolicy: assign({
      policy: ({ context, event }) =>
        event.type === 'CONFIGURE' ? { ...context.policy, ...event.policy } : context.policy,
    }),
    /** The session reports DRAINED once the queue is empty and nothing is in flight. */
    askSessionToDrain: sendTo('session', { type: 'DRAIN' } satisfies SessionCommand),
    resetAttempts: assign({ attempt: 0 }),
    recordFailure: assign(({ context, event }, params: { kind: FailureKind }) => ({
      attempt: Math.min(context.attempt + 1, MAX_COUNTED_ATTEMPTS),
      lastFailure: { kind: params.kind, reason: describe(params.kind, context.policy, event) },
    })),
  },
}).createMachine({
  id: 'connection',
  context: ({ input }) => ({
    policy: { ...DEFAULT_POLICY, ...input.policy },
    attempt: 0,
    stopping: false,
    autoConnect: input.autoConnect ?? true,
    lastFailure: null,
  }),
  initial: 'disconnected',
  on: {
    DEADLINE: { target: '.closed' },
    CONFIGURE: { actions: 'applyPolicy' },
  },
  states: {
    disconnected: {
      always: { guard: 'autoConnect', target: 'connecting' },
      on: {
        CONNECT: { target: 'connecting' },
        STOP: { target: 'closed' },
      },
    },
    connecting: {
      invoke: {
        id: 'dial',
        src: 'dial',
        onDone: { target: 'authenticating' },
        onError: { target: 'backoff', actions: failure('dial') },
      },
      after: {
        connectTimeout: { target: 'backoff', actions: failure('dial-timeout') },
      },
      on: {
        STOP: [{ guard: 'nothingPending', target: 'closed' }, { actions: 'markStopping' }],
      },
    },
    authenticating: {
      invoke: {
        id: 'authenticate',
        src: 'authenticate',
        onDone: [
          { guard: 'stopping', target: 'online.draining', actions: 'reportConnected' },
          { target: 'online.connected', actions: 'reportConnected' },
        ],
        onError: { target: 'backoff', actions: failure('auth') },
      },
      after: {
        authTimeout: { target: 'backoff', actions: failure('auth-timeout') },
      },
      on: {
        STOP: [{ guard: 'nothingPending', target: 'closed' }, { actions: 'markStopping' }],
      },
    },
    online: {
      invoke: { id: 'session', src: 'session', input: ({ context }) => ({ draining: context.stopping }) },
      on: {
        LINK_LOST: { target: 'backoff', actions: failure('link-lost') },
        REPLY_TIMEOUT: { target: 'backoff', actions: failure('reply-timeout') },
        PROTOCOL_ERROR: { target: 'backoff', actions: failure('protocol') },
        REMOTE_ENDING: suspendOrBackoff('remote-ending'),
        DISK_FULL: suspendOrBackoff('disk-full'),
        DISK_ERROR: suspendOrBackoff('disk-error'),
      },
      initial: 'connected',
      states: {
        connected: {
          after: { stableLink: { actions: 'resetAttempts' } },
          on: {
            STOP: { target: 'draining', actions: 'markStopping' },
          },
        },
        draining: {
          entry: 'askSessionToDrain',
          on: {
            DRAINED: { target: '#connection.closed' },
          },
        },
      },
    },
    backoff: {
      after: {
        backoffDelay: { target: 'connecting' },
      },
      on: {
        STOP: [{ guard: 'nothingPending', target: 'closed' }, { actions: 'markStopping' }],
      },
    },
    suspended: {
      after: {
        suspendRetry: { target: 'connecting' },
      },
      on: {
        RESUME: { target: 'connecting' },
        // Stopping with records queued: try once more now rather than wait out the suspension.
        STOP: [
          { guard: 'nothingPending', target: 'closed' },
          { target: 'connecting', actions: 'markStopping' },
        ],
      },
    },
    closed: {
      type: 'final',
    },
  },
});

export type ConnectionMachine = typeof connectionMachine;
