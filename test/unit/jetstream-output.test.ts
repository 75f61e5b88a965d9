/**
 * The collector's JetStream output (src/collector/jetstream-output.ts) against a fake clustered stream that behaves
 * as nats-server 2.15.1 was measured to (docs/scale-out.md, "A duplicate must name a stored record"): max_msgs with
 * discard new, and a refused publish's message id kept, so that every later publish with it is answered
 * `duplicate` with sequence 0 although nothing is stored. The real 3-node cluster runs the same situation with the
 * real agent in test/scale-out/jetstream.test.ts ("a full stream").
 */
import type { PubAck } from '@nats-io/jetstream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  JetStreamOutput,
  type JetStreamPublisher,
  POISONED_ID_MS,
} from '../../src/collector/jetstream-output.js';
import type { OutputBatch } from '../../src/collector/output.js';

/** A clustered stream with discard new: stored ids, and ids it refused (kept: `duplicate` with sequence 0). */
class FakeStream {
  maxMsgs: number;
  readonly stored: { subject: string; id: string; text: string }[] = [];
  readonly #seqOf = new Map<string, number>();
  readonly #refused = new Set<string>();

  constructor(maxMsgs: number) {
    this.maxMsgs = maxMsgs;
  }

  readonly publisher: JetStreamPublisher = {
    publish: async (subject, data, opts) => {
      await Promise.resolve();
      const id = opts!.msgID!;
      const ack = (seq: number, duplicate: boolean) =>
        ({ stream: 'S', seq, duplicate, domain: '' }) as PubAck;
      const seq = this.#seqOf.get(id);
      if (seq !== undefined) return ack(seq, true);
      if (this.#refused.has(id)) return ack(0, true);
      if (this.stored.length >= this.maxMsgs) {
        this.#refused.add(id);
        throw new Error('maximum messages exceeded');
      }
      this.stored.push({ subject, id, text: Buffer.from(data as Uint8Array).toString('latin1') });
      this.#seqOf.set(id, this.stored.length);
      return ack(this.stored.length, false);
    },
  };

  /** The record numbers stored for `host`, in stream order. */
  numbers(): number[] {
    return this.stored.map((m) => Number(/ n=(\d+)$/.exec(m.text)![1]));
  }
}

const NL = Buffer.from('\n');

/** Records from..to of agent `a` on host h1, as one client's entry of a batch. */
function batch(from: number, to: number): OutputBatch {
  const lines: Buffer[] = [];
  const rids = [];
  for (let n = from; n <= to; n++) {
    lines.push(Buffer.from(`node=h1 type=USER msg=audit(1.0:${n}): n=${n}`), NL);
    rids.push({ agent: 'a', seq: n });
  }
  return {
    data: Buffer.concat(lines),
    parts: undefined as unknown as OutputBatch['parts'],
    groups: [{ host: 'h1', lines, rids }],
  };
}

const outcome = (p: Promise<unknown>) =>
  p.then(
    (v) => v,
    (e: NodeJS.ErrnoException) => e.code,
  );

describe('output = jetstream: a full stream, then room again', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(1_800_000_000_000);
  });
  afterEach(() => vi.useRealTimers());

  it('records refused while full are stored once, in order, as soon as their ids are given up; a resend is a duplicate', async () => {
    const stream = new FakeStream(300);
    const out = new JetStreamOutput(
      { servers: [], stream: 'S', replicas: 3, duplicateWindowMs: 600_000 },
      pino({ level: 'silent' }),
      { publisher: stream.publisher },
    );
    await out.open();
    // An agent's window in batches of 128: the third is stored in part (257..300) and answered DISKFULL as a whole.
    expect(await outcome(out.write(batch(1, 128)))).toBe('ack');
    expect(await outcome(out.write(batch(129, 256)))).toBe('ack');
    expect(await outcome(out.write(batch(257, 384)))).toBe('ENOSPC');
    expect(await outcome(out.write(batch(385, 500)))).toBe('ENOSPC');
    expect(stream.stored).toHaveLength(300);

    // Room again. The agent's probe (its oldest record) and window: 257..300 are duplicates of stored records; the
    // ids of 301..500 stay refused until POISONED_ID_MS after their refusal: DISKFULL, nothing stored out of order.
    stream.maxMsgs = 1000;
    expect(await outcome(out.write(batch(257, 257)))).toBe('ack');
    expect(await outcome(out.write(batch(258, 384)))).toBe('ENOSPC');
    expect(stream.stored).toHaveLength(300);
    // Then each is published under a derived id at once, in the same batch.
    vi.setSystemTime(Date.now() + POISONED_ID_MS);
    expect(await outcome(out.write(batch(301, 301)))).toBe('ack');
    expect(await outcome(out.write(batch(302, 384)))).toBe('ack');
    expect(await outcome(out.write(batch(385, 500)))).toBe('ack');
    expect(stream.numbers()).toEqual(Array.from({ length: 500 }, (_, i) => i + 1));
    expect(stream.stored[300]!.id).toBe('a:301/1');

    // A resend (the acknowledgement lost): every record a duplicate of the one stored, under its derived id too.
    expect(await outcome(out.write(batch(250, 500)))).toBe('ack');
    expect(stream.stored).toHaveLength(500);
    const s = out.status();
    expect(s.orderWarnings).toBe(0);
    // The ids refused: 301..384 (the third batch, pipelined) and 385 (the fourth batch's first record, published
    // alone after a refusal: its other records were never published, and are stored under their own ids).
    expect(s.renamedIds).toBe(85);
    expect(stream.stored[385]!.id).toBe('a:386');
    await out.close();
  });
});
