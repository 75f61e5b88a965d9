/**
 * What the connection machine's actors and actions do for real (`connectionMachine.provide`): the dial
 * (TCP connect), the handshake (krb5, or nothing), the session on the open link, and the reports the
 * machine asks for. Every decision (which failure action, when "connected" is said, when to retry) is the
 * machine's; this module only executes.
 *
 * The handshake is the transport's (krb5: GSS-API, tls: TLS 1.3), run on the dialled TCP link; a server list would
 * map the machine's `server` index to an address in `dial`.
 *
 * The dial's local port: `local_port` when set (every link, whatever the machine says: a server may require
 * it); otherwise the port the machine asks to reclaim (the stale-session rule, machines/connection.ts), falling
 * back to any port within the same attempt when that one cannot be had now (another socket holds it, or our
 * own connection from it is still in TIME_WAIT); otherwise any.
 */
import { fromCallback, fromPromise } from 'xstate';
import {
  connectionMachine,
  type DialInput,
  type DialOutput,
  type FailureActionKey,
  type FailureActionRun,
  type FailureReport,
  type LinkRef,
  type SessionCommand,
  type SessionInput,
} from '../../machines/connection.js';
import { LinkError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RecordQueue } from '../queue/types.js';
import type { ActionRunner, FailureAction } from './actions.js';
import type { Krb5Client } from './krb5-transport.js';
import type { LinkRegistry } from './links.js';
import type { AgentRecordIds } from './record-ids.js';
import { type ReplyKind, type SequenceCounter, Session } from './session.js';
import type { AgentSettings } from './settings.js';
import type { TlsClient } from './tls-transport.js';
import { dialTcp, localPortTaken, type TcpTransport } from './transport.js';
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

export function connectionLogic(d: ConnectionDeps) {
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
        const { server } = d.settings();
        const to = { host: server.host, port: server.port, signal };
        let link: TcpTransport;
        if (server.localPort > 0 || input.reclaimPort === null) {
          link = await dialTcp({ ...to, localPort: server.localPort });
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
      authenticate: fromPromise<LinkRef, LinkRef>(async ({ input, signal }) => {
        // transport = tcp has no handshake.
        const handshaker = d.tls ?? d.krb5;
        if (!handshaker) return input;
        try {
          const secured = await handshaker.handshake(d.links.get(input.link), signal);
          if (signal.aborted) {
            secured.close();
            throw new LinkError(`${d.tls ? 'TLS' : 'Kerberos'} handshake abandoned`);
          }
          d.links.replace(input.link, secured);
          return input;
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
              backlog: d.queue.depth,
              attempts: context.outage + 1,
            },
            context.connectedOnce ? 'reconnected to the server' : 'connected to the server',
          );
        }
        d.actions.reset();
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
