/**
 * Record identities on the wire between an auditrelay agent and an auditrelay collector (the contract of issue 14
 * item 2, /work/wt/RECORD-ID.md; docs/scale-out.md). Pure parsing and formatting, no state: the collector, the
 * JetStream output and the sink share it, and so can the agent's side.
 *
 * - The agent's first HEARTBEAT on a link carries a hello: `auditrelay-hello 1 agent=<AGENT_ID> boot=<BOOT>`.
 *   An auditrelay collector answers it with an ACK whose text is `auditrelay 1 rid` (its capabilities); auditd
 *   answers with an empty ACK (no capabilities: the agent sends plain MESSAGEs).
 * - After `rid`, each record is a RECORD_ID message: an 8-byte big-endian record number, then the record text.
 * - A record's identity is `<agent>:<seq>`: the JetStream message id (Nats-Msg-Id), the ` rid=` field of a log line.
 */

/** Message type of a record that carries its identity (never sent to a real auditd). */
export const RECORD_ID_TYPE = 0x00000002;
/** What a collector answers a hello with: protocol version 1, capability `rid`. */
export const RID_CAPABILITY_REPLY = 'auditrelay 1 rid';
/** AGENT_ID: persistent, chosen by the agent (random 128 bit base32, or from its configuration). */
export const AGENT_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
/** Bytes of the record number in front of a RECORD_ID payload. */
export const RECORD_NUMBER_BYTES = 8;

const HELLO = /^auditrelay-hello 1 agent=([A-Za-z0-9._-]{1,64}) boot=([0-9]{1,16})$/;
const HELLO_PREFIX = Buffer.from('auditrelay-hello ');

export interface RecordId {
  agent: string;
  seq: number;
}

export interface Hello {
  agent: string;
  /** Decimal ms of the agent process start: a new value is an agent restart. */
  boot: number;
}

/** A HEARTBEAT payload: a hello, null for an empty or foreign payload (auditd's heartbeats are empty). */
export function parseHello(payload: Buffer): Hello | null {
  if (payload.length === 0 || payload.length > 256) return null;
  if (!payload.subarray(0, HELLO_PREFIX.length).equals(HELLO_PREFIX)) return null;
  const m = HELLO.exec(payload.toString('latin1').replace(/\n$/, ''));
  if (!m) return null;
  return { agent: m[1]!, boot: Number(m[2]) };
}

export function formatHello(hello: Hello): Buffer {
  return Buffer.from(`auditrelay-hello 1 agent=${hello.agent} boot=${hello.boot}`, 'latin1');
}

/** The record number and text of a RECORD_ID payload; a string says what is wrong with it. */
export function parseRecordIdPayload(payload: Buffer): { seq: number; text: Buffer } | string {
  if (payload.length < RECORD_NUMBER_BYTES) {
    return `RECORD_ID message of ${payload.length} byte(s): shorter than its ${RECORD_NUMBER_BYTES}-byte record number`;
  }
  const seq = payload.readBigUInt64BE(0);
  if (seq > BigInt(Number.MAX_SAFE_INTEGER)) return `RECORD_ID record number ${seq} is above 2^53`;
  return { seq: Number(seq), text: payload.subarray(RECORD_NUMBER_BYTES) };
}

export function encodeRecordIdPayload(seq: number, text: Buffer): Buffer {
  const out = Buffer.allocUnsafe(RECORD_NUMBER_BYTES + text.length);
  out.writeBigUInt64BE(BigInt(seq), 0);
  text.copy(out, RECORD_NUMBER_BYTES);
  return out;
}

/** `<agent>:<seq>`. */
export function formatRid(rid: RecordId): string {
  return `${rid.agent}:${rid.seq}`;
}

/** `<agent>:<seq>` back to its parts; null when it is not one (e.g. a collector's own message id). */
export function parseRid(text: string): RecordId | null {
  const at = text.lastIndexOf(':');
  if (at <= 0) return null;
  const agent = text.slice(0, at);
  const digits = text.slice(at + 1);
  if (!AGENT_ID_PATTERN.test(agent) || !/^[0-9]{1,16}$/.test(digits)) return null;
  const seq = Number(digits);
  return Number.isSafeInteger(seq) ? { agent, seq } : null;
}
