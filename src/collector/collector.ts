/**
 * An auditd-compatible receiver that no client can crash, starve or hang (docs/collector.md). Every connection has
 * its own decoder and idle deadline; records are acknowledged after they were written to the log (fsync policy as
 * configured), in request order; ENDING goes to every client before shutdown.
 *
 * Memory and fairness:
 * - Every byte the collector holds for a client is counted: records read and not yet written (plus a fixed
 *   per-record overhead), a message still incomplete in its decoder (or Kerberos token), and replies the client has
 *   not read yet. Reading from a client stops while it holds more than its share (`memoryBudget` divided by the
 *   connected clients, at least MIN_SHARE), or while everything held passes the budget; it resumes when the log
 *   writer (or the client, reading its replies) brings it under half of that. The collector never reads more
 *   than it can write: the held bytes are bounded by the budget plus one socket read per connection.
 * - The log writer takes batches of at most MAX_BATCH_BYTES, round-robin over the clients with records waiting,
 *   at most QUANTUM_BYTES of one client per turn: a client that sends as fast as it can gets its share of the
 *   writer and waits for the rest; another client's record goes into the next batch.
 * - The event loop is shared the same way: after one chunk (one socket read) of a client, reading from it
 *   pauses until the other clients' chunks of that loop turn were handled.
 *
 * Rules for bad input:
 * - trailing '\n': one is removed, as auditd does; the line is written with exactly one '\n'.
 * - control bytes, line breaks (LF, CR, VT, FF, NEL, U+2028, U+2029), NUL and terminal escapes are written as
 *   `\xHH` (src/collector/sanitize.ts, a reversible rule), so no client can forge log lines or reach a terminal;
 *   one warning per client and kind per interval, with a count.
 * - bad magic or a length above `maxPayload`: the stream cannot be trusted any more; the connection is closed
 *   after the records before it were handled; logged with the peer address.
 * - a client that disconnects mid-message: the partial message is dropped (it was never acked, so the client
 *   sends it again), logged at info. Its records not yet written are dropped as well (never acked).
 * - idle: a client that sent no complete message for `clientMaxIdleMs` is closed (bytes that do not complete a
 *   message do not count; time spent waiting for the log writer does not count against the client).
 * - same address: at most `maxPerAddr` sessions, plus one for a client that reconnects while its old session
 *   still looks alive. A session is alive while it has records being written or sent a message within
 *   `staleAfterMs` (or twice its own heartbeat interval, when longer). A new connection replaces a session that
 *   is not alive (a client that vanished without FIN: auditd issue #33), is admitted beside live ones once, and is
 *   otherwise refused. With krb5 the rule applies when the newcomer has authenticated: an unauthenticated
 *   connection only ever displaces another unauthenticated one.
 * - connections: at most `maxConnections` (and fewer when the descriptor limit would be reached), each refusal
 *   logged (rate-limited per address).
 *
 * transport = krb5 (src/collector/krb5.ts, docs/kerberos.md): each connection runs its own non-blocking GSS
 * handshake with its own deadline (handshake_timeout), so a client that sends nothing or half a token delays
 * nobody; then each token is unwrapped into the same frame decoder, each reply wrapped, and ` krb5=<principal>`
 * appended to the logged record as auditd does. A token that fails to unwrap closes the connection.
 *
 * transport = tls (src/collector/tls.ts, docs/tls.md): the same shape: each connection's TLS handshake runs on the
 * event loop with its own deadline (handshake_timeout), at most `maxPendingHandshakes` at once (the oldest pending
 * one is closed for a newcomer) and a few per address; then the TLS socket replaces the TCP one as the session's
 * socket. `reloadTls` (SIGHUP) re-reads keys, the allowed-clients file and certificates, and disconnects at once
 * the sessions whose identity is no longer allowed.
 *
 * Identity (src/collector/identity.ts): every session gets `identity` when its authentication completes (TLS-PSK
 * identity, certificate name, Kerberos principal; plain tcp: the peer address at accept). With `identityPolicy`
 * other than `off` every record is stamped with ` peer_id=<kind>:<name>`, and a record whose `node=` names another
 * host is counted (stamp), refused with a REFUSED reply (reject) or given the identity's node (rewrite).
 *
 * Record identities (src/collector/record-ids.ts, docs/protocol.md): a heartbeat carrying an agent's hello is
 * answered with the ACK text `auditrelay 1 rid` (with `recordIds`), after which the session's RECORD_ID messages
 * carry their record number: the line gets ` rid=<agent>:<seq>` (after any stamp), and a record already written
 * is acknowledged without being written again (checked when the batch goes to the writer, `#pump`).
 */
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { ConfigError } from '../errors.js';
import type { JetStreamSettings } from '../jetstream/nats.js';
import type { Logger } from '../log.js';
import { encodeReply, FrameDecoder } from '../protocol/codec.js';
import { HEADER_SIZE, MAX_AUDIT_MESSAGE_LENGTH, MessageType } from '../protocol/constants.js';
import {
  parseHello,
  type RecordId,
  RID_CAPABILITY_TEXT,
  ridField,
  splitRecordId,
} from '../protocol/record-id.js';
import type { EvidenceParts, EvidenceSettings, EvidenceSinkStatus } from './evidence-sink.js';
import { type HostEntry, type HostsSummary, HostTable, type HostView, nodeNameOf } from './hosts.js';
import { applyIdentity, type IdentityPolicy, identityStamp, type PeerIdentity } from './identity.js';
import { JetStreamOutput, type JetStreamOutputStatus } from './jetstream-output.js';
import { Krb5Acceptor, type Krb5CollectorSettings, type Krb5ServerSession } from './krb5.js';
import {
  DEFAULT_LOG_MANAGEMENT,
  type LogManagementSettings,
  LogStore,
  type LogStoreStatus,
  type WriteOutcome,
} from './log-store.js';
import type { FsyncPolicy, LogWriter } from './log-writer.js';
import { FileOutput, type OutputError, type OutputGroup, type RecordOutput } from './output.js';
import { endsLikeRid, NO_RID_FIELD, RecordIdTable, type RidSession } from './record-ids.js';
import { SANITIZE_KIND_TEXT, type SanitizeKind, sanitizeRecord } from './sanitize.js';
import { type HandshakeResult, TlsAcceptor, type TlsCollectorSettings } from './tls.js';
import { WarnLimiter } from './warn-limiter.js';

/** Largest batch handed to the log writer at once (a record of another client waits for at most two). */
export const MAX_BATCH_BYTES = 256 * 1024;
/** Bytes of one client per round-robin turn of a batch. */
export const QUANTUM_BYTES = 32 * 1024;
/** Held bytes charged per record on top of its line (objects, reply slot); measured, see BENCHMARKS.md. */
export const RECORD_OVERHEAD = 128;
/** Unsent replies of one client at most before reading from it stops (it is not reading them). */
export const REPLY_HIGH_WATER = 256 * 1024;
/** Bytes held for one client at most however few are connected: more does not make the writer faster. */
export const MAX_SHARE = 4 << 20;
/**
 * tls: handshakes set up per event-loop turn. Setting one up costs about 0.25 ms of CPU, so a burst of 1,000
 * connections would hold the loop for a quarter of a second; a few per turn keep open sessions served meanwhile.
 */
export const TLS_SETUPS_PER_TURN = 16;
/** Descriptors kept free for the log, the status listener and child processes. */
const FD_RESERVE = 64;

export interface CollectorSettings {
  host: string;
  port: number;
  logFile: string;
  maxPerAddr: number;
  /** Close a client that sent no complete message for this long; 0 = never. */
  clientMaxIdleMs: number;
  maxPayload: number;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  listenBacklog: number;
  /** Accepted client source ports, inclusive; null = any. */
  clientPorts: [number, number] | null;
  /** transport = krb5; absent or null = tcp. */
  krb5?: Krb5CollectorSettings | null;
  /** transport = tls; absent or null = tcp (or krb5). */
  tls?: TlsCollectorSettings | null;
  /** identity_policy; default: `stamp` for tls and krb5, `off` for tcp. */
  identityPolicy?: IdentityPolicy;
  /** Bytes held for all clients together (memory_budget). */
  memoryBudget?: number;
  /** Connections at most (tcp_max_connections). */
  maxConnections?: number;
  /** A session silent this long (and with nothing pending) may be replaced from its address (stale_session_timeout). */
  staleAfterMs?: number;
  /** One warning per client and kind per this interval. */
  warnIntervalMs?: number;
  /** Test hooks for the log writer (fault injection). */
  logWriterHooks?: Pick<
    import('./log-writer.js').LogWriterOptions,
    'datasync' | 'noReserve' | 'reserveChunkBytes'
  >;
  /** auditd's log management (max_log_file, space_left, … and their actions); default: none (a bare log). */
  logManagement?: LogManagementSettings;
  /** The tamper-evident store beside the log; absent or null = off. */
  evidence?: EvidenceSettings | null;
  /** A host silent this long is reported (host_silence_timeout); 0 = off. Default 0. */
  hostSilenceMs?: number;
  /** Hosts accounted at most (max_hosts). Default 100,000. Also the bound of agents whose record numbers are kept. */
  maxHosts?: number;
  /** record_ids: answer hellos with the `rid` capability, drop records written already, ` rid=` in the log. Default true. */
  recordIds?: boolean;
  /** Test seam: where the email action looks for sendmail. */
  sendmail?: readonly string[];
  /** output = jetstream (docs/scale-out.md); absent or null = output = file (logFile). */
  jetstream?: JetStreamSettings | null;
}

export const DEFAULT_COLLECTOR_SETTINGS: Omit<CollectorSettings, 'logFile'> = {
  host: '127.0.0.1',
  port: 60,
  maxPerAddr: 1,
  clientMaxIdleMs: 0,
  maxPayload: MAX_AUDIT_MESSAGE_LENGTH,
  fsync: 'interval',
  fsyncIntervalMs: 200,
  listenBacklog: 4096,
  clientPorts: null,
  memoryBudget: 64 << 20,
  maxConnections: 4096,
  staleAfterMs: 10_000,
  warnIntervalMs: 60_000,
};

export interface CollectorStats {
  clients: number;
  accepted: number;
  records: number;
  heartbeats: number;
  sanitized: number;
  protocolErrors: number;
  /** krb5: handshakes completed and authorised. */
  krb5Sessions: number;
  /** krb5: handshakes that failed, were refused or timed out, and tokens that failed to unwrap. */
  krb5Failures: number;
  /** tls: handshakes completed and authorised. */
  tlsSessions: number;
  /** tls: handshakes that failed, were refused, timed out or were closed for a newer one. */
  tlsFailures: number;
  /** tls: sessions disconnected because a reload disabled or removed their identity, or their certificate expired. */
  tlsRevoked: number;
  /** Records whose node= does not belong to the connection's identity (every policy but off). */
  identityMismatches: number;
  /** ... of which refused (identity_policy = reject). */
  identityRefused: number;
  /** ... of which given the identity's node (identity_policy = rewrite; also records without node=). */
  identityRewritten: number;
  /** Bytes held for clients now (see the module comment). */
  bufferedBytes: number;
  /** Largest bufferedBytes seen. */
  bufferedPeak: number;
  /** Clients whose reading is paused now (over their share, or the budget). */
  pausedClients: number;
  /** Connections refused: over tcp_max_connections or the descriptor limit. */
  refusedLimit: number;
  /** Connections refused because their address had enough live sessions. */
  refusedSameAddress: number;
  /** Sessions closed because a newer connection from their address replaced them (they were silent). */
  replacedStale: number;
  /** Clients closed by the idle limit. */
  idleClosed: number;
  /** Records not acknowledged because the log could not be written (DISKFULL / DISKERROR replies). */
  writeFailures: number;
  /** Records written while the disk was low (answered with DISKLOW instead of ACK). */
  diskLowReplies: number;
  /** Configuration reloads applied (SIGHUP). */
  reloads: number;
  /** Log writes that failed (each answered its records with DISKFULL or DISKERROR; `writeFailures` counts those). */
  writeErrors: number;
  /** Bytes read from clients (after TLS or Kerberos unwrapping: what the protocol sees). */
  bytesReceived: number;
  /** Bytes of replies written to clients. */
  bytesSent: number;
  /** Records with an identity acknowledged without being written again: they were written already (resends). */
  duplicates: number;
  /** Sessions that said hello with record identities (since start). */
  ridSessions: number;
}

