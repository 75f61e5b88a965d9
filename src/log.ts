/**
 * Logging: pino, routed to where the operator reads it (docs/logging.md). Targets:
 * - `stderr`: JSON lines (a supervisor or a test reads them), or a compact human format on a terminal;
 * - `journal`: stderr connected to journald (service mode): one line per message with its priority as a
 *   `<N>` prefix, which journald files as PRIORITY (the unit's SyslogIdentifier= names it);
 * - `syslog`: `/dev/log`, facility daemon, identifier `auditrelay`, as audisp-remote (plugin mode, where
 *   auditd's stderr is /dev/null), written by this process (src/service/syslog.ts).
 * `auto` (the default) picks one from what stderr is: a terminal → stderr (human); the stream journald gave us
 * ($JOURNAL_STREAM names its device:inode) → journal; /dev/null or closed → syslog; anything else (a pipe, a
 * file) → stderr (JSON). `log_target` in the agent's configuration chooses one; `$AUDITRELAY_LOG_TARGET`
 * overrides both (e.g. `Environment=` in a unit drop-in). Record payloads are never logged at info or above.
 */
import { type BigIntStats, fstatSync, statSync } from 'node:fs';
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from 'pino';
import { Severity, type SyslogOptions, SyslogWriter } from './service/syslog.js';
import { loadUnixDgram } from './service/unix-dgram.js';

export type { Logger };

export const LOG_TARGETS = ['auto', 'stderr', 'journal', 'syslog'] as const;
export type LogTarget = (typeof LOG_TARGETS)[number];
/** Overrides `log_target` and the automatic choice. */
export const LOG_TARGET_ENV = 'AUDITRELAY_LOG_TARGET';

export interface LogOptions {
  level?: LevelWithSilent;
  /** Format of the stderr target: 'json' (default when stderr is not a TTY) or 'pretty'. */
  format?: 'json' | 'pretty';
  name?: string;
  /** `log_target` of the configuration. Default 'auto'. `$AUDITRELAY_LOG_TARGET` overrides it. */
  target?: LogTarget;
  /** Where AUDITRELAY_LOG_TARGET, AUDITRELAY_LOG_FORMAT and JOURNAL_STREAM are read. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The syslog target's settings (tests: another socket path). */
  syslog?: SyslogOptions;
}

export interface ResolvedTarget {
  target: Exclude<LogTarget, 'auto'>;
  /** Why, in words (for the first log line and for tests). */
  reason: string;
}

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/** pino level → syslog severity. */
export function severityOf(level: number): number {
  if (level >= 60) return Severity.crit;
  if (level >= 50) return Severity.err;
  if (level >= 40) return Severity.warning;
  if (level >= 30) return Severity.info;
  return Severity.debug;
}

/** What file descriptor 2 is, for the automatic choice. */
export type StderrKind = 'tty' | 'journal' | 'devnull' | 'closed' | 'other';

export function stderrKind(env: NodeJS.ProcessEnv = process.env, fd = 2): StderrKind {
  let st: BigIntStats;
  try {
    st = fstatSync(fd, { bigint: true });
  } catch {
    return 'closed';
  }
  if (fd === 2 && process.stderr.isTTY) return 'tty';
  // systemd: "JOURNAL_STREAM=<device>:<inode>" of the stream it connected to stdout/stderr; it still names it
  // when a child inherited the variable but not the stream, hence the comparison (sd_journal_stream_fd(3)).
  const js = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (js && BigInt(js[1]!) === st.dev && BigInt(js[2]!) === st.ino) return 'journal';
  if (st.isCharacterDevice()) {
    let nullRdev = 259n; // makedev(1, 3)
    try {
      nullRdev = statSync('/dev/null', { bigint: true }).rdev;
    } catch {
      // keep Linux's number
    }
    if (st.rdev === nullRdev) return 'devnull';
  }
  return 'other';
}

/** The target `requested` (log_target) resolves to, after `$AUDITRELAY_LOG_TARGET` and the automatic choice. */
export function resolveLogTarget(
  requested: LogTarget = 'auto',
  env: NodeJS.ProcessEnv = process.env,
  kind: () => StderrKind = () => stderrKind(env),
): ResolvedTarget {
  const override = env[LOG_TARGET_ENV]?.trim().toLowerCase();
  let wanted = requested;
  let why = requested === 'auto' ? '' : 'log_target';
  if (override) {
    if ((LOG_TARGETS as readonly string[]).includes(override)) {
      wanted = override as LogTarget;
      why = LOG_TARGET_ENV;
    } else {
      process.stderr.write(
        `auditrelay: warning: ${LOG_TARGET_ENV}=${override} is not one of ${LOG_TARGETS.join(', ')}; ignored\n`,
      );
    }
  }
  if (wanted !== 'auto') return { target: wanted, reason: `${why} = ${wanted}` };
  switch (kind()) {
    case 'tty':
      return { target: 'stderr', reason: 'stderr is a terminal' };
    case 'journal':
      return { target: 'journal', reason: 'stderr is connected to journald (JOURNAL_STREAM)' };
    case 'devnull':
      return { target: 'syslog', reason: 'stderr is /dev/null (an auditd plugin)' };
    case 'closed':
      return { target: 'syslog', reason: 'stderr is closed' };
    default:
      return { target: 'stderr', reason: 'stderr is a pipe or a file' };
  }
}

