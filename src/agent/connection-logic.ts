/**
 * What the connection machine's actors and actions do for real (`connectionMachine.provide`): the dial
 * (TCP connect), the handshake (krb5, or nothing), the session on the open link, and the reports the
 * machine asks for. Every decision (which failure action, when "connected" is said, when to retry) is the
 * machine's; this module only executes.
 *
 * The handshake is the transport's (krb5: GSS-API, tls: TLS 1.3), run on the dialled TCP link; the machine's
 * `server` indexes remote_server's list (`settings().servers`) in `dial`. `probePreferred` (failback) opens a link
 * to the first server, runs the handshake and sends a heartbeat the server must answer within the reply deadline
 * (a real session: our collector and auditd both answer one); the answered link is handed over to the machine.
 *
 * The dial's local port: `local_port` when set (every link, whatever the machine says: a server may require
 * it); otherwise the port the machine asks to reclaim (the stale-session rule, machines/connection.ts), falling
 * back to any port within the same attempt when that one cannot be had now (another socket holds it, or our
 * own connection from it is still in TIME_WAIT); otherwise any.
 */
import { fromCallback, fromPromise } from 'xstate';
import {
  type AuthInput,
  connectionMachine,
  type DialInput,
  type DialOutput,
  type FailbackInput,
  type FailureActionKey,
  type FailureActionRun,
  type FailureReport,
  type LinkRef,
  type SessionCommand,
  type SessionInput,
} from '../../machines/connection.js';
import { LinkError } from '../errors.js';
import type { Logger } from '../log.js';
import { FrameDecoder, writeHeader } from '../protocol/codec.js';
import { HEADER_SIZE, MAX_AUDIT_MESSAGE_LENGTH, MessageType, typeName } from '../protocol/constants.js';
import type { RecordQueue } from '../queue/types.js';
import type { ActionRunner, FailureAction } from './actions.js';
import type { Krb5Client } from './krb5-transport.js';
import type { LinkMeter } from './link-meter.js';
import type { LinkRegistry } from './links.js';
import type { AgentRecordIds } from './record-ids.js';
import { type ReplyKind, type SequenceCounter, Session } from './session.js';
import type { AgentSettings, ServerSettings } from './settings.js';
import type { TlsClient } from './tls-transport.js';
import { dialTcp, localPortTaken, TcpTransport, type Transport } from './transport.js';
import { FlowWindow, INITIAL_WINDOW } from './window.js';

/** Counters for the status report and the metrics (the machine's facts are read from its context). */
export interface ConnectionStats {
  connects: number;
  failures: number;
}

export interface ConnectionDeps {
  /** The settings in force now (a SIGHUP replaces them). */
  settings: () => AgentSettings;
  log: Logger;
  queue: RecordQueue;
  links: LinkRegistry;
  krb5: Krb5Client | null;
  /** transport = tls: keys or certificates and the handshake. */
  tls: TlsClient | null;
  sequence: SequenceCounter;
  actions: ActionRunner;
  stats: ConnectionStats;
  /** A failure for the status page's recent errors. */
  recordError: (message: string) => void;
  /** Where the runtime finds the window in use (status and metrics read it). */
  flow: { window: FlowWindow | null };
  /** Bytes, replies and acknowledgement latencies of the sessions (status and metrics). */
  meter?: LinkMeter;
  /** Record identities (src/agent/record-ids.ts); null: no hello, plain MESSAGEs. */
  recordIds?: AgentRecordIds | null;
}

const ACTION_SETTING: Record<FailureActionKey, keyof AgentSettings['actions']> = {
  startup_failure_action: 'startupFailure',
  network_failure_action: 'networkFailure',
  remote_ending_action: 'remoteEnding',
  disk_full_action: 'diskFull',
  disk_error_action: 'diskError',
};

/** The server at `index` of remote_server (the first when the list shrank under a link being replaced). */
function serverAt(s: AgentSettings, index: number): ServerSettings {
  return s.servers[index] ?? s.servers[0]!;
}

/**
 * Sends a heartbeat on `link` and resolves when the server answers it with a reply that accepts messages (ACK,
 * DISKLOW); rejects on anything else, a close, or no answer within `timeoutMs`. The link's handlers are cleared
 * afterwards (the session that takes it over sets its own).
 */
