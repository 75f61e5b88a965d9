/**
 * `auditrelay report [--since T] [--until T] [--json] PATH...` (docs/loss.md): what the collector's logs show about
 * loss, per host, over a range of audit time. Every PATH (log files, rotated ones, directories of them, `.gz`
 * read as is) is read into one analysis: an agent's sequence is the union of its records in all of them, so records
 * an agent sent to another collector after a failover fill the gap they leave in this one's log (give every
 * collector's logs together). The logic is src/evidence/loss.ts; this file reads and reports.
 *
 * Memory is bounded whatever the input: at most MAX_HOSTS hosts and MAX_AGENTS agents (then `(other)` / not
 * followed, counted), MAX_AGENT_RANGES ranges per agent, SERIAL_RANGES per boot and SERIAL_BOOTS boots per host, and
 * MAX_LISTED items in each list of the output.
 */
import { createReadStream, lstatSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { ExitCodes, UsageError } from '../errors.js';
import { parseHeader } from './audit-record.js';
import { MAX_LINE_BYTES } from './events-cli.js';
import { LineSplitter } from './lines.js';
import {
  AgentSequence,
  countSignal,
  emptySignalCounts,
  lossSignalOf,
  ridOfLine,
  SerialEpochs,
  type SignalCounts,
  signalsShowLoss,
} from './loss.js';

export const REPORT_VERSION = 1;
export const MAX_HOSTS = 100_000;
export const MAX_AGENTS = 20_000;
export const MAX_AGENT_RANGES = 512;
export const SERIAL_RANGES = 256;
export const SERIAL_BOOTS = 8;
/** Items listed per list (gaps, loss reports); the rest are counted. */
export const MAX_LISTED = 20;
/** Host of records that carry neither a node name nor an identity stamp. */
export const NO_HOST = '(no node name)';
export const OTHER_HOST = '(other)';

export interface ReportOptions {
  /** Audit time range, ms since the epoch: since <= t < until. */
  since?: number;
  until?: number;
  /** Audit serial gaps count as loss (exit 1), not only as a hint. */
  serialGaps?: boolean;
}

export interface LossReportEntry {
  time: string;
  type: string;
  lost: number;
  file: string;
  line: number;
}

interface HostState {
  name: string;
  records: number;
  first: number;
  last: number;
  agents: Set<string>;
  signals: SignalCounts;
  reports: LossReportEntry[];
  serials: SerialEpochs;
}

export interface AgentReport {
  agent: string;
  records: number;
  duplicates: number;
  firstSeq: number;
  lastSeq: number;
  missing: number;
  /** Gaps as inclusive [from, to], lowest first, at most MAX_LISTED. */
  gaps: [number, number][];
  /** All gaps, listed or not. */
  gapCount: number;
}

export interface HostReport {
  host: string;
  records: number;
  first: string | null;
  last: string | null;
  /** Records missing from its agents' sequences. */
  missingRecords: number;
  agents: AgentReport[];
  /** Events missing by audit serial (a hint, docs/loss.md). */
  serials: { missingEvents: number; gaps: [number, number][]; gapCount: number; boots: number };
  auditd: { starts: number; ends: number; aborts: number; errors: number; resumes: number };
  kernelLost: number;
  /** The kernel's and auditd's loss reports (kernel-lost, DAEMON_ABORT, DAEMON_ERR), at most MAX_LISTED. */
  lossReports: LossReportEntry[];
  loss: boolean;
  summary: string;
}

export interface Report {
  version: number;
  since: string | null;
  until: string | null;
  files: { path: string; records: number; notRecords: number; outOfRange: number; error?: string }[];
  hosts: HostReport[];
  /** Records of agents beyond MAX_AGENTS (their sequences not followed). */
  untrackedRecords: number;
  summary: {
    hosts: number;
    records: number;
    hostsWithLoss: number;
    missingRecords: number;
    missingEvents: number;
    kernelLost: number;
    unreadable: number;
    line: string;
  };
}

/**
 * A time argument: ISO 8601 (`2026-12-01`, `2026-12-01T10:00`, `2026-12-01 10:00:00Z`; without a zone: local time,
 * as ausearch), Unix seconds (`1764583200`, `@1764583200.5`), `now`, or a time before now (`-30m`, `-2h`, `-7d`,
 * also `30m ago`).
 */
export function parseTimeArg(text: string, option: string, now = Date.now()): number {
  const t = text.trim();
  if (t === 'now') return now;
  const rel = /^-?(\d+(?:\.\d+)?)\s*(s|m|h|d|w)(?:\s+ago)?$/.exec(t);
  if (rel && (t.startsWith('-') || t.endsWith('ago'))) {
    const unit = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3 }[
      rel[2] as 's' | 'm' | 'h' | 'd' | 'w'
    ];
    return now - Number(rel[1]) * unit;
  }
  const unix = /^@?(\d{1,12})(?:\.(\d{1,3}))?$/.exec(t);
  if (unix) return Number(unix[1]) * 1000 + Number((unix[2] ?? '0').padEnd(3, '0'));
  let iso = t.replace(' ', 'T');
  if (/^\d{4}-\d{2}-\d{2}$/.test(iso)) iso += 'T00:00:00'; // a date alone: local midnight, like a date with a time
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:?\d{2})?$/.test(iso)) {
    const ms = Date.parse(iso);
    if (Number.isFinite(ms)) return ms;
  }
  throw new UsageError(
    `${option} '${text}' is not a time: give 2026-12-01, 2026-12-01T10:00[:SS][Z|+HH:MM] (local time without a zone), Unix seconds (1764583200), now, or -30m / -2h / -7d`,
  );
}

