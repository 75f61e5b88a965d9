/**
 * Record identities on the wire (RECORD-ID contract, docs/protocol.md "Record identities"): auditrelay's extension
 * of the managed format, used only between an auditrelay agent and an auditrelay collector.
 *
 * - hello: the payload of the probe HEARTBEAT that starts every managed link,
 *   `auditrelay-hello 1 agent=<AGENT_ID> boot=<BOOT>`. auditd answers a heartbeat with an empty ACK whatever its
 *   payload and logs nothing; our collector answers with the ACK text `auditrelay 1 rid` (capabilities, space
 *   separated). An empty ACK text means no capability: the agent sends plain MESSAGEs, exactly as before.
 * - RECORD_ID (type 2): an 8-byte big-endian record number, then the record text. Sent only after `rid`.
 * - A record's identity as text is `<agent>:<seq>`: the ` rid=` field of a log line, the JetStream message id
 *   (Nats-Msg-Id) of the collector's stream output, what the sink reads back.
 */
import { ProtocolError } from '../errors.js';

/** AGENT_ID: 1 to 64 of [A-Za-z0-9._-]. */
export const AGENT_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
export const HELLO_PREFIX = 'auditrelay-hello 1 ';
/** The ACK text of a collector that takes RECORD_ID messages. */
export const RID_CAPABILITY_TEXT = 'auditrelay 1 rid';
/** Bytes before the record text in a RECORD_ID payload. */
export const RECORD_NUMBER_SIZE = 8;

export interface Hello {
  agent: string;
  /** Decimal ms of the agent process's start: a new boot is an agent restart. */
  boot: number;
}

/** A record's identity: its agent, and its record number there. */
export interface RecordId {
  agent: string;
  seq: number;
}

export function encodeHello(hello: Hello): Buffer {
  return Buffer.from(`${HELLO_PREFIX}agent=${hello.agent} boot=${hello.boot}`, 'latin1');
}

const HELLO_RE = /^auditrelay-hello 1 agent=([A-Za-z0-9._-]{1,64}) boot=(\d{1,16})$/;

/**
 * The hello in a heartbeat's payload; null when the payload is empty or not a hello (a heartbeat of another client:
 * answered as always). A payload that starts like a hello but is malformed is a ProtocolError.
 */
export function parseHello(payload: Buffer): Hello | null {
  if (payload.length === 0 || payload.length > 200) return null;
  const text = payload.toString('latin1');
  if (!text.startsWith(HELLO_PREFIX)) return null;
  const m = HELLO_RE.exec(text);
  if (!m) {
    throw new ProtocolError(
      `malformed hello ${JSON.stringify(text.slice(0, 120))}: expected "auditrelay-hello 1 agent=<[A-Za-z0-9._-]{1,64}> boot=<decimal ms>"`,
    );
  }
  const boot = Number(m[2]);
  if (!Number.isSafeInteger(boot)) throw new ProtocolError(`hello boot=${m[2]} is not a safe integer`);
  return { agent: m[1]!, boot };
}

/** The capabilities in an ACK text (`auditrelay 1 rid` → ['rid']); none for an empty or foreign text. */
export function parseCapabilities(text: string): string[] {
  const words = text.trim().split(/\s+/);
  if (words[0] !== 'auditrelay' || words[1] !== '1') return [];
  return words.slice(2);
}

/** Writes the record number in front of a RECORD_ID payload. */
export function writeRecordNumber(target: Buffer, offset: number, seq: number): void {
  target.writeBigUInt64BE(BigInt(seq), offset);
}

/** Splits a RECORD_ID payload into its record number and text; ProtocolError when it cannot be one. */
export function splitRecordId(payload: Buffer): { seq: number; text: Buffer } {
  if (payload.length < RECORD_NUMBER_SIZE) {
    throw new ProtocolError(
      `RECORD_ID message of ${payload.length} bytes: shorter than its ${RECORD_NUMBER_SIZE}-byte record number`,
    );
  }
  const big = payload.readBigUInt64BE(0);
  if (big > BigInt(Number.MAX_SAFE_INTEGER) || big === 0n) {
    throw new ProtocolError(`RECORD_ID record number ${big} is outside 1..2^53-1`);
  }
  return { seq: Number(big), text: payload.subarray(RECORD_NUMBER_SIZE) };
}

/** `<agent>:<seq>`. */
export function formatRid(rid: RecordId): string {
  return `${rid.agent}:${rid.seq}`;
}

/** ` rid=<agent>:<seq>`, as appended to a record line in the file output. */
export function ridField(rid: RecordId): string {
  return ` rid=${formatRid(rid)}`;
}

/** `<agent>:<seq>` back to its parts; null when it is not one (e.g. a collector's own message id). */
export function parseRid(text: string): RecordId | null {
  const at = text.lastIndexOf(':');
  if (at <= 0) return null;
  const agent = text.slice(0, at);
  const digits = text.slice(at + 1);
  if (!AGENT_ID_RE.test(agent) || !/^[0-9]{1,16}$/.test(digits)) return null;
  const seq = Number(digits);
  return Number.isSafeInteger(seq) ? { agent, seq } : null;
}
