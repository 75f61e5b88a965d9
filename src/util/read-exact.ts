import { readSync } from 'node:fs';

/** Reads `length` bytes at `position`, or fewer at the end of the file (a short buffer then). */
export function readExact(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got === length ? buf : buf.subarray(0, got);
}
