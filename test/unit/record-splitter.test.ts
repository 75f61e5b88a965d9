import { describe, expect, it } from 'vitest';
import { isEoe, RecordSplitter } from '../../src/input/record-splitter.js';

function split(input: (string | Buffer)[], opts: { maxRecord?: number; forwardEoe?: boolean } = {}) {
  const out: Buffer[] = [];
  const events: string[] = [];
  const s = new RecordSplitter({
    maxRecord: opts.maxRecord ?? 8954,
    forwardEoe: opts.forwardEoe ?? false,
    onRecord: (r) => out.push(Buffer.from(r)),
    onDiscard: (reason, d) => events.push(`discard:${reason}@${d.line}`),
    onAdjust: (reason, d) => events.push(`adjust:${reason}@${d.line}x${d.count}`),
  });
  for (const c of input) s.push(typeof c === 'string' ? Buffer.from(c, 'latin1') : c);
  s.end();
  return { out: out.map((b) => b.toString('latin1')), raw: out, events, stats: s.stats };
}

describe('record splitter rules', () => {
  it('frames lines across arbitrary chunk boundaries', () => {
    const { out } = split(['type=A msg=1\ntype=B', ' msg=2\n', 'type=C msg=3\n']);
    expect(out).toEqual(['type=A msg=1\n', 'type=B msg=2\n', 'type=C msg=3\n']);
  });

  it('treats a final line without a newline as a record and adds the newline', () => {
    expect(split(['type=A msg=1\ntype=B msg=2']).out).toEqual(['type=A msg=1\n', 'type=B msg=2\n']);
  });

  it('drops blank lines and counts them', () => {
    const { out, stats, events } = split(['\n\ntype=A msg=1\n\n \t\r\n']);
    expect(out).toEqual(['type=A msg=1\n']);
    expect(stats.blank).toBe(4);
    expect(events).toContain('discard:blank@1');
  });

  it('drops EOE records as audisp-remote does, unless forwardEoe', () => {
    const input = ['type=EOE msg=audit(1.2:3): \nnode=h type=EOE msg=audit(1.2:3): \ntype=SYSCALL msg=x\n'];
    expect(split(input).out).toEqual(['type=SYSCALL msg=x\n']);
    expect(split(input, { forwardEoe: true }).out).toHaveLength(3);
    expect(isEoe(Buffer.from('type=EOE\n'))).toBe(true);
    // A prefix test, as audisp-remote's strncmp.
    expect(isEoe(Buffer.from('type=EOEX msg=x\n'))).toBe(true);
    expect(isEoe(Buffer.from('type=SYSCALL msg=type=EOE\n'))).toBe(false);
  });

  it('passes invalid UTF-8 and the ENRICHED 0x1D separator through byte-exact', () => {
    const line = Buffer.from([
      ...Buffer.from('type=X msg=a '),
      0xff,
      0xfe,
      0x1d,
      ...Buffer.from('UID="r"\n'),
    ]);
    const { raw } = split([line]);
    expect(raw[0]).toEqual(line);
  });

  it('replaces NUL bytes by spaces and reports it', () => {
    const { out, events, stats } = split([Buffer.from('type=X msg=a\0b\0\n')]);
    expect(out).toEqual(['type=X msg=a b \n']);
    expect(stats.nulReplaced).toBe(2);
    expect(events.some((e) => e.startsWith('adjust:nul-replaced'))).toBe(true);
  });

  it('names the input line that held the NUL bytes (not the next one)', () => {
    const { events } = split([Buffer.from('type=A msg=a\ntype=B msg=b\0\ntype=C msg=c\n')]);
    expect(events).toEqual(['adjust:nul-replaced@2x1']);
    // Also for the parts of a split line, and for a final line without its newline.
    const long = split([Buffer.from(`type=L msg=${'\0'.repeat(3)}${'x'.repeat(30)}\ntype=E msg=\0`)], {
      maxRecord: 16,
    });
    expect(long.events.filter((e) => e.startsWith('adjust:nul'))).toEqual([
      'adjust:nul-replaced@1x3',
      'adjust:nul-replaced@2x1',
    ]);
  });

  it('splits an over-long line into records of at most maxRecord bytes, never losing a byte', () => {
    const body = 'x'.repeat(40);
    const { out, events, stats } = split([`type=L msg=${body}\n`, 'type=S msg=s\n'], { maxRecord: 16 });
    for (const r of out) expect(r.length).toBeLessThanOrEqual(16);
    const joined = out
      .slice(0, -1)
      .map((r) => r.slice(0, -1))
      .join('');
    expect(joined).toBe(`type=L msg=${body}`);
    expect(out.at(-1)).toBe('type=S msg=s\n');
    expect(stats.splitLines).toBe(1);
    expect(events.some((e) => e.startsWith('adjust:split'))).toBe(true);
  });

  it('splits a line arriving one byte at a time the same way', () => {
    const text = `type=L msg=${'y'.repeat(40)}\n`;
    const whole = split([text], { maxRecord: 12 }).out;
    const bytes = split([...text], { maxRecord: 12 }).out;
    expect(bytes).toEqual(whole);
  });

  it('handles a line of exactly maxRecord bytes without an empty extra record', () => {
    const line = `${'z'.repeat(9)}\n`;
    expect(split([line], { maxRecord: 10 }).out).toEqual([line]);
    const longer = `${'z'.repeat(18)}\n`;
    expect(split([longer], { maxRecord: 10 }).out).toEqual([`${'z'.repeat(9)}\n`, `${'z'.repeat(9)}\n`]);
  });
});
