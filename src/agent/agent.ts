/**
 * The agent runtime: wires the reader, queue and connection machines to the real input stream,
 * queue and transport, runs them under the supervisor, and turns their outcome into an exit code.
 */
import type { Readable } from 'node:stream';
import {
  type Actor,
  type AnyActorRef,
  createActor,
  fromCallback,
  fromPromise,
  type InspectionEvent,
} from 'xstate';
import {
  type ConnectionContext,
  connectionMachine,
  type FailureKind,
  type SessionCommand,
  type SessionInput,
} from '../../machines/connection.js';
import { type QueueMachineEvent, queueMachine } from '../../machines/queue.js';
import { readerMachine } from '../../machines/reader.js';
import { createSupervisor } from '../../supervisors/supervisor.js';
import { ExitCodes, LinkError } from '../errors.js';
import { InputPump } from '../input/input-pump.js';
import type { Logger } from '../log.js';
import { MAX_SERVER_PAYLOAD } from '../protocol/constants.js';
import { MemoryQueue } from '../queue/memory-queue.js';
import type { QueuePersistence, QueueStatus, RecordQueue } from '../queue/types.js';
import { StateObserver, statePath } from '../status/observer.js';
import { ActionRunner } from './actions.js';
import { Krb5Client } from './krb5-transport.js';
import { SequenceCounter, Session } from './session.js';
import type { AgentSettings } from './settings.js';
import { dialTcp, type Transport } from './transport.js';

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
  held: number;
}

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
  readonly #sequence = new SequenceCounter();
  readonly #actions: ActionRunner;
  #link: Transport | null = null;
  /** transport = krb5: tickets and the handshake. */
  readonly #krb5: Krb5Client | null;
  #session: Session | null = null;
  #root: Actor<ReturnType<typeof createSupervisor>> | null = null;
  #deadline: NodeJS.Timeout | null = null;
  #stopping = false;
  #connectedOnce = false;
  /** Consecutive failures in the current outage (for network_failure_action). */
  #outageFailures = 0;
  #networkActionFired = false;
  readonly observer = new StateObserver();
  readonly stats = { connects: 0, failures: 0, restarts: 0, lastFailure: null as string | null };

  constructor(settings: AgentSettings, io: { input: Readable; log: Logger; queue?: RecordQueue }) {
    this.#s = settings;
    this.#log = io.log;
    this.queue = io.queue ?? new MemoryQueue(settings.queueDepth);
    this.#actions = new ActionRunner(io.log);
    // Fails at start (ConfigError, exit status 6) when the binding is missing or the keytab is unsafe.
    this.#krb5 = settings.transport === 'krb5' ? new Krb5Client(() => this.#s.krb5, io.log) : null;
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

  /** Runs until the input ends and the queue is drained (or the drain deadline passes). */
  run(): Promise<number> {
    return new Promise((resolve) => {
      const root = createActor(this.#supervisor(), { inspect: (ev) => this.#inspect(ev) });
      this.#root = root;
      let finished = false;
      let lastConnection: AnyActorRef | undefined;
      const finish = (code: number) => {
        if (finished) return;
        finished = true;
        if (this.#deadline) clearTimeout(this.#deadline);
        this.#krb5?.dispose();
        this.#link?.close();
        root.stop();
        resolve(code);
      };
      root.subscribe({
        next: (snap) => {
          if (snap.status === 'done') {
            const out = snap.output as { escalatedBy: string | null; lastError: Record<string, string> };
            if (out?.escalatedBy) {
              this.#log.fatal(
                { actor: out.escalatedBy, error: out.lastError[out.escalatedBy] },
                `${out.escalatedBy} failed more often than the restart intensity allows; exiting so that the service manager restarts auditrelay`,
              );
              finish(ExitCodes.ESCALATED);
            }
            return;
          }
          // A restarted connection starts afresh: tell it again that the input has ended.
          const connection = this.#connection();
          if (connection && connection !== lastConnection) {
            lastConnection = connection;
            if (this.#stopping) connection.send({ type: 'STOP', pending: this.queue.depth });
          }
          const value = snap.value as { supervising?: Record<string, string> };
          // Deferred: the reader's own completion may still be on its way to the supervisor.
          if (value.supervising?.connection === 'done') setImmediate(() => finish(this.#exitCode()));
        },
        error: (err) => {
          this.#log.fatal({ err }, 'supervisor failed');
          finish(ExitCodes.FAILURE);
        },
      });
      root.start();
    });
  }

  /** SIGTERM / SIGINT: stop reading, deliver what is queued within the drain deadline, exit. */
  stop(reason: string): void {
    if (this.#stopping) return;
    this.#log.info({ reason }, 'stopping: no more input is read; draining the queue');
    this.#input.close();
  }

  /**
   * SIGHUP: applies new settings without losing a record. Timeouts and backoff go to the machine;
   * a change of server, transport, format, window, reply deadline or heartbeat re-opens the link
   * (everything unacknowledged is sent again on the new one). Returns what changed.
   */
  reconfigure(next: AgentSettings): string[] {
    const prev = this.#s;
    const changed = Object.keys(next).filter(
      (k) =>
        k !== 'inspect' &&
        JSON.stringify(prev[k as keyof AgentSettings]) !== JSON.stringify(next[k as keyof AgentSettings]),
    );
    this.#s = { ...next, inspect: prev.inspect, supervisor: prev.supervisor, inputName: prev.inputName };
    this.#connection()?.send({ type: 'CONFIGURE', policy: next.policy });
    const relink = [
      'server',
      'transport',
      'format',
      'maxInFlight',
      'replyTimeoutMs',
      'heartbeatMs',
      'krb5',
    ].some((k) => changed.includes(k));
    if (relink && this.#link) {
      this.#log.info({ changed }, 'configuration changed: re-opening the link to apply it');
      this.#link.close();
    }
    return changed;
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

  status(): AgentStatus {
    return {
      ...this.stats,
      recordsQueued: this.queue.totalAppended,
      recordsAcked: this.queue.totalAcked,
      state: this.connectionState(),
      queueDepth: this.queue.depth,
      queueBytes: this.queue.bytes,
      inFlight: this.queue.inFlight,
      held: this.#input.held,
    };
  }

  connectionState(): string {
    const snap = this.#connection()?.getSnapshot() as { value: unknown } | undefined;
    if (snap) return statePath(snap.value);
    return this.#root?.getSnapshot().status === 'active'
      ? 'restarting'
      : (this.observer.states.get('connection') ?? 'stopped');
  }

  /** Feeds the state observer (status page, /status, debug log) and --inspect. */
  #inspect(ev: InspectionEvent): void {
    this.#s.inspect?.(ev);
    this.observer.inspect(ev);
  }

  #connection(): AnyActorRef | undefined {
    return this.#root?.system.get('connection');
  }

  #exitCode(): number {
    const left = this.queue.depth + this.#input.held;
    if (left > 0) {
      this.#log.error(
        { records: left },
        `exiting with ${left} record(s) undelivered; ${UNDELIVERED[this.queue.persistence]}`,
      );
      return ExitCodes.FAILURE;
    }
    return ExitCodes.OK;
  }

  #supervisor() {
    return createSupervisor(
      [
        { id: 'reader', logic: this.#readerLogic() },
        { id: 'queue', logic: this.#queueLogic() },
        {
          id: 'connection',
          logic: this.#connectionLogic(),
          input: { policy: this.#s.policy, autoConnect: true },
        },
      ],
      {
        ...this.#s.supervisor,
        onRestart: (child, error, n) => {
          this.stats.restarts++;
          this.observer.recordError(child, `${error} (restarted)`);
          this.#log.error(
            { actor: child, error, restartsInWindow: n },
            `${child} failed (${error}); restarting it (${n} restart(s) in the current window)`,
          );
        },
      },
    );
  }

  #readerLogic() {
    return readerMachine.provide({
      actors: {
        source: fromCallback(({ sendBack }) => this.#input.attach(sendBack)),
      },
      actions: {
        reportPaused: () =>
          this.#log.warn(
            { depth: this.queue.depth },
            'queue is full: input reading paused until the server acknowledges records',
          ),
        reportResumed: () => this.#log.info('queue has room again: input reading resumed'),
        reportEnded: () => this.#onInputEnded(),
      },
    });
  }

  #queueLogic() {
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
            reason: this.queue.lastError?.message ?? 'queue error',
          };
      }
    };
    return queueMachine.provide({
      actors: {
        watch: fromCallback(({ sendBack }) => {
          const onStatus = (s: QueueStatus) => sendBack(event(s));
          this.queue.on('status', onStatus);
          onStatus(this.queue.status);
          return () => this.queue.off('status', onStatus);
        }),
      },
      actions: {
        // The queue refuses records only at its bound: input pauses (nothing read is dropped) and
        // overflow_action runs, as upstream's does when its queue is full.
        reportFull: () =>
          this.#actions.run(
            'overflow_action',
            this.#s.actions.overflow,
            'queue is full: input reading paused until the server acknowledges records',
            { depth: this.queue.depth, bytes: this.queue.bytes },
          ),
        reportError: ({ event }) =>
          this.#actions.run(
            'queue_error_action',
            this.#s.actions.queueError,
            `queue error: ${event.type === 'QUEUE_ERROR' ? event.reason : 'unknown'}; records already queued are kept`,
            { depth: this.queue.depth },
          ),
      },
    });
  }

  #connectionLogic() {
    return connectionMachine.provide({
      actors: {
        dial: fromPromise(async ({ signal }) => {
          this.#link?.close();
          this.#link = null;
          const link = await dialTcp({
            host: this.#s.server.host,
            port: this.#s.server.port,
            localPort: this.#s.server.localPort,
            signal,
          });
          if (signal.aborted) {
            link.close();
            return;
          }
          this.#link = link;
        }),
        authenticate: fromPromise(async ({ signal }) => {
          // transport = tcp has no handshake.
          if (!this.#krb5) return;
          const link = this.#link;
          if (!link) throw new LinkError('no link to authenticate');
          const secured = await this.#krb5.handshake(link, signal);
          if (signal.aborted || this.#link !== link) {
            secured.close();
            return;
          }
          this.#link = secured;
        }),
        session: fromCallback<SessionCommand, SessionInput>(({ sendBack, receive, input }) => {
          const link = this.#link;
          if (!link) {
            sendBack({ type: 'LINK_LOST', reason: 'no link' });
            return () => {};
          }
          // A connection actor that failed may not have had its cleanup run: one session at a time.
          this.#session?.stop();
          const session = new Session({
            transport: link,
            queue: this.queue,
            sequence: this.#sequence,
            maxInFlight: this.#s.format === 'ascii' ? 1024 : this.#s.maxInFlight,
            replyTimeoutMs: this.#s.replyTimeoutMs,
            heartbeatMs: this.#s.heartbeatMs,
            ascii: this.#s.format === 'ascii',
            onReply: (kind, text) => this.#onReply(kind, text),
          });
          this.#session = session;
          session.start(sendBack);
          if (input.draining) session.drain();
          receive((e) => {
            if (e.type === 'DRAIN') session.drain();
          });
          return () => {
            session.stop();
            link.close();
            if (this.#link === link) this.#link = null;
            if (this.#session === session) this.#session = null;
          };
        }),
      },
      actions: {
        reportConnected: () => this.#onConnected(),
        reportFailure: ({ context }) => this.#onFailure(context),
      },
    });
  }

  #onConnected(): void {
    this.stats.connects++;
    if (this.#outageFailures > 0 || !this.#connectedOnce) {
      this.#log.info(
        { server: this.#link?.peer, backlog: this.queue.depth, attempts: this.#outageFailures + 1 },
        this.#connectedOnce ? 'reconnected to the server' : 'connected to the server',
      );
    }
    this.#connectedOnce = true;
    this.#outageFailures = 0;
    this.#networkActionFired = false;
    this.#actions.reset();
  }

  #onFailure(context: ConnectionContext): void {
    this.#link?.close();
    this.#link = null;
    const failure = context.lastFailure;
    if (!failure) return;
    this.stats.failures++;
    this.stats.lastFailure = `${failure.kind}: ${failure.reason}`;
    this.observer.recordError('connection', this.stats.lastFailure);
    this.#outageFailures++;
    const detail = {
      kind: failure.kind,
      reason: failure.reason,
      backlog: this.queue.depth,
      attempt: context.attempt,
    };
    const a = this.#s.actions;
    switch (failure.kind as FailureKind) {
      case 'remote-ending':
        this.#actions.run('remote_ending_action', a.remoteEnding, 'server is shutting down (ENDING)', detail);
        return;
      case 'disk-full':
        this.#actions.run('disk_full_action', a.diskFull, failure.reason, detail);
        return;
      case 'disk-error':
        this.#actions.run('disk_error_action', a.diskError, failure.reason, detail);
        return;
      default:
        break;
    }
    if (!this.#connectedOnce) {
      this.#actions.run(
        'startup_failure_action',
        a.startupFailure,
        `cannot reach the server: ${failure.reason}`,
        detail,
      );
      return;
    }
    if (this.#outageFailures === 1)
      this.#log.warn(detail, 'link to the server lost; reconnecting with backoff');
    else this.#log.debug(detail, 'reconnect attempt failed');
    if (this.#outageFailures > this.#s.maxTriesPerRecord && !this.#networkActionFired) {
      this.#networkActionFired = true;
      this.#actions.run(
        'network_failure_action',
        a.networkFailure,
        `server unreachable after ${this.#outageFailures} attempts; records stay queued and reconnection continues`,
        detail,
      );
    }
  }

  #onReply(kind: string, text: string): void {
    const a = this.#s.actions;
    if (kind === 'disk-low')
      this.#actions.run('disk_low_action', a.diskLow, `server disk is low ${text}`, {});
    else if (kind === 'generic-error') this.#actions.run('generic_error_action', a.genericError, text, {});
    else if (kind === 'generic-warning')
      this.#actions.run('generic_warning_action', a.genericWarning, text, {});
  }

  #onInputEnded(): void {
    this.#stopping = true;
    this.#log.info(
      { backlog: this.queue.depth, deadlineMs: this.#s.drainTimeoutMs },
      'input ended; delivering the remaining records',
    );
    // Armed before STOP: with an empty queue STOP finishes the run synchronously, clearing it.
    this.#deadline = setTimeout(() => {
      this.#log.error(
        { backlog: this.queue.depth },
        `drain deadline of ${this.#s.drainTimeoutMs} ms passed with records undelivered`,
      );
      this.#connection()?.send({ type: 'DEADLINE' });
    }, this.#s.drainTimeoutMs);
    this.#connection()?.send({ type: 'STOP', pending: this.queue.depth });
  }
}
