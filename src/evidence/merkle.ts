/**
 * Merkle tree hashing of RFC 6962 / RFC 9162 (section 2.1): leaf hash SHA-256(0x00 || input), interior node
 * SHA-256(0x01 || left || right), the tree of n leaves split at the largest power of two below n. Domain
 * separation keeps a leaf from passing for a node.
 *
 * The writer keeps only the compact range (the roots of the perfect subtrees covering [0, size), largest first:
 * at most 64 hashes), appends in O(1) amortised and computes the root at any time. A side file records the compact
 * range at its start, so a segment of the log can be verified, and inclusion proofs made, without the leaves of
 * the segments before it.
 */
import { hash } from 'node:crypto';

export const HASH_BYTES = 32;
const NODE_PREFIX = 0x01;

export function sha256(data: Buffer): Buffer {
  return hash('sha256', data, 'buffer');
}

const nodeScratch = Buffer.alloc(1 + 2 * HASH_BYTES);
nodeScratch[0] = NODE_PREFIX;

/** SHA-256(0x01 || left || right). */
export function nodeHash(left: Buffer, right: Buffer): Buffer {
  left.copy(nodeScratch, 1);
  right.copy(nodeScratch, 1 + HASH_BYTES);
  return sha256(nodeScratch);
}

/** SHA-256 of the empty string: the root of the empty tree. */
export const EMPTY_ROOT = sha256(Buffer.alloc(0));

/** The perfect subtrees covering [0, size): [start, size of subtree] pairs, largest first. */
export function rangePieces(size: number): [number, number][] {
  const pieces: [number, number][] = [];
  let start = 0;
  for (let bit = 2 ** Math.floor(Math.log2(Math.max(size, 1))); bit >= 1; bit /= 2) {
    if (size - start >= bit) {
      pieces.push([start, bit]);
      start += bit;
    }
  }
  return pieces;
}

export class CompactRange {
  #size: number;
  /** Roots of the perfect subtrees, largest (leftmost) first. */
  #hashes: Buffer[];

  constructor(size = 0, hashes: Buffer[] = []) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad tree size ${size}`);
    if (hashes.length !== popcount(size)) {
      throw new RangeError(
        `a tree of ${size} leaves has ${popcount(size)} subtree roots, not ${hashes.length}`,
      );
    }
    this.#size = size;
    this.#hashes = hashes.slice();
  }

  get size(): number {
    return this.#size;
  }

  get hashes(): readonly Buffer[] {
    return this.#hashes;
  }

  clone(): CompactRange {
    return new CompactRange(this.#size, this.#hashes);
  }

  append(leafHash: Buffer): void {
    let h = leafHash;
    // Merge with the subtrees of equal size: one per trailing 1 bit of the old size.
    for (let s = this.#size; s & 1; s = Math.floor(s / 2)) h = nodeHash(this.#hashes.pop()!, h);
    this.#hashes.push(h);
    this.#size++;
  }

  /** The tree head (MTH) of the leaves so far. */
  root(): Buffer {
    if (this.#size === 0) return EMPTY_ROOT;
    let h = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) h = nodeHash(this.#hashes[i]!, h);
    return h;
  }
}

function popcount(n: number): number {
  let c = 0;
  for (let x = n; x > 0; x = Math.floor(x / 2)) c += x & 1;
  return c;
}

/**
 * Hashes of a tree whose leaves before `start` are known only through the compact range at `start`, and whose
 * leaves from `start` on are given.
 */
export class PartialTree {
  readonly #start: number;
  readonly #pieces = new Map<string, Buffer>();
  readonly #leaves: (i: number) => Buffer;
  readonly #end: number;

  /** `leaves(i)` gives leaf hash i for start <= i < end. */
  constructor(start: CompactRange, end: number, leaves: (i: number) => Buffer) {
    this.#start = start.size;
    this.#end = end;
    this.#leaves = leaves;
    rangePieces(start.size).forEach(([a, n], k) => {
      this.#pieces.set(`${a}+${n}`, start.hashes[k]!);
    });
  }

  /** MTH of leaves [a, b). */
  mth(a: number, b: number): Buffer {
    if (b - a < 1) throw new RangeError(`empty range ${a}..${b}`);
    if (b > this.#end) throw new RangeError(`leaf ${b - 1} is beyond the ${this.#end} known`);
    if (a >= this.#start && b - a === 1) return this.#leaves(a);
    if (b <= this.#start) {
      const piece = this.#pieces.get(`${a}+${b - a}`);
      if (piece) return piece;
      if (b - a === 1) throw new RangeError(`leaf ${a} is before the known range`);
    }
    const k = largestPowerOfTwoBelow(b - a);
    return nodeHash(this.mth(a, a + k), this.mth(a + k, b));
  }

  /** RFC 9162 inclusion path of leaf `index` in the tree of the first `size` leaves, bottom first. */
  inclusionPath(index: number, size: number): Buffer[] {
    if (index < this.#start || index >= size) throw new RangeError(`leaf ${index} not provable in ${size}`);
    const path: Buffer[] = [];
    const walk = (m: number, lo: number, hi: number): void => {
      const n = hi - lo;
      if (n <= 1) return;
      const k = largestPowerOfTwoBelow(n);
      if (m < k) {
        walk(m, lo, lo + k);
        path.push(this.mth(lo + k, hi));
      } else {
        walk(m - k, lo + k, hi);
        path.push(this.mth(lo, lo + k));
      }
    };
    walk(index, 0, size);
    return path;
  }
}

/** The largest power of two strictly below n (n >= 2). */
function largestPowerOfTwoBelow(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** RFC 9162 section 2.1.3.2: the root that `path` leads to from `leafHash` at `index` in a tree of `size`. */
export function rootFromInclusionPath(
  index: number,
  size: number,
  leafHash: Buffer,
  path: Buffer[],
): Buffer | null {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return null;
  let fn = index;
  let sn = size - 1;
  let r = leafHash;
  for (const p of path) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}