/** Replies sent, by type (the reply of a record refused by identity_policy = reject is `REFUSED`). */
export type CollectorReplyType = 'ACK' | 'DISKLOW' | 'DISKFULL' | 'DISKERROR' | 'REFUSED' | 'ENDING';
export const COLLECTOR_REPLY_TYPES: readonly CollectorReplyType[] = [
  'ACK',
  'DISKLOW',
  'DISKFULL',
  'DISKERROR',
  'REFUSED',
  'ENDING',
];

const NEWLINE = Buffer.from('\n');
const EMPTY = Buffer.alloc(0);
/** Marks a heartbeat in an entry's reply list (sequence numbers are u32). */
const HB = 2 ** 32;
/** Marks a record refused by the identity policy (answered REFUSED, never written). */
const REFUSED = 2 * HB;
/** Marks a heartbeat that said hello: answered ACK with the capability text. */
const HELLO = 3 * HB;
/** The reply to a record refused by identity_policy = reject: FATAL class, so clients run generic_error_action. */
export const REFUSED_REPLY = 0x60000100;

/** Records of one chunk of one client, written together, and the replies that follow their write. */
interface Entry {
  session: ClientSession;
  lines: Buffer[];
  /** Held bytes charged (lines + RECORD_OVERHEAD per record). */
  bytes: number;
  /** Sequence numbers to answer, in order; heartbeats as seq + HB (answered ACK whatever the write did). */
  replies: number[];
  records: number;
  /** Bytes of its lines as written (newlines included), for the host's accounting. */
  lineBytes: number;
  /** The host its records are accounted and chained under (hosts.ts). */
  host: HostEntry | null;
  /** The session's hello (record identities), or null. */
  rid: RidSession | null;
  /** With `rid`: each record's number, in the order of its lines (0: a record without one). */
  seqs: number[];
}

type Phase = 'handshaking' | 'open' | 'closing' | 'ending' | 'closed';

/**
 * A transport's part of a reload (Collector.reload): krb5 registers one when it is the transport; the TLS transport
 * registers its own (reloading its keys and client list). It applies what `next` changes for it and returns the
 * names of what changed; `evict` closes a session its new rules no longer admit (after its pending replies).
 */
export interface TransportReload {
  reload(
    next: CollectorSettings,
    sessions: ReadonlySet<CollectorSession>,
    evict: (session: CollectorSession, why: string) => void,
  ): string[] | Promise<string[]>;
}

class ClientSession {
  readonly decoder: FrameDecoder;
  readonly peer: string;
  readonly address: string;
  /** The accepted TCP socket (for tls, `socket` becomes the TLS socket on top of it). */
  readonly raw: net.Socket;
  /** Who authenticated: set when authentication completes (plain tcp: the peer address, at accept). */
  identity: PeerIdentity | null = null;
  /** `identity` as stamped on its records (built once). */
  stamp: Buffer | null = null;
  /** tls: the handshake deadline, then the end of the client's certificate. */
  tlsTimer: NodeJS.Timeout | null = null;
  readonly connectedAt = Date.now();
  phase: Phase = 'open';
  /** Entries waiting for the writer, oldest first. */
  readonly queue: Entry[] = [];
  /** Entries in the batch being written. */
  inFlight = 0;
  /** The newest entry not yet completed (a heartbeat's reply waits for it). */
  lastEntry: Entry | null = null;
  /** Bytes of its entries (queued and in flight). */
  held = 0;
  /** Reply bytes handed to the socket and not yet taken by the kernel. */
  unsent = 0;
  /** pendingInput as last counted into the collector's total. */
  countedInput = 0;
  /** Why reading is paused, or null. */
  pausedFor: 'share' | 'budget' | 'replies' | null = null;
  /** Last complete message (0 = none yet). */
  lastMessageAt = 0;
  /** When its last entry completed (time spent waiting for the writer does not count as idle). */
  lastServedAt = 0;
  /** Silence before its heartbeats as observed (its heartbeat interval; 0 = none seen). */
  heartbeatMs = 0;
  records = 0;
  bytes = 0;
  /** Called when it has nothing pending (lastEntry === null). */
  settledWaiters: (() => void)[] = [];
  /** transport = krb5: the connection's GSS state (handshake, then wrap/unwrap). */
  krb5: Krb5ServerSession | null = null;
  /** krb5: the handshake deadline, then the end of the client's ticket. */
  krb5Timer: NodeJS.Timeout | null = null;
  /** The host it is accounted under, from its first message on (hosts.ts). */
  host: HostEntry | null = null;
  /** Its first record decided the host (node name or address); with an identity, always. */
  hostResolved = false;
  /** Its hello, once it said one and record identities are on (then RECORD_ID messages are expected). */
  rid: RidSession | null = null;

  constructor(
    public socket: net.Socket,
    maxPayload: number,
  ) {
    this.raw = socket;
    this.decoder = new FrameDecoder({ maxPayload });
    this.address = socket.remoteAddress ?? '?';
    this.peer = `${this.address}:${socket.remotePort}`;
  }

  /** Last sign of life: connect, last message, or the end of a wait for the writer. */
  get lastSign(): number {
    return Math.max(this.connectedAt, this.lastMessageAt, this.lastServedAt);
  }

  get pendingInput(): number {
    return this.decoder.pendingBytes + (this.krb5?.pendingBytes ?? 0);
  }
}

/** A client connection as transports see it (TransportReload). */
export type CollectorSession = ClientSession;

export class Collector {
  #s: CollectorSettings;
  /** Each transport's part of a reload (see TransportReload). */
  readonly #transportReloads: TransportReload[] = [];
  readonly #log: Logger;
  /** output = file: the log; null with output = jetstream. */
  readonly #store: LogStore | null;
  /** Where batches go (output.ts): the log, or the JetStream stream. */
  readonly #output: RecordOutput;
  /** The listener accepting now. */
  #server: net.Server;
  /** Listeners replaced by a reload: they accept nothing more; their connections go on. */
  readonly #retired = new Set<Promise<void>>();
  readonly #hosts: HostTable;
  readonly #sessions = new Set<ClientSession>();
  readonly #byAddress = new Map<string, Set<ClientSession>>();
  /** krb5 connections still in their handshake, oldest first. */
  readonly #handshaking = new Set<ClientSession>();
  /** Sessions with entries waiting for the writer, in round-robin order. */
  readonly #active = new Set<ClientSession>();
  readonly #paused = new Set<ClientSession>();
  /** Sessions that had their chunk in this loop turn; read again from the next turn. */
  readonly #yielded = new Set<ClientSession>();
  #yieldScheduled = false;
  #budgetPaused = 0;
  readonly #warn: WarnLimiter;
  #budget: number;
  #maxConnections: number;
  /** Connections at most now: tcp_max_connections, or fewer when descriptors are short (#adjustForDescriptors). */
  #limit: number;
  #staleAfterMs: number;
  #writing = false;
  #buffered = 0;
  #fdLimit = Number.POSITIVE_INFINITY;
  #sweepTimer: NodeJS.Timeout | null = null;
  #fdTimer: NodeJS.Timeout | null = null;
  #krb5: Krb5Acceptor | null = null;
  #tls: TlsAcceptor | null = null;
  /** tls: accepted connections whose handshake is not set up yet, oldest first. */
  readonly #tlsWaiting = new Set<ClientSession>();
  #tlsSetupScheduled = false;
  #identityPolicy: IdentityPolicy;
  #closing = false;
  readonly stats: CollectorStats = {
    clients: 0,
    accepted: 0,
    records: 0,
    heartbeats: 0,
    sanitized: 0,
    protocolErrors: 0,
    krb5Sessions: 0,
    krb5Failures: 0,
    tlsSessions: 0,
    tlsFailures: 0,
    tlsRevoked: 0,
    identityMismatches: 0,
    identityRefused: 0,
    identityRewritten: 0,
    bufferedBytes: 0,
    bufferedPeak: 0,
    pausedClients: 0,
    refusedLimit: 0,
    refusedSameAddress: 0,
    replacedStale: 0,
    idleClosed: 0,
    writeFailures: 0,
    diskLowReplies: 0,
    reloads: 0,
    writeErrors: 0,
    bytesReceived: 0,
    bytesSent: 0,
    duplicates: 0,
    ridSessions: 0,
  };
  /** Replies sent, by type. */
  readonly replies: Record<CollectorReplyType, number> = {
    ACK: 0,
    DISKLOW: 0,
    DISKFULL: 0,
    DISKERROR: 0,
    REFUSED: 0,
    ENDING: 0,
  };
  #lastWriteError: { code: string; time: string } | null = null;

  /** Highest record number written per agent (record-ids.ts). */
  readonly #rids: RecordIdTable;

