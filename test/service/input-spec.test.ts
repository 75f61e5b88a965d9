/** The proposed `input` key (src/input/spec.ts): parsing, formatting, and what openInput builds. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AfUnixInput } from '../../src/input/af-unix.js';
import { formatInputSpec, openInput, parseInputSpec } from '../../src/input/spec.js';
import { TailInput } from '../../src/input/tail.js';

describe('input spec', () => {
  it('parses keywords (any case) with default or absolute paths', () => {
    expect(parseInputSpec('stdin')).toEqual({ kind: 'stdin' });
    expect(parseInputSpec('STDIN')).toEqual({ kind: 'stdin' });
    expect(parseInputSpec('af_unix')).toEqual({ kind: 'af_unix', path: '/var/run/audispd_events' });
    expect(parseInputSpec('af_unix:/run/x.sock')).toEqual({ kind: 'af_unix', path: '/run/x.sock' });
    expect(parseInputSpec('tail')).toEqual({ kind: 'tail', path: '/var/log/audit/audit.log' });
    expect(parseInputSpec('Tail:/var/log/Audit.log')).toEqual({ kind: 'tail', path: '/var/log/Audit.log' });
  });

  it('rejects with a message', () => {
    expect(parseInputSpec('file:/x')).toBe('unknown input "file:/x"');
    expect(parseInputSpec('tail:audit.log')).toBe('the path in "tail:audit.log" must be absolute');
    expect(parseInputSpec('stdin:/x')).toBe('stdin takes no path ("stdin:/x")');
  });

  it('formats back to a parseable value', () => {
    for (const v of ['stdin', 'af_unix:/a', 'tail:/b'])
      expect(formatInputSpec(parseInputSpec(v) as never)).toBe(v);
  });

  it('openInput builds the stream; tail with a memory queue warns', () => {
    const root = mkdtempSync(join(tmpdir(), 'auditrelay-spec-'));
    try {
      const lines: { level: number; msg: string }[] = [];
      const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
      const stdin = new PassThrough();
      expect(openInput({ kind: 'stdin' }, { log, durableQueue: false, stdin }).stream).toBe(stdin);
      const a = openInput({ kind: 'af_unix', path: join(root, 's') }, { log, durableQueue: true });
      expect(a.stream).toBeInstanceOf(AfUnixInput);
      expect(a.name).toBe(`af_unix:${join(root, 's')}`);
      a.close();
      const t = openInput(
        { kind: 'tail', path: join(root, 'audit.log') },
        { log, durableQueue: false, tailStateFile: join(root, 'st') },
      );
      expect(t.stream).toBeInstanceOf(TailInput);
      expect((t.stream as TailInput).stateFile).toBe(join(root, 'st'));
      t.close();
      expect(lines.filter((l) => l.level === 40).map((l) => l.msg)).toEqual([
        expect.stringMatching(/^input = tail with mode = immediate/),
      ]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
