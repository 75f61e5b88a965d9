/**
 * A syslog(3) client without a helper process: RFC 3164 lines, as glibc writes them, to `/dev/log`
 * (`<PRI>Mmm dd hh:mm:ss auditrelay[PID]: text`), from this process (docs/logging.md).
 *
 * - Datagrams through the `auditrelay_unix` binding (Node has no unix datagram sockets): a connected,
 *   non-blocking socket. When `/dev/log` is a stream socket (`connect` answers EPROTOTYPE, e.g. a syslog-ng set
 *   up that way) it falls back to a stream connection with NUL-terminated messages, as glibc does; the stream
 *   is Node's own `net` socket, so it also works without the binding.
 * - Never blocks the event loop: a syslog daemon that does not keep up (EAGAIN: its queue holds only
 *   net.unix.max_dgram_qlen datagrams, 10 without systemd's 512) or is away (ENOENT, ECONNREFUSED while it
 *   restarts) costs a bounded backlog (`BACKLOG_MESSAGES` messages) retried on a timer (5 ms, doubling to 1 s);
 *   messages beyond it are counted, and the count is reported in syslog once it answers again. It never writes
 *   to the console (glibc's LOG_CONS) and never throws.
 * - A message longer than `MAX_MESSAGE_BYTES` is cut (rsyslog's default limit is 8 KiB).
 */
import { closeSync } from 'node:fs';
import net from 'node:net';
import { loadUnixDgram, type UnixDgram } from './unix-dgram.js';

/** syslog(3) severities. */
export const Severity = {
  emerg: 0,
  alert: 1,
  crit: 2,
  err: 3,
  warning: 4,
  notice: 5,
  info: 6,
  debug: 7,
} as const;

/** LOG_DAEMON, as audisp-remote. */
export const FACILITY_DAEMON = 3;
export const DEFAULT_SYSLOG_PATH = '/dev/log';
export const MAX_MESSAGE_BYTES = 8192;
export const BACKLOG_MESSAGES = 256;
/** Reconnection attempts: at most one per RETRY_MS. */
const RETRY_MS = 200;
/** A full receive queue (EAGAIN): retried after 5 ms, doubling up to 1 s while nothing goes out. */
const FLUSH_RETRY_MIN_MS = 5;
const FLUSH_RETRY_MAX_MS = 1000;