  constructor(settings: CollectorSettings, log: Logger) {
    this.#s = settings;
    this.#log = log;
    this.#rids = new RecordIdTable(settings.maxHosts ?? 100_000);
    this.#budget = settings.memoryBudget ?? DEFAULT_COLLECTOR_SETTINGS.memoryBudget!;
    this.#maxConnections = settings.maxConnections ?? DEFAULT_COLLECTOR_SETTINGS.maxConnections!;
    this.#limit = this.#maxConnections;
    this.#staleAfterMs = settings.staleAfterMs ?? DEFAULT_COLLECTOR_SETTINGS.staleAfterMs!;
    this.#identityPolicy = settings.identityPolicy ?? this.#defaultIdentityPolicy(settings);
    this.#warn = new WarnLimiter(log, settings.warnIntervalMs ?? DEFAULT_COLLECTOR_SETTINGS.warnIntervalMs!);
    this.#store = settings.jetstream
      ? null
      : new LogStore({
          path: settings.logFile,
          fsync: settings.fsync,
          fsyncIntervalMs: settings.fsyncIntervalMs,
          log,
          maxTornTailBytes: MAX_BATCH_BYTES + 2 * (HEADER_SIZE + settings.maxPayload) + 1024,
          management: settings.logManagement ?? DEFAULT_LOG_MANAGEMENT,
          evidence: settings.evidence ?? null,
          ...(settings.logWriterHooks ? { writerHooks: settings.logWriterHooks } : {}),
          ...(settings.sendmail ? { sendmail: settings.sendmail } : {}),
        });
    this.#output = this.#store ? new FileOutput(this.#store) : new JetStreamOutput(settings.jetstream!, log);
    this.#hosts = new HostTable({
      maxHosts: settings.maxHosts ?? 100_000,
      silenceMs: settings.hostSilenceMs ?? 0,
      log,
    });
    this.#server = this.#createServer();
  }

  /** A listener whose connections are this collector's (several exist for a moment during a re-listen). */
  #createServer(): net.Server {
    const server = net.createServer({ noDelay: true, keepAlive: true }, (socket) => this.#accept(socket));
    server.maxConnections = this.#limit;
    server.on('drop', (d) => this.#onDrop(d));
    server.on('error', (err: NodeJS.ErrnoException) => {
      // accept() errors after listening (EMFILE and the like); libuv keeps listening. (A listen error rejects
      // start() or the re-listen instead.)
      if (!server.listening) return;
      this.#log.error(
        { error: err.code ?? err.message },
        `cannot accept a connection (${err.code ?? err.message}): the client is refused`,
      );
    });
    return server;
  }

  /** The listener is open (health: a collector that cannot accept clients is down). */
  get listening(): boolean {
    return this.#server.listening;
  }

  /** Where it listens (`host:port`, `[v6]:port`), or null when it does not. */
  get listenAddress(): string | null {
    const a = this.#server.address();
    if (!a || typeof a === 'string') return null;
    return `${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
  }

  /** The last log write that failed, when no write succeeded after it (health: disk_error). */
  get lastWriteError(): { code: string; time: string } | null {
    return this.#lastWriteError;
  }

  /** The log writer's state, for status and tests. */
  get writer(): LogWriter {
    return this.logStore.writer;
  }

  /** The log with its rotation, space thresholds and evidence (output = file only). */
  get logStore(): LogStore {
    if (!this.#store) throw new Error('output = jetstream: the collector has no log file');
    return this.#store;
  }

  /** Where records go: `file` (the log) or `jetstream`. */
  get output(): 'file' | 'jetstream' {
    return this.#output.kind;
  }

  /** The log's state (size, rotations, suspension, disk thresholds); output = file only. */
  logStatus(): LogStoreStatus {
    return this.logStore.status();
  }

  /** The evidence store's state, or null when it is off (always with output = jetstream). */
  evidenceStatus(): EvidenceSinkStatus | null {
    return this.#store?.evidence?.status() ?? null;
  }

  /** output = jetstream: the stream's state and counters; null with output = file. */
  jetstreamStatus(): JetStreamOutputStatus | null {
    return this.#output instanceof JetStreamOutput ? this.#output.status() : null;
  }

  /** Per-host accounting: the summary, and the hosts (silent first) up to `limit`. */
  hostsStatus(limit?: number): HostsSummary & { list: HostView[] } {
    return { ...this.#hosts.summary(), list: this.#hosts.list(limit) };
  }

  /** The host table (metrics read it at scrape time). */
  get hosts(): HostTable {
    return this.#hosts;
  }

  /** SIGUSR1: rotate the log now, as auditd. */
  rotate(reason = 'SIGUSR1'): Promise<void> {
    return this.#output.rotate(reason);
  }

  /** SIGUSR2: resume logging suspended by a disk action, as auditd. */
  resume(reason = 'SIGUSR2'): Promise<boolean> {
    return this.#output.resume(reason);
  }

  /** Bytes held for one client at most when `clients` are connected. */
  share(clients = this.#sessions.size): number {
    const fair = Math.min(MAX_SHARE, Math.floor(this.#budget / Math.max(1, clients)));
    return Math.max(minShare(this.#s.maxPayload), fair);
  }

  /** Bytes held for all clients now. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Per-session view for status pages and tests. */
  sessions(): {
    peer: string;
    identity: PeerIdentity | null;
    phase: Phase;
    held: number;
    pausedFor: string | null;
    records: number;
    lastMessageAgoMs: number | null;
  }[] {
    const now = Date.now();
    return [...this.#sessions].map((s) => ({
      peer: s.peer,
      identity: s.identity,
      phase: s.phase,
      held: s.held + s.unsent + s.pendingInput,
      pausedFor: s.pausedFor,
      records: s.records,
      lastMessageAgoMs: s.lastMessageAt ? now - s.lastMessageAt : null,
    }));
  }

  /** Opens the log and listens; resolves with the bound address. */
  async start(): Promise<{ host: string; port: number }> {
    // krb5: the keytab and the binding are checked before anything else (a ConfigError stops the start).
    if (this.#s.krb5) {
      this.#krb5 = await Krb5Acceptor.open(this.#s.krb5, this.#s.maxPayload, this.#log);
      this.#transportReloads.push(krb5Reload(this.#krb5, this.#log));
    }
    // tls: every key, the allowed-clients file and the certificates are checked before anything else.
    if (this.#s.tls) this.#tls = TlsAcceptor.open(this.#s.tls, this.#log);
    await this.#output.open();
    this.#checkDescriptorLimit();
    try {
      // The address first (a port in use is one line at once, before the slow part), then the evidence, then the
      // listener: a client must not connect to a collector that cannot write yet (resuming the chain replays the
      // current log's evidence, seconds for a large log; a client accepted meanwhile would have its records held
      // until its reply deadline drops the link). Refused instead, it retries with backoff.
      if (this.#s.port !== 0) await checkAddressFree(this.#s.host, this.#s.port);
      await this.#output.opened();
      // Record identities written already, read back from the log's tail.
      if (this.#s.recordIds !== false && this.#output instanceof FileOutput) this.#rebuildRecordIds();
      await listen(this.#server, this.#s.host, this.#s.port, this.#s.listenBacklog);
    } catch (err) {
      if (this.#server.listening) this.#server.close();
      if (this.#fdTimer) clearInterval(this.#fdTimer);
      await this.#output.close();
      throw err;
    }
    this.#startSweep();
    const addr = this.#server.address() as net.AddressInfo;
    const somaxconn = readNumber('/proc/sys/net/core/somaxconn');
    this.#log.info(
      {
        address: addr.address,
        port: addr.port,
        ...(this.#s.jetstream
          ? { output: 'jetstream', stream: this.#s.jetstream.stream, servers: this.#s.jetstream.servers }
          : { log: this.#s.logFile }),
        memoryBudget: this.#budget,
        maxConnections: this.#server.maxConnections,
        listenBacklog:
          somaxconn !== null ? Math.min(this.#s.listenBacklog, somaxconn) : this.#s.listenBacklog,
        reserving: this.#store?.writer.reserving ?? false,
        evidence: this.#store?.evidence ? this.#store.evidence.status().mode : 'off',
      },
      'collector listening',
    );
    return { host: addr.address, port: addr.port };
  }

  /**
   * SIGHUP: applies `next` (src/collector/reload-policy.ts decides which keys can change; the caller keeps the
   * others at their running values) without dropping a connected client. Limits and rules apply to the next
   * message or connection; the log store reconfigures itself (log management, flush, log_file, evidence); each
   * transport applies its part (TLS first, `reloadTls`, so a bad key file changes nothing; krb5 as a
   * `TransportReload`); a changed
   * address, port or backlog re-listens: the new listener accepts before the old one stops, so no connection is
   * refused meanwhile. Returns the names of what changed.
   */
  async reload(next: CollectorSettings): Promise<string[]> {
    const prev = this.#s;
    const changed: string[] = [];
    // First, as it is the part that can fail (a bad key file: ConfigError): then nothing else has changed.
    if (this.#tls && next.tls) {
      this.reloadTls(next.tls);
      changed.push('tls');
    }
    const note = (name: string, a: unknown, b: unknown) => {
      if (JSON.stringify(a) !== JSON.stringify(b)) changed.push(name);
    };
    note('maxPerAddr', prev.maxPerAddr, next.maxPerAddr);
    note('clientMaxIdleMs', prev.clientMaxIdleMs, next.clientMaxIdleMs);
    note('maxPayload', prev.maxPayload, next.maxPayload);
    note('clientPorts', prev.clientPorts, next.clientPorts);
    note('memoryBudget', prev.memoryBudget, next.memoryBudget);
    note('maxConnections', prev.maxConnections, next.maxConnections);
    note('staleAfterMs', prev.staleAfterMs, next.staleAfterMs);
    note('hostSilenceMs', prev.hostSilenceMs ?? 0, next.hostSilenceMs ?? 0);
    note('maxHosts', prev.maxHosts, next.maxHosts);
    note('recordIds', prev.recordIds !== false, next.recordIds !== false);
    if (prev.recordIds === false && next.recordIds !== false) this.#rebuildRecordIds();
    this.#rids.maxAgents = next.maxHosts ?? 100_000;
    note('identityPolicy', this.#identityPolicy, next.identityPolicy ?? this.#defaultIdentityPolicy(next));
    this.#identityPolicy = next.identityPolicy ?? this.#defaultIdentityPolicy(next);
    this.#s = { ...next, krb5: prev.krb5 ?? null, tls: this.#tls ? (next.tls ?? prev.tls ?? null) : null };
    this.#budget = next.memoryBudget ?? DEFAULT_COLLECTOR_SETTINGS.memoryBudget!;
    this.#maxConnections = next.maxConnections ?? DEFAULT_COLLECTOR_SETTINGS.maxConnections!;
    this.#staleAfterMs = next.staleAfterMs ?? DEFAULT_COLLECTOR_SETTINGS.staleAfterMs!;
    this.#limit = this.#maxConnections;
    this.#adjustForDescriptors();
    if (prev.clientMaxIdleMs !== next.clientMaxIdleMs) this.#startSweep();
    this.#hosts.reconfigure(next.maxHosts ?? 100_000, next.hostSilenceMs ?? 0);
    changed.push(
      ...(await this.#output.reconfigure({
        path: next.logFile,
        fsync: next.fsync,
        fsyncIntervalMs: next.fsyncIntervalMs,
        management: next.logManagement ?? DEFAULT_LOG_MANAGEMENT,
        evidence: next.evidence ?? null,
      })),
    );
    note('fsync', [prev.fsync, prev.fsyncIntervalMs], [next.fsync, next.fsyncIntervalMs]);
    note('logManagement', prev.logManagement, next.logManagement);
    for (const part of this.#transportReloads) {
      changed.push(...(await part.reload(next, this.#sessions, (s, why) => this.#evict(s, why))));
    }
    if (prev.host !== next.host || prev.port !== next.port || prev.listenBacklog !== next.listenBacklog) {
      await this.#relisten(prev, next);
      changed.push('listener');
    }
    // Sessions waiting for memory may go on under a larger budget.
    for (const s of [...this.#paused]) this.#checkInput(s);
    this.stats.reloads++;
    return changed;
  }

  /** Agents whose record numbers are kept (record_ids). */
  get recordIdAgents(): number {
    return this.#rids.size;
  }

  /** The highest record numbers written per agent, from the tail of the log (record-ids.ts). */
  #rebuildRecordIds(): void {
    const file = this.#s.logFile;
    const t0 = Date.now();
    const { agents, bytes, found } = this.#rids.rebuild([file, `${file}.1`]);
    // Loss accounting starts from them: a gap across the collector's restart is seen (docs/loss.md).
    for (const [agent, seq] of found) this.#hosts.seedAgent(agent, seq);
    this.#log.info(
      { agents, bytesRead: bytes, ms: Date.now() - t0 },
      `record identities: the highest record number of ${agents} agent(s) read back from the end of the log`,
    );
  }

  /** Closes a session that a reloaded rule no longer admits (after its pending replies). */
  #evict(session: ClientSession, why: string): void {
    this.#log.warn(
      { peer: session.peer, identity: session.identity?.name },
      `closing ${session.peer}: ${why}`,
    );
    this.#closeAfterPending(session);
  }

  /**
   * A new listener for the reloaded address, port or backlog. A new address or port: bound first, then the old
   * listener stops accepting (its connections go on). Only the backlog: the listening socket takes it as it is
   * (listen(2) again on the same socket). The same port on another address cannot be bound beside the old
   * listener (EADDRINUSE): the old one is closed first, so a connection attempt in that instant is refused (the
   * client retries), which is logged.
   */
  async #relisten(prev: CollectorSettings, next: CollectorSettings): Promise<void> {
    const old = this.#server;
    const where = `${next.host}:${next.port}`;
    if (prev.host === next.host && prev.port === next.port) {
      const handle = (old as unknown as { _handle?: { listen?: (backlog: number) => number } })._handle;
      if (typeof handle?.listen === 'function' && handle.listen(next.listenBacklog) === 0) {
        this.#log.info({ backlog: next.listenBacklog }, `listen backlog is now ${next.listenBacklog}`);
        return;
      }
    }
    const fresh = this.#createServer();
    try {
      await listen(fresh, next.host, next.port, next.listenBacklog);
    } catch (err) {
      const oldAddr = old.address() as net.AddressInfo | null;
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || oldAddr?.port !== next.port) {
        this.#log.error(
          { address: where, error: (err as NodeJS.ErrnoException).code ?? (err as Error).message },
          `cannot listen on ${where} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): still listening on ${prev.host}:${oldAddr?.port ?? prev.port}`,
        );
        this.#s = { ...this.#s, host: prev.host, port: prev.port, listenBacklog: prev.listenBacklog };
        return;
      }
      this.#log.warn(
        { from: `${prev.host}:${oldAddr.port}`, to: where },
        `re-listening on ${where}: the same port on another address cannot be bound while the old listener is open, so it is closed first; a connection attempt in that instant is refused and retried by its client`,
      );
      this.#retire(old);
      try {
        await listen(fresh, next.host, next.port, next.listenBacklog);
      } catch (err2) {
        const back = this.#createServer();
        await listen(back, prev.host, oldAddr.port, prev.listenBacklog);
        this.#server = back;
        this.#s = { ...this.#s, host: prev.host, port: prev.port, listenBacklog: prev.listenBacklog };
        this.#log.error(
          { address: where, error: (err2 as NodeJS.ErrnoException).code ?? (err2 as Error).message },
          `cannot listen on ${where}: listening on ${prev.host}:${oldAddr.port} again`,
        );
        return;
      }
      this.#server = fresh;
      this.#logListening('collector re-listening');
      return;
    }
    this.#server = fresh;
    this.#retire(old);
    this.#logListening('collector re-listening');
  }

  /** A listener that accepts no more; its connections go on (stop() waits for them with the rest). */
  #retire(server: net.Server): void {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    this.#retired.add(closed);
    void closed.then(() => this.#retired.delete(closed));
  }

  #logListening(msg: string): void {
    const addr = this.#server.address() as net.AddressInfo;
    this.#log.info({ address: addr.address, port: addr.port, backlog: this.#s.listenBacklog }, msg);
  }

  /** Sends ENDING to every client after its pending replies, closes everything, flushes the log. */
  async stop(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    if (this.#fdTimer) clearInterval(this.#fdTimer);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await Promise.all([...this.#sessions].map((s) => this.#end(s)));
    await closed;
    await Promise.all(this.#retired);
    this.#krb5?.dispose();
    this.#tls?.dispose();
    await this.#output.close();
    this.#warn.flushAll();
    this.#log.info(this.stats, 'collector stopped');
  }

  /**
   * SIGHUP for transport = tls: reads the keys, tls_allowed_clients and the certificates again (`next`: the
   * reloaded configuration's TLS settings) and applies them to new handshakes; then disconnects at once every open
   * session whose identity is now disabled, removed or no longer allowed (as auditd 4.2.1 does for its ACL). When
   * the CA file or the CRL changed, every X.509 session and pending handshake is closed instead: OpenSSL judges a
   * certificate during its handshake only, so each client is judged again (a revoked one refused) when it
   * reconnects. Records not yet written were never acknowledged: the clients send them again. A bad file (or a
   * change of tls_auth) throws ConfigError and changes nothing. Returns the peers disconnected.
   */
  reloadTls(next: TlsCollectorSettings): string[] {
    const tls = this.#tls;
    if (!tls) {
      throw new ConfigError('transport changed to TLS: that needs a restart', {
        key: 'transport',
        value: 'TLS',
      });
    }
    const { trustChanged } = tls.reload(next);
    const closed: string[] = [];
    for (const s of [...this.#sessions]) {
      if (s.phase === 'closed') continue;
      if (trustChanged && s.phase === 'handshaking') {
        // Its handshake runs with the old CA/CRL: it starts again with the new ones.
        this.#abandonHandshake(s);
        continue;
      }
      if (s.identity === null) continue;
      const refusal =
        trustChanged && s.identity.kind === 'x509'
          ? 'the CA file or the CRL changed: its certificate is checked again when it reconnects'
          : tls.authorize(s.identity);
      if (refusal === null) continue;
      this.stats.tlsRevoked++;
      closed.push(s.peer);
      this.#log.warn(
        { peer: s.peer, identity: s.identity.name, reason: refusal },
        `TLS: disconnecting ${s.peer} (${s.identity.kind} ${s.identity.name}): ${refusal}`,
      );
      s.socket.destroy();
      this.#onCloseSoon(s);
    }
    this.#log.info(
      { disconnected: closed.length, pendingHandshakes: tls.pending },
      `TLS: keys, allowed clients and certificates reloaded${closed.length > 0 ? `; ${closed.length} client(s) disconnected` : ''}`,
    );
    return closed;
  }

  /** identity_policy when the configuration does not say: stamp what authenticated, nothing else. */
  #defaultIdentityPolicy(s: CollectorSettings): IdentityPolicy {
    return s.tls || s.krb5 ? 'stamp' : 'off';
  }

  /** identity_policy in force (a reload may change it: it applies to the next record). */
  get identityPolicy(): IdentityPolicy {
    return this.#identityPolicy;
  }

  set identityPolicy(policy: IdentityPolicy) {
    this.#identityPolicy = policy;
  }

  // -------------------------------------------------------------------------------------------------------
  // Connections

  /**
   * The descriptor limit bounds connections: the cap is lowered to what the limit leaves (minus a reserve),
   * so a client is refused with a log line instead of being reset silently by the kernel (EMFILE).
   */
  #checkDescriptorLimit(): void {
    const limit = readOpenFileLimit();
    if (limit === null) return;
    this.#fdLimit = limit;
    if (this.#maxConnections + FD_RESERVE > limit) {
      this.#log.warn(
        { maxConnections: this.#maxConnections, openFileLimit: limit },
        `tcp_max_connections = ${this.#maxConnections} needs more descriptors than the limit of ${limit} allows: at most ${Math.max(1, limit - FD_RESERVE)} connections are accepted; raise LimitNOFILE (systemd) or ulimit -n`,
      );
    }
    this.#adjustForDescriptors();
    this.#fdTimer = setInterval(() => this.#adjustForDescriptors(), 2000);
    this.#fdTimer.unref();
  }

  /** Sets server.maxConnections from the cap and the descriptors other things use now. */
  #adjustForDescriptors(): void {
    if (!Number.isFinite(this.#fdLimit)) return;
    let open: number;
    try {
      open = readdirSync('/proc/self/fd').length;
    } catch {
      return;
    }
    const others = Math.max(0, open - this.#sessions.size);
    const room = Math.max(1, this.#fdLimit - others - FD_RESERVE);
    this.#limit = Math.min(this.#maxConnections, room);
    this.#server.maxConnections = this.#limit;
  }

  /** net.Server refused a connection over maxConnections (it closes the socket itself). */
  #onDrop(d: net.DropArgument | undefined): void {
    this.stats.refusedLimit++;
    const peer = d ? `${d.remoteAddress}:${d.remotePort}` : '?';
    const address = d?.remoteAddress ?? '?';
    const limit = this.#limit;
    const why =
      limit < this.#maxConnections
        ? `the descriptor limit leaves room for ${limit} connections (tcp_max_connections = ${this.#maxConnections}); raise LimitNOFILE`
        : `${limit} connections are open, the limit (tcp_max_connections)`;
    this.#warn.warn(
      `limit ${address}`,
      { peer, connections: this.#sessions.size, maxConnections: limit },
      `refused connection from ${peer}: ${why}`,
      (n) => `refused ${n} more connection(s) from ${address}: ${why}`,
    );
  }

  #accept(socket: net.Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    // The listener counts only its own connections; after a re-listen the old one still has some.
    if (this.#sessions.size >= this.#limit) {
      this.#onDrop({
        localAddress: socket.localAddress ?? '',
        localPort: socket.localPort ?? 0,
        localFamily: socket.localFamily ?? '',
        remoteAddress: socket.remoteAddress ?? '?',
        remotePort: socket.remotePort ?? 0,
        remoteFamily: socket.remoteFamily ?? '',
      });
      socket.destroy();
      return;
    }
    const session = new ClientSession(socket, this.#s.maxPayload);
    const { peer } = session;
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.#log.info({ peer, error: err.code ?? err.message }, `client ${peer} connection error`),
    );
    const ports = this.#s.clientPorts;
    const port = socket.remotePort ?? 0;
    if (ports && (port < ports[0] || port > ports[1])) {
      this.#warn.warn(
        `port ${session.address}`,
        { peer },
        `connection from ${peer} refused: source port outside tcp_client_ports ${ports[0]}-${ports[1]}`,
        (n) =>
          `refused ${n} more connection(s) from ${session.address}: source port outside ${ports[0]}-${ports[1]}`,
      );
      socket.destroy();
      return;
    }
    if (this.#krb5 || this.#tls) {
      session.phase = 'handshaking';
      this.#limitPendingHandshakes(session);
    } else if (!this.#admit(session)) {
      socket.destroy();
      return;
    } else {
      this.#setIdentity(session, { kind: 'address', name: session.address });
    }
    this.#add(session);
    if (this.#krb5) this.#startHandshake(session);
    // With TLS the "authenticated as" line says who connected; a connection that never authenticates (a flood of
    // stalled handshakes) is counted and logged rate-limited, not one line each.
    if (this.#tls) this.#log.debug({ peer }, 'client connected');
    else this.#log.info({ peer }, 'client connected');
    socket.on('close', () => this.#onClose(session));
    if (this.#tls) {
      // The TLS socket reads this one; its data, drain and close are listened to once the handshake is done.
      this.#startTlsHandshake(session, this.#tls);
      return;
    }
    this.#listen(session);
  }

  #listen(session: ClientSession): void {
    const { socket } = session;
    socket.on('data', (chunk: Buffer) => this.#onData(session, chunk));
    socket.on('drain', () => this.#checkInput(session));
    if (socket !== session.raw) socket.on('close', () => this.#onClose(session));
  }

  #setIdentity(session: ClientSession, identity: PeerIdentity): void {
    session.identity = identity;
    session.stamp = identityStamp(identity);
  }

  /**
   * tls: the handshake on the event loop, with its own deadline; at most maxPendingHandshakes at once (the oldest
   * pending one is closed for a newcomer, as for krb5).
   */
  #startTlsHandshake(session: ClientSession, tls: TlsAcceptor): void {
    const { peer } = session;
    const { maxPendingHandshakes: limit, handshakeTimeoutMs: timeoutMs } = tls.settings;
    if (this.#handshaking.size >= limit) {
      const oldest = this.#handshaking.values().next().value!;
      this.stats.tlsFailures++;
      this.#warn.warn(
        'tls pending',
        { peer: oldest.peer, pending: this.#handshaking.size, maxPendingHandshakes: limit },
        `${limit} TLS handshakes in progress (max_pending_handshakes): closing the oldest (${oldest.peer}) for ${peer}`,
        (n) => `closed ${n} more pending TLS handshake(s) for newer ones (max_pending_handshakes = ${limit})`,
      );
      this.#abandonHandshake(oldest);
    }
    this.#handshaking.add(session);
    session.tlsTimer = setTimeout(() => {
      session.tlsTimer = null;
      if (session.phase !== 'handshaking') return;
      this.stats.tlsFailures++;
      this.#warn.warn(
        `tls timeout ${session.address}`,
        { peer, timeoutMs },
        `TLS: client ${peer} did not complete its handshake within ${timeoutMs} ms (handshake_timeout): closing`,
        (n) =>
          `TLS: ${n} more client(s) from ${session.address} did not complete their handshake within ${timeoutMs} ms`,
      );
      this.#abandonHandshake(session);
    }, timeoutMs);
    this.#tlsWaiting.add(session);
    this.#scheduleTlsSetups();
  }

  /** Sets up at most TLS_SETUPS_PER_TURN waiting handshakes per loop turn (reads of open sessions go between). */
  #scheduleTlsSetups(): void {
    if (this.#tlsSetupScheduled || this.#tlsWaiting.size === 0) return;
    this.#tlsSetupScheduled = true;
    setImmediate(() => {
      this.#tlsSetupScheduled = false;
      const tls = this.#tls;
      let n = 0;
      for (const session of this.#tlsWaiting) {
        if (n++ >= TLS_SETUPS_PER_TURN || !tls) break;
        this.#tlsWaiting.delete(session);
        if (session.phase !== 'handshaking') continue;
        tls.handshake(session.raw, session.peer, (result) => this.#tlsDone(session, result));
      }
      this.#scheduleTlsSetups();
    });
  }

  /** Closes a connection whose handshake is pending (deadline, cap): no result will come for it. */
  #abandonHandshake(session: ClientSession): void {
    this.#handshaking.delete(session);
    this.#tlsWaiting.delete(session);
    this.#tls?.abandon(session.raw);
    session.raw.destroy();
    this.#onCloseSoon(session);
  }

  #tlsDone(session: ClientSession, result: HandshakeResult): void {
    const { peer } = session;
    this.#handshaking.delete(session);
    if (session.tlsTimer) clearTimeout(session.tlsTimer);
    session.tlsTimer = null;
    if (session.phase !== 'handshaking') {
      if (result.ok) result.socket.destroy();
      return;
    }
    if (!result.ok) {
      this.stats.tlsFailures++;
      this.#warn.warn(
        `tls refused ${session.address} ${result.reason}`,
        { peer, reason: result.reason },
        `TLS: refused client ${peer}: ${result.reason}`,
        (n) => `TLS: refused ${n} more connection(s) from ${session.address}: ${result.reason}`,
      );
      session.raw.destroy();
      this.#onCloseSoon(session);
      return;
    }
    const { socket, identity } = result;
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.#log.info({ peer, error: err.code ?? err.message }, `client ${peer} TLS connection error`),
    );
    session.socket = socket;
    this.#setIdentity(session, identity);
    this.stats.tlsSessions++;
    session.phase = 'open';
    this.#log.info(
      { peer, identity: identity.name, kind: identity.kind, tls: result.summary },
      `client ${peer} authenticated as ${identity.kind} ${identity.name} (${result.summary})`,
    );
    if (!this.#admit(session)) {
      socket.destroy();
      this.#onCloseSoon(session);
      return;
    }
    this.#listen(session);
    if (result.expiresAt !== null) {
      // The session ends with its certificate: the client reconnects, and is judged again.
      session.tlsTimer = setTimeout(
        () => {
          session.tlsTimer = null;
          if (session.phase === 'closed') return;
          this.stats.tlsRevoked++;
          this.#log.info(
            { peer, identity: identity.name },
            `the certificate of ${identity.name} (${peer}) has expired: closing its connection`,
          );
          this.#closeAfterPending(session);
        },
        Math.min(2 ** 31 - 1, Math.max(0, result.expiresAt - Date.now())),
      );
      session.tlsTimer.unref();
    }
  }

  #add(session: ClientSession): void {
    this.#sessions.add(session);
    let same = this.#byAddress.get(session.address);
    if (!same) {
      same = new Set();
      this.#byAddress.set(session.address, same);
    }
    same.add(session);
    this.stats.accepted++;
    this.stats.clients = this.#sessions.size;
  }

  #onClose(session: ClientSession): void {
    if (session.phase === 'closed') return;
    const { peer } = session;
    session.phase = 'closed';
    this.#sessions.delete(session);
    const same = this.#byAddress.get(session.address);
    same?.delete(session);
    if (same?.size === 0) this.#byAddress.delete(session.address);
    this.#handshaking.delete(session);
    this.#tlsWaiting.delete(session);
    this.#setPaused(session, null);
    if (session.tlsTimer) clearTimeout(session.tlsTimer);
    if (session.phase === 'closed' && this.#tls) this.#tls.abandon(session.raw);
    if (session.host) this.#hosts.detach(session.host);
    if (session.krb5Timer) clearTimeout(session.krb5Timer);
    session.krb5?.dispose();
    // Records not yet handed to the writer were never acknowledged: the client sends them again.
    const dropped = session.queue.splice(0);
    let droppedRecords = 0;
    for (const e of dropped) {
      this.#release(session, e.bytes);
      droppedRecords += e.records;
      if (session.lastEntry === e) session.lastEntry = null;
    }
    this.#active.delete(session);
    this.#settle(session);
    const pending = session.pendingInput;
    this.#adjust(session, -session.countedInput - session.unsent);
    session.countedInput = 0;
    session.unsent = 0;
    this.stats.clients = this.#sessions.size;
    if (pending > 0 || droppedRecords > 0) {
      this.#log.info(
        { peer, bytes: pending, records: droppedRecords },
        `client ${peer} disconnected mid-message: ${pending} byte(s) of an incomplete message and ${droppedRecords} record(s) not yet written dropped (never acknowledged; the client sends them again)`,
      );
    }
    this.#warn.flushPrefix(`${peer} `);
    if (this.#tls && session.identity === null) this.#log.debug({ peer }, 'client disconnected');
    else this.#log.info({ peer, records: session.records }, 'client disconnected');
    this.#resumeBudgetPaused();
  }

  /** Staleness window of a session: staleAfterMs, or twice its heartbeat interval (plus a second) if longer. */
  #window(s: ClientSession): number {
    return Math.max(this.#staleAfterMs, s.heartbeatMs > 0 ? 2 * s.heartbeatMs + 1000 : 0);
  }

  /** Alive: records being written for it, or a message within its window. */
  #alive(s: ClientSession, now: number): boolean {
    if (s.lastEntry !== null) return true;
    return s.lastMessageAt > 0 && now - s.lastSign < this.#window(s);
  }

  /**
   * A session a newcomer from its address may displace, or null:
   * 1. a silent one: it sent messages, but none within its window, and has nothing pending (the stalest first):
   *    its client went away without closing (auditd issue #33);
   * 2. only when the address already uses its extra slot: one that never sent anything, the newest first (a
   *    reconnect loop then only ever displaces its own previous attempt, never an older session).
   */
  #displaceable(same: ClientSession[], now: number, max: number): ClientSession | null {
    const silent = same
      .filter((s) => s.lastMessageAt > 0 && !this.#alive(s, now))
      .sort((a, b) => a.lastSign - b.lastSign);
    if (silent[0]) return silent[0];
    if (same.length <= max) return null;
    const unproven = same.filter((s) => s.lastMessageAt === 0 && s.lastEntry === null);
    return unproven.sort((a, b) => b.connectedAt - a.connectedAt)[0] ?? null;
  }

  /**
   * The same-address rule (module comment) for `session`, against the other sessions of its address that count
   * (with krb5: the authenticated ones). Returns false when the newcomer is refused (the caller closes it).
   */
  #admit(session: ClientSession): boolean {
    const max = this.#s.maxPerAddr;
    const authenticated = this.#krb5 !== null || this.#tls !== null;
    const same = [...(this.#byAddress.get(session.address) ?? [])].filter(
      (s) => s !== session && (s.phase === 'open' || (!authenticated && s.phase === 'handshaking')),
    );
    if (same.length < max) return true;
    const now = Date.now();
    const victim = this.#displaceable(same, now, max);
    if (victim) {
      const what =
        victim.lastMessageAt === 0
          ? `has sent nothing since it connected ${((now - victim.connectedAt) / 1000).toFixed(1)} s ago`
          : `has been silent for ${((now - victim.lastSign) / 1000).toFixed(1)} s with nothing pending, so its client is taken to have gone away without closing it`;
      this.stats.replacedStale++;
      this.#log.warn(
        { peer: session.peer, replaced: victim.peer, silentMs: now - victim.lastSign, maxPerAddr: max },
        `closing ${victim.peer}: a new connection came from the same address (${session.peer}) and ${victim.peer} ${what} (tcp_max_per_addr = ${max})`,
      );
      victim.socket.destroy();
      this.#onCloseSoon(victim);
      return true;
    }
    if (same.length === max) {
      // Every session of the address is alive (or has not sent anything yet): admit the newcomer beside them once
      // (a client that reconnected after losing its connection shows up here); a silent one is closed later.
      const newest = same.reduce((a, b) => (a.lastSign > b.lastSign ? a : b));
      this.#log.info(
        { peer: session.peer, beside: same.map((s) => s.peer), maxPerAddr: max },
        `${session.peer} connected while ${same.length} session(s) from the same address are open (${newest.peer}: last sign of life ${((now - newest.lastSign) / 1000).toFixed(1)} s ago): admitted beside them; whichever falls silent for ${this.#staleAfterMs / 1000} s is closed`,
      );
      return true;
    }
    this.stats.refusedSameAddress++;
    const why = `${session.address} already has ${same.length} open session(s) (tcp_max_per_addr = ${max}, plus one for a reconnecting client), each of which sent a message within the last ${this.#staleAfterMs / 1000} s; a client that vanished without closing its connection is replaced once that connection has been silent that long`;
    this.#warn.warn(
      `dup ${session.address}`,
      { peer: session.peer, active: same.map((s) => s.peer), maxPerAddr: max },
      `refused connection from ${session.peer}: ${why}`,
      (n) => `refused ${n} more connection(s) from ${session.address}: ${why}`,
    );
    return false;
  }

  /** A session destroyed by us: forget it now (its 'close' event comes later and finds it closed). */
  #onCloseSoon(session: ClientSession): void {
    this.#onClose(session);
  }

  /** krb5, tls: unauthenticated connections from one address only ever displace each other. */
  #limitPendingHandshakes(session: ClientSession): void {
    const same = [...(this.#byAddress.get(session.address) ?? [])].filter((s) => s.phase === 'handshaking');
    const limit = Math.max(4, this.#s.maxPerAddr);
    if (same.length < limit) return;
    const oldest = same[0]!;
    if (this.#tls) {
      this.stats.tlsFailures++;
      this.#warn.warn(
        `pending ${session.address}`,
        { peer: oldest.peer, by: session.peer, pending: same.length },
        `${same.length} unauthenticated connections from ${session.address}: closing the oldest (${oldest.peer}) for ${session.peer}; authenticated sessions are never closed for an unauthenticated one`,
        (n) => `closed ${n} more unauthenticated connection(s) from ${session.address} for newer ones`,
      );
      this.#abandonHandshake(oldest);
      return;
    }
    this.stats.krb5Failures++;
    this.#warn.warn(
      `pending ${session.address}`,
      { peer: oldest.peer, by: session.peer, pending: same.length },
      `${same.length} unauthenticated connections from ${session.address}: closing the oldest (${oldest.peer}) for ${session.peer}; authenticated sessions are never closed for an unauthenticated one`,
      (n) => `closed ${n} more unauthenticated connection(s) from ${session.address} for newer ones`,
    );
    oldest.socket.destroy();
    this.#onCloseSoon(oldest);
  }

  /** krb5: its own deadline, and a bound on handshakes in progress (the oldest pending one goes first). */
  #startHandshake(session: ClientSession): void {
    const krb5 = this.#krb5!;
    const { peer, socket } = session;
    const limit = krb5.settings.maxPendingHandshakes;
    if (this.#handshaking.size >= limit) {
      const oldest = this.#handshaking.values().next().value!;
      this.stats.krb5Failures++;
      this.#log.warn(
        { peer: oldest.peer, pending: this.#handshaking.size },
        `${limit} Kerberos handshakes in progress: closing the oldest (${oldest.peer})`,
      );
      this.#handshaking.delete(oldest);
      oldest.socket.destroy();
      this.#onCloseSoon(oldest);
    }
    session.krb5 = krb5.session(peer);
    this.#handshaking.add(session);
    const timeoutMs = krb5.settings.handshakeTimeoutMs;
    session.krb5Timer = setTimeout(() => {
      session.krb5Timer = null;
      if (session.krb5?.established || socket.destroyed) return;
      this.stats.krb5Failures++;
      this.#log.warn(
        { peer, bytes: session.krb5?.pendingBytes ?? 0, timeoutMs },
        `client ${peer} did not complete its Kerberos handshake within ${timeoutMs} ms: closing`,
      );
      socket.destroy();
    }, timeoutMs);
  }

  #startSweep(): void {
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    const idle = this.#s.clientMaxIdleMs;
    const sweepMs = idle > 0 ? Math.max(25, Math.min(1000, idle / 4)) : 1000;
    this.#sweepTimer = setInterval(() => this.#sweep(), sweepMs);
    this.#sweepTimer.unref();
  }

  /** Idle limit, stale sessions beyond tcp_max_per_addr, silent hosts. */
  #sweep(): void {
    const now = Date.now();
    this.#hosts.sweep(now);
    const idle = this.#s.clientMaxIdleMs;
    for (const s of this.#sessions) {
      if (s.phase !== 'open') continue;
      if (
        idle > 0 &&
        s.lastEntry === null &&
        now - Math.max(s.connectedAt, s.lastMessageAt, s.lastServedAt) >= idle
      ) {
        this.stats.idleClosed++;
        const what =
          s.pendingInput > 0 ? ` (${s.pendingInput} byte(s) of an incomplete message do not count)` : '';
        this.#log.info(
          { peer: s.peer, idleMs: idle, pendingBytes: s.pendingInput },
          `client ${s.peer} idle for ${idle} ms: no complete message received${what}; closing (tcp_client_max_idle)`,
        );
        s.socket.destroy();
      }
    }
    // An address over tcp_max_per_addr (a reconnecting client admitted beside its old session): close what fell
    // silent, and connections that sent nothing for a whole window (the newest first).
    const max = this.#s.maxPerAddr;
    for (const [, same] of this.#byAddress) {
      const counted = [...same].filter((s) => s.phase === 'open');
      if (counted.length <= max) continue;
      const victim = this.#displaceable(
        counted.filter((s) => s.lastMessageAt > 0 || now - s.connectedAt >= this.#window(s)),
        now,
        -1,
      );
      if (!victim) continue;
      this.stats.replacedStale++;
      const what =
        victim.lastMessageAt === 0
          ? `has sent nothing since it connected ${((now - victim.connectedAt) / 1000).toFixed(1)} s ago`
          : `has been silent for ${((now - victim.lastSign) / 1000).toFixed(1)} s with nothing pending`;
      this.#log.warn(
        { peer: victim.peer, silentMs: now - victim.lastSign, maxPerAddr: max },
        `closing ${victim.peer}: another connection from the same address is open and this one ${what} (tcp_max_per_addr = ${max})`,
      );
      victim.socket.destroy();
      this.#onCloseSoon(victim);
    }
  }

  // -------------------------------------------------------------------------------------------------------
  // Input

  #onData(session: ClientSession, chunk: Buffer): void {
    if (session.phase === 'closed' || session.phase === 'closing' || session.phase === 'ending') return;
    this.stats.bytesReceived += chunk.length;
    if (session.krb5) this.#onKrb5Data(session, session.krb5, chunk);
    else this.#onPlain(session, chunk);
    if ((session.phase as Phase) !== 'closed') this.#countInput(session);
    this.#checkInput(session);
    this.#yieldTurn(session);
    this.#pump();
  }

  /** One chunk per client per loop turn: pause it until the next turn (unless it is paused for a reason). */
  #yieldTurn(session: ClientSession): void {
    if (session.pausedFor !== null || session.phase !== 'open') return;
    session.socket.pause();
    this.#yielded.add(session);
    if (this.#yieldScheduled) return;
    this.#yieldScheduled = true;
    setImmediate(() => {
      this.#yieldScheduled = false;
      const turn = [...this.#yielded];
      this.#yielded.clear();
      for (const s of turn) if (s.pausedFor === null && s.phase === 'open') s.socket.resume();
    });
  }

  #onKrb5Data(session: ClientSession, krb5: Krb5ServerSession, chunk: Buffer): void {
    const { socket, peer } = session;
    const r = krb5.receive(chunk);
    if (r.send.length > 0 && !socket.destroyed) socket.write(Buffer.concat(r.send));
    if (r.established !== null) {
      this.#handshaking.delete(session);
      if (session.krb5Timer) clearTimeout(session.krb5Timer);
      session.krb5Timer = null;
      this.stats.krb5Sessions++;
      session.phase = 'open';
      this.#setIdentity(session, { kind: 'krb5', name: r.established });
      this.#log.info({ peer, principal: r.established }, `client ${peer} authenticated as ${r.established}`);
      if (!this.#admit(session)) {
        socket.destroy();
        this.#onCloseSoon(session);
        return;
      }
      // The session ends with the client's ticket (the acceptor adds its clock-skew allowance): the client
      // reconnects with a fresh one. Plain close, not ENDING, which would mean "server shutting down".
      const lifetimeMs = krb5.lifetimeMs();
      if (Number.isFinite(lifetimeMs)) {
        session.krb5Timer = setTimeout(
          () => {
            this.#log.info(
              { peer, principal: r.established },
              `the Kerberos ticket of ${r.established} (${peer}) has expired: closing its connection`,
            );
            this.#closeAfterPending(session);
          },
          Math.min(2 ** 31 - 1, lifetimeMs),
        );
        session.krb5Timer.unref();
      }
    }
    for (const plaintext of r.plaintext) this.#onPlain(session, plaintext);
    if (r.failure !== null) {
      this.stats.krb5Failures++;
      if (r.duringHandshake) {
        this.#log.warn({ peer, error: r.failure }, `Kerberos: refused client ${peer}: ${r.failure}`);
        // Whatever the mechanism wants the client to know (a KRB-ERROR) goes out first.
        session.phase = 'closing';
        socket.destroySoon();
      } else {
        this.#log.warn(
          { peer, principal: krb5.principal, error: r.failure },
          `Kerberos: ${r.failure} (client ${peer}); closing the connection, the client sends unacknowledged records again`,
        );
        this.#closeAfterPending(session);
      }
    }
  }

  #onPlain(session: ClientSession, chunk: Buffer): void {
    if (session.phase !== 'open') return;
    const { peer } = session;
    const messages = session.decoder.push(chunk);
    let entry: Entry | null = null;
    let immediate: number[] | null = null;
    const previous = session.lastMessageAt;
    if (messages.length > 0) {
      session.lastMessageAt = Date.now();
      if (session.host === null) this.#attachHost(session);
      else this.#hosts.seen(session.host, session.lastMessageAt);
    }
    let heartbeatSeen = false;
    const principal = session.krb5?.principal ?? null;
    let protocolError: string | null = null;
    for (const m of messages) {
      if (m.type === MessageType.HEARTBEAT) {
        this.stats.heartbeats++;
        if (!heartbeatSeen && previous > 0) this.#noteHeartbeat(session, session.lastMessageAt - previous);
        heartbeatSeen = true;
        const hello = this.#hello(session, m.payload);
        if (typeof hello === 'string') {
          protocolError = hello;
          break;
        }
        const reply = m.sequence + (hello ? HELLO : HB);
        const target = entry ?? session.lastEntry;
        if (target) target.replies.push(reply);
        else {
          immediate ??= [];
          immediate.push(reply);
        }
        continue;
      }
      // Every other type is a record, as in auditd; RECORD_ID (after a hello) carries its number first.
      let payload = m.payload;
      let seq = 0;
      if (m.type === MessageType.RECORD_ID) {
        if (!session.rid) {
          protocolError =
            this.#s.recordIds === false
              ? 'RECORD_ID message, but record identities are off here (record_ids = no) and were not offered'
              : 'RECORD_ID message before a hello: record identities were not agreed on this connection';
          break;
        }
        try {
          ({ seq, text: payload } = splitRecordId(m.payload));
        } catch (err) {
          protocolError = (err as Error).message;
          break;
        }
      }
      const line = this.#line(payload, session, principal, seq);
      if (line === null) {
        // Refused by identity_policy = reject: answered in order, after what came before it.
        const target = entry ?? session.lastEntry;
        if (target) target.replies.push(m.sequence + REFUSED);
        else {
          immediate ??= [];
          immediate.push(m.sequence + REFUSED);
        }
        continue;
      }
      if (!session.hostResolved) this.#resolveHost(session, line);
      if (!entry) {
        entry = {
          session,
          lines: [],
          bytes: 0,
          replies: [],
          records: 0,
          lineBytes: 0,
          host: session.host,
          rid: session.rid,
          seqs: [],
        };
        session.queue.push(entry);
        session.lastEntry = entry;
      }
      if (entry.rid) entry.seqs.push(seq);
      entry.lines.push(line, NEWLINE);
      entry.lineBytes += line.length + 1;
      entry.bytes += line.length + 1 + RECORD_OVERHEAD;
      entry.replies.push(m.sequence);
      entry.records++;
      session.bytes += m.payload.length;
    }
    if (entry) {
      session.held += entry.bytes;
      this.#adjust(session, entry.bytes);
      this.#active.add(session);
    }
    this.#countInput(session);
    if (immediate) this.#send(session, immediate, null);
    const error = protocolError ?? session.decoder.error?.message;
    if (error) {
      this.stats.protocolErrors++;
      this.#log.warn({ peer, error }, `protocol error from ${peer}: ${error}; closing the connection`);
      this.#closeAfterPending(session);
    }
  }

  /**
   * A heartbeat's payload: an agent's hello starts record identities for the session (with `recordIds`); anything
   * else (empty, another client's text) is a plain heartbeat. A malformed hello, or a second one with another
   * agent id, is a protocol error (its text returned).
   */
  #hello(session: ClientSession, payload: Buffer): boolean | string {
    if (payload.length === 0 || this.#s.recordIds === false) return false;
    let hello: ReturnType<typeof parseHello>;
    try {
      hello = parseHello(payload);
    } catch (err) {
      return (err as Error).message;
    }
    if (!hello) return false;
    // A hello counts as the first message of a session only: records before it went without numbers.
    if (!session.rid && session.bytes > 0) return false;
    if (session.rid) {
      if (session.rid.agent !== hello.agent) {
        return `a second hello names agent ${hello.agent}, the session's is ${session.rid.agent}`;
      }
      return true;
    }
    const id = session.identity;
    const scope = id ? `${id.kind}:${id.name}` : `address:${session.address}`;
    session.rid = { ...hello, scope };
    this.stats.ridSessions++;
    this.#log.debug({ peer: session.peer, agent: hello.agent, boot: hello.boot }, 'record identities on');
    if (session.host && session.hostResolved) this.#hosts.agentSession(session.host, hello.agent, hello.boot);
    return true;
  }

  /** The session's first message: it joins its host (its identity's, else the one its address was last). */
  #attachHost(session: ClientSession): void {
    const id = authenticated(session);
    if (id) {
      session.host = this.#hosts.attach(id.name, id.kind === 'krb5' ? 'krb5' : 'tls');
      session.hostResolved = true;
      return;
    }
    const { name, kind } = this.#hosts.provisionalName(session.address);
    session.host = this.#hosts.attach(name, kind);
  }

  /** Its first record decides a session's host: the record's node name, else the address. */
  #resolveHost(session: ClientSession, line: Buffer): void {
    session.hostResolved = true;
    if (!session.host) this.#attachHost(session);
    if (!authenticated(session)) {
      const node = nodeNameOf(line);
      session.host = this.#hosts.move(
        session.host!,
        node ?? session.address,
        node !== null ? 'node' : 'address',
        session.address,
      );
    }
    if (session.rid) this.#hosts.agentSession(session.host!, session.rid.agent, session.rid.boot);
  }

  /** Learns a client's heartbeat interval: the silence before a heartbeat (capped at 5 minutes). */
  #noteHeartbeat(session: ClientSession, silenceMs: number): void {
    const gap = Math.min(300_000, silenceMs);
    session.heartbeatMs = session.heartbeatMs === 0 ? gap : Math.round(0.7 * session.heartbeatMs + 0.3 * gap);
  }

  /** The session's incomplete input (decoder, krb5 token) as counted into the total. */
  #countInput(session: ClientSession): void {
    const now = session.pendingInput;
    this.#adjust(session, now - session.countedInput);
    session.countedInput = now;
  }

  /** Changes the collector's total of held bytes (per-session parts are kept by the caller). */
  #adjust(_session: ClientSession, delta: number): void {
    this.#buffered += delta;
    if (this.#buffered > this.stats.bufferedPeak) this.stats.bufferedPeak = this.#buffered;
    this.stats.bufferedBytes = this.#buffered;
  }

  /**
   * The record as it goes into the log: one trailing '\n' removed (krb5: all of them, as auditd), the rule of
   * sanitize.ts applied; krb5 appends ` krb5=<client principal>` as auditd does (unless turned off).
   */
  #line(payload: Buffer, session: ClientSession, principal: string | null, seq = 0): Buffer | null {
    let end = payload.length;
    if (end > 0 && payload[end - 1] === 0x0a) end--;
    while (principal !== null && end > 0 && payload[end - 1] === 0x0a) end--;
    const { line, found } = sanitizeRecord(end === payload.length ? payload : payload.subarray(0, end));
    if (found) {
      this.stats.sanitized++;
      for (const [kind, count] of Object.entries(found) as [SanitizeKind, number][]) {
        const what = SANITIZE_KIND_TEXT[kind];
        this.#warn.warn(
          `${session.peer} ${kind}`,
          { peer: session.peer, kind, count },
          `record from ${session.peer} contains ${count} ${what}: written as \\xHH escapes so it stays one harmless log line (reversible, see docs/collector.md); further records like it from this client are counted and reported every ${this.#warn.intervalMs / 1000} s`,
          (n) => `${n} more record(s) from ${session.peer} contained ${what}: written as \\xHH escapes`,
        );
      }
    }
    const written =
      principal !== null && this.#krb5?.settings.appendPrincipal !== false
        ? Buffer.concat([line, Buffer.from(` krb5=${principal}`)])
        : line;
    const stamped = this.#applyIdentity(written, session);
    if (stamped === null || this.#s.recordIds === false) return stamped;
    // Last on the line: ` rid=<agent>:<seq>`; without one, a line ending like one gets ` rid=-` (record-ids.ts).
    if (seq > 0 && session.rid) {
      return Buffer.concat([stamped, Buffer.from(ridField({ agent: session.rid.agent, seq }), 'latin1')]);
    }
    return endsLikeRid(stamped) ? Buffer.concat([stamped, NO_RID_FIELD]) : stamped;
  }

  /** identity_policy for one record (src/collector/identity.ts); null = refused. */
  #applyIdentity(line: Buffer, session: ClientSession): Buffer | null {
    const policy = this.#identityPolicy;
    const id = session.identity;
    if (policy === 'off' || id === null) return line;
    const d = applyIdentity(line, id, policy, session.stamp);
    if (d.action === 'refuse' || d.mismatch !== null) {
      const node = d.action === 'refuse' ? d.node : d.mismatch!;
      this.stats.identityMismatches++;
      if (d.action === 'refuse') this.stats.identityRefused++;
      const what =
        d.action === 'refuse'
          ? 'refused (identity_policy = reject)'
          : policy === 'rewrite'
            ? 'written with its node= replaced (identity_policy = rewrite)'
            : 'written and stamped (identity_policy = stamp)';
      this.#warn.warn(
        `${session.peer} node`,
        { peer: session.peer, identity: id.name, kind: id.kind, node, policy },
        `record from ${session.peer} (${id.kind} ${id.name}) claims node=${node}, which is not that identity's: ${what}`,
        (n) =>
          `${n} more record(s) from ${session.peer} (${id.kind} ${id.name}) claimed another node: ${what}`,
      );
    }
    if (d.action === 'refuse') return null;
    if (d.rewritten) this.stats.identityRewritten++;
    return d.line;
  }

  /** Stops reading from a session (after a protocol error and the like) and closes it once its replies are out. */
  #closeAfterPending(session: ClientSession): void {
    if (session.phase === 'closed') return;
    session.phase = 'closing';
    session.socket.pause();
    void this.#settled(session).then(() => session.socket.destroy());
  }

  // -------------------------------------------------------------------------------------------------------
  // Flow control

  /** Pauses or resumes reading from `session` (module comment, "Memory and fairness"). */
  #checkInput(session: ClientSession): void {
    if (session.phase === 'closed') return;
    if (session.phase !== 'open' && session.phase !== 'handshaking') {
      this.#setPaused(session, null);
      return;
    }
    const held = session.held + session.unsent + session.pendingInput;
    const share = this.share();
    const replyLimit = Math.min(REPLY_HIGH_WATER, share / 2);
    const reason =
      session.unsent >= replyLimit
        ? 'replies'
        : held >= share
          ? 'share'
          : this.#buffered >= this.#budget
            ? 'budget'
            : null;
    const was = session.pausedFor;
    if (was === null) {
      if (reason === null) return;
      session.socket.pause();
    } else if (
      reason === null &&
      session.unsent < replyLimit / 2 &&
      held < share / 2 &&
      this.#buffered < (this.#budget * 3) / 4
    ) {
      this.#setPaused(session, null);
      session.socket.resume();
      return;
    } else if (reason === null || reason === was) {
      return;
    }
    this.#setPaused(session, reason);
    if (reason === 'replies') {
      this.#warn.warn(
        `${session.peer} replies`,
        { peer: session.peer, unsentReplyBytes: session.unsent },
        `client ${session.peer} is not reading its acknowledgements (${session.unsent} bytes unsent): paused reading from it until it does`,
        (n) => `client ${session.peer} was paused ${n} more time(s) for not reading its acknowledgements`,
      );
    } else {
      this.#log.debug(
        { peer: session.peer, held, share, buffered: this.#buffered, budget: this.#budget },
        `client ${session.peer} paused: ${reason === 'share' ? 'over its share of the log writer' : 'memory budget reached'}`,
      );
    }
  }

  #setPaused(session: ClientSession, reason: ClientSession['pausedFor']): void {
    if (session.pausedFor === 'budget') this.#budgetPaused--;
    if (reason === 'budget') this.#budgetPaused++;
    session.pausedFor = reason;
    if (reason === null) this.#paused.delete(session);
    else this.#paused.add(session);
    this.stats.pausedClients = this.#paused.size;
  }

  /** Sessions paused for the budget resume once the total is under three quarters of it. */
  #resumeBudgetPaused(): void {
    if (this.#budgetPaused === 0 || this.#buffered >= (this.#budget * 3) / 4) return;
    for (const s of [...this.#paused]) if (s.pausedFor === 'budget') this.#checkInput(s);
  }

  #release(session: ClientSession, bytes: number): void {
    session.held -= bytes;
    this.#adjust(session, -bytes);
  }

  // -------------------------------------------------------------------------------------------------------
  // The log writer's scheduler

  /** Starts the next batch when the writer is free: round-robin, QUANTUM_BYTES per client per turn. */
  #pump(): void {
    if (this.#writing || this.#active.size === 0) return;
    const batch: Entry[] = [];
    let bytes = 0;
    while (bytes < MAX_BATCH_BYTES && this.#active.size > 0) {
      for (const s of [...this.#active]) {
        let taken = 0;
        while (s.queue.length > 0 && taken < QUANTUM_BYTES && bytes < MAX_BATCH_BYTES) {
          const e = s.queue.shift()!;
          batch.push(e);
          taken += e.bytes;
          bytes += e.bytes;
          s.inFlight++;
        }
        this.#active.delete(s);
        if (s.queue.length > 0) this.#active.add(s); // to the back of the line
        if (bytes >= MAX_BATCH_BYTES) break;
      }
    }
    if (batch.length === 0) return;
    this.#writing = true;
    this.#dropWritten(batch);
    const data = Buffer.concat(batch.flatMap((e) => e.lines));
    // The evidence's view of the write: consecutive entries of one host form one part.
    const parts: EvidenceParts = [];
    let at = 0;
    for (const e of batch) {
      const host = e.host?.name ?? e.session.address;
      const last = parts[parts.length - 1];
      if (last && last[0] === host && last[2] === at) last[2] = at + e.lineBytes;
      else parts.push([host, at, at + e.lineBytes]);
      at += e.lineBytes;
    }
    const groups: OutputGroup[] = batch.map((e) => ({
      host: e.host?.name ?? e.session.address,
      lines: e.lines,
      // Aligned with `lines` (records dropped as written already are gone from both).
      rids: e.rid ? ridsOf(e.rid.agent, e.seqs) : null,
    }));
    this.#output.write({ data, parts, groups }).then(
      (outcome) => this.#completed(batch, null, outcome),
      (err: NodeJS.ErrnoException) => this.#completed(batch, err, 'ack'),
    );
  }

  /**
   * Record identities: removes from the batch's entries every record whose number is at most the highest written
   * for its agent, or than one before it in this batch (record-ids.ts); they are acknowledged as the others.
   * Their numbers stay in `seqs` as negative values (for the host hook); `lineBytes` counts what is written.
   */
  #dropWritten(batch: Entry[]): void {
    let high: Map<string, number> | null = null;
    for (const e of batch) {
      const rid = e.rid;
      if (!rid || e.seqs.length === 0) continue;
      high ??= new Map();
      let h = high.get(rid.agent) ?? this.#rids.highest(rid.agent, rid.scope);
      let kept: Buffer[] | null = null;
      for (let i = 0; i < e.seqs.length; i++) {
        const seq = e.seqs[i]!;
        if (seq === 0 || seq > h) {
          if (seq > h) h = seq;
          kept?.push(e.lines[2 * i]!, NEWLINE);
          continue;
        }
        kept ??= e.lines.slice(0, 2 * i);
        e.lineBytes -= e.lines[2 * i]!.length + 1;
        e.seqs[i] = -seq;
      }
      if (kept) e.lines = kept;
      high.set(rid.agent, h);
    }
  }

  /** After a successful write: the numbers written and dropped, to the table and the host. */
  #noteRecordIds(e: Entry): void {
    const rid = e.rid;
    if (!rid || e.seqs.length === 0) return;
    const written: number[] = [];
    const dropped: number[] = [];
    for (const seq of e.seqs) {
      if (seq > 0) written.push(seq);
      else if (seq < 0) dropped.push(-seq);
    }
    if (written.length > 0) this.#rids.written(rid.agent, rid.scope, written[written.length - 1]!);
    this.stats.duplicates += dropped.length;
    this.#rids.duplicates += dropped.length;
    if (e.host) {
      if (written.length > 0) this.#hosts.recordIds(e.host, rid.agent, written, false);
      if (dropped.length > 0) this.#hosts.recordIds(e.host, rid.agent, dropped, true);
    }
  }

  #completed(batch: Entry[], err: NodeJS.ErrnoException | null, outcome: WriteOutcome): void {
    this.#writing = false;
    if (err) {
      // What a failed client sent after its failed records, received before it could see the failure, is refused
      // with them, unwritten: it sends all of it again (audisp-remote reconnects; our agent gives up what it has in
      // flight at the DISKFULL/DISKERROR and sends it again on the same link once a probe is accepted),
      // so writing any of it now (the disk may have room a moment later) would put those records in the log
      // twice, or ahead of the ones that failed.
      const failed = new Set(batch.map((e) => e.session));
      for (const s of failed) {
        if (s.phase === 'closed' || s.queue.length === 0) continue;
        const rest = s.queue.splice(0);
        this.#active.delete(s);
        s.inFlight += rest.length;
        batch = [...batch, ...rest];
      }
      const records = batch.reduce((n, e) => n + e.records, 0);
      this.stats.writeFailures += records;
      this.stats.writeErrors++;
      this.#lastWriteError = { code: err.code ?? err.message, time: new Date().toISOString() };
      this.#warn.warn(
        `write ${err.code ?? 'error'}`,
        { error: err.code ?? err.message, records, clients: new Set(batch.map((e) => e.session.peer)).size },
        err.code === 'ESUSPENDED'
          ? `logging is suspended (${err.message}): ${records} record(s) answered with DISKERROR "remote logging suspended"; clients keep them`
          : this.#output.kind === 'jetstream'
            ? `${err.message}: ${records} record(s) answered with ${isFull(err) ? 'DISKFULL' : 'DISKERROR'} instead of an acknowledgement; clients keep them and send them again`
            : `log write failed (${err.code ?? err.message}): ${records} record(s) answered with ${isFull(err) ? 'DISKFULL' : 'DISKERROR'} instead of an acknowledgement; nothing of them is in the log`,
        (n) =>
          `${n} more log write(s) failed (${err.code ?? err.message}); their records were answered with ${isFull(err) ? 'DISKFULL' : 'DISKERROR'}`,
      );
    }
    if (!err) this.#lastWriteError = null;
    const now = Date.now();
    const replies = new Map<ClientSession, number[]>();
    for (const e of batch) {
      const s = e.session;
      s.inFlight--;
      this.#release(s, e.bytes);
      if (!err) {
        const duplicates = e.rid ? e.seqs.reduce((n, seq) => (seq < 0 ? n + 1 : n), 0) : 0;
        this.#noteRecordIds(e);
        this.stats.records += e.records - duplicates;
        s.records += e.records - duplicates;
        // Also reads each line for the kernel's and auditd's loss reports (docs/loss.md).
        if (e.host) this.#hosts.count(e.host, e.records - duplicates, e.lineBytes, e.lines);
        if (outcome === 'disklow') this.stats.diskLowReplies += e.records;
      }
      if (s.lastEntry === e) {
        s.lastEntry = null;
        s.lastServedAt = now;
      }
      if (s.phase === 'closed') continue;
      const list = replies.get(s);
      if (list) list.push(...e.replies);
      else replies.set(s, [...e.replies]);
    }
    for (const [s, list] of replies) this.#send(s, list, err, outcome);
    for (const e of batch) this.#settle(e.session);
    for (const s of replies.keys()) this.#checkInput(s);
    this.#resumeBudgetPaused();
    this.#pump();
  }

  /**
   * Sends replies in one write: for records ACK (DISKLOW while the disk is low), or the write error (DISKFULL
   * `disk full`, DISKERROR `disk write error` or `remote logging suspended`); heartbeats always ACK.
   */
  #send(
    session: ClientSession,
    list: number[],
    err: NodeJS.ErrnoException | null,
    outcome: WriteOutcome = 'ack',
  ): void {
    const { socket } = session;
    if (socket.destroyed || list.length === 0) return;
    const r = this.replies;
    const frames = list.map((v) => {
      if (v >= HELLO) return encodeReply(MessageType.ACK, v - HELLO, RID_CAPABILITY_TEXT);
      if (v >= REFUSED) {
        r.REFUSED++;
        return encodeReply(
          REFUSED_REPLY,
          v - REFUSED,
          'record refused: its node= is not the authenticated host',
        );
      }
      if (v >= HB || (!err && outcome !== 'disklow')) {
        r.ACK++;
        return encodeReply(MessageType.ACK, v >= HB ? v - HB : v);
      }
      if (!err) {
        r.DISKLOW++;
        return encodeReply(MessageType.DISKLOW, v);
      }
      const text = (err as OutputError).replyText;
      if (text !== undefined) {
        const full = isFull(err);
        r[full ? 'DISKFULL' : 'DISKERROR']++;
        return encodeReply(full ? MessageType.DISKFULL : MessageType.DISKERROR, v, text);
      }
      if (err.code === 'ESUSPENDED') {
        r.DISKERROR++;
        return encodeReply(MessageType.DISKERROR, v, 'remote logging suspended');
      }
      if (isFull(err)) {
        r.DISKFULL++;
        return encodeReply(MessageType.DISKFULL, v, 'disk full');
      }
      r.DISKERROR++;
      return encodeReply(MessageType.DISKERROR, v, 'disk write error');
    });
    const wire = this.#wire(session, frames);
    if (socket.destroyed || wire.length === 0) return;
    this.stats.bytesSent += wire.length;
    session.unsent += wire.length;
    this.#adjust(session, wire.length);
    socket.write(wire, () => {
      if (session.phase === 'closed') return;
      session.unsent -= wire.length;
      this.#adjust(session, -wire.length);
      if (session.pausedFor !== null) this.#checkInput(session);
    });
  }

  /** Resolves when the session has nothing pending (no entry queued or being written). */
  #settled(session: ClientSession): Promise<void> {
    if (session.lastEntry === null) return Promise.resolve();
    return new Promise((resolve) => session.settledWaiters.push(resolve));
  }

  #settle(session: ClientSession): void {
    if (session.lastEntry !== null) return;
    const waiters = session.settledWaiters.splice(0);
    for (const w of waiters) w();
  }

  /** Replies as they go on the wire: as they are, or (krb5) one wrapped token each. */
  #wire(session: ClientSession, replies: Buffer[]): Buffer {
    const { krb5 } = session;
    if (!krb5) return replies.length === 1 ? replies[0]! : Buffer.concat(replies);
    try {
      return Buffer.concat(replies.map((r) => krb5.wrap(r)));
    } catch (err) {
      this.#log.error({ peer: session.peer, error: (err as Error).message }, 'cannot wrap a reply: closing');
      session.socket.destroy();
      return EMPTY;
    }
  }

  async #end(session: ClientSession): Promise<void> {
    if (session.phase === 'handshaking' && this.#tls) {
      this.#abandonHandshake(session);
      return;
    }
    if (session.krb5 && !session.krb5.established) {
      // No security context yet: nothing can be said to this client.
      session.socket.destroy();
      return;
    }
    if (session.phase === 'closed') return;
    session.phase = 'ending';
    this.#setPaused(session, null);
    session.socket.pause();
    await this.#settled(session);
    const { socket } = session;
    if (socket.destroyed) return;
    await new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
      this.replies.ENDING++;
      socket.end(this.#wire(session, [encodeReply(MessageType.ENDING, 0)]));
      // Read and drop what the client still sends (never logged, never acked): a paused socket with unread
      // input would never see the client's FIN, so the close would always wait for the timer below.
      socket.removeAllListeners('data');
      socket.resume();
      // A client that never reads cannot hold up shutdown.
      setTimeout(() => socket.destroy(), 2000).unref();
    });
  }
}

