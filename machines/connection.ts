/**
 * The connection statechart: the single owner of every fact about the link to the server. One link at a
 * time; every way of losing it leads back to `backoff` and a new attempt. No state is without a way out
 * (DESIGN §1) except `failed`, which hands a broken invariant to the supervisor.
 *
 *   connecting ─done(dial)─▶ authenticating ─done(authenticate)─▶ online.confirming ─ESTABLISHED─▶ online.connected
 *        connecting / authenticating: error or deadline ─▶ backoff
 *        online: LINK_LOST / REMOTE_ENDING / REPLY_TIMEOUT / PROTOCOL_ERROR ─▶ backoff
 *        online.connected / draining: DISK_FULL / DISK_ERROR ─▶ online.serverFull (the link stays; not a failure)
 *        online.serverFull ─after(diskFullProbe) / probe─▶ online.serverFull ─ACCEPTING─▶ online.connected
 *        backoff ─after(backoffDelay)─▶ connecting
 *        suspended ─RESUME or after(suspendRetry)─▶ connecting
 *        backoff ─always, another server not yet tried in this round─▶ connecting (failover, no delay)
 *        online.connected ─done(probePreferred), on a secondary─▶ online (on the first server: failback)
 *   RELINK (a SIGHUP that needs a new link): connecting / authenticating / online ─▶ connecting, not a failure
 *   STOP: online ─▶ online.draining ─DRAINED─▶ closed; elsewhere, with nothing pending ─▶ closed
 *   FAULT (an invariant of the session broke) ─▶ failed: the entry throws, the supervisor restarts the actor.
 *
 * "Connected" means the session works: the server answered on the link (`ESTABLISHED`, sent by the session
 * at the first reply, to a record or to the heartbeat it sends on a link that starts idle), not that TCP
 * connected. The facts the runtime used to keep beside the machine are context here:
 *
 * - `attempt`: the backoff exponent; consecutive failures, reset once a link stayed up `stableLinkMs`;
 * - `outage`: consecutive failed attempts since the server last answered; at `maxTriesPerRecord + 1` the
 *   machine runs `network_failure_action` (once per outage: the count passes that value once);
 * - `connectedOnce`: the server has answered at least once; until then a failure runs
 *   `startup_failure_action` instead;
 * - `confirmed`: the server has answered on the current link;
 * - `stopping`, `link` (the id of the open link in the runtime's registry: dial's output is the handshake's
 *   input, whose output is the session's input);
 * - `server`: the index in `remote_server` of the server in use; `servers`: how many there are; `tried`: servers
 *   tried in this round (the failover rule, below).
 *
 * **Failover.** `remote_server` lists servers in order of preference. Every failure that leads to `backoff` (a
 * dial, a handshake, a lost or silent link, a protocol error, ENDING) moves on to the next server at once, without
 * the backoff delay, while a server of the list is left untried in this round; when all were tried, the backoff
 * delay runs and the next round starts again at the first server. A server that answers ends the round.
 * **Failback:** on a secondary (`server > 0`), `online.connected` runs `probePreferred`: every `failbackMs`
 * (failback_interval) it probes the first server beside the working link (a dial, the handshake and a heartbeat it
 * must answer: a real session, not a bare connect). Answered, that link becomes the session's (the link to the
 * secondary closes, what it had not acknowledged is sent again to the first); not answered, the agent stays on the
 * secondary and the probe runs again `failbackMs` later. Neither is a failure. With one server none of this applies.
 *
 * - `localPort`, `lastSession`, `reclaim`: the stale-session rule (below).
 *
 * **A server's stale session.** After a silent outage (packets dropped, no RST) the server may still hold the
 * agent's old connection: it has nothing to send on it, so only its keepalive (2 hours by default) would ever
 * clear it, and a server that allows one connection per address (auditd's `tcp_max_per_addr = 1`, Debian's
 * default) accepts every new connection and closes it at once (`DAEMON_ACCEPT op=dup res=no`). The agent
 * reconnects **from the local port of the link the server last answered on** (`lastSession`): its SYN then
 * belongs to the stale connection, the server's TCP stack answers it with a challenge ACK (RFC 5961), our stack
 * answers that with a RST whose sequence number the server accepts, the stale connection is gone, and the SYN's
 * retransmission (1 s later) opens a new one. `reclaim` says the next dial does that; it is set when a link the
 * server had answered on is lost without a word from the server (`LINK_LOST`, `REPLY_TIMEOUT`), and when a new
 * link is closed by the server before its first reply (`refusedRightAfterAccept`: the `op=dup` pattern); it is
 * cleared when the server answers. With `local_port` set, every dial uses that port anyway (the dial actor).
 *
 * **A full server.** DISKFULL and DISKERROR are replies, not link failures: the server works but cannot write.
 * The link stays open (`online.serverFull`), the session stops sending, and every `diskFullProbeMs` (1 s) the
 * machine asks it to send the oldest record alone (`probe`): one record per second, not a window, while the
 * server stays full; the first record it accepts (`ACCEPTING`) is back to `online.connected` and the full
 * window. Neither `attempt` (the backoff) nor `outage` counts them; the failure action runs once per episode.
 *
 * The machine holds only serialisable data. Sockets, queues and timers live in the actors and actions that
 * the runtime provides (`machine.provide`, src/agent/connection-logic.ts); the defaults here are inert so the
 * machine can be traversed, tested and drawn on its own.
 */
