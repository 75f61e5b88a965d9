/**
 * The collector's log as auditd manages its own (docs/collector.md, "Log management"): the file (log-writer.ts:
 * safe open, space reserved before each write, a torn tail repaired), its rotation (SIGUSR1, `max_log_file`, a
 * rename by another program), the free space of its file system (`space_left`, `admin_space_left`, a full disk, a
 * write error) with auditd's actions, the replies those states give the clients (DISKLOW, DISKFULL, DISKERROR), and
 * the evidence kept beside it (evidence-sink.ts).
 *
 * Everything that touches the file runs one step at a time (`#serial`): a write, a rotation, a reopen, a suspend,
 * a resume, a reconfiguration. So a rotation happens between two writes, never inside one: each acknowledged
 * record is in exactly one file, whole. The evidence is told in the same order (append after each write; flush
 * before the old file is renamed; rotate after the new one is open, before its first write).
 *
 * Replies (what the collector sends for the records of a write):
 * - written → ACK, or DISKLOW while the free space is below `space_left` (its action is not `rotate`), as auditd;
 * - not written for lack of space (ENOSPC, EDQUOT) → DISKFULL `disk full`;
 * - not written for another error → DISKERROR `disk write error`;
 * - logging suspended (an action `suspend`, `exec`, `single` or `halt`, or max_log_file_action = suspend/exec) →
 *   DISKERROR `remote logging suspended`, until SIGUSR2 (`resume()`) or a reload that changes these keys.
 *
 * What each action does (auditd.conf(5) of 3.0.9 and 4.2.1; the collector's choices where a daemon that receives
 * other hosts' records must differ):
 * - ignore: nothing (a full disk is still logged, as auditd does);
 * - syslog: one log line (error level); for disk_error_action at most 5 in a row, as auditd;
 * - rotate: rotate now to num_logs files (the oldest is removed), as auditd ("losing the oldest to free up space");
 * - email: a message to action_mail_acct through sendmail, and the log line;
 * - exec /path: logging is suspended and the script started; it resumes logging with SIGUSR2 (auditd: `service
 *   auditd resume`), having moved the log away if needed;
 * - suspend: no record is written (the log is closed so that it can be moved) until SIGUSR2;
 * - single, halt: auditd changes the run level of its own host; the collector does not take its server down for
 *   its clients' records: it suspends logging (the clients keep their records) and logs at error level.
 * space_left_action and admin_space_left_action run once per episode (free space below the threshold), except
 * rotate (again at each check while below, as auditd); an episode ends when the free space is back above the
 * threshold (auditd resets only for `syslog`; otherwise its DISKLOW would never end without a reload).
 * max_log_file_action: ignore, syslog (once per file), suspend, rotate (num_logs), keep_logs (rotate without
 * removing any: LOG.N shift up), exec (4.2: suspend and run the script, which must move the log).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { DiskAction, SizeAction, SpaceAmount } from '../config/collector-config.js';
import { removeExcessLogs, rotateLogFiles, shiftLogFiles } from '../fs/safe-files.js';
import type { Logger } from '../log.js';
import { runActionScript, SENDMAIL_CANDIDATES, sendMail } from './disk-actions.js';
import {
  type EvidenceParts,
  type EvidenceSettings,
  type EvidenceSink,
  openEvidence,
} from './evidence-sink.js';
import { type FsyncPolicy, LogWriter, type LogWriterOptions } from './log-writer.js';

const MiB = 1024 * 1024;
/** auditd: fewer free blocks than this is a full disk. */
const FULL_BLOCKS = 5;

export interface LogManagementSettings {
  /** max_log_file in bytes; 0 = no limit. */
  maxLogFileBytes: number;
  numLogs: number;
  maxLogFileAction: SizeAction;
  spaceLeft: SpaceAmount;
  spaceLeftAction: DiskAction;
  adminSpaceLeft: SpaceAmount;
  adminSpaceLeftAction: DiskAction;
  diskFullAction: DiskAction;
  diskErrorAction: DiskAction;
  actionMailAcct: string;
  /** How often free space and the log's name are checked. Default 1000 ms. */
  checkIntervalMs?: number;
}

