import { describe, expect, it } from 'vitest';
import { MemoryQueue } from '../../src/queue/memory-queue.js';

const b = (s: string) => Buffer.from(s);

describe('memory queue', () => {
  it('keeps order, acks the head, rewinds in-flight records', () => {
    const q = new MemoryQueue(100);
    for (let i = 1; i <= 5; i++) expect(q.append(b(`r${i}`))).toBe(true);
    const a = q.takeNext()!;
    const c = q.takeNext()!;
    expect([a.payload.toString(), c.payload.toString()]).toEqual(['r1', 'r2']);
    expect(q.inFlight).toBe(2);
    q.ack(a.id);
    expect(q.depth).toBe(4);
    q.rewind();
    expect(q.inFlight).toBe(0);
    expect(q.takeNext()!.payload.toString()).toBe('r2');
    expect(() => q.ack(999)).toThrow(/not the oldest in flight/);
  });

  it('refuses records past its capacity and reports full, drain and empty', () => {
    const q = new MemoryQueue(2);
    const seen: string[] = [];
    q.on('status', (s) => seen.push(s));
    q.on('drain', () => seen.push('drain'));
    expect(q.append(b('1'))).toBe(true);
    expect(q.append(b('2'))).toBe(true);
    expect(q.append(b('3'))).toBe(false);
    q.ack(q.takeNext()!.id);
    q.ack(q.takeNext()!.id);
    expect(seen).toEqual(['holding', 'full', 'holding', 'drain', 'empty']);
    expect(q.totalAppended).toBe(2);
    expect(q.totalAcked).toBe(2);
  });

  it('grows its ring while keeping order across wrap-around', () => {
    const q = new MemoryQueue(10_000);
    let next = 0;
    let expected = 0;
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 97; i++) q.append(b(String(next++)));
      for (let i = 0; i < 60; i++) {
        const r = q.takeNext()!;
        expect(r.payload.toString()).toBe(String(expected++));
        q.ack(r.id);
      }
    }
    expect(q.depth).toBe(50 * 37);
    expect(q.bytes).toBeGreaterThan(0);
  });

  it('emits readable when unsent records appear after being empty', () => {
    const q = new MemoryQueue(10);
    let readable = 0;
    q.on('readable', () => readable++);
    q.append(b('a'));
    q.append(b('b'));
    expect(readable).toBe(1);
    q.takeNext();
    q.takeNext();
    q.rewind();
    expect(readable).toBe(2);
  });
});
