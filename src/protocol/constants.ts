/**
 * auditd's managed wire format (lib/private.h, `struct auditd_remote_message_wrapper`).
 * See reference §3.2–3.5. All header integers are little-endian on the wire.
 */

export const HEADER_SIZE = 16;
/** `0xFF0000FE`, written LSB first: bytes FE 00 00 FF. Chosen so that it never contains 0x0A. */
export const MAGIC = 0xff0000fe;
export const HEADER_VERSION = 0;
export const MESSAGE_VERSION = 0;

/** MAX_AUDIT_MESSAGE_LENGTH: the longest line auditd produces, and the longest reply a client accepts. */
export const MAX_AUDIT_MESSAGE_LENGTH = 8970;
/** A real auditd keeps at most 8970 bytes per connection, header included: longer payloads are truncated. */
export const MAX_SERVER_PAYLOAD = MAX_AUDIT_MESSAGE_LENGTH - HEADER_SIZE; // 8954
/** The header's length field is a u16. */
export const MAX_WIRE_PAYLOAD = 0xffff;

export const MessageType = {
  MESSAGE: 0x00000000,
  HEARTBEAT: 0x00000001,
  /**
   * auditrelay's extension (src/protocol/record-id.ts, docs/protocol.md): a record with its identity, an 8-byte
   * big-endian record number before the text. Sent only to a collector that announced the `rid` capability.
   */
  RECORD_ID: 0x00000002,
  ACK: 0x40000000,
  ENDING: 0x40000001,
  DISKLOW: 0x50000001,
  DISKFULL: 0x60000001,
  DISKERROR: 0x60000002,
} as const;

export const TypeMask = {
  REPLY: 0x40000000,
  FATAL: 0x20000000,
  WARN: 0x10000000,
  DETAIL: 0x000fffff,
} as const;

const NAMES = new Map<number, string>(Object.entries(MessageType).map(([k, v]) => [v, k]));

/** A readable name for a type value, e.g. `DISKFULL` or `0x60000007`. */
export function typeName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`;
}
