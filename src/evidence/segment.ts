/**
 * The side file ("segment") kept beside one log file, in `<log>.evidence/<start, 16 digits>.chain`
 * (docs/evidence.md, "Format"). Text, one entry per line, append-only:
 *
 *     auditrelay-evidence 1
 *     origin <origin of the checkpoints>
 *     key <verifier key of the signer>
 *     start <index of this segment's first record in the whole log>
 *     frontier [<base64 hash>...]      compact range of the records before `start` (RFC 6962 subtree roots)
 *     created <ISO time>
 *     <blank line>
 *     h <ref> <base64 previous chain hash> <host, %-encoded>     a host and its chain head before this segment
 *     r <ref> <base64 SHA-256 of the log line>                   a record written by host <ref>
 *     R <ref> <base64 SHA-256 of the log line>                   a record chained by re-reading the log (crash)
 *     x <count>                                                  the log lost the last <count> records (restart)
 *     c <base64 of a signed checkpoint note>                     a checkpoint over all records up to here
 *
 * Record i of the log is leaf i of one Merkle tree; its leaf hash is also its host's chain value:
 *     L = SHA-256(0x00 || P || SHA-256(host) || SHA-256(line))
 * where P is the chain value of the same host's previous record (32 zero bytes for its first).
 */
import { EvidenceError } from '../errors.js';
import { CompactRange, HASH_BYTES, sha256 } from './merkle.js';
import { parseCheckpoint, parseNote } from './note.js';

export const SEGMENT_MAGIC = 'auditrelay-evidence 1';
export const SEGMENT_SUFFIX = '.chain';
export const ZERO_HASH = Buffer.alloc(HASH_BYTES);

export interface SegmentHeader {
  origin: string;
  key: string;
  start: number;
  frontier: Buffer[];
  created: string;
}

export function segmentFileName(start: number): string {
  return `${String(start).padStart(16, '0')}${SEGMENT_SUFFIX}`;
}

export function parseSegmentFileName(name: string): number | null {
  const m = /^(\d{16})\.chain$/.exec(name);
  return m ? Number(m[1]) : null;
}

export function formatHeader(h: SegmentHeader): string {
  return (
    `${SEGMENT_MAGIC}\norigin ${h.origin}\nkey ${h.key}\nstart ${h.start}\n` +
    `frontier${h.frontier.map((f) => ` ${f.toString('base64')}`).join('')}\ncreated ${h.created}\n\n`
  );
}

export function encodeHost(host: string): string {
  let out = '';
  for (const b of Buffer.from(host, 'utf8')) {
    out +=
      b <= 0x20 || b >= 0x7f || b === 0x25
        ? `%${b.toString(16).toUpperCase().padStart(2, '0')}`
        : String.fromCharCode(b);
  }
  return out === '' ? '%' : out;
}

export function decodeHost(text: string): string | null {
  if (text === '%') return '';
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x25) {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return null;
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else if (c > 0x20 && c < 0x7f) bytes.push(c);
    else return null;
  }
  return Buffer.from(bytes).toString('utf8');
}

export const hostLine = (ref: number, prev: Buffer, host: string) =>
  `h ${ref} ${prev.toString('base64')} ${encodeHost(host)}\n`;
export const recordLine = (ref: number, digest: Buffer, reread: boolean) =>
  `${reread ? 'R' : 'r'} ${ref} ${digest.toString('base64')}\n`;
export const lostLine = (count: number) => `x ${count}\n`;
export const checkpointLine = (note: string) => `c ${Buffer.from(note, 'utf8').toString('base64')}\n`;

export type Marker =
  | { kind: 'host'; at: number; line: number; ref: number; prev: Buffer; host: string }
  | { kind: 'lost'; at: number; line: number; count: number }
  | { kind: 'checkpoint'; at: number; line: number; note: string };

export interface ParsedSegment {
  file: string;
  header: SegmentHeader;
  /** Records (r and R entries), in order. */
  count: number;
  digests: Buffer;
  refs: Int32Array;
  reread: Uint8Array;
  /** Side-file line number of each record entry. */
  sideLines: Int32Array;
  /** h, x and c entries, each at the record count before it. */
  markers: Marker[];
  /** Lines that do not parse: [side-file line, what]. */
  malformed: [number, string][];
  /** Bytes up to the end of the last complete line (a torn last line is after it). */
  completeBytes: number;
  /** Length of an incomplete last line (written when the process died), 0 when none. */
  tornBytes: number;
}

const B64_HASH = /^[A-Za-z0-9+/]{43}=$/;

