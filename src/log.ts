/**
 * Logging: pino JSON lines on stderr (journald-friendly), or a compact human format when stderr is
 * a terminal. Record payloads are never logged at info level or above.
 */
import { type LevelWithSilent, type Logger, pino } from 'pino';

export type { Logger };

export interface LogOptions {
  level?: LevelWithSilent;
  /** 'json' (default when stderr is not a TTY) or 'pretty'. */
  format?: 'json' | 'pretty';
  name?: string;
}

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

export function createLogger(options: LogOptions = {}): Logger {
  const env = process.env.AUDITRELAY_LOG_FORMAT;
  const format =
    options.format ?? (env === 'json' || env === 'pretty' ? env : process.stderr.isTTY ? 'pretty' : 'json');
  const level = options.level ?? 'info';
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

/** A logger that discards everything (tests, embedded use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
