/**
 * Follows a server's log: counts received records (lines not starting with the server's own prefix) and, when
 * `arrivals` is given, stores the time each one was first seen.
 */
import { closeSync, type FSWatcher, openSync, readSync, watch } from 'node:fs';

interface Waiter {
  n: number;
  resolve: (t: number) => void;
}

export class LogTail {
  count = 0;
  #offset = 0;
  readonly #skip: Buffer | null;
  #fd: number | null = null;
  #watcher: FSWatcher | null = null;
  #timer: NodeJS.Timeout | null = null;
  readonly #waiters: Waiter[] = [];
  /** The first bytes of a line begun in an earlier chunk. */
  #lineStart = Buffer.alloc(0);
  readonly #buf = Buffer.allocUnsafe(1 << 20);

  constructor(
    readonly file: string,
    skipPrefix: string | null,
    readonly arrivals: Float64Array | null = null,
  ) {
    this.#skip = skipPrefix ? Buffer.from(skipPrefix) : null;
  }

  /**
   * With `precise` (latency runs), every change of the file wakes us up (inotify); otherwise a 5 ms poll
   * only, so that following a log written at 100,000 lines/s does not steal CPU from the client and the
   * server (the machine may have 2 cores).
   */
  start(precise = false): void {
    this.#fd = openSync(this.file, 'r');
    if (precise) this.#watcher = watch(this.file, () => this.poll());
    this.#timer = setInterval(() => this.poll(), 5);
    this.poll();
  }

  stop(): void {
    this.#watcher?.close();
    if (this.#timer) clearInterval(this.#timer);
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }

  poll(): void {
    if (this.#fd === null) return;
    const now = performance.now();
    for (;;) {
      const n = readSync(this.#fd, this.#buf, 0, this.#buf.length, this.#offset);
      if (n <= 0) break;
      this.#offset += n;
      this.#scan(this.#buf.subarray(0, n), now);
    }
    for (const w of this.#waiters.slice()) {
      if (this.count >= w.n) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(now);
      }
    }
  }

  /** Counts complete lines; a line is ours unless it starts with the server's own prefix. */
  #scan(chunk: Buffer, now: number): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; start = nl + 1, nl = chunk.indexOf(10, start)) {
      // The first bytes of the line (possibly begun in the previous chunk) decide whether it is ours.
      const head =
        this.#lineStart.length > 0
          ? Buffer.concat([this.#lineStart, chunk.subarray(start, nl)])
          : chunk.subarray(start, nl);
      this.#lineStart = Buffer.alloc(0);
      if (!(this.#skip && head.subarray(0, this.#skip.length).equals(this.#skip))) {
        if (this.arrivals && this.count < this.arrivals.length) this.arrivals[this.count] = now;
        this.count++;
      }
    }
    if (start < chunk.length && this.#lineStart.length < 64) {
      this.#lineStart = Buffer.concat([this.#lineStart, chunk.subarray(start, start + 64)]);
    }
  }

  /** Resolves with the time (performance.now) at which `n` records had arrived. */
  waitFor(n: number, timeoutMs: number, diagnostics?: () => string): Promise<number> {
    if (this.count >= n) return Promise.resolve(performance.now());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        reject(
          new Error(
            `bench: ${this.count}/${n} records in ${this.file} after ${timeoutMs} ms\n${diagnostics?.() ?? ''}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push({
        n,
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
      });
    });
  }
}
