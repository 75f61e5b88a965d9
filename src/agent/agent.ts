/**
 * The agent runtime: wiring. It builds the reader, queue and connection machines with their real actors
 * (io-logic.ts, connection-logic.ts), runs them under the supervisor, forwards signals as events, and
 * turns the supervisor's outcome into an exit code. It keeps no fact a machine holds: the connection's
 * facts (outage, "connected once", stopping, the link) are the connection machine's context, the stop and
 * its deadline are the supervisor's, and what it reports is read from them.
 */
import type { Readable } from 'node:stream';
import { type Actor, type AnyActorRef, createActor, type InspectionEvent } from 'xstate';
import type { ConnectionContext } from '../../machines/connection.js';
import { createSupervisor, type SupervisorOutput } from '../../supervisors/supervisor.js';
import { ExitCodes } from '../errors.js';
import { InputPump } from '../input/input-pump.js';
import type { Logger } from '../log.js';
import { MAX_SERVER_PAYLOAD } from '../protocol/constants.js';
import { MemoryQueue } from '../queue/memory-queue.js';
import type { QueuePersistence, RecordQueue } from '../queue/types.js';
import { StateObserver, statePath } from '../status/observer.js';
import { ActionRunner } from './actions.js';
import { agentChildren } from './children.js';
import { connectionLogic } from './connection-logic.js';
import { queueLogic, readerLogic } from './io-logic.js';
import { Krb5Client } from './krb5-transport.js';
import { LinkMeter } from './link-meter.js';
import { LinkRegistry } from './links.js';
import type { AgentRecordIds } from './record-ids.js';
import type { ReloadPlan } from './reload-policy.js';
import { SequenceCounter } from './session.js';
import type { AgentSettings } from './settings.js';
import { TlsClient } from './tls-transport.js';
import type { FlowWindow } from './window.js';

/**
 * A stop ends the actor system at `drain_timeout` (the supervisor's own timer); the process exits at most
 * this much later, whatever closing the queue and the status listener take (src/cli.ts enforces it).
 */
export const STOP_MARGIN_MS = 2_000;

export interface AgentStatus {
  state: string;
  recordsQueued: number;
  recordsAcked: number;
  connects: number;
  failures: number;
  restarts: number;
  lastFailure: string | null;
  queueDepth: number;
  queueBytes: number;
  inFlight: number;
  /** Records the window allows in flight now (0 while the server refuses records; null before the first link). */
  window: number | null;
  /** Smoothed round-trip time of the records acknowledged, in ms (null before the first). */
  rttMs: number | null;
  held: number;
  /** The server in use or being tried (`host:port` of remote_server), and its index there (0: the preferred). */
  server: string | null;
  serverIndex: number | null;
  /** Servers in remote_server. */
  servers: number;
  /** What `capacity` counts (records, or bytes of the durable queue's files), the capacity, and how much is used. */
  queueCapacity: number;
  queueCapacityUnit: 'records' | 'bytes';
  queueUsed: number;
  /** When the last record was acknowledged (ISO 8601), null before the first. */
  lastAckAt: string | null;
  bytesSent: number;
  bytesReceived: number;
}

type Supervisor = ReturnType<typeof createSupervisor>;

/** `host:port`, `[v6]:port`. */
const formatServer = (s: { host: string; port: number }) =>
  `${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`;

const rounded = (ms: number | null) => (ms === null ? null : Math.round(ms * 100) / 100);

/** What becomes of the records left at exit, per queue (RecordQueue.persistence). */
const UNDELIVERED: Record<QueuePersistence, string> = {
  'crash-safe': 'they stay in the durable queue and are sent after the next start',
  'clean-stop': 'they are written to queue_dir and sent first after the next start',
  none: 'memory queue: they are lost',
};

export class Agent {
  #s: AgentSettings;
  readonly #log: Logger;
  readonly queue: RecordQueue;
  readonly #input: InputPump;
  readonly #links = new LinkRegistry();
  readonly #actions: ActionRunner;
  /** transport = krb5: tickets and the handshake. */
  readonly #krb5: Krb5Client | null;
  /** transport = tls: keys or certificates and the handshake. */
  readonly #tls: TlsClient | null;
  #root: Actor<Supervisor> | null = null;
  readonly observer = new StateObserver();
  /** Counters for the status report and metrics. */
  readonly #counters = { connects: 0, failures: 0, restarts: 0 };
  /** The window the connection uses (src/agent/window.ts), for status and metrics. */
  readonly #flow: { window: FlowWindow | null } = { window: null };
  /** What the sessions measured on the wire (bytes, replies, acknowledgement latency), for status and metrics. */
  readonly meter = new LinkMeter();

  /** Record identities (src/agent/record-ids.ts); null: none (the hello is not sent). */
  readonly #recordIds: AgentRecordIds | null;