/** Files a PATH stands for: a file itself; a directory: its regular files that look like logs, not hidden, not evidence. */
export function expandPath(p: string): { files: string[]; error?: string } {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(p);
  } catch (err) {
    return { files: [], error: describe(err) };
  }
  if (st.isFile()) return { files: [p] };
  if (st.isSymbolicLink()) return { files: [p] }; // read through: a reader, not a writer
  if (!st.isDirectory()) return { files: [], error: 'not a regular file or a directory' };
  let names: string[];
  try {
    names = readdirSync(p);
  } catch (err) {
    return { files: [], error: describe(err) };
  }
  const files = names
    .filter((n) => !n.startsWith('.') && !n.endsWith('.evidence') && !/\.(tmp|key|vkey|json)$/.test(n))
    .map((n) => path.join(p, n))
    .filter((f) => {
      try {
        return lstatSync(f).isFile();
      } catch {
        return false;
      }
    })
    .sort(byRotation);
  return { files };
}

/** Oldest first for auditd's names (LOG.3, LOG.2, LOG.1, LOG); otherwise by name. Order does not change the result. */
function byRotation(a: string, b: string): number {
  const ra = /^(.*?)(?:\.(\d+))?(\.gz)?$/.exec(a)!;
  const rb = /^(.*?)(?:\.(\d+))?(\.gz)?$/.exec(b)!;
  if (ra[1] === rb[1]) return Number(rb[2] ?? 0) - Number(ra[2] ?? 0);
  return a < b ? -1 : 1;
}

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'ENOENT':
      return 'no such file or directory';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied (run as a user who may read the logs, e.g. root or the log group)';
    case 'EISDIR':
      return 'is a directory';
    default:
      return e.code ?? e.message;
  }
}

const PEER_AT_END = / peer_id=(tls-psk|x509|krb5|addr):([^ ]{1,255})(?: rid=[^ ]+)?$/;

export class LossAnalysis {
  readonly #o: ReportOptions;
  readonly #hosts = new Map<string, HostState>();
  readonly #agents = new Map<string, AgentSequence>();
  readonly files: Report['files'] = [];
  untrackedRecords = 0;

  constructor(o: ReportOptions = {}) {
    this.#o = o;
  }

  /** Reads one input. A read error is recorded for that file (the report says so) and ends its reading. */
  async readFile(file: string, open: (f: string) => Readable = openLog): Promise<void> {
    const stat = { path: file, records: 0, notRecords: 0, outOfRange: 0 } as Report['files'][number];
    this.files.push(stat);
    if (/\.(xz|zst|bz2|lz4|Z)$/.test(file)) {
      stat.error = 'compressed with a program this command does not read (only .gz); decompress it first';
      return;
    }
    const splitter = new LineSplitter({
      maxLineBytes: MAX_LINE_BYTES,
      onLine: (buf, lineNo) => this.#line(buf.toString('latin1'), file, lineNo, stat),
      onTooLong: () => stat.notRecords++,
    });
    try {
      for await (const chunk of open(file)) splitter.push(chunk as Buffer);
      splitter.end();
    } catch (err) {
      stat.error = describe(err);
    }
  }

  /** One log line (exported for tests). */
  line(text: string, file = '-', lineNo = 0): void {
    const stat = { path: file, records: 0, notRecords: 0, outOfRange: 0 };
    this.#line(text, file, lineNo, stat);
  }