/** Parses a segment file's bytes. Throws only when the header is unusable; entry problems are collected. */
export function parseSegment(file: string, data: Buffer): ParsedSegment {
  const lastNl = data.lastIndexOf(0x0a);
  const completeBytes = lastNl + 1;
  const text = data.subarray(0, completeBytes).toString('utf8');
  const lines = text.split('\n');
  lines.pop(); // after the last '\n'
  const headerEnd = lines.indexOf('');
  if (lines[0] !== SEGMENT_MAGIC || headerEnd < 0) {
    throw new EvidenceError(
      `evidence file ${file}: not an auditrelay evidence file (version 1) or its header is cut`,
    );
  }
  const fields = new Map<string, string>();
  for (const l of lines.slice(1, headerEnd)) {
    const sp = l.indexOf(' ');
    fields.set(sp < 0 ? l : l.slice(0, sp), sp < 0 ? '' : l.slice(sp + 1));
  }
  const start = Number(fields.get('start'));
  const frontier = (fields.get('frontier') ?? '').split(' ').filter((s) => s !== '');
  const origin = fields.get('origin');
  const key = fields.get('key');
  if (!Number.isSafeInteger(start) || start < 0 || origin === undefined || key === undefined) {
    throw new EvidenceError(`evidence file ${file}: header lacks origin, key or start`);
  }
  if (!frontier.every((f) => B64_HASH.test(f)))
    throw new EvidenceError(`evidence file ${file}: bad frontier`);
  const header: SegmentHeader = {
    origin,
    key,
    start,
    frontier: frontier.map((f) => Buffer.from(f, 'base64')),
    created: fields.get('created') ?? '',
  };
  try {
    new CompactRange(start, header.frontier);
  } catch (err) {
    throw new EvidenceError(`evidence file ${file}: ${(err as Error).message}`);
  }
  const max = lines.length - headerEnd;
  const digests = Buffer.alloc(max * HASH_BYTES);
  const refs = new Int32Array(max);
  const reread = new Uint8Array(max);
  const sideLines = new Int32Array(max);
  const markers: Marker[] = [];
  const malformed: [number, string][] = [];
  let count = 0;
  for (let i = headerEnd + 1; i < lines.length; i++) {
    const l = lines[i]!;
    const lineNo = i + 1;
    const parts = l.split(' ');
    const kind = parts[0];
    if ((kind === 'r' || kind === 'R') && parts.length === 3) {
      const ref = Number(parts[1]);
      if (Number.isSafeInteger(ref) && ref > 0 && B64_HASH.test(parts[2]!)) {
        digests.write(parts[2]!, count * HASH_BYTES, 'base64');
        refs[count] = ref;
        reread[count] = kind === 'R' ? 1 : 0;
        sideLines[count] = lineNo;
        count++;
        continue;
      }
    } else if (kind === 'h' && parts.length === 4) {
      const ref = Number(parts[1]);
      const host = decodeHost(parts[3]!);
      if (Number.isSafeInteger(ref) && ref > 0 && B64_HASH.test(parts[2]!) && host !== null) {
        markers.push({
          kind: 'host',
          at: count,
          line: lineNo,
          ref,
          prev: Buffer.from(parts[2]!, 'base64'),
          host,
        });
        continue;
      }
    } else if (kind === 'x' && parts.length === 2) {
      const n = Number(parts[1]);
      if (Number.isSafeInteger(n) && n > 0) {
        markers.push({ kind: 'lost', at: count, line: lineNo, count: n });
        continue;
      }
    } else if (kind === 'c' && parts.length === 2) {
      markers.push({
        kind: 'checkpoint',
        at: count,
        line: lineNo,
        note: Buffer.from(parts[1]!, 'base64').toString('utf8'),
      });
      continue;
    }
    malformed.push([lineNo, `malformed evidence entry '${l.slice(0, 60)}'`]);
  }
  return {
    file,
    header,
    count,
    digests: digests.subarray(0, count * HASH_BYTES),
    refs: refs.subarray(0, count),
    reread: reread.subarray(0, count),
    sideLines: sideLines.subarray(0, count),
    markers,
    malformed,
    completeBytes,
    tornBytes: data.length - completeBytes,
  };
}

/** The host hash cache and the leaf computation shared by the writer and the verifier. */
export class Chainer {
  readonly #hostHashes = new Map<string, Buffer>();
  readonly #scratch = Buffer.alloc(1 + 3 * HASH_BYTES);

