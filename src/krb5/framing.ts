/**
 * auditd's krb5 transport framing (audit-remote-protocol.md section 4.1): every GSS token on the wire is a 4-byte
 * big-endian unsigned length followed by that many token bytes. (Big-endian, unlike the little-endian 16-byte
 * message header carried inside the wrapped tokens.)
 *
 * auditd refuses token lengths above 8970 (MAX_AUDIT_MESSAGE_LENGTH) during the handshake, and its client also in
 * the data phase; the decoder enforces a configurable maximum and fails before buffering an oversized token.
 */

/** Length prefix size. */
export const TOKEN_LENGTH_BYTES = 4;
/** auditd's limit for a token (MAX_AUDIT_MESSAGE_LENGTH), used during the handshake. */
export const MAX_HANDSHAKE_TOKEN_LENGTH = 8970;
/** Largest length the 4-byte prefix can carry. */
export const MAX_ENCODABLE_TOKEN_LENGTH = 0xffff_ffff;

/** A length prefix announced a token longer than the decoder's maximum. The stream cannot be resynchronised. */
export class TokenTooLargeError extends Error {
  readonly code = 'ERR_KRB5_TOKEN_TOO_LARGE';
  constructor(
    readonly length: number,
    readonly maxTokenLength: number,
  ) {
    super(`krb5 token length ${length} exceeds the maximum of ${maxTokenLength} bytes`);
    this.name = 'TokenTooLargeError';
  }
}

/** The 4-byte big-endian length prefix for a token of `length` bytes. */
export function encodeTokenLength(length: number): Buffer {
  if (!Number.isInteger(length) || length < 0 || length > MAX_ENCODABLE_TOKEN_LENGTH) {
    throw new RangeError(`krb5 token length must be an integer in [0, 2^32-1], got ${length}`);
  }
  const prefix = Buffer.allocUnsafe(TOKEN_LENGTH_BYTES);
  prefix.writeUInt32BE(length, 0);
  return prefix;
}

/** Length prefix + token as one buffer (an empty token encodes as four zero bytes). */
export function encodeToken(token: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(TOKEN_LENGTH_BYTES + token.length);
  encodeTokenLength(token.length).copy(out, 0);
  out.set(token, TOKEN_LENGTH_BYTES);
  return out;
}

export interface TokenDecoderOptions {
  /** Tokens longer than this are refused (TokenTooLargeError). Default MAX_HANDSHAKE_TOKEN_LENGTH. */
  maxTokenLength?: number;
}

/**
 * Streaming decoder: push() raw bytes as they arrive, get back every token completed by them, in order. Empty
 * tokens are returned as empty buffers (auditd's client sends one first; the server skips them). Returned buffers
 * are copies, never views of the pushed chunks.
 *
 * After a TokenTooLargeError the decoder is failed: every later push() throws the same error.
 */
export class TokenDecoder {
  #maxTokenLength: number;
  // Received bytes not yet returned, as a queue of private copies (linear time however the stream is chunked).
  #chunks: Buffer[] = [];
  #buffered = 0;
  #failure: TokenTooLargeError | undefined;

  constructor(options: TokenDecoderOptions = {}) {
    this.#maxTokenLength = TokenDecoder.#checkMax(options.maxTokenLength ?? MAX_HANDSHAKE_TOKEN_LENGTH);
  }

  static #checkMax(max: number): number {
    if (!Number.isInteger(max) || max < 0 || max > MAX_ENCODABLE_TOKEN_LENGTH) {
      throw new RangeError(`maxTokenLength must be an integer in [0, 2^32-1], got ${max}`);
    }
    return max;
  }

  get maxTokenLength(): number {
    return this.#maxTokenLength;
  }

  /** Changes the limit, effective from the next length prefix examined (e.g. a different one after the
   * handshake). */
  set maxTokenLength(max: number) {
    this.#maxTokenLength = TokenDecoder.#checkMax(max);
  }

  /** Bytes held for an incomplete token (prefix and/or body). 0 means the stream is at a token boundary. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /** Length announced by the token being received once its prefix is complete, else undefined. */
  get pendingTokenLength(): number | undefined {
    return this.#buffered >= TOKEN_LENGTH_BYTES ? this.#peek(TOKEN_LENGTH_BYTES).readUInt32BE(0) : undefined;
  }

  push(chunk: Uint8Array): Buffer[] {
    if (this.#failure) throw this.#failure;
    if (chunk.length > 0) {
      this.#chunks.push(Buffer.from(chunk));
      this.#buffered += chunk.length;
    }
    const tokens: Buffer[] = [];
    while (this.#buffered >= TOKEN_LENGTH_BYTES) {
      const length = this.#peek(TOKEN_LENGTH_BYTES).readUInt32BE(0);
      if (length > this.#maxTokenLength) {
        this.#failure = new TokenTooLargeError(length, this.#maxTokenLength);
        this.#chunks = [];
        this.#buffered = 0;
        throw this.#failure;
      }
      if (this.#buffered < TOKEN_LENGTH_BYTES + length) break;
      this.#take(TOKEN_LENGTH_BYTES);
      tokens.push(this.#take(length));
    }
    return tokens;
  }

  /** The first n buffered bytes without consuming them (n <= buffered). */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (const chunk of this.#chunks) {
      filled += chunk.copy(out, filled, 0, Math.min(chunk.length, n - filled));
      if (filled === n) break;
    }
    return out;
  }

  /** Removes and returns the first n buffered bytes as a new buffer (n <= buffered). */
  #take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let consumed = 0;
    while (filled < n) {
      const chunk = this.#chunks[consumed]!;
      const used = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, used);
      filled += used;
      if (used === chunk.length) consumed++;
      else this.#chunks[consumed] = chunk.subarray(used);
    }
    if (consumed > 0) this.#chunks.splice(0, consumed);
    this.#buffered -= n;
    return out;
  }
}