/** A bare log (in-process collectors): no size limit, no thresholds; a full disk and errors are logged. */
export const DEFAULT_LOG_MANAGEMENT: LogManagementSettings = {
  maxLogFileBytes: 0,
  numLogs: 0,
  maxLogFileAction: { kind: 'ignore' },
  spaceLeft: { mib: 0 },
  spaceLeftAction: { kind: 'ignore' },
  adminSpaceLeft: { mib: 0 },
  adminSpaceLeftAction: { kind: 'ignore' },
  diskFullAction: { kind: 'syslog' },
  diskErrorAction: { kind: 'syslog' },
  actionMailAcct: 'root',
};

export interface LogStoreOptions {
  path: string;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  log: Logger;
  maxTornTailBytes?: number;
  management?: LogManagementSettings;
  evidence?: EvidenceSettings | null;
  /**
   * Writer options: fault injection for tests, and `noReserve` for the sink's per-host files (src/sink/host-files.ts:
   * a reservation helper process per open file would be hundreds of processes).
   */
  writerHooks?: Pick<LogWriterOptions, 'datasync' | 'noReserve' | 'reserveChunkBytes'>;
  /** Test seam: where sendmail is looked for. */
  sendmail?: readonly string[];
}

/** What the records of a successful write are answered with. */
export type WriteOutcome = 'ack' | 'disklow';

export interface LogStoreStatus {
  file: string;
  /** Size of the current file. */
  bytes: number;
  rotations: number;
  /** Why logging is suspended (the key whose action suspended it), or null. */
  suspended: string | null;
  /** Free space below space_left (DISKLOW replies). */
  diskLow: boolean;
  adminDiskLow: boolean;
  /** A write failed for lack of space, and none succeeded since. */
  diskFull: boolean;
  freeBytes: number | null;
  spaceLeftBytes: number;
  adminSpaceLeftBytes: number;
  reserving: boolean;
}

type Which = 'space_left_action' | 'admin_space_left_action' | 'disk_full_action' | 'disk_error_action';

export function suspendedError(why: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`remote logging suspended (${why})`), { code: 'ESUSPENDED' });
}

export class LogStore {
  readonly #log: Logger;
  readonly #writer: LogWriter;
  #o: LogStoreOptions;
  #m: LogManagementSettings;
  #ev: EvidenceSink | null = null;
  #chain: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | null = null;
  #housekeepingQueued = false;
  #closed = false;
  // State (docs in the module comment).
  #suspended: string | null = null;
  #low = false;
  #adminLow = false;
  #full = false;
  #diskErrorWarnings = 0;
  #sizeWarned = false;
  #free: number | null = null;
  #total: number | null = null;
  #thresholdWarned = false;
  /** The file last opened (device, inode): a reopen that finds another file there ends its evidence segment. */
  #fileId: { dev: number; ino: number } | null = null;
  /** Opening the log failed, and has not succeeded since (logged once). */
  #openFailing = false;
  rotations = 0;