  hostHash(host: string): Buffer {
    let h = this.#hostHashes.get(host);
    if (!h) {
      h = sha256(Buffer.from(host, 'utf8'));
      if (this.#hostHashes.size > 100_000) this.#hostHashes.clear();
      this.#hostHashes.set(host, h);
    }
    return h;
  }

  /** L = SHA-256(0x00 || prev || SHA-256(host) || digest). */
  leaf(prev: Buffer, host: string, digest: Buffer): Buffer {
    const s = this.#scratch;
    s[0] = 0x00;
    prev.copy(s, 1);
    this.hostHash(host).copy(s, 1 + HASH_BYTES);
    digest.copy(s, 1 + 2 * HASH_BYTES);
    return sha256(s);
  }
}

export interface ReplayCheckpoint {
  note: string;
  line: number;
  /** Records in the tree where the entry stands (a checkpoint is written after the records it covers). */
  position: number;
  /** The tree size the note claims (-1 when the note does not parse). */
  size: number;
  /** The tree head recomputed at that size (null when the size is outside [start, position]). */
  root: Buffer | null;
}

/** The tree size a checkpoint entry's note claims, or -1. */
export function claimedSize(note: string): number {
  const n = parseNote(note);
  if (typeof n === 'string') return -1;
  const c = parseCheckpoint(n.body);
  return typeof c === 'string' ? -1 : c.size;
}

export interface ReplayResult {
  tree: CompactRange;
  /** Chain head of every host declared in the segment, after its last record. */
  heads: Map<string, Buffer>;
  /** ref → host. */
  hosts: Map<number, string>;
  checkpoints: ReplayCheckpoint[];
  /** Records whose host ref was never declared: [side line, ref]. */
  undeclared: [number, number][];
  /** Leaf hashes of the segment's records, and the chain value each one continued from, when asked for. */
  leaves?: Buffer;
  prevs?: Buffer;
  /** Tree roots reached at the sizes asked for (`rootsAt`), by size. */
  roots: Map<number, Buffer>;
}

/** Recomputes a segment's chain and tree from its entries alone (the log is not read). */
export function replaySegment(
  seg: ParsedSegment,
  chainer: Chainer,
  keepLeaves = false,
  rootsAt: ReadonlySet<number> = new Set(),
): ReplayResult {
  const tree = new CompactRange(seg.header.start, seg.header.frontier);
  // Roots are needed at the sizes the checkpoint entries claim (a checkpoint signed while more records were being
  // appended stands after them) and at the sizes the caller asks for.
  const claimed = new Map<Marker, number>();
  const wanted = new Set(rootsAt);
  for (const mk of seg.markers) {
    if (mk.kind !== 'checkpoint') continue;
    const size = claimedSize(mk.note);
    claimed.set(mk, size);
    wanted.add(size);
  }
  const roots = new Map<number, Buffer>();
  if (wanted.has(tree.size)) roots.set(tree.size, tree.root());
  const heads = new Map<string, Buffer>();
  const hosts = new Map<number, string>();
  const checkpoints: ReplayCheckpoint[] = [];
  const undeclared: [number, number][] = [];
  const leaves = keepLeaves ? Buffer.alloc(seg.count * HASH_BYTES) : undefined;
  const prevs = keepLeaves ? Buffer.alloc(seg.count * HASH_BYTES) : undefined;
  let m = 0;
  const applyMarkers = (upTo: number) => {
    for (; m < seg.markers.length && seg.markers[m]!.at <= upTo; m++) {
      const mk = seg.markers[m]!;
      if (mk.kind === 'host') {
        hosts.set(mk.ref, mk.host);
        if (!heads.has(mk.host)) heads.set(mk.host, mk.prev);
      } else if (mk.kind === 'checkpoint') {
        const size = claimed.get(mk) ?? -1;
        const ok = size >= seg.header.start && size <= tree.size;
        checkpoints.push({
          note: mk.note,
          line: mk.line,
          position: tree.size,
          size,
          root: ok ? (roots.get(size) ?? null) : null,
        });
      }
    }
  };
  for (let i = 0; i < seg.count; i++) {
    applyMarkers(i);
    const ref = seg.refs[i]!;
    const host = hosts.get(ref);
    if (host === undefined) {
      undeclared.push([seg.sideLines[i]!, ref]);
    }
    const name = host ?? `#${ref}`;
    const prev = heads.get(name) ?? ZERO_HASH;
    const leaf = chainer.leaf(prev, name, seg.digests.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES));
    heads.set(name, leaf);
    tree.append(leaf);
    if (leaves) leaf.copy(leaves, i * HASH_BYTES);
    if (prevs) prev.copy(prevs, i * HASH_BYTES);
    if (wanted.has(tree.size)) roots.set(tree.size, tree.root());
  }
  applyMarkers(seg.count);
  return {
    tree,
    heads,
    hosts,
    checkpoints,
    undeclared,
    roots,
    ...(leaves && prevs ? { leaves, prevs } : {}),
  };
}