function answersHeartbeat(
  link: Transport,
  sequence: SequenceCounter,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const seq = sequence.next();
    const decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
    const done = (err: Error | null) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      link.onMessage = null;
      link.onClose = null;
      if (err) reject(err);
      else resolve();
    };
    const onAbort = () => done(new LinkError(`failback probe of ${link.peer} abandoned`));
    const timer = setTimeout(
      () => done(new LinkError(`${link.peer} did not answer a heartbeat within ${timeoutMs} ms`)),
      timeoutMs,
    );
    signal.addEventListener('abort', onAbort);
    link.onClose = (reason) => done(new LinkError(`${link.peer} closed the probe link: ${reason}`));
    link.onMessage = (chunk) => {
      const m = decoder.push(chunk)[0];
      if (decoder.error) return done(new LinkError(`bad reply from ${link.peer}: ${decoder.error.message}`));
      if (!m) return;
      if (m.sequence === seq && (m.type === MessageType.ACK || m.type === MessageType.DISKLOW))
        return done(null);
      done(new LinkError(`${link.peer} answered the probe heartbeat with ${typeName(m.type)}`));
    };
    const frame = Buffer.allocUnsafe(HEADER_SIZE);
    writeHeader(frame, 0, MessageType.HEARTBEAT, seq, 0);
    link.write(frame);
  });
}