/**
 * krb5's part of a reload: handshake_timeout, krb5_allowed_principals and krb5_append_principal at once (the
 * service and keytab need a restart); a connected client whose principal a new allow-list leaves out is closed.
 */
/** An entry's record identities for an output, in the order of its lines (0: none; negative: dropped, not written). */
function ridsOf(agent: string, seqs: readonly number[]): (RecordId | null)[] {
  const out: (RecordId | null)[] = [];
  for (const seq of seqs) if (seq >= 0) out.push(seq === 0 ? null : { agent, seq });
  return out;
}

/** Who a session authenticated as (a plain tcp session's address is not an authentication); null before. */
function authenticated(session: ClientSession): PeerIdentity | null {
  return session.identity === null || session.identity.kind === 'address' ? null : session.identity;
}

function krb5Reload(acceptor: Krb5Acceptor, log: Logger): TransportReload {
  return {
    reload(next, sessions, evict) {
      if (!next.krb5) return [];
      const changed = acceptor.reload(next.krb5);
      const allowed = next.krb5.allowedPrincipals;
      if (changed.includes('krb5AllowedPrincipals') && allowed) {
        for (const s of sessions) {
          if (s.identity?.kind === 'krb5' && !allowed.includes(s.identity.name) && s.phase === 'open')
            evict(s, `its principal ${s.identity.name} is not in krb5_allowed_principals any more`);
        }
      }
      if (changed.length > 0) log.info({ changed }, 'Kerberos: settings reloaded');
      return changed;
    },
  };
}

/** Listens; resolves once listening, rejects with the listen error. */
function listen(server: net.Server, host: string, port: number, backlog: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.prependOnceListener('error', onError);
    server.listen({ host, port, backlog }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Throws listen()'s error (EADDRINUSE, EACCES, EADDRNOTAVAIL) when `host:port` cannot be bound now. */
async function checkAddressFree(host: string, port: number): Promise<void> {
  const probe = net.createServer();
  await listen(probe, host, port, 1);
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}

function isFull(err: NodeJS.ErrnoException): boolean {
  return err.code === 'ENOSPC' || err.code === 'EDQUOT';
}

/** The least a client may hold: two largest messages and their overhead (so a full message can always be read). */
function minShare(maxPayload: number): number {
  return 2 * (HEADER_SIZE + maxPayload + RECORD_OVERHEAD) + 16 * 1024;
}

function readNumber(file: string): number | null {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/** The soft RLIMIT_NOFILE of this process (/proc/self/limits), or null when it cannot be read. */
export function readOpenFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!m || m[1] === 'unlimited') return null;
    return Number(m[1]);
  } catch {
    return null;
  }
}
