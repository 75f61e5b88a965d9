/** A growable ring buffer (a deque without pop-front costs): push at the tail, shift from the head. */
export class Ring<T> {
  #buf: (T | undefined)[] = new Array(16);
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(value: T): void {
    if (this.#length === this.#buf.length) {
      const bigger: (T | undefined)[] = new Array(this.#buf.length * 2);
      for (let i = 0; i < this.#length; i++) bigger[i] = this.#buf[(this.#head + i) % this.#buf.length];
      this.#buf = bigger;
      this.#head = 0;
    }
    this.#buf[(this.#head + this.#length) % this.#buf.length] = value;
    this.#length++;
  }

  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const value = this.#buf[this.#head];
    this.#buf[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#buf.length;
    this.#length--;
    return value;
  }

  /** The i-th element from the head (0 = oldest). */
  at(i: number): T | undefined {
    return i >= 0 && i < this.#length ? this.#buf[(this.#head + i) % this.#buf.length] : undefined;
  }

  last(): T | undefined {
    return this.at(this.#length - 1);
  }

  clear(): void {
    this.#buf = new Array(16);
    this.#head = 0;
    this.#length = 0;
  }
}