export interface SyslogOptions {
  /** Program name (the tag). Default 'auditrelay'. */
  ident?: string;
  /** Default LOG_DAEMON (3). */
  facility?: number;
  /** Default /dev/log. */
  path?: string;
  /** Default process.pid. */
  pid?: number;
  /** The datagram binding, or why it is unavailable. Default loadUnixDgram(). */
  unix?: UnixDgram | string;
  /** The local time of the header. Default: now. */
  now?: () => Date;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** glibc's header time, `%h %e %T` in local time: `Dec  1 07:04:05`. */
export function syslogTime(d: Date): string {
  const two = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

type Sink =
  | { kind: 'none' }
  | { kind: 'dgram'; fd: number }
  | { kind: 'stream'; socket: net.Socket; connected: boolean };

export class SyslogWriter {
  readonly ident: string;
  readonly facility: number;
  readonly path: string;
  /** Messages written, and those lost (backlog full, or refused by the daemon). */
  readonly stats = { sent: 0, dropped: 0 };
  readonly #pid: number;
  readonly #unix: UnixDgram | string;
  readonly #now: () => Date;
  #sink: Sink = { kind: 'none' };
  readonly #backlog: Buffer[] = [];
  #retry: NodeJS.Timeout | null = null;
  /** Messages lost and not reported yet. */
  #lostSinceOk = 0;
  #lastError = '';
  #nextOpenAt = 0;
  #flushRetryMs = FLUSH_RETRY_MIN_MS;
  #closed = false;

  constructor(options: SyslogOptions = {}) {
    this.ident = options.ident ?? 'auditrelay';
    this.facility = options.facility ?? FACILITY_DAEMON;
    this.path = options.path ?? DEFAULT_SYSLOG_PATH;
    this.#pid = options.pid ?? process.pid;
    this.#unix = options.unix ?? loadUnixDgram();
    this.#now = options.now ?? (() => new Date());
  }

  /** How the messages travel: 'datagram', 'stream', or 'none' (not connected yet, or the daemon is away). */
  get transport(): 'datagram' | 'stream' | 'none' {
    return this.#sink.kind === 'dgram' ? 'datagram' : this.#sink.kind;
  }

  /** Why the last attempt failed ('' when the last one succeeded). */
  get lastError(): string {
    return this.#lastError;
  }

  /** The bytes of one message, as glibc's syslog() formats it. */
  format(severity: number, text: string): Buffer {
    const head = `<${this.facility * 8 + severity}>${syslogTime(this.#now())} ${this.ident}[${this.#pid}]: `;
    let body = Buffer.from(text, 'utf8');
    const room = MAX_MESSAGE_BYTES - Buffer.byteLength(head);
    if (body.length > room) {
      const cut = Buffer.from(' …(cut)', 'utf8');
      // Cut on a character boundary: back up over UTF-8 continuation bytes.
      let end = room - cut.length;
      while (end > 0 && ((body[end] ?? 0) & 0xc0) === 0x80) end--;
      body = Buffer.concat([body.subarray(0, end), cut]);
    }
    return Buffer.concat([Buffer.from(head, 'utf8'), body]);
  }

  /** Sends one message (`severity`: Severity.*); never throws, never blocks. */
  write(severity: number, text: string): void {
    if (this.#closed) return;
    this.#enqueue(this.format(severity, text));
    this.#flush();
  }

  /** Tries now to send what is waiting. */
  flush(): void {
    if (!this.#closed) this.#flush();
  }

  /**
   * One last attempt to send what is waiting, then closes the socket. A stream connection is ended gracefully and
   * kept referenced, so that what Node still holds is written before the process exits.
   */
  close(): void {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    this.stats.dropped += this.#backlog.length;
    this.#backlog.length = 0;
    const sink = this.#sink;
    if (sink.kind === 'stream') {
      this.#sink = { kind: 'none' };
      sink.socket.ref();
      sink.socket.end();
      return;
    }
    this.#drop();
  }

  #enqueue(msg: Buffer): void {
    if (this.#backlog.length >= BACKLOG_MESSAGES) {
      this.#backlog.shift();
      this.stats.dropped++;
      this.#lostSinceOk++;
    }
    this.#backlog.push(msg);
  }

  #flush(): void {
    const sentBefore = this.stats.sent;
    while (this.#backlog.length > 0) {
      if (this.#sink.kind === 'none' && !this.#open()) break;
      // Losses are reported before the next message that goes out.
      const msg =
        this.#lostSinceOk > 0
          ? this.format(
              Severity.warning,
              `${this.#lostSinceOk} log message(s) were lost while ${this.path} did not take them (${this.#lastError})`,
            )
          : this.#backlog[0]!;
      const isReport = msg !== this.#backlog[0];
      const outcome = this.#send(msg);
      if (outcome === 'later') break;
      if (outcome === 'reconnect') continue; // at once (at most once per RETRY_MS), as glibc does
      if (isReport) {
        this.#lostSinceOk = 0; // sent, or refused for good: either way it is not tried again
        continue;
      }
      this.#backlog.shift();
      if (outcome === 'sent') {
        this.stats.sent++;
        this.#lastError = '';
      } else {
        // Refused for good (e.g. EMSGSIZE): dropped, and reported with the next one.
        this.stats.dropped++;
        this.#lostSinceOk++;
      }
    }
    this.#flushRetryMs =
      this.stats.sent > sentBefore
        ? FLUSH_RETRY_MIN_MS
        : Math.min(FLUSH_RETRY_MAX_MS, this.#flushRetryMs * 2);
    if (this.#backlog.length > 0 && !this.#retry && !this.#closed) {
      this.#retry = setTimeout(() => {
        this.#retry = null;
        this.#flush();
      }, this.#flushRetryMs);
      this.#retry.unref();
    }
  }

  /** Connects; false when /dev/log is not there (retried at most every RETRY_MS). */
  #open(): boolean {
    const now = Date.now();
    if (now < this.#nextOpenAt) return false;
    this.#nextOpenAt = now + RETRY_MS;
    if (typeof this.#unix !== 'string') {
      try {
        this.#sink = { kind: 'dgram', fd: this.#unix.connect(this.path) };
        return true;
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (e.code !== 'EPROTOTYPE') {
          this.#lastError = `${this.path}: ${e.code ?? e.message}`;
          return false;
        }
      }
    }
    // A stream socket (or no datagram binding): Node's net, NUL-terminated messages, as glibc.
    const socket = net.createConnection({ path: this.path });
    const sink: Sink = { kind: 'stream', socket, connected: false };
    socket.on('connect', () => {
      sink.connected = true;
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const datagramsOnly = err.code === 'EPROTOTYPE' && typeof this.#unix === 'string';
      this.#lastError = `${this.path}: ${err.code ?? err.message}${datagramsOnly ? ` (${this.#unix})` : ''}`;
      // A datagram socket cannot be reached without the binding: do not try again every RETRY_MS.
      if (datagramsOnly) this.#nextOpenAt = Date.now() + 60_000;
    });
    socket.on('close', () => {
      if (this.#sink === sink) this.#sink = { kind: 'none' };
      if (!this.#closed && this.#backlog.length > 0) this.#flush();
    });
    socket.unref();
    this.#sink = sink;
    return true;
  }

  #send(msg: Buffer): 'sent' | 'later' | 'reconnect' | 'dropped' {
    const sink = this.#sink;
    if (sink.kind === 'stream') {
      // Node queues the bytes until connected; a bounded amount, then we hold back.
      if (sink.socket.writableLength > 64 * 1024) return 'later';
      sink.socket.write(Buffer.concat([msg, Buffer.from([0])]));
      return 'sent';
    }
    if (sink.kind !== 'dgram' || typeof this.#unix === 'string') return 'later';
    try {
      this.#unix.send(sink.fd, msg);
      return 'sent';
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      this.#lastError = `${this.path}: ${code}`;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'ENOBUFS') return 'later';
      if (code === 'EMSGSIZE') return 'dropped';
      // The daemon went away or was restarted (a new socket at the same path): reconnect, as glibc does.
      this.#drop();
      this.#nextOpenAt = 0;
      return 'reconnect';
    }
  }

  #drop(): void {
    const sink = this.#sink;
    this.#sink = { kind: 'none' };
    if (sink.kind === 'dgram') {
      try {
        closeSync(sink.fd);
      } catch {
        // already closed
      }
    } else if (sink.kind === 'stream') {
      sink.socket.destroy();
    }
  }
}