import { assign, enqueueActions, fromCallback, fromPromise, sendTo, setup } from 'xstate';
import { ActorFailedError } from '../src/errors.js';

/** Exponential backoff with full jitter (named constants, as grpc-js does). */
export const BACKOFF_INITIAL_MS = 200;
export const BACKOFF_MAX_MS = 30_000;
export const BACKOFF_FACTOR = 2;
/** A link that stayed up this long resets the backoff. */
export const STABLE_LINK_MS = 10_000;
/** A suspended connection tries again after this long even without SIGUSR2. */
export const SUSPEND_RETRY_MS = 60_000;
/** Attempts are counted up to this value only, which keeps the backoff exponent finite. */
export const MAX_COUNTED_ATTEMPTS = 16;
/** upstream's `network_retry_time` default (1 s) and `max_tries_per_record` default (3). */
export const RETRY_FLOOR_MS = 1_000;
export const MAX_TRIES_PER_RECORD = 3;
/** While the server says its disk is full (or in error), one record is sent this often to see whether it accepts again. */
export const DISK_FULL_PROBE_MS = 1_000;
/** On a secondary server, the first one is probed this long after the link to the secondary works. */
export const FAILBACK_MS = 300_000;

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

/** The failure actions (audisp-remote.conf names) the machine decides to run. */
export type FailureActionKey =
  | 'startup_failure_action'
  | 'network_failure_action'
  | 'remote_ending_action'
  | 'disk_full_action'
  | 'disk_error_action';

export interface ConnectionPolicy {
  backoffInitialMs: number;
  backoffMaxMs: number;
  backoffFactor: number;
  /**
   * `network_retry_time`: from the third consecutive attempt on, attempts are at least this far apart
   * (at most `backoffMaxMs`: the cap wins), as upstream sleeps between send attempts from the third on.
   */
  retryFloorMs: number;
  connectTimeoutMs: number;
  authTimeoutMs: number;
  stableLinkMs: number;
  suspendRetryMs: number;
  /** `max_tries_per_record`: `network_failure_action` runs when this many + 1 attempts in a row got no reply. */
  maxTriesPerRecord: number;
  /** Failures after which the configured action is `suspend` (sending stops until RESUME or the retry timer). */
  suspendOn: FailureKind[];
  /** In `online.serverFull`: the time between two probes (one record each). */
  diskFullProbeMs: number;
  /** On a secondary server: how long before the first one is probed (failback); 0 = never. */
  failbackMs: number;
}

export interface ConnectionInput {
  policy?: Partial<ConnectionPolicy>;
  /** The agent is stopping (a connection restarted by the supervisor during a stop). */
  stopping?: boolean;
  /** How many servers remote_server lists (default 1). The machine starts on the first. */
  servers?: number;
}

export interface ConnectionContext {
  policy: ConnectionPolicy;
  /** Consecutive failed attempts since the last stable link (clamped to MAX_COUNTED_ATTEMPTS): the backoff exponent. */
  attempt: number;
  /** Consecutive failed attempts since the server last answered. */
  outage: number;
  /** The server has answered at least once since the agent started. */
  connectedOnce: boolean;
  /** The server has answered on the current link. */
  confirmed: boolean;
  stopping: boolean;
  /** Id of the current link in the runtime's link registry (null: none). */
  link: number | null;
  /** Index of the server in use (0: the preferred one). */
  server: number;
  /** Servers in remote_server. */
  servers: number;
  /** Servers tried in this round (the failover rule); 1 once a server answered. */
  tried: number;
  /** Local port of the open link (null: none, or not known). */
  localPort: number | null;
  /** Where the server last answered: its index and the local port of that link (null: not known). */
  lastSession: { server: number; port: number | null } | null;
  /** The next dial binds `lastSession.port`: the server may still hold that session (see above). */
  reclaim: boolean;
  lastFailure: { kind: FailureKind; reason: string } | null;
}