  constructor(o: LogStoreOptions) {
    this.#o = o;
    this.#log = o.log;
    this.#m = o.management ?? DEFAULT_LOG_MANAGEMENT;
    this.#writer = new LogWriter({
      path: o.path,
      fsync: o.fsync,
      fsyncIntervalMs: o.fsyncIntervalMs,
      log: o.log,
      ...(o.maxTornTailBytes !== undefined ? { maxTornTailBytes: o.maxTornTailBytes } : {}),
      ...o.writerHooks,
    });
  }

  get writer(): LogWriter {
    return this.#writer;
  }

  get path(): string {
    return this.#writer.path;
  }

  get evidence(): EvidenceSink | null {
    return this.#ev;
  }

  /**
   * Opens the log (its torn tail repaired), removes excess logs, checks space; then the evidence (which must see the
   * repaired log), as the first step of the write queue: a write waits for it. The returned promise resolves when
   * both are open; the log alone is open when `logOpened` resolves (the collector listens in between, so that an
   * address in use is reported before a key is created).
   */
  async open(): Promise<void> {
    await this.openLog();
    await this.openEvidence();
  }

  async openLog(): Promise<void> {
    await this.#writer.open();
    this.#fileId = this.#writer.identity;
    this.#removeExcess();
    await this.#checkSpace();
    this.#startTimer();
  }

  /** The evidence beside the open log (before the first write: writes queue behind it). */
  openEvidence(): Promise<void> {
    return this.#serial(async () => {
      if (!this.#o.evidence || this.#ev) return;
      this.#ev = await openEvidence(this.#writer.path, this.#o.evidence, this.#log);
    });
  }

  /** Clean stop: the last write is done, the evidence's final checkpoint, the file closed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#serial(async () => {
      await this.#writer.close();
      await this.#ev?.close();
    });
  }

  /**
   * Writes `data` (whole lines; `parts` say which bytes are whose, for the evidence): all or nothing. Resolves with
   * the reply for its records (ACK or DISKLOW); rejects with the errno error (ENOSPC/EDQUOT: DISKFULL; ESUSPENDED:
   * DISKERROR "remote logging suspended"; anything else: DISKERROR).
   */
  write(data: Buffer, parts: EvidenceParts): Promise<WriteOutcome> {
    return this.#serial(async () => {
      if (this.#suspended !== null) throw suspendedError(this.#suspended);
      if (!this.#writer.isOpen) {
        // It could not be opened again (see #reopen); the next check tries again.
        throw Object.assign(new Error(`EIO: log_file ${this.#writer.path} is not open`), { code: 'EIO' });
      }
      const max = this.#m.maxLogFileBytes;
      if (max > 0 && this.#writer.size >= max) await this.#sizeReached();
      if (this.#suspended !== null) throw suspendedError(this.#suspended);
      await this.#ev?.waitForRoom();
      try {
        await this.#writer.write(data);
      } catch (err) {
        await this.#writeFailed(err as NodeJS.ErrnoException);
        throw err;
      }
      this.#full = false;
      this.#diskErrorWarnings = 0;
      this.#ev?.append(data, parts);
      return this.#low ? 'disklow' : 'ack';
    });
  }

  /** SIGUSR1: rotate now, as auditd (keep_logs: shift without removing; else num_logs). */
  rotate(reason: string): Promise<void> {
    return this.#serial(() =>
      this.#rotate(this.#m.maxLogFileAction.kind === 'keep_logs' ? 'keep_logs' : 'rotate', reason),
    );
  }

  /**
   * SIGUSR2, as auditd's resume: logging suspended by an action goes on (the log is reopened: created when the
   * action's script moved it away); the warnings start over, so a condition that still holds acts again.
   */
  resume(reason: string): Promise<boolean> {
    return this.#serial(async () => {
      const was = this.#suspended;
      this.#suspended = null;
      this.#low = false;
      this.#adminLow = false;
      this.#full = false;
      this.#diskErrorWarnings = 0;
      this.#sizeWarned = false;
      if (!this.#writer.isOpen) await this.#reopen(`resumed (${reason})`);
      this.#log.warn(
        { reason, suspendedBy: was },
        was === null
          ? `${reason}: logging was not suspended; disk-space warnings start over`
          : `${reason}: logging resumed (it was suspended by ${was})`,
      );
      await this.#checkSpace();
      return was !== null;
    });
  }

  /** Checks the log's name and the free space now (what the timer does every checkIntervalMs). */
  check(): Promise<void> {
    return this.#serial(() => this.#housekeeping());
  }

  /**
   * A reloaded configuration (SIGHUP): fsync policy and log management at once; a new log_file is opened (the old
   * one's evidence closed with its final checkpoint, the new one's opened). As auditd, thresholds are evaluated
   * again from scratch (and a suspension by a space action is lifted) when space keys changed.
   */
  reconfigure(next: {
    path: string;
    fsync: FsyncPolicy;
    fsyncIntervalMs: number;
    management: LogManagementSettings;
    evidence: EvidenceSettings | null;
  }): Promise<string[]> {
    return this.#serial(async () => {
      const changed: string[] = [];
      const m = this.#m;
      const n = next.management;
      this.#writer.setFsync(next.fsync, next.fsyncIntervalMs);
      const spaceKeys =
        JSON.stringify([
          m.spaceLeft,
          m.spaceLeftAction,
          m.adminSpaceLeft,
          m.adminSpaceLeftAction,
          m.diskFullAction,
        ]) !==
        JSON.stringify([
          n.spaceLeft,
          n.spaceLeftAction,
          n.adminSpaceLeft,
          n.adminSpaceLeftAction,
          n.diskFullAction,
        ]);
      const sizeKeys =
        m.maxLogFileBytes !== n.maxLogFileBytes || m.maxLogFileAction.kind !== n.maxLogFileAction.kind;
      this.#m = { ...n, checkIntervalMs: n.checkIntervalMs ?? m.checkIntervalMs };
      if (next.path !== this.#writer.path) {
        await this.#ev?.flush();
        await this.#writer.close();
        await this.#ev?.close();
        this.#ev = null;
        const old = this.#writer.path;
        this.#fileId = null;
        this.#writer.setPath(next.path);
        this.#o = { ...this.#o, path: next.path, evidence: next.evidence };
        try {
          await this.#writer.open();
          this.#fileId = this.#writer.identity;
          this.#log.warn({ from: old, to: next.path }, `log_file changed: now writing ${next.path}`);
        } catch (err) {
          this.#log.error(
            { log: next.path, error: (err as Error).message },
            `log_file ${next.path} cannot be used: ${(err as Error).message}; records are answered with DISKERROR until it can (tried every ${(this.#m.checkIntervalMs ?? 1000) / 1000} s)`,
          );
          this.#openFailing = true;
          await this.#act('disk_error_action', this.#m.diskErrorAction, `cannot open ${next.path}`);
        }
        if (this.#writer.isOpen && next.evidence) {
          try {
            this.#ev = await openEvidence(next.path, next.evidence, this.#log);
          } catch (err) {
            this.#log.error(
              { log: next.path, error: (err as Error).message },
              `evidence for ${next.path} cannot be opened: ${(err as Error).message}; the log is written without it until the next start`,
            );
          }
        }
        changed.push('log_file');
      }
      if (sizeKeys) {
        this.#sizeWarned = false;
        if (this.#suspended === 'max_log_file_action') this.#suspended = null;
      }
      if (spaceKeys) {
        // auditd's reconfigure: warnings reset, suspension by a space action lifted, checked again now.
        this.#low = false;
        this.#adminLow = false;
        this.#full = false;
        this.#thresholdWarned = false;
        if (
          this.#suspended === 'space_left_action' ||
          this.#suspended === 'admin_space_left_action' ||
          this.#suspended === 'disk_full_action'
        )
          this.#suspended = null;
        if (!this.#writer.isOpen && this.#suspended === null) await this.#reopen('reconfigured');
        this.#removeExcess();
        await this.#checkSpace();
      }
      if (this.#m.checkIntervalMs !== m.checkIntervalMs) this.#startTimer();
      // A reload is also logrotate's postrotate (docs/collector.md): a log renamed away is reopened now.
      if (this.#writer.isOpen && (await this.#renamedAway())) {
        await this.#reopen('renamed');
        changed.push('reopened');
      }
      return changed;
    });
  }

  status(): LogStoreStatus {
    return {
      file: this.#writer.path,
      bytes: this.#writer.size,
      rotations: this.rotations,
      suspended: this.#suspended,
      diskLow: this.#low,
      adminDiskLow: this.#adminLow,
      diskFull: this.#full,
      freeBytes: this.#free,
      spaceLeftBytes: this.#threshold(this.#m.spaceLeft),
      adminSpaceLeftBytes: this.#threshold(this.#m.adminSpaceLeft),
      reserving: this.#writer.reserving,
    };
  }

  // -------------------------------------------------------------------------------------------------------------

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn);
    this.#chain = run.catch(() => {});
    return run;
  }

  #startTimer(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = setInterval(() => {
      if (this.#housekeepingQueued || this.#closed) return;
      this.#housekeepingQueued = true;
      void this.#serial(() => this.#housekeeping()).finally(() => {
        this.#housekeepingQueued = false;
      });
    }, this.#m.checkIntervalMs ?? 1000);
    this.#timer.unref();
  }

  async #housekeeping(): Promise<void> {
    if (this.#closed) return;
    if (this.#writer.isOpen && (await this.#renamedAway())) {
      await this.#reopen('renamed');
    } else if (!this.#writer.isOpen && this.#suspended === null) {
      await this.#reopen('retry');
    }
    await this.#checkSpace();
  }

  /** Whether log_file no longer names the file being written (moved or removed by another program). */
  async #renamedAway(): Promise<boolean> {
    const id = this.#writer.identity;
    if (!id) return false;
    try {
      const st = await fsp.lstat(this.#writer.path);
      return st.ino !== id.ino || st.dev !== id.dev;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT';
    }
  }

  /**
   * Opens log_file again (why: 'renamed' by another program, after a suspension, after an error): the old file's
   * evidence ends (rotate) when the file is another one. On failure the log stays closed (writes get DISKERROR) and
   * disk_error_action runs; the next check tries again.
   */
  async #reopen(why: string): Promise<void> {
    const size = this.#writer.size;
    if (this.#writer.isOpen) {
      await this.#ev?.flush();
      await this.#writer.close();
    }
    try {
      await this.#writer.open();
    } catch (err) {
      if (!this.#openFailing) {
        this.#openFailing = true;
        this.#log.error(
          { log: this.#writer.path, error: (err as Error).message },
          `cannot open log_file ${this.#writer.path} again: ${(err as Error).message}; records are answered with DISKERROR until it can be opened (tried every ${(this.#m.checkIntervalMs ?? 1000) / 1000} s)`,
        );
        await this.#act('disk_error_action', this.#m.diskErrorAction, `cannot reopen ${this.#writer.path}`);
      }
      return;
    }
    if (this.#openFailing) {
      this.#openFailing = false;
      this.#log.warn(
        { log: this.#writer.path },
        `log_file ${this.#writer.path} is open again: records are written again`,
      );
    }
    const before = this.#fileId;
    const after = this.#writer.identity;
    this.#fileId = after;
    const other = before === null || after === null || before.ino !== after.ino || before.dev !== after.dev;
    if (other) this.#sizeWarned = false;
    if (!this.#ev && this.#o.evidence) {
      // log_file changed by a reload and could not be opened then: its evidence starts now.
      try {
        this.#ev = await openEvidence(this.#writer.path, this.#o.evidence, this.#log);
      } catch (err) {
        this.#log.error(
          { log: this.#writer.path, error: (err as Error).message },
          `evidence for ${this.#writer.path} cannot be opened: ${(err as Error).message}; the log is written without it until the next start`,
        );
      }
    } else if (other) {
      await this.#ev?.rotate();
    }
    if (why === 'renamed') {
      this.rotations++;
      this.#log.warn(
        { log: this.#writer.path, previousBytes: size },
        `log_file ${this.#writer.path} was renamed or removed by another program (logrotate?): the old file was finished after ${size} bytes and ${this.#writer.size > 0 ? 'the file now at that name is appended to' : 'a new one was created'}`,
      );
    }
  }

  /** Rotation by the collector (inside #serial). */
  async #rotate(kind: 'rotate' | 'keep_logs', reason: string): Promise<void> {
    if (await this.#renamedAway()) {
      // Already moved by another program (logrotate, then its postrotate sent SIGUSR1): only reopen.
      await this.#reopen('renamed');
      return;
    }
    if (kind === 'rotate' && this.#m.numLogs < 2) {
      this.#log.warn(
        { reason, numLogs: this.#m.numLogs },
        `${reason}: log rotation is disabled (num_logs = ${this.#m.numLogs} < 2), skipped; set num_logs, or max_log_file_action = keep_logs`,
      );
      return;
    }
    if (this.#writer.isOpen && this.#writer.size === 0) {
      this.#log.info(
        { reason, log: this.#writer.path },
        `${reason}: ${this.#writer.path} is empty: not rotated`,
      );
      return;
    }
    const file = this.#writer.path;
    await this.#ev?.flush();
    const wasOpen = this.#writer.isOpen;
    await this.#writer.close({ readOnly: true });
    let renamed: [string, string][] = [];
    try {
      renamed = kind === 'keep_logs' ? shiftLogFiles(file) : rotateLogFiles(file, this.#m.numLogs);
    } catch (err) {
      this.#log.error(
        { log: file, error: (err as Error).message },
        `${reason}: rotation of ${file} failed: ${(err as Error).message}; writing goes on in the same file`,
      );
      await fsp.chmod(file, 0o600).catch(() => {});
      await this.#act(
        'disk_error_action',
        this.#m.diskErrorAction,
        `rotation failed: ${(err as Error).message}`,
      );
    }
    if (!wasOpen && this.#suspended !== null) return;
    await this.#reopen('rotated');
    if (renamed.some(([from]) => from === file)) {
      this.rotations++;
      this.#log.info(
        { reason, log: file, renamed: renamed.length, kind },
        `${reason}: ${file} rotated (${kind === 'keep_logs' ? 'keep_logs: every LOG.N moved up, none removed' : `num_logs = ${this.#m.numLogs}`})`,
      );
    }
  }

  /** max_log_file reached (checked before each write, inside #serial). */
  async #sizeReached(): Promise<void> {
    const a = this.#m.maxLogFileAction;
    const what = `${this.#writer.path} reached max_log_file (${this.#m.maxLogFileBytes / MiB} MiB)`;
    switch (a.kind) {
      case 'ignore':
        return;
      case 'syslog':
        if (!this.#sizeWarned)
          this.#log.error({ log: this.#writer.path }, `${what} (max_log_file_action = syslog)`);
        this.#sizeWarned = true;
        return;
      case 'rotate':
        await this.#rotate('rotate', 'max_log_file');
        return;
      case 'keep_logs':
        await this.#rotate('keep_logs', 'max_log_file');
        return;
      case 'suspend':
        await this.#suspend(
          'max_log_file_action',
          `${what}: logging suspended (max_log_file_action = suspend); resume with SIGUSR2 after moving the log`,
        );
        return;
      case 'exec':
        await this.#suspend(
          'max_log_file_action',
          `${what}: logging suspended while ${a.path} runs (max_log_file_action = exec); it resumes logging with SIGUSR2 and must move the log away`,
        );
        runActionScript(a.path, 'max_log_file_action', this.#writer.path, this.#log);
        return;
    }
  }

  /** A failed write (inside #serial): disk_full_action once per episode, disk_error_action for the rest. */
  async #writeFailed(err: NodeJS.ErrnoException): Promise<void> {
    if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
      if (this.#full) return;
      this.#full = true;
      await this.#diskFull(`a write failed: ${err.code}`);
      return;
    }
    await this.#act('disk_error_action', this.#m.diskErrorAction, `write: ${err.code ?? err.message}`);
  }

  async #diskFull(detail: string): Promise<void> {
    // auditd logs this whatever the action.
    this.#log.error(
      { log: this.#writer.path, detail },
      `no space left on the file system of ${this.#writer.path} (${detail}): records are answered with DISKFULL; clients keep them and send them again`,
    );
    await this.#act('disk_full_action', this.#m.diskFullAction, detail);
  }

  /** Runs one of auditd's failure actions (module comment). */
  async #act(which: Which, action: DiskAction, detail: string): Promise<void> {
    const log = this.#log;
    const file = this.#writer.path;
    const text = {
      space_left_action: `the file system of ${file} is low on space (below space_left): ${detail}`,
      admin_space_left_action: `the file system of ${file} is very low on space (below admin_space_left): ${detail}`,
      disk_full_action: `no space left for ${file}: ${detail}`,
      disk_error_action: `error writing ${file}: ${detail}`,
    }[which];
    switch (action.kind) {
      case 'ignore':
        return;
      case 'syslog':
        if (which === 'disk_error_action') {
          if (this.#diskErrorWarnings >= 5) return;
          this.#diskErrorWarnings++;
        }
        log.error({ action: which, log: file }, `${text} (${which} = syslog)`);
        return;
      case 'rotate':
        log.warn(
          { action: which, log: file },
          `${text}: rotating, the oldest log is removed (${which} = rotate)`,
        );
        await this.#rotate('rotate', which);
        return;
      case 'email': {
        const subject =
          which === 'admin_space_left_action' ? 'Audit Admin Space Alert' : 'Audit Disk Space Alert';
        log.error({ action: which, log: file, to: this.#m.actionMailAcct }, `${text} (${which} = email)`);
        sendMail(
          this.#m.actionMailAcct,
          subject,
          `The auditrelay collector on this host: ${text}. Please take action to ensure no loss of service.`,
          log,
          this.#o.sendmail ?? SENDMAIL_CANDIDATES,
        );
        return;
      }
      case 'exec':
        await this.#suspend(
          which,
          `${text}: logging suspended while ${action.path} runs (${which} = exec); it resumes logging with SIGUSR2`,
        );
        runActionScript(action.path, which, file, log);
        return;
      case 'suspend':
        await this.#suspend(
          which,
          `${text}: logging suspended (${which} = suspend); clients keep their records; resume with SIGUSR2`,
        );
        return;
      case 'single':
      case 'halt':
        await this.#suspend(
          which,
          `${text}: ${which} = ${action.kind}: the collector does not change this server's run level for its clients' records; logging is suspended instead (clients keep their records); resume with SIGUSR2`,
        );
        return;
    }
  }

  /** Stops writing (the file is closed, so an administrator or a script can move it) until resume(). */
  async #suspend(which: string, message: string): Promise<void> {
    if (this.#suspended === null) this.#log.error({ action: which, log: this.#writer.path }, message);
    this.#suspended = which;
    if (this.#writer.isOpen) {
      await this.#ev?.flush();
      await this.#writer.close();
    }
  }

  #threshold(a: SpaceAmount): number {
    if ('mib' in a) return a.mib * MiB;
    if (this.#total === null) return 0;
    // auditd: a percentage of the file system's blocks, in whole MiB.
    return Math.floor((this.#total * a.percent) / 100 / MiB) * MiB;
  }

  /** The free space of log_file's file system against the thresholds (inside #serial). */
  async #checkSpace(): Promise<void> {
    let st: { bavail: number; bsize: number; blocks: number };
    try {
      st = await fsp.statfs(path.dirname(this.#writer.path));
    } catch {
      return;
    }
    this.#free = st.bavail * st.bsize;
    this.#total = st.blocks * st.bsize;
    const low = this.#threshold(this.#m.spaceLeft);
    const admin = this.#threshold(this.#m.adminSpaceLeft);
    if (low > 0 && admin > 0 && low <= admin && !this.#thresholdWarned) {
      this.#thresholdWarned = true;
      this.#log.error(
        { spaceLeftBytes: low, adminSpaceLeftBytes: admin },
        `space_left (${low / MiB} MiB) must be larger than admin_space_left (${admin / MiB} MiB) on the file system of ${this.#writer.path}`,
      );
    }
    if (st.bavail < FULL_BLOCKS) {
      if (!this.#full) {
        this.#full = true;
        await this.#diskFull(`${st.bavail} block(s) free`);
      }
      return;
    }
    const free = this.#free;
    const freeText = `${(free / MiB).toFixed(1)} MiB free`;
    if (low > 0 && free < low) {
      if (this.#m.spaceLeftAction.kind === 'rotate') {
        if (this.#writer.size > 0) await this.#act('space_left_action', this.#m.spaceLeftAction, freeText);
      } else if (!this.#low) {
        this.#low = true;
        await this.#act(
          'space_left_action',
          this.#m.spaceLeftAction,
          `${freeText}, space_left = ${low / MiB} MiB; records are answered with DISKLOW`,
        );
      }
    } else if (this.#low) {
      this.#low = false;
      this.#log.warn(
        { log: this.#writer.path, freeBytes: free },
        `the file system of ${this.#writer.path} has ${freeText} again, above space_left: records are answered with ACK again`,
      );
    }
    if (admin > 0 && free < admin) {
      if (this.#m.adminSpaceLeftAction.kind === 'rotate') {
        if (this.#writer.size > 0)
          await this.#act('admin_space_left_action', this.#m.adminSpaceLeftAction, freeText);
      } else if (!this.#adminLow) {
        this.#adminLow = true;
        await this.#act(
          'admin_space_left_action',
          this.#m.adminSpaceLeftAction,
          `${freeText}, admin_space_left = ${admin / MiB} MiB`,
        );
      }
    } else if (this.#adminLow) {
      this.#adminLow = false;
      this.#log.warn(
        { log: this.#writer.path, freeBytes: free },
        `the file system of ${this.#writer.path} has ${freeText} again, above admin_space_left`,
      );
    }
  }

  /** auditd's check_excess_logs: with rotate to num_logs, leftovers beyond it are removed. */
  #removeExcess(): void {
    if (this.#m.maxLogFileAction.kind !== 'rotate' || this.#m.numLogs < 2) return;
    try {
      for (const f of removeExcessLogs(this.#writer.path, this.#m.numLogs)) {
        this.#log.warn({ log: f }, `${f} removed: it exceeds num_logs = ${this.#m.numLogs}`);
      }
    } catch (err) {
      this.#log.error(
        { error: (err as Error).message },
        `excess logs not removed: ${(err as Error).message}`,
      );
    }
  }
}
