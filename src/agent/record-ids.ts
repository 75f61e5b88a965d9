/**
 * The agent's side of record identities (RECORD-ID contract, docs/protocol.md "Record identities"): who the agent
 * is (AGENT_ID, persistent), when this process started (BOOT), and each record's number (seq).
 *
 * - AGENT_ID: `agent_id` when configured; otherwise created once (128 random bits, base32, 26 characters) in
 *   `queue_dir/agent-id` and read from there at every start. Removing queue_dir makes a new agent (its numbers
 *   start again, under a new id, so a collector never takes them for resends).
 * - seq, `mode = forward`: the durable queue's record id, which never goes back, across kill -9 included
 *   (src/queue/durable-queue.ts). A record sent again after a restart has the same number.
 * - seq, `mode = immediate`: a number fixed for a record from the moment it is queued until it is acknowledged,
 *   increasing across restarts: `base + the queue's id`, where `base` is the start of a block of numbers reserved in
 *   `queue_dir/record-ids` (written, synced, before any number of it is used; a new block when one is used up).
 *   A restart, even after kill -9, starts above every number the last process could have used. Records saved at a
 *   clean stop get new numbers at the next start: a record whose acknowledgement was lost right before that stop can
 *   be written twice (kill -9 loses the memory queue anyway in this mode; `mode = forward` is the exact one).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ConfigError, QueueError } from '../errors.js';
import {
  checkPrivateDirectory,
  errnoOf,
  type FileOps,
  nodeFileOps,
  readRegularFile,
  writeFileAtomic,
} from '../fs/safe-files.js';
import { AGENT_ID_RE, encodeHello } from '../protocol/record-id.js';
import type { QueuePersistence } from '../queue/types.js';

/** Numbers reserved at once in mode = immediate (one synced write of `record-ids` per block). */
export const SEQ_BLOCK = 1 << 24;
export const AGENT_ID_FILE = 'agent-id';
export const SEQ_FILE = 'record-ids';

export interface AgentRecordIds {
  readonly agent: string;
  readonly boot: number;
  /** The probe heartbeat's payload. */
  readonly hello: Buffer;
  /** The record number of the queue's record `id` (throws QueueError when a block cannot be reserved). */
  seqOf(id: number): number;
}

const B32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** RFC 4648 base32, lower case, no padding. */
export function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

export interface OpenRecordIdsOptions {
  queueDir: string;
  /** `agent_id`; null = auto (the file in queue_dir). */
  agentId: string | null;
  persistence: QueuePersistence;
  boot?: number;
  fs?: FileOps;
}

export function openRecordIds(o: OpenRecordIdsOptions): AgentRecordIds {
  const ops = o.fs ?? nodeFileOps;
  const what = 'queue directory (queue_dir)';
  checkPrivateDirectory(o.queueDir, { what, create: true, mode: 0o700 });
  const agent = o.agentId ?? loadOrCreateId(join(o.queueDir, AGENT_ID_FILE), ops);
  const boot = o.boot ?? Math.round(performance.timeOrigin);
  const hello = encodeHello({ agent, boot });
  if (o.persistence === 'crash-safe') return { agent, boot, hello, seqOf: (id) => id };
  const file = join(o.queueDir, SEQ_FILE);
  const base = readFloor(file, ops);
  let limit = base;
  const reserve = (upTo: number) => {
    const next = limit + SEQ_BLOCK * Math.max(1, Math.ceil((upTo - limit) / SEQ_BLOCK));
    try {
      writeFileAtomic(file, `${next}\n`, { mode: 0o600, what: 'record number reservation', ops });
    } catch (err) {
      throw new QueueError(
        `cannot reserve record numbers in ${file} (${errnoOf(err)}): records wait until it can be written`,
        { cause: err },
      );
    }
    limit = next;
  };
  reserve(base + 1);
  return {
    agent,
    boot,
    hello,
    seqOf: (id) => {
      const seq = base + id;
      if (seq > limit) reserve(seq);
      return seq;
    },
  };
}

function loadOrCreateId(file: string, ops: FileOps): string {
  let text: string | null = null;
  try {
    text = readRegularFile(file, 'agent id file', 1024, ops).toString('latin1').trim();
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
  if (text !== null) {
    if (!AGENT_ID_RE.test(text)) {
      throw new ConfigError(
        `${file} holds ${JSON.stringify(text.slice(0, 80))}, not an agent id ([A-Za-z0-9._-]{1,64}); remove the file (a new id is created) or set agent_id`,
      );
    }
    return text;
  }
  const id = base32(randomBytes(16));
  writeFileAtomic(file, `${id}\n`, { mode: 0o600, what: 'agent id file', ops });
  return id;
}

function readFloor(file: string, ops: FileOps): number {
  let text: string;
  try {
    text = readRegularFile(file, 'record number reservation', 1024, ops).toString('latin1').trim();
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return 0;
    throw err;
  }
  const n = Number(text);
  if (!/^\d{1,16}$/.test(text) || !Number.isSafeInteger(n) || n > Number.MAX_SAFE_INTEGER - 2 * SEQ_BLOCK) {
    throw new QueueError(
      `${file} holds ${JSON.stringify(text.slice(0, 40))}, not a record number; it must never go back: set it to a number above every rid this agent sent (see docs/protocol.md), or remove queue_dir's agent-id with it to become a new agent`,
    );
  }
  return n;
}