  constructor(
    settings: AgentSettings,
    io: { input: Readable; log: Logger; queue?: RecordQueue; recordIds?: AgentRecordIds | null },
  ) {
    this.#s = settings;
    this.#recordIds = settings.format === 'ascii' ? null : (io.recordIds ?? null);
    this.#log = io.log;
    this.queue = io.queue ?? new MemoryQueue(settings.queueDepth);
    this.#actions = new ActionRunner(io.log);
    // Fails at start (ConfigError, exit status 6) when the binding is missing or the keytab is unsafe.
    this.#krb5 =
      settings.transport === 'krb5'
        ? new Krb5Client((i = 0) => this.#s.servers[i]?.krb5 ?? this.#s.krb5, io.log)
        : null;
    // Fails at start (ConfigError, exit status 6) when a key or certificate file is missing, unsafe or unreadable.
    this.#tls =
      settings.transport === 'tls'
        ? new TlsClient((i = 0) => this.#s.servers[i]?.tls ?? this.#s.tls, io.log)
        : null;
    this.observer.on('transition', (t) => this.#log.debug(t, 'transition'));
    this.#input = new InputPump({
      stream: io.input,
      queue: this.queue,
      maxRecord: Math.min(settings.maxRecord, MAX_SERVER_PAYLOAD),
      forwardEoe: settings.forwardEoe,
      log: io.log,
      name: settings.inputName,
    });
  }

  /** Runs until the input ends and the queue is drained, or a stop's deadline passes. */
  run(): Promise<number> {
    return new Promise((resolve) => {
      const root = createActor(this.#supervisor(), { inspect: (ev) => this.#inspect(ev) });
      this.#root = root;
      root.subscribe({
        next: (snap) => {
          if (snap.status === 'done') resolve(this.#finish(snap.output as SupervisorOutput));
        },
        error: (err) => {
          this.#log.fatal({ err }, 'supervisor failed');
          resolve(this.#finish(null));
        },
      });
      root.start();
    });
  }

  /** SIGTERM / SIGINT: stop reading, deliver what is queued within `drain_timeout`, exit. */
  stop(reason: string): void {
    if (this.#root?.getSnapshot().status === 'active' && !this.#root.getSnapshot().context.stopping) {
      this.#log.info({ reason }, 'stopping: no more input is read; draining the queue');
    }
    this.#shutdown(reason);
    this.#input.close();
  }

  /**
   * SIGHUP: applies new settings without losing a record. `plan` (reload-policy.ts) says what changed:
   * the live keys go to the machine (CONFIGURE); a relink key re-opens the link (RELINK: not a failure,
   * everything unacknowledged is sent again on the new link). Returns the keys applied.
   */
  reconfigure(next: AgentSettings, plan: ReloadPlan): string[] {
    const prev = this.#s;
    this.#s = { ...next, inspect: prev.inspect, supervisor: prev.supervisor, inputName: prev.inputName };
    const connection = this.#connection();
    if (JSON.stringify(next.policy) !== JSON.stringify(prev.policy)) {
      connection?.send({ type: 'CONFIGURE', policy: next.policy });
    }
    if (plan.relink.length > 0) {
      this.#log.info({ changed: plan.relink }, 'configuration changed: re-opening the link to apply it');
      // A new server list: the machine starts again at its first server.
      const listChanged = plan.relink.includes('remote_server') || plan.relink.includes('port');
      connection?.send({
        type: 'RELINK',
        reason: `SIGHUP changed ${plan.relink.join(', ')}`,
        ...(listChanged ? { servers: next.servers.length } : {}),
      });
    }
    return [...plan.live, ...plan.relink];
  }

  /** Records read from the input but refused by a full queue, oldest first (kept by the queue at a clean stop). */
  get heldRecords(): readonly Buffer[] {
    return this.#input.heldRecords;
  }

  /** For the systemd watchdog: the supervisor runs (no escalation) and the connection actor exists. */
  healthy(): boolean {
    return this.#root?.getSnapshot().status === 'active' && this.#connection() !== undefined;
  }

  /** SIGUSR2: leave `suspended` at once. */
  resume(): void {
    this.#connection()?.send({ type: 'RESUME' });
  }

  /** The counters, and the connection's last failure (read from its machine). */
  get stats(): { connects: number; failures: number; restarts: number; lastFailure: string | null } {
    return { ...this.#counters, lastFailure: this.#lastFailure() };
  }

  status(): AgentStatus {
    return {
      ...this.stats,
      recordsQueued: this.queue.totalAppended,
      recordsAcked: this.queue.totalAcked,
      state: this.connectionState(),
      queueDepth: this.queue.depth,
      queueBytes: this.queue.bytes,
      inFlight: this.queue.inFlight,
      window: this.#flow.window?.size ?? null,
      rttMs: rounded(this.#flow.window?.srttMs ?? null),
      held: this.#input.held,
      queueCapacity: this.queue.capacity,
      queueCapacityUnit: this.queue.capacityUnit,
      queueUsed: this.queue.used,
      lastAckAt: this.meter.lastAckAt === null ? null : new Date(this.meter.lastAckAt).toISOString(),
      bytesSent: this.meter.bytesSent,
      bytesReceived: this.meter.bytesReceived,
      ...this.#serverInUse(),
    };
  }

  connectionState(): string {
    const snap = this.#connection()?.getSnapshot() as { value: unknown } | undefined;
    if (snap) return statePath(snap.value);
    return this.#root?.getSnapshot().status === 'active'
      ? 'restarting'
      : (this.observer.states.get('connection') ?? 'stopped');
  }

  /** The server the connection machine is on (its context), as status and metrics show it. */
  #serverInUse(): { server: string | null; serverIndex: number | null; servers: number } {
    const ctx = (this.#connection()?.getSnapshot() as { context?: ConnectionContext } | undefined)?.context;
    const servers = this.#s.servers.length;
    if (!ctx) return { server: null, serverIndex: null, servers };
    return {
      server: formatServer(this.#s.servers[ctx.server] ?? this.#s.servers[0]!),
      serverIndex: ctx.server,
      servers,
    };
  }

  /** The connection machine's last failure; across a restart of the actor, the last one recorded. */
  #lastFailure(): string | null {
    const ctx = (this.#connection()?.getSnapshot() as { context?: ConnectionContext } | undefined)?.context;
    if (ctx?.lastFailure) return `${ctx.lastFailure.kind}: ${ctx.lastFailure.reason}`;
    return this.observer.errors.findLast((e) => e.source === 'connection')?.message ?? null;
  }

  /** Feeds the state observer (status page, /status, debug log) and --inspect. */
  #inspect(ev: InspectionEvent): void {
    this.#s.inspect?.(ev);
    this.observer.inspect(ev);
  }

  #connection(): AnyActorRef | undefined {
    return this.#root?.system.get('connection');
  }

  #shutdown(reason: string): void {
    if (this.#root?.getSnapshot().status !== 'active') return;
    this.#root.send({ type: 'SHUTDOWN', timeoutMs: this.#s.drainTimeoutMs, reason });
  }

  #finish(out: SupervisorOutput | null): number {
    this.#input.detach();
    this.#krb5?.dispose();
    this.#links.closeAll();
    if (!out) return ExitCodes.FAILURE;
    if (out.escalatedBy) {
      this.#log.fatal(
        { actor: out.escalatedBy, error: out.lastError[out.escalatedBy] },
        `${out.escalatedBy} failed more often than the restart intensity allows; exiting so that the service manager restarts auditrelay`,
      );
      return ExitCodes.ESCALATED;
    }
    if (out.timedOut) {
      this.#log.error(
        { backlog: this.queue.depth },
        `drain deadline of ${this.#s.drainTimeoutMs} ms passed with records undelivered`,
      );
    }
    const left = this.queue.depth + this.#input.held;
    if (left === 0) return ExitCodes.OK;
    this.#log.error(
      { records: left },
      `exiting with ${left} record(s) undelivered; ${UNDELIVERED[this.queue.persistence]}`,
    );
    return ExitCodes.FAILURE;
  }

  #supervisor() {
    const settings = () => this.#s;
    const logics = {
      reader: readerLogic({
        input: this.#input,
        log: this.#log,
        onEnded: () => this.#shutdown('input ended'),
      }),
      queue: queueLogic({
        queue: this.queue,
        log: this.#log,
        actions: this.#actions,
        settings,
        held: () => this.#input.held,
      }),
      connection: connectionLogic({
        settings,
        log: this.#log,
        queue: this.queue,
        links: this.#links,
        krb5: this.#krb5,
        tls: this.#tls,
        sequence: new SequenceCounter(),
        actions: this.#actions,
        stats: this.#counters,
        recordError: (message) => this.observer.recordError('connection', message),
        flow: this.#flow,
        meter: this.meter,
        recordIds: this.#recordIds,
      }),
    };
    return createSupervisor(
      agentChildren(
        logics,
        () => this.#s.policy,
        () => this.#s.servers.length,
      ),
      {
        ...this.#s.supervisor,
        onRestart: (child, error, n) => {
          this.#counters.restarts++;
          this.observer.recordError(child, `${error} (restarted)`);
          this.#log.error(
            { actor: child, error, restartsInWindow: n },
            `${child} failed (${error}); restarting it (${n} restart(s) in the current window)`,
          );
        },
        onShutdown: (reason) => {
          this.#log.info(
            { reason, backlog: this.queue.depth, deadlineMs: this.#s.drainTimeoutMs },
            'input ended; delivering the remaining records',
          );
          this.#connection()?.send({ type: 'STOP', pending: this.queue.depth });
        },
      },
    );
  }
}