export function createLogger(options: LogOptions = {}): Logger {
  const env = options.env ?? process.env;
  const level = options.level ?? 'info';
  const { target } = resolveLogTarget(options.target ?? 'auto', env);
  if (target === 'syslog') {
    const writer = new SyslogWriter(options.syslog);
    const unix = loadUnixDgram();
    if (typeof unix === 'string') {
      // Only a stream /dev/log can be reached now; say so where someone may read it.
      process.stderr.write(`auditrelay: warning: syslog over datagrams is unavailable: ${unix}\n`);
    }
    process.once('exit', () => writer.close());
    const stream: DestinationStream & { flush(): void } = {
      write: (line: string) => {
        const entry = parse(line);
        if (entry) writer.write(severityOf(entry.level), plainText(entry));
      },
      flush: () => writer.flush(),
    };
    return pino({ level, base: undefined, timestamp: false }, stream);
  }
  if (target === 'journal') {
    const out = pino.destination({ fd: 2, sync: true });
    return pino(
      { level, base: undefined, timestamp: false },
      {
        write: (line: string) => {
          const entry = parse(line);
          if (entry) out.write(`<${severityOf(entry.level)}>${plainText(entry)}\n`);
        },
      },
    );
  }
  const fmt = env.AUDITRELAY_LOG_FORMAT;
  const format =
    options.format ?? (fmt === 'json' || fmt === 'pretty' ? fmt : process.stderr.isTTY ? 'pretty' : 'json');
  if (format === 'json') {
    return pino(
      { level, name: options.name ?? 'auditrelay', base: { pid: process.pid } },
      pino.destination(2),
    );
  }
  return pino(
    { level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime },
    { write: (line: string) => process.stderr.write(prettyLine(line)) },
  );
}

interface Entry {
  level: number;
  msg: string;
  rest: Record<string, unknown>;
}

function parse(line: string): Entry | undefined {
  try {
    const {
      level,
      time: _time,
      msg,
      pid: _pid,
      hostname: _host,
      name: _name,
      ...rest
    } = JSON.parse(line) as Record<string, unknown>;
    return { level: typeof level === 'number' ? level : 30, msg: typeof msg === 'string' ? msg : '', rest };
  } catch {
    return undefined;
  }
}

/** One line: the message, then `key=value` pairs (a value with spaces, quotes or newlines JSON-quoted). */
export function plainText(entry: Pick<Entry, 'msg' | 'rest'>): string {
  const msg = entry.msg.replace(/\r?\n/g, '\\n');
  const extras = Object.entries(entry.rest)
    .map(
      ([k, v]) =>
        `${k}=${typeof v === 'string' && /^[^\s"=\\]*$/.test(v) && v !== '' ? v : JSON.stringify(v)}`,
    )
    .join(' ');
  return extras ? `${msg}  ${extras}` : msg;
}

function prettyLine(line: string): string {
  try {
    const { level, time, msg, ...rest } = JSON.parse(line) as Record<string, unknown>;
    const extras = Object.entries(rest)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    const t = typeof time === 'string' ? time.slice(11, 23) : '';
    return `${t} ${LEVEL_NAMES[level as number] ?? level} ${msg ?? ''}${extras ? `  ${extras}` : ''}\n`;
  } catch {
    return line;
  }
}

/**
 * A failure that ends the command (a configuration error, a usage error…), before or without a logger: one line
 * on stderr, and also in syslog when nobody reads stderr (an auditd plugin: auditd's stderr is /dev/null), so that
 * a plugin that cannot start says why where audisp-remote would. `more` (e.g. the usage) goes to stderr only.
 */
export function reportFailure(line: string, more = '', env: NodeJS.ProcessEnv = process.env): void {
  process.stderr.write(`${line}\n${more}`);
  let target: ResolvedTarget;
  try {
    target = resolveLogTarget('auto', env);
  } catch {
    return;
  }
  if (target.target !== 'syslog') return;
  const writer = new SyslogWriter();
  writer.write(Severity.err, line.replace(/^auditrelay: /, ''));
  writer.close();
}

/** A logger that discards everything (tests, embedded use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
