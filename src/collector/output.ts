/**
 * Where the collector's accepted records go: the seam between its writer scheduler (collector.ts `#pump`, which
 * forms batches fairly over the clients and answers each record after its batch's outcome) and the storage.
 *
 * - `file` (the default): the LogStore (log-store.ts) as before: rotation, disk thresholds, evidence. Nothing of
 *   that path changes: FileOutput passes the batch's bytes and evidence parts to LogStore.write.
 * - `jetstream`: each record is published to a NATS JetStream stream (jetstream-output.ts); the batch resolves
 *   once the stream acknowledged every record.
 *
 * The outcome contract is LogStore's: resolve with `ack` or `disklow` when every record of the batch is stored;
 * reject with an errno-style error when none may be acknowledged (`code` ENOSPC/EDQUOT: DISKFULL; ESUSPENDED:
 * DISKERROR "remote logging suspended"; anything else DISKERROR), optionally with `replyText` for the reply.
 */

import type { RecordId } from '../protocol/record-id.js';
import type { EvidenceParts } from './evidence-sink.js';
import type { LogManagementSettings, LogStore, WriteOutcome } from './log-store.js';
import type { FsyncPolicy } from './log-writer.js';

/** The records of one client entry of a batch. */
export interface OutputGroup {
  /** The host the records are accounted under (hosts.ts), or the peer address. */
  host: string;
  /** Record, newline, record, newline, … as they go into a log file. */
  lines: readonly Buffer[];
  /** Each record's identity (same order), or null when none of them has one. */
  rids: readonly (RecordId | null)[] | null;
}

export interface OutputBatch {
  /** Every line of the batch, concatenated (what a log file gets). */
  data: Buffer;
  /** Which bytes of `data` are whose, for the evidence. */
  parts: EvidenceParts;
  groups: readonly OutputGroup[];
}

/** An error a write rejects with; `replyText` replaces the default text of its DISKFULL/DISKERROR reply. */
export type OutputError = NodeJS.ErrnoException & { replyText?: string };

export interface OutputReconfigure {
  path: string;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  management: LogManagementSettings;
  evidence: import('./evidence-sink.js').EvidenceSettings | null;
}

export interface RecordOutput {
  readonly kind: 'file' | 'jetstream';
  /** Before the collector listens: the log opened (file); the connection started, not awaited (jetstream). */
  open(): Promise<void>;
  /** After the listener is bound, before any write: the evidence (file). */
  opened(): Promise<void>;
  write(batch: OutputBatch): Promise<WriteOutcome>;
  /** SIGUSR1. */
  rotate(reason: string): Promise<void>;
  /** SIGUSR2: true when logging was suspended and goes on. */
  resume(reason: string): Promise<boolean>;
  /** SIGHUP: returns the names of what changed. */
  reconfigure(next: OutputReconfigure): Promise<string[]>;
  /** After the last write. */
  close(): Promise<void>;
}

/** The file output: the LogStore, unchanged. */
export class FileOutput implements RecordOutput {
  readonly kind = 'file';
  constructor(readonly store: LogStore) {}
  open(): Promise<void> {
    return this.store.openLog();
  }
  opened(): Promise<void> {
    return this.store.openEvidence();
  }
  write(batch: OutputBatch): Promise<WriteOutcome> {
    return this.store.write(batch.data, batch.parts);
  }
  rotate(reason: string): Promise<void> {
    return this.store.rotate(reason);
  }
  resume(reason: string): Promise<boolean> {
    return this.store.resume(reason);
  }
  reconfigure(next: OutputReconfigure): Promise<string[]> {
    return this.store.reconfigure(next);
  }
  close(): Promise<void> {
    return this.store.close();
  }
}