export type SessionEvent =
  | { type: 'ESTABLISHED' }
  /** In `online.serverFull`: the server accepted a record again. */
  | { type: 'ACCEPTING' }
  | { type: 'LINK_LOST'; reason: string }
  | { type: 'REMOTE_ENDING' }
  | { type: 'REPLY_TIMEOUT'; reason: string }
  | { type: 'PROTOCOL_ERROR'; reason: string }
  | { type: 'DISK_FULL'; reason: string }
  | { type: 'DISK_ERROR'; reason: string }
  | { type: 'FAULT'; reason: string }
  | { type: 'DRAINED' };

export type ConnectionEvent =
  | { type: 'STOP'; pending: number }
  | { type: 'RESUME' }
  | { type: 'CONFIGURE'; policy: Partial<ConnectionPolicy> }
  /** `servers`: the number of servers when the list changed (the machine starts again at the first). */
  | { type: 'RELINK'; reason: string; servers?: number }
  | SessionEvent;

/** What the actors pass along: the id of a link in the runtime's registry. */
export interface LinkRef {
  link: number;
}
export interface DialInput {
  /** Index of the server in remote_server. */
  server: number;
  /** A local port to reconnect from (the stale-session rule), or null. `local_port`, when set, wins. */
  reclaimPort: number | null;
}
/** The dial's output: the link, and the local port it was opened from (null when not known). */
export interface DialOutput extends LinkRef {
  localPort: number | null;
}
/** The handshake's input: the dialled link, and which server it goes to (its name, for TLS and Kerberos). */
export interface AuthInput extends LinkRef {
  server: number;
}
/** The failback probe's input (see the actor). */
export interface FailbackInput {
  server: number;
  /** The secondary in use. */
  from: number;
  /** 0: no probing (on the first server, or failback off). */
  everyMs: number;
}
/** A session that starts while stopping reports DRAINED as soon as nothing is left. */
export interface SessionInput extends LinkRef {
  draining: boolean;
}

/** Events the machine sends down to its session actor. */
export type SessionCommand = { type: 'DRAIN' } | { type: 'PROBE' };

/** What the runtime reports about a failure (its log line, counters and status). */
export interface FailureReport {
  kind: FailureKind;
  reason: string;
  attempt: number;
  outage: number;
  /** The first failure after the server had answered: the start of an outage. */
  outageStarts: boolean;
}

export interface FailureActionRun {
  key: FailureActionKey;
  message: string;
}

export const DEFAULT_POLICY: ConnectionPolicy = {
  backoffInitialMs: BACKOFF_INITIAL_MS,
  backoffMaxMs: BACKOFF_MAX_MS,
  backoffFactor: BACKOFF_FACTOR,
  retryFloorMs: RETRY_FLOOR_MS,
  connectTimeoutMs: 5_000,
  authTimeoutMs: 5_000,
  stableLinkMs: STABLE_LINK_MS,
  suspendRetryMs: SUSPEND_RETRY_MS,
  maxTriesPerRecord: MAX_TRIES_PER_RECORD,
  suspendOn: [],
  diskFullProbeMs: DISK_FULL_PROBE_MS,
  failbackMs: FAILBACK_MS,
};

/**
 * Full jitter: uniform in [0, min(max, initial × factor^attempt)]; from the third consecutive attempt on
 * (attempt ≥ 2) at least min(retryFloorMs, backoffMaxMs).
 */
export function backoffDelay(policy: ConnectionPolicy, attempt: number, random: () => number = Math.random) {
  const ceiling = Math.min(policy.backoffMaxMs, policy.backoffInitialMs * policy.backoffFactor ** attempt);
  const jittered = Math.floor(random() * ceiling);
  if (attempt < 2) return jittered;
  return Math.max(jittered, Math.min(policy.retryFloorMs, policy.backoffMaxMs));
}

