/**
 * Every error auditrelay raises on purpose is created here, with a stable code.
 * docs/errors.md lists the codes; test/unit/errors.test.ts keeps the two in step.
 */

export const ErrorCodes = {
  /** Configuration file could not be parsed or validated. Exit status 6, as upstream. */
  CONFIG: 'AR_CONFIG',
  /** Command line usage error. Exit status 2. */
  USAGE: 'AR_USAGE',
  /** The wire protocol was violated by the peer (bad magic, oversized length, unexpected reply). */
  PROTOCOL: 'AR_PROTOCOL',
  /** The link to the server failed (connect refused, reset, timeout). */
  LINK: 'AR_LINK',
  /** The queue could not store or return a record. */
  QUEUE: 'AR_QUEUE',
  /** A supervised actor failed more often than the restart intensity allows. */
  ESCALATED: 'AR_ESCALATED',
  /** A supervised actor failed (its input broke, an invariant of the session broke); it is restarted. */
  ACTOR_FAILED: 'AR_ACTOR_FAILED',
  /** A file or directory is not safe to use (a symlink, not a regular file, writable by others). */
  UNSAFE_PATH: 'AR_UNSAFE_PATH',
  /**
   * Something the command needs is not there or not usable: an address in use or not on this host, a host name
   * that does not resolve, a missing directory, a permission denied, a status endpoint that does not answer.
   */
  UNAVAILABLE: 'AR_UNAVAILABLE',
  /** The evidence store (signing key, side files) or a file given to `events`/`verify` cannot be used. */
  EVIDENCE: 'AR_EVIDENCE',
  /**
   * NATS JetStream (output = jetstream, `sink`): the servers cannot be reached, the stream cannot be created or
   * used as configured, or the sink's log does not belong to the stream.
   */
  JETSTREAM: 'AR_JETSTREAM',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class AuditRelayError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export interface ConfigErrorLocation {
  file?: string;
  line?: number;
  key?: string;
  value?: string;
  allowed?: string;
}

/** A configuration error; its message is one line naming file, line, key, bad value and allowed values. */
export class ConfigError extends AuditRelayError {
  readonly location: ConfigErrorLocation;
  constructor(message: string, location: ConfigErrorLocation = {}, options?: { cause?: unknown }) {
    super(ErrorCodes.CONFIG, formatConfigMessage(message, location), options);
    this.location = location;
  }
}

function formatConfigMessage(message: string, loc: ConfigErrorLocation): string {
  const where = loc.file ? (loc.line ? `${loc.file}:${loc.line}: ` : `${loc.file}: `) : '';
  const key = loc.key ? `${loc.key}: ` : '';
  const allowed = loc.allowed ? ` (allowed: ${loc.allowed})` : '';
  return `${where}${key}${message}${allowed}`;
}

export class UsageError extends AuditRelayError {
  constructor(message: string) {
    super(ErrorCodes.USAGE, message);
  }
}

export class ProtocolError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.PROTOCOL, message, options);
  }
}

export class LinkError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.LINK, message, options);
  }
}

export class QueueError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.QUEUE, message, options);
  }
}

/** A file or directory refused by the rules of src/fs/safe-files.ts; the message says what, where and the fix. */
export class FileSafetyError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.UNSAFE_PATH, message, options);
  }
}

/**
 * What a command needs is not available (see ErrorCodes.UNAVAILABLE). One line: what failed, where, and what to
 * do; src/system-errors.ts builds it from a Node system error.
 */
export class UnavailableError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.UNAVAILABLE, message, options);
  }
}

/** The evidence store or an input of `events`/`verify` cannot be used (docs/evidence.md); says what and where. */
export class EvidenceError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.EVIDENCE, message, options);
  }
}

/** NATS JetStream cannot be used as configured (see ErrorCodes.JETSTREAM); the message says what and what to do. */
export class JetStreamUnavailableError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.JETSTREAM, message, options);
  }
}

/** Thrown inside an actor so that its supervisor restarts it (within the restart intensity). */
export class ActorFailedError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.ACTOR_FAILED, message, options);
  }
}

export class EscalationError extends AuditRelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCodes.ESCALATED, message, options);
  }
}

/** Exit statuses, modelled on audisp-remote's. */
export const ExitCodes = {
  OK: 0,
  /**
   * Records remained queued at exit, a fatal runtime error, or the command could not start or do its job because
   * something it needs is unavailable (an address in use, a missing directory, a queue held by another process).
   */
  FAILURE: 1,
  USAGE: 2,
  /** Configuration error (upstream uses 6). */
  CONFIG: 6,
  /** The supervisor gave up restarting a failing actor. */
  ESCALATED: 3,
  /** `auditrelay status`: the agent or collector answered and is unhealthy (its /health would answer 503). */
  UNHEALTHY: 4,
  /** `report`: no loss seen, but an input could not be read (the report does not cover it). */
  INCOMPLETE: 5,
  /** An error nobody foresaw: a bug. The only case that prints a stack trace. */
  INTERNAL: 70,
} as const;