/** Resolves after `ms`; rejects at once when `signal` aborts. */
function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(new LinkError('aborted'));
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new LinkError('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

const serverName = (s: AgentSettings, index: number): string => {
  const { host, port } = serverAt(s, index);
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
};

export function connectionLogic(d: ConnectionDeps) {
  /** The failback probe: a link to server `index`, its handshake, a heartbeat answered; the link registered. */
  const probe = async (index: number, signal: AbortSignal): Promise<DialOutput> => {
    const s = d.settings();
    const server = serverAt(s, index);
    // local_port, when set, is the link in use's: the probe connects from any port.
    let link: Transport = await dialTcp({ host: server.host, port: server.port, signal, localPort: 0 });
    try {
      const handshaker = d.tls ?? d.krb5;
      if (handshaker) link = await handshaker.handshake(link, signal, index);
      await answersHeartbeat(link, d.sequence, Math.min(s.replyTimeoutMs, 10_000), signal);
    } catch (err) {
      link.close();
      throw err;
    }
    if (signal.aborted) {
      link.close();
      throw new LinkError(`failback probe of ${link.peer} abandoned`);
    }
    const localPort = link instanceof TcpTransport ? link.localPort : null;
    return { link: d.links.add(link), localPort };
  };

  /**
   * The live session: one at a time. A connection actor that throws does not stop its children (XState
   * 5.33), so a new session stops the one such an actor left behind.
   */
  let current: Session | null = null;
  /**
   * The window outlives the links (what it measured of the path is kept; a new link starts at its floor); a
   * new one when `max_in_flight` or the format changed. ascii gets no replies: a fixed batch size.
   */
  let window: { key: string; window: FlowWindow } | null = null;
  const windowFor = (s: AgentSettings): FlowWindow => {
    const ceiling = s.format === 'ascii' ? INITIAL_WINDOW : s.maxInFlight;
    const key = `${s.format}:${ceiling}`;
    if (window?.key !== key) window = { key, window: new FlowWindow({ ceiling }) };
    d.flow.window = window.window;
    return window.window;
  };
  const action = (key: FailureActionKey): FailureAction => d.settings().actions[ACTION_SETTING[key]];

  const onReply = (kind: ReplyKind, text: string) => {
    const a = d.settings().actions;
    if (kind === 'disk-low') d.actions.run('disk_low_action', a.diskLow, `server disk is low ${text}`, {});
    else if (kind === 'generic-error') d.actions.run('generic_error_action', a.genericError, text, {});
    else if (kind === 'generic-warning') d.actions.run('generic_warning_action', a.genericWarning, text, {});
  };

  return connectionMachine.provide({
    actors: {
      dial: fromPromise<DialOutput, DialInput>(async ({ input, signal }) => {
        // One link at a time: a link still registered here lost its hand-over (see links.ts).
        d.links.closeAll();
        const s = d.settings();
        const server = serverAt(s, input.server);
        const to = { host: server.host, port: server.port, signal };
        let link: TcpTransport;
        if (s.localPort > 0 || input.reclaimPort === null) {
          link = await dialTcp({ ...to, localPort: s.localPort });
        } else {
          try {
            link = await dialTcp({ ...to, localPort: input.reclaimPort });
            d.log.info(
              { server: link.peer, localPort: input.reclaimPort },
              'reconnected from the local port of the last session, so that the server drops it if it still holds it',
            );
          } catch (err) {
            if (!localPortTaken(err) || signal.aborted) throw err;
            d.log.debug(
              { localPort: input.reclaimPort, reason: (err as Error).message },
              'the last session’s local port cannot be had now; connecting from any port',
            );
            link = await dialTcp({ ...to, localPort: 0 });
          }
        }
        if (signal.aborted) {
          link.close();
          throw new LinkError(`connect to ${link.peer} abandoned`);
        }
        return { link: d.links.add(link), localPort: link.localPort };
      }),
      probePreferred: fromPromise<DialOutput, FailbackInput>(async ({ input, signal }) => {
        // On the first server, or failback off: nothing to do while this link lasts.
        if (input.everyMs <= 0) return new Promise<DialOutput>(() => {});
        for (;;) {
          await abortableDelay(input.everyMs, signal);
          try {
            return await probe(input.server, signal);
          } catch (err) {
            if (signal.aborted) throw err;
            const s = d.settings();
            d.log.info(
              {
                server: serverName(s, input.server),
                reason: (err as Error).message,
                retryInMs: input.everyMs,
              },
              `the preferred server ${serverName(s, input.server)} does not answer yet (${(err as Error).message}); staying on ${serverName(s, input.from)}`,
            );
          }
        }
      }),
      authenticate: fromPromise<LinkRef, AuthInput>(async ({ input, signal }) => {
        // transport = tcp has no handshake.
        const handshaker = d.tls ?? d.krb5;
        if (!handshaker) return { link: input.link };
        try {
          const secured = await handshaker.handshake(d.links.get(input.link), signal, input.server);
          if (signal.aborted) {
            secured.close();
            throw new LinkError(`${d.tls ? 'TLS' : 'Kerberos'} handshake abandoned`);
          }
          d.links.replace(input.link, secured);
          return { link: input.link };
        } catch (err) {
          d.links.close(input.link);
          throw err;
        }
      }),
      session: fromCallback<SessionCommand, SessionInput>(({ sendBack, receive, input }) => {
        const link = d.links.find(input.link);
        if (!link) {
          sendBack({ type: 'LINK_LOST', reason: 'the link was closed before its session started' });
          return () => {};
        }
        current?.stop();
        const s = d.settings();
        const session = new Session({
          transport: link,
          queue: d.queue,
          sequence: d.sequence,
          window: windowFor(s),
          replyTimeoutMs: s.replyTimeoutMs,
          heartbeatMs: s.heartbeatMs,
          ascii: s.format === 'ascii',
          recordIds: d.recordIds ?? null,
          onReply,
          meter: d.meter,
        });
        current = session;
        session.start((event) => {
          // The machine will throw (FAULT ⇒ failed): this cleanup would not run, so close the link now.
          if (event.type === 'FAULT') d.links.close(input.link);
          sendBack(event);
        });
        if (input.draining) session.drain();
        receive((e) => {
          if (e.type === 'DRAIN') session.drain();
          else if (e.type === 'PROBE') session.probe();
        });
        return () => {
          session.stop();
          d.links.close(input.link);
          if (current === session) current = null;
        };
      }),
    },
    actions: {
      reportConnected: ({ context }) => {
        d.stats.connects++;
        if (context.outage > 0 || !context.connectedOnce) {
          d.log.info(
            {
              server: context.link === null ? undefined : d.links.find(context.link)?.peer,
              ...(context.servers > 1 ? { serverIndex: context.server } : {}),
              backlog: d.queue.depth,
              attempts: context.outage + 1,
            },
            context.connectedOnce ? 'reconnected to the server' : 'connected to the server',
          );
        }
        d.actions.reset();
      },
      reportFailover: (_, p: { from: number; to: number }) => {
        const s = d.settings();
        const name = (i: number) => serverName(s, i);
        d.log.warn(
          { from: name(p.from), to: name(p.to), backlog: d.queue.depth },
          `failing over from ${name(p.from)} to ${name(p.to)} (remote_server entry ${p.to + 1} of ${s.servers.length})`,
        );
      },
      reportFailback: (_, p: { from: number }) => {
        const s = d.settings();
        const name = (i: number) => serverName(s, i);
        d.log.info(
          { from: name(p.from), to: name(0), backlog: d.queue.depth },
          `the preferred server ${name(0)} answers again: going back to it from ${name(p.from)}`,
        );
      },
      reportFailbackFailed: ({ event }) => {
        const err = (event as { error?: unknown }).error;
        d.log.error(
          { reason: err instanceof Error ? err.message : String(err) },
          'the failback probe failed; it runs again with the next link',
        );
      },
      reportAccepting: () => {
        d.log.info({ backlog: d.queue.depth }, 'the server accepts records again');
        d.actions.reset();
      },
      reportFailure: (_, f: FailureReport) => {
        d.stats.failures++;
        d.recordError(`${f.kind}: ${f.reason}`);
        const detail = {
          kind: f.kind,
          reason: f.reason,
          backlog: d.queue.depth,
          attempt: f.attempt,
          outage: f.outage,
        };
        if (f.outageStarts) d.log.warn(detail, 'link to the server lost; reconnecting with backoff');
        else d.log.debug(detail, 'connection attempt failed');
      },
      runFailureAction: ({ context }, run: FailureActionRun) => {
        const f = context.lastFailure;
        d.actions.run(run.key, action(run.key), run.message, {
          kind: f?.kind,
          reason: f?.reason,
          backlog: d.queue.depth,
          attempt: context.attempt,
          outage: context.outage,
        });
      },
    },
  });
}