/** The failures that are a reply of the server, each with its own failure action. */
const REPLY_ACTIONS: Partial<Record<FailureKind, FailureActionKey>> = {
  'remote-ending': 'remote_ending_action',
  'disk-full': 'disk_full_action',
  'disk-error': 'disk_error_action',
};

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

type FailureReaction =
  | { type: 'reportFailure'; params: FailureReport }
  | { type: 'runFailureAction'; params: FailureActionRun };

/**
 * Which failure action applies: a server reply's own (disk full, disk error, ending); before the server ever
 * answered, `startup_failure_action`; when the outage reaches `maxTriesPerRecord + 1` attempts,
 * `network_failure_action`. Always a report first.
 */
function failureReactions(
  context: ConnectionContext,
  check: (guard: 'neverConnected' | 'outageLimitReached') => boolean,
): FailureReaction[] {
  const f = context.lastFailure;
  if (!f) return [];
  const reply = REPLY_ACTIONS[f.kind];
  const out: FailureReaction[] = [
    {
      type: 'reportFailure',
      params: {
        kind: f.kind,
        reason: f.reason,
        attempt: context.attempt,
        outage: context.outage,
        // A reply of the server (disk full, ending) is reported by its own action, not as a lost link.
        outageStarts: !reply && context.outage === 1 && context.connectedOnce,
      },
    },
  ];
  if (reply) {
    const message = f.kind === 'remote-ending' ? 'server is shutting down (ENDING)' : f.reason;
    out.push({ type: 'runFailureAction', params: { key: reply, message } });
  } else if (check('neverConnected')) {
    out.push({
      type: 'runFailureAction',
      params: { key: 'startup_failure_action', message: `cannot reach the server: ${f.reason}` },
    });
  } else if (check('outageLimitReached')) {
    out.push({
      type: 'runFailureAction',
      params: {
        key: 'network_failure_action',
        message: `server unreachable after ${context.outage} attempts without a reply; records stay queued and reconnection continues`,
      },
    });
  }
  return out;
}

/** The actions of every failure transition: remember the failure, then react to it. */
const failure = (kind: FailureKind) => [
  { type: 'recordFailure' as const, params: { kind } },
  'reactToFailure' as const,
];

/**
 * A link lost without a word from the server. The next dial reclaims the port of the server's last session
 * (the stale-session rule) when the server had answered on this link, and, for a link it closed before any
 * reply, when it may be refusing us for that earlier session.
 */
const lostLink = (kind: 'link-lost' | 'reply-timeout') => [
  {
    guard: 'linkConfirmed' as const,
    target: 'backoff',
    actions: [...failure(kind), 'reclaimSession' as const],
  },
  ...(kind === 'link-lost'
    ? [
        {
          guard: 'refusedRightAfterAccept' as const,
          target: 'backoff',
          actions: [...failure(kind), 'reclaimSession' as const],
        },
      ]
    : []),
  { target: 'backoff', actions: failure(kind) },
];

/** To `suspended` when the configured action for this failure is `suspend`, else to `backoff`. */
const suspendOrBackoff = (kind: FailureKind) => [
  { guard: { type: 'suspendsOn' as const, params: { kind } }, target: 'suspended', actions: failure(kind) },
  { target: 'backoff', actions: failure(kind) },
];

/** A DISKFULL/DISKERROR reply: remembered and reacted to (report, failure action), but not a link failure. */
const refusal = (kind: FailureKind) => [
  { type: 'recordRefusal' as const, params: { kind } },
  'reactToFailure' as const,
];

/**
 * DISKFULL / DISKERROR, on a link the server has answered on (the session reports the first reply before a
 * refusal): to `suspended` when so configured, else the link stays and the server is probed.
 */
const suspendOrProbe = (kind: FailureKind) => [
  {
    guard: { type: 'suspendsOn' as const, params: { kind } },
    target: '#connection.suspended',
    actions: failure(kind),
  },
  { target: 'serverFull', actions: refusal(kind) },
];

/** STOP outside `online`: with nothing pending, close; else remember it and drain once online. */
const stopOffline = [
  { guard: 'nothingPending' as const, target: 'closed' },
  { actions: 'markStopping' as const },
];

/** The first reply on a link: report "connected" (before the facts change), then record it. */
const established = ['reportConnected' as const, 'markEstablished' as const];