  #line(text: string, file: string, lineNo: number, stat: Report['files'][number]): void {
    if (text.length === 0) return;
    const h = parseHeader(text);
    if (!h) {
      stat.notRecords++;
      return;
    }
    const t = h.seconds * 1000 + h.millis;
    if (
      (this.#o.since !== undefined && t < this.#o.since) ||
      (this.#o.until !== undefined && t >= this.#o.until)
    ) {
      stat.outOfRange++;
      return;
    }
    stat.records++;
    const host = this.#host(hostOf(text, h.node));
    host.records++;
    if (t < host.first) host.first = t;
    if (t > host.last) host.last = t;
    const rid = ridOfLine(text);
    if (rid) {
      let a = this.#agents.get(rid.agent);
      if (!a && this.#agents.size < MAX_AGENTS) {
        a = new AgentSequence(rid.agent, MAX_AGENT_RANGES);
        this.#agents.set(rid.agent, a);
      }
      if (a) {
        a.note(rid.seq);
        host.agents.add(rid.agent);
      } else this.untrackedRecords++;
    }
    const daemon = h.type.startsWith('DAEMON_');
    if (daemon || h.type === 'CONFIG_CHANGE') {
      const s = lossSignalOf(h.type, text.slice(h.bodyStart));
      if (s) {
        countSignal(host.signals, s);
        if (
          (s.kind === 'kernel-lost' || s.kind === 'daemon-abort' || s.kind === 'daemon-error') &&
          host.reports.length < MAX_LISTED
        )
          host.reports.push({
            time: new Date(t).toISOString(),
            type: s.type,
            lost: s.lost,
            file,
            line: lineNo,
          });
      }
    }
    // auditd numbers its own DAEMON_* records with its own counter: they are not the kernel's serials. Records
    // without a host name may come from many hosts, whose serials cannot be told apart.
    if (!daemon && host.name !== NO_HOST && host.name !== OTHER_HOST) host.serials.add(t, h.serial);
  }

  #host(name: string): HostState {
    let h = this.#hosts.get(name);
    if (h) return h;
    if (this.#hosts.size >= MAX_HOSTS) return this.#host(OTHER_HOST);
    h = {
      name,
      records: 0,
      first: Number.POSITIVE_INFINITY,
      last: Number.NEGATIVE_INFINITY,
      agents: new Set(),
      signals: emptySignalCounts(),
      reports: [],
      serials: new SerialEpochs(SERIAL_RANGES, SERIAL_BOOTS),
    };
    this.#hosts.set(name, h);
    return h;
  }

  report(): Report {
    const hosts: HostReport[] = [];
    for (const h of [...this.#hosts.values()].sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    )) {
      const agents: AgentReport[] = [...h.agents].sort().map((id) => {
        const a = this.#agents.get(id)!;
        return {
          agent: id,
          records: a.records,
          duplicates: a.duplicates,
          firstSeq: a.seqs.min,
          lastSeq: a.seqs.max,
          missing: a.seqs.missing(),
          gaps: a.seqs.gaps(MAX_LISTED),
          gapCount: a.seqs.gapCount + (a.seqs.forgottenMissing > 0 ? 1 : 0),
        };
      });
      const serialGaps: [number, number][] = [];
      let serialGapCount = 0;
      const epochs = h.serials.epochs();
      for (const e of epochs) {
        serialGapCount += e.serials.gapCount;
        for (const g of e.serials.gaps(MAX_LISTED - serialGaps.length)) serialGaps.push(g);
      }
      const missingRecords = agents.reduce((n, a) => n + a.missing, 0);
      const missingEvents = h.serials.missing();
      const s = h.signals;
      const loss =
        missingRecords > 0 || signalsShowLoss(s) || (this.#o.serialGaps === true && missingEvents > 0);
      const r: HostReport = {
        host: h.name,
        records: h.records,
        first: h.records > 0 ? new Date(h.first).toISOString() : null,
        last: h.records > 0 ? new Date(h.last).toISOString() : null,
        missingRecords,
        agents,
        serials: {
          missingEvents,
          gaps: serialGaps,
          gapCount: serialGapCount,
          boots: epochs.length + h.serials.droppedEpochs,
        },
        auditd: {
          starts: s.daemonStarts,
          ends: s.daemonEnds,
          aborts: s.daemonAborts,
          errors: s.daemonErrors,
          resumes: s.daemonResumes,
        },
        kernelLost: s.kernelLost,
        lossReports: h.reports,
        loss,
        summary: '',
      };
      r.summary = hostSummary(r, this.#o.serialGaps === true);
      hosts.push(r);
    }
    const lossy = hosts.filter((h) => h.loss);
    const records = hosts.reduce((n, h) => n + h.records, 0);
    const missingRecords = hosts.reduce((n, h) => n + h.missingRecords, 0);
    const missingEvents = hosts.reduce((n, h) => n + h.serials.missingEvents, 0);
    const kernelLost = hosts.reduce((n, h) => n + h.kernelLost, 0);
    const unreadable = this.files.filter((f) => f.error !== undefined).length;
    let line =
      lossy.length > 0
        ? `LOSS seen on ${lossy.length} of ${hosts.length} host(s): ${lossy
            .slice(0, 10)
            .map((h) => h.host)
            .join(', ')}${lossy.length > 10 ? ', …' : ''} (${[
            missingRecords > 0 ? `${missingRecords} record(s) missing` : '',
            missingEvents > 0 && this.#o.serialGaps ? `${missingEvents} event serial(s) missing` : '',
            kernelLost > 0 ? `${kernelLost} event(s) lost in kernels` : '',
            lossy.some((h) => h.auditd.aborts + h.auditd.errors > 0) ? 'auditd aborts or errors' : '',
          ]
            .filter((x) => x !== '')
            .join(', ')})`
        : `no loss seen: ${hosts.length} host(s), ${records} record(s)${
            missingEvents > 0
              ? ` (hint: ${missingEvents} audit event serial(s) missing, see the hosts above)`
              : ''
          }`;
    if (unreadable > 0) line += `; ${unreadable} input(s) could not be read, the report does not cover them`;
    return {
      version: REPORT_VERSION,
      since: this.#o.since !== undefined ? new Date(this.#o.since).toISOString() : null,
      until: this.#o.until !== undefined ? new Date(this.#o.until).toISOString() : null,
      files: this.files,
      hosts,
      untrackedRecords: this.untrackedRecords,
      summary: {
        hosts: hosts.length,
        records,
        hostsWithLoss: lossy.length,
        missingRecords,
        missingEvents,
        kernelLost,
        unreadable,
        line,
      },
    };
  }
}

/** The host of a record: an authenticated identity stamp, else its node name, else the address stamp. */
export function hostOf(text: string, node: string | null): string {
  const peer = text.includes(' peer_id=') ? PEER_AT_END.exec(text) : null;
  if (peer && peer[1] !== 'addr') return peer[2]!;
  if (node !== null && node !== '') return node;
  if (peer) return peer[2]!;
  return NO_HOST;
}

function hostSummary(h: HostReport, serialGapsAreLoss: boolean): string {
  const parts: string[] = [];
  if (h.missingRecords > 0)
    parts.push(
      `${h.missingRecords} record(s) missing in ${h.agents.reduce((n, a) => n + a.gapCount, 0)} gap(s) of the agent sequence`,
    );
  if (h.kernelLost > 0) parts.push(`the kernel reported ${h.kernelLost} event(s) lost`);
  if (h.auditd.aborts > 0) parts.push(`auditd aborted ${h.auditd.aborts} time(s) (DAEMON_ABORT)`);
  if (h.auditd.errors > 0) parts.push(`auditd reported ${h.auditd.errors} error(s) (DAEMON_ERR)`);
  const serials = `${h.serials.missingEvents} audit event serial(s) missing in ${h.serials.gapCount} gap(s)`;
  if (h.serials.missingEvents > 0 && serialGapsAreLoss) parts.push(serials);
  const hint =
    h.serials.missingEvents > 0 && !serialGapsAreLoss
      ? ` (hint: ${serials}; --serial-gaps counts them as loss)`
      : '';
  return parts.length > 0 ? `LOSS: ${parts.join('; ')}${hint}` : `no loss seen${hint}`;
}

export function openLog(file: string): Readable {
  const s = createReadStream(file);
  if (!file.endsWith('.gz')) return s;
  const z = createGunzip();
  s.on('error', (err) => z.destroy(err));
  return s.pipe(z);
}

/** The report as text (docs/loss.md, "Output"). */
export function formatReport(r: Report): string {
  const out: string[] = [];
  const range = r.since || r.until ? `, audit time ${r.since ?? 'start'} .. ${r.until ?? 'end'}` : '';
  out.push(
    `auditrelay report: ${r.files.length} file(s), ${r.summary.records} record(s) of ${r.summary.hosts} host(s)${range}`,
  );
  for (const f of r.files) if (f.error) out.push(`  cannot read ${f.path}: ${f.error}`);
  for (const h of r.hosts) {
    out.push(`${h.host}: ${h.summary}`);
    out.push(`  ${h.records} record(s), ${h.first ?? '-'} .. ${h.last ?? '-'}`);
    for (const a of h.agents) {
      const gaps = a.gaps.map(([f, t]) => (f === t ? `${f}` : `${f}..${t}`)).join(', ');
      const more = a.gapCount > a.gaps.length ? `, … (${a.gapCount} gaps in all)` : '';
      out.push(
        `  agent ${a.agent}: records ${a.firstSeq}..${a.lastSeq}, ${a.records} record(s)` +
          (a.duplicates > 0 ? `, ${a.duplicates} duplicate(s)` : '') +
          (a.missing > 0 ? `, missing ${a.missing}: ${gaps}${more}` : ', none missing'),
      );
    }
    const d = h.auditd;
    if (d.starts + d.ends + d.aborts + d.errors + d.resumes > 0) {
      const words = [
        d.starts > 0 ? `${d.starts} start(s)` : '',
        d.ends > 0 ? `${d.ends} stop(s)` : '',
        d.aborts > 0 ? `${d.aborts} abort(s)` : '',
        d.errors > 0 ? `${d.errors} error(s)` : '',
        d.resumes > 0 ? `${d.resumes} resume(s)` : '',
      ].filter((w) => w !== '');
      out.push(
        `  auditd: ${words.join(', ')}${d.starts > 0 ? ' (the agent, its plugin, restarts with it)' : ''}`,
      );
    }
    for (const l of h.lossReports)
      out.push(`  ${l.time} ${l.type}${l.lost > 0 ? `: ${l.lost} event(s) lost` : ''} (${l.file}:${l.line})`);
    if (h.serials.missingEvents > 0) {
      const gaps = h.serials.gaps.map(([f, t]) => (f === t ? `${f}` : `${f}..${t}`)).join(', ');
      const more =
        h.serials.gapCount > h.serials.gaps.length ? `, … (${h.serials.gapCount} gaps in all)` : '';
      out.push(
        `  audit serials missing (events the kernel numbered that are not in these logs; a hint): ${gaps}${more}`,
      );
    }
  }
  if (r.untrackedRecords > 0)
    out.push(`(${r.untrackedRecords} record(s) of agents beyond ${MAX_AGENTS} were not followed)`);
  out.push(`summary: ${r.summary.line}`);
  return `${out.join('\n')}\n`;
}

export interface ReportArgs {
  paths: string[];
  since?: string;
  until?: string;
  json: boolean;
  serialGaps?: boolean;
}

/**
 * Runs the report; the exit status (docs/loss.md): 0 no loss seen, 1 loss seen, 5 no loss seen but an input could
 * not be read (the report does not cover it). Usage errors are thrown (exit 2).
 */
export async function runReport(
  a: ReportArgs,
  io: { out(t: string): void; err(t: string): void },
): Promise<number> {
  if (a.paths.length === 0)
    throw new UsageError('report needs at least one PATH (a collector log file or a directory of them)');
  const now = Date.now();
  const since = a.since !== undefined ? parseTimeArg(a.since, '--since', now) : undefined;
  const until = a.until !== undefined ? parseTimeArg(a.until, '--until', now) : undefined;
  if (since !== undefined && until !== undefined && since >= until)
    throw new UsageError(
      `--since ${new Date(since).toISOString()} is not before --until ${new Date(until).toISOString()}`,
    );
  const analysis = new LossAnalysis({
    serialGaps: a.serialGaps === true,
    ...(since !== undefined ? { since } : {}),
    ...(until !== undefined ? { until } : {}),
  });
  for (const p of a.paths) {
    const { files, error } = expandPath(p);
    if (error !== undefined)
      analysis.files.push({ path: p, records: 0, notRecords: 0, outOfRange: 0, error });
    for (const f of files) await analysis.readFile(f);
  }
  const r = analysis.report();
  for (const f of r.files) if (f.error) io.err(`auditrelay: report: cannot read ${f.path}: ${f.error}\n`);
  io.out(a.json ? `${JSON.stringify(r, null, 2)}\n` : formatReport(r));
  if (r.summary.hostsWithLoss > 0) return ExitCodes.FAILURE;
  return r.summary.unreadable > 0 ? ExitCodes.INCOMPLETE : ExitCodes.OK;
}