export const connectionMachine = setup({
  types: {
    context: {} as ConnectionContext,
    input: {} as ConnectionInput,
    events: {} as ConnectionEvent,
  },
  actors: {
    /** Opens a link to the server (TCP connect) and registers it. Provided by the runtime. */
    dial: fromPromise<DialOutput, DialInput>(async () => ({ link: 0, localPort: null })),
    /** Runs the transport's handshake on the link (nothing for tcp; GSS-API for krb5). Provided by the runtime. */
    authenticate: fromPromise<LinkRef, AuthInput>(async ({ input }) => ({ link: input.link })),
    /** Owns the open link: sends queued records, reads replies, heartbeats; its cleanup closes the link. */
    session: fromCallback<SessionCommand, SessionInput>(() => () => {}),
    /**
     * Failback, invoked in `online.connected`: with `everyMs` > 0 (on a secondary, failback on), every `everyMs` it
     * opens a link to server `server`, runs the handshake and has a heartbeat answered on it (a real session, not a
     * bare connect); the first that works is its output, handed over to the next session. With `everyMs` = 0 it
     * never completes. Provided by the runtime; this default never completes.
     */
    probePreferred: fromPromise<DialOutput, FailbackInput>(() => new Promise<DialOutput>(() => {})),
  },
  guards: {
    stopping: ({ context }) => context.stopping,
    nothingPending: ({ event }) => event.type === 'STOP' && event.pending === 0,
    suspendsOn: ({ context }, params: { kind: FailureKind }) =>
      context.policy.suspendOn.includes(params.kind),
    /** The server has never answered: a failure is a startup failure. */
    neverConnected: ({ context }) => !context.connectedOnce,
    /** This failure makes the outage `maxTriesPerRecord + 1` attempts long. */
    outageLimitReached: ({ context }) => context.outage === context.policy.maxTriesPerRecord + 1,
    /** The server has answered on the link being lost. */
    linkConfirmed: ({ context }) => context.confirmed,
    /**
     * The server closed a new link before answering anything on it, and it has answered us before: it may be
     * refusing us because it still holds that earlier session (`tcp_max_per_addr`, `op=dup`).
     */
    refusedRightAfterAccept: ({ context }) =>
      !context.confirmed && context.lastSession !== null && context.lastSession.server === context.server,
    /** A server of the list is not yet tried in this round: fail over to it without the backoff delay. */
    anotherServer: ({ context }) => context.tried < context.servers,
  },
  delays: {
    backoffDelay: ({ context }) => backoffDelay(context.policy, context.attempt),
    connectTimeout: ({ context }) => context.policy.connectTimeoutMs,
    authTimeout: ({ context }) => context.policy.authTimeoutMs,
    stableLink: ({ context }) => context.policy.stableLinkMs,
    suspendRetry: ({ context }) => context.policy.suspendRetryMs,
    diskFullProbe: ({ context }) => context.policy.diskFullProbeMs,
  },
  actions: {
    /** The runtime logs and counts a failure. */
    reportFailure: (_, _params: FailureReport) => {},
    /** The runtime runs the configured failure action `key` (actions.ts). */
    runFailureAction: (_, _params: FailureActionRun) => {},
    /** The runtime logs "connected"/"reconnected" and re-arms the warn_once actions. */
    reportConnected: () => {},
    /** The runtime logs that the server accepts records again, and re-arms the warn_once actions. */
    reportAccepting: () => {},
    /** The runtime logs a failover to another server (`server`: the one tried next). */
    reportFailover: (_, _params: { from: number; to: number }) => {},
    /** The runtime logs that the first server answered the failback probe: the agent goes back to it. */
    reportFailback: (_, _params: { from: number }) => {},
    /** The failback probe failed in a way it does not retry (a bug): logged; probing resumes with the next link. */
    reportFailbackFailed: () => {},
    /** Throws, so the supervisor sees the failure and restarts the connection within its intensity. */
    escalate: ({ event }) => {
      const reason = 'reason' in event ? event.reason : event.type;
      throw new ActorFailedError(`connection: ${reason}`);
    },
    markStopping: assign({ stopping: true }),
    /** SIGHUP: new timeouts, backoff and limits apply from the next transition that uses them. */
    applyPolicy: assign({
      policy: ({ context, event }) =>
        event.type === 'CONFIGURE' ? { ...context.policy, ...event.policy } : context.policy,
    }),
    /** The session reports DRAINED once the queue is empty and nothing is in flight. */
    askSessionToDrain: sendTo('session', { type: 'DRAIN' } satisfies SessionCommand),
    /** The session sends the oldest record alone (when nothing of it is in flight). */
    askSessionToProbe: sendTo('session', { type: 'PROBE' } satisfies SessionCommand),
    resetAttempts: assign({ attempt: 0 }),
    /** The next server of the list, tried now (failover). */
    failOver: assign(({ context }) => ({
      server: (context.server + 1) % context.servers,
      tried: context.tried + 1,
    })),
    /** A new round (after the backoff delay) starts at the preferred server. */
    preferFirst: assign({ server: 0, tried: 1 }),
    /** The probe's link to the first server becomes the session's. */
    failBack: assign(({ event }) => {
      const output = (event as { output?: DialOutput }).output;
      return {
        server: 0,
        tried: 1,
        link: output?.link ?? null,
        localPort: output?.localPort ?? null,
        confirmed: false,
      };
    }),
    /** RELINK with a changed list: its size, and the first server. */
    takeServers: assign(({ context, event }) =>
      event.type === 'RELINK' && event.servers !== undefined
        ? { servers: Math.max(1, event.servers), server: 0, tried: 1 }
        : { servers: context.servers },
    ),
    /** The link the dial opened, and its local port. */
    takeDialedLink: assign(({ event }) => {
      const output = (event as { output?: DialOutput }).output;
      return { link: output?.link ?? null, localPort: output?.localPort ?? null, confirmed: false };
    }),
    /** The link the handshake handed over (the same id, secured). */
    takeLink: assign(({ event }) => ({
      link: (event as { output?: LinkRef }).output?.link ?? null,
      confirmed: false,
    })),
    /** RELINK: the session's cleanup closes the link. */
    forgetLink: assign({ link: null, localPort: null, confirmed: false }),
    /** The server answered: this link's port is where it holds our session; nothing to reclaim any more. */
    markEstablished: assign(({ context }) => ({
      connectedOnce: true,
      confirmed: true,
      outage: 0,
      tried: 1,
      reclaim: false,
      lastSession: { server: context.server, port: context.localPort },
    })),
    /** The next dial reconnects from the port of the server's last session. */
    reclaimSession: assign({ reclaim: true }),
    recordFailure: assign(({ context, event }, params: { kind: FailureKind }) => ({
      attempt: Math.min(context.attempt + 1, MAX_COUNTED_ATTEMPTS),
      outage: context.outage + 1,
      link: null,
      localPort: null,
      confirmed: false,
      lastFailure: { kind: params.kind, reason: describe(params.kind, context.policy, event) },
    })),
    /** A DISKFULL/DISKERROR reply: the last failure for the reports; the link, `attempt` and `outage` stay. */
    recordRefusal: assign(({ context, event }, params: { kind: FailureKind }) => ({
      lastFailure: { kind: params.kind, reason: describe(params.kind, context.policy, event) },
    })),
    /** The reactions `failureReactions` decides on, run in order. */
    // (`enqueue` is typed by hand: XState 5.33 cannot type it against the actions of the same `setup`.)
    reactToFailure: enqueueActions(({ context, enqueue, check }) => {
      for (const a of failureReactions(context as ConnectionContext, (guard) => check(guard))) enqueue(a);
    }) as never,
  },
}).createMachine({
  id: 'connection',
  context: ({ input }) => ({
    policy: { ...DEFAULT_POLICY, ...input.policy },
    attempt: 0,
    outage: 0,
    connectedOnce: false,
    confirmed: false,
    stopping: input.stopping ?? false,
    link: null,
    server: 0,
    servers: Math.max(1, input.servers ?? 1),
    tried: 1,
    localPort: null,
    lastSession: null,
    reclaim: false,
    lastFailure: null,
  }),
  initial: 'connecting',
  on: {
    CONFIGURE: { actions: 'applyPolicy' },
  },
  states: {
    connecting: {
      invoke: {
        id: 'dial',
        src: 'dial',
        input: ({ context }) => ({
          server: context.server,
          reclaimPort:
            context.reclaim && context.lastSession?.server === context.server
              ? context.lastSession.port
              : null,
        }),
        onDone: { target: 'authenticating', actions: 'takeDialedLink' },
        onError: { target: 'backoff', actions: failure('dial') },
      },
      after: {
        connectTimeout: { target: 'backoff', actions: failure('dial-timeout') },
      },
      on: {
        STOP: stopOffline,
        // A new address or transport: the dial under way goes to the old one; start again.
        RELINK: { target: 'connecting', reenter: true, actions: 'takeServers' },
      },
    },
    authenticating: {
      invoke: {
        id: 'authenticate',
        src: 'authenticate',
        input: ({ context }) => ({ link: context.link ?? 0, server: context.server }),
        onDone: [
          { guard: 'stopping', target: 'online.draining', actions: 'takeLink' },
          { target: 'online.confirming', actions: 'takeLink' },
        ],
        onError: { target: 'backoff', actions: failure('auth') },
      },
      after: {
        authTimeout: { target: 'backoff', actions: failure('auth-timeout') },
      },
      on: {
        STOP: stopOffline,
        RELINK: { target: 'connecting', actions: ['forgetLink', 'takeServers'] },
      },
    },
    online: {
      invoke: {
        id: 'session',
        src: 'session',
        input: ({ context }) => ({ link: context.link ?? 0, draining: context.stopping }),
      },
      on: {
        // While draining the first reply still counts (the server works), without changing state.
        ESTABLISHED: { actions: established },
        LINK_LOST: lostLink('link-lost'),
        REPLY_TIMEOUT: lostLink('reply-timeout'),
        PROTOCOL_ERROR: { target: 'backoff', actions: failure('protocol') },
        REMOTE_ENDING: suspendOrBackoff('remote-ending'),
        RELINK: { target: 'connecting', actions: ['forgetLink', 'takeServers'] },
        FAULT: { target: 'failed' },
      },
      initial: 'confirming',
      states: {
        confirming: {
          on: {
            ESTABLISHED: { target: 'connected', actions: established },
            STOP: { target: 'draining', actions: 'markStopping' },
          },
        },
        connected: {
          after: { stableLink: { actions: 'resetAttempts' } },
          on: {
            STOP: { target: 'draining', actions: 'markStopping' },
            DISK_FULL: suspendOrProbe('disk-full'),
            DISK_ERROR: suspendOrProbe('disk-error'),
          },
          // Failback: on a secondary, the first server is probed beside the working link every `failbackMs`;
          // once it answers, its link is the next session's (online is entered again, on the first server).
          invoke: {
            id: 'probePreferred',
            src: 'probePreferred',
            input: ({ context }) => ({
              server: 0,
              from: context.server,
              everyMs: context.server > 0 ? context.policy.failbackMs : 0,
            }),
            onDone: {
              target: '#connection.online',
              reenter: true,
              actions: [
                { type: 'reportFailback', params: ({ context }) => ({ from: context.server }) },
                'failBack',
              ],
            },
            onError: { actions: 'reportFailbackFailed' },
          },
        },
        serverFull: {
          after: {
            diskFullProbe: { target: 'serverFull', reenter: true, actions: 'askSessionToProbe' },
          },
          on: {
            ACCEPTING: [
              { guard: 'stopping', target: 'draining', actions: 'reportAccepting' },
              { target: 'connected', actions: 'reportAccepting' },
            ],
            // A probe refused again: remembered for the reports (the episode's first refusal ran the action).
            DISK_FULL: { actions: { type: 'recordRefusal', params: { kind: 'disk-full' } } },
            DISK_ERROR: { actions: { type: 'recordRefusal', params: { kind: 'disk-error' } } },
            // Stopping: the drain starts once the server accepts again (or the supervisor's deadline ends it).
            STOP: { actions: 'markStopping' },
          },
        },
        draining: {
          entry: 'askSessionToDrain',
          on: {
            DRAINED: { target: '#connection.closed' },
            // Stopping: probe rather than suspend, so that what is left can still go within the drain deadline.
            DISK_FULL: { target: 'serverFull', actions: refusal('disk-full') },
            DISK_ERROR: { target: 'serverFull', actions: refusal('disk-error') },
          },
        },
      },
    },
    backoff: {
      // Failover: the next server of the list at once while one is left untried in this round.
      always: {
        guard: 'anotherServer',
        target: 'connecting',
        actions: [
          {
            type: 'reportFailover',
            params: ({ context }) => ({ from: context.server, to: (context.server + 1) % context.servers }),
          },
          'failOver',
        ],
      },
      after: {
        backoffDelay: { target: 'connecting', actions: 'preferFirst' },
      },
      on: {
        STOP: stopOffline,
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
    failed: {
      entry: 'escalate',
    },
    closed: {
      type: 'final',
    },
  },
});

export type ConnectionMachine = typeof connectionMachine;
