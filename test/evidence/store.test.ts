/**
 * The tamper-evident store (docs/evidence.md): logs written through EvidenceWriter exactly as a log writer does
 * (line to the log, then append()), then `verify` — the module and the built CLI — on a fresh log, on logs whose
 * records were edited, deleted, inserted, reordered and truncated (each caught at the right line), on a rotated
 * set, after crashes (a chain lagging the log, a torn side file, a real kill -9 of a writing process, a log that
 * lost its unsigned tail, a rotation cut short), and inclusion proofs. Keys: mode 0400 in a private directory.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadSigningKey } from '../../src/evidence/keys.js';
import { parseVerifierKey } from '../../src/evidence/note.js';
import { formatProblem, verifyInclusionProof, verifyPath } from '../../src/evidence/verify.js';
import { EvidenceWriter, type EvidenceWriterOptions } from '../../src/evidence/writer.js';
import { inPrivateTmpfs } from '../fault/kit.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');
const dirs: string[] = [];
const pids: number[] = [];

afterEach(() => {
  for (const pid of pids.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

beforeAll(() => {
  if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('run `npm run build` first');
});

function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-evidence-'));
  chmodSync(d, 0o700);
  dirs.push(d);
  return d;
}

const record = (i: number, host = 'web1') =>
  `node=${host} type=SYSCALL msg=audit(1700000000.${String(i % 1000).padStart(3, '0')}:${i}): arch=c000003e syscall=59 success=yes pid=${1000 + i} comm="x${i}"`;

/** A log written as a collector would: the line, then the evidence. */
class TestLog {
  readonly dir: string;
  readonly file: string;
  readonly keyFile: string;
  w: EvidenceWriter;
  next = 0;
  batches = 0;
  /** Every line written, in order. */
  written: string[] = [];

  constructor(dir = tempDir(), extra: Partial<EvidenceWriterOptions> = {}) {
    this.dir = dir;
    this.file = path.join(dir, 'audit.log');
    this.keyFile = path.join(dir, 'keys', 'signing.key');
    this.w = this.open(extra);
  }

  open(extra: Partial<EvidenceWriterOptions> = {}): EvidenceWriter {
    this.w = EvidenceWriter.open({
      logFile: this.file,
      keyFile: this.keyFile,
      checkpointIntervalMs: 0,
      ...extra,
    });
    return this.w;
  }

  write(count: number, hosts = ['web1', 'web2', 'db1'], batch = 3): void {
    for (let i = 0; i < count; ) {
      const host = hosts[this.batches++ % hosts.length]!;
      const n = Math.min(batch, count - i);
      const recs = Array.from({ length: n }, (_, k) => record(this.next + k, host));
      this.written.push(...recs);
      const lines = recs.map((l) => `${l}\n`).join('');
      appendFileSync(this.file, lines);
      this.w.append(host, Buffer.from(lines));
      this.next += n;
      i += n;
    }
  }

  /** auditd's rotation: LOG.(n-1) → LOG.n ... LOG → LOG.1, then the writer starts a new segment. */
  rotate(numLogs = 5): void {
    for (let i = numLogs - 1; i >= 1; i--) {
      if (existsSync(`${this.file}.${i}`)) renameSync(`${this.file}.${i}`, `${this.file}.${i + 1}`);
    }
    renameSync(this.file, `${this.file}.1`);
    this.w.rotate();
  }

  lines(file = this.file): string[] {
    return readFileSync(file, 'utf8').split('\n').slice(0, -1);
  }

  setLines(lines: string[], file = this.file): void {
    writeFileSync(file, lines.map((l) => `${l}\n`).join(''));
  }

  vkey(): string {
    return loadSigningKey({ file: this.keyFile, create: false }).verifier.text;
  }
}

/** verifyPath with the test log's key trusted (the key file is DIR/keys/signing.key of the log's directory). */
function verify(target: string, extra: Parameters<typeof verifyPath>[1] = {}) {
  const st = statSync(target);
  const dir = st.isDirectory() && !target.endsWith('.evidence') ? target : path.dirname(target);
  const key = parseVerifierKey(
    loadSigningKey({ file: path.join(dir, 'keys', 'signing.key'), create: false }).verifier.text,
  );
  if (typeof key === 'string') throw new Error(key);
  const r = verifyPath(target, { keys: [key], ...extra });
  return { ...r, lines: r.problems.map(formatProblem) };
}

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('a fresh log', () => {
  it('verifies (module and CLI, with the key printed by pubkey); side files and key are private', async () => {
    const t = new TestLog();
    t.write(100);
    t.w.checkpoint();
    t.write(20);
    t.w.close();
    const r = verify(t.file);
    expect(r.lines).toEqual([]);
    expect(r).toMatchObject({ logs: 1, records: 120, checkpoints: 2, lastCheckpoint: { size: 120 } });
    const pub = await cli(['pubkey', '--key-file', t.keyFile]);
    expect(pub.code).toBe(0);
    expect(pub.stdout.trim()).toBe(t.vkey());
    const res = await cli(['verify', '--key', pub.stdout.trim(), t.file]);
    expect(res.stdout).toBe('');
    expect(res.stderr).toContain('intact: 1 log file(s), 120 record(s), 2 checkpoint(s) verified');
    expect(res.code).toBe(0);
    // Without --key: still verified, with a warning that the recorded key was used.
    const noKey = await cli(['verify', t.dir]);
    expect(noKey.code).toBe(0);
    expect(noKey.stderr).toContain('pass --key');
    expect(statSync(t.keyFile).mode & 0o777).toBe(0o400);
    expect(statSync(path.dirname(t.keyFile)).mode & 0o777).toBe(0o700);
    expect(statSync(`${t.file}.evidence`).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(`${t.file}.evidence`)) {
      expect(statSync(path.join(`${t.file}.evidence`, f)).mode & 0o777).toBe(0o600);
    }
    // The log lines are exactly what was written: nothing added.
    expect(t.lines()).toEqual(t.written);
  });

  it('a wrong trusted key fails every checkpoint', () => {
    const t = new TestLog();
    t.write(10);
    t.w.close();
    const other = new TestLog();
    other.w.close();
    const r = verifyPath(t.file, { keys: [parseVerifierKey(other.vkey()) as never] });
    expect(r.problems.map(formatProblem)).toEqual([
      expect.stringMatching(
        /0000000000000000\.chain:\d+: checkpoint signature does not verify with the trusted key$/,
      ),
      `${t.file}.evidence/checkpoint: checkpoint signature does not verify with the trusted key`,
    ]);
  });
});

describe('the writer', () => {
  it('writes a checkpoint on its timer when records were added, and none when nothing changed', async () => {
    const t = new TestLog(undefined, { checkpointIntervalMs: 25 });
    t.write(7);
    await pollUntil(() => t.w.status().checkpointSize === 7 || undefined, {
      timeoutMs: 10_000,
      what: 'the timer checkpoint over 7 records',
    });
    const seg = `${t.file}.evidence/0000000000000000.chain`;
    const count = () => (readFileSync(seg, 'utf8').match(/^c /gm) ?? []).length;
    expect(count()).toBe(1);
    t.write(2);
    await pollUntil(() => t.w.status().checkpointSize === 9 || undefined, {
      timeoutMs: 10_000,
      what: 'a second one',
    });
    t.w.close();
    expect(count()).toBe(2); // close() had nothing new to sign
    expect(verify(t.file).lines).toEqual([]);
    // A checkpoint signed while more records were appended stands after them (the timer's fsyncs run in the
    // background): still valid. One standing before records it claims is not.
    const lines = readFileSync(seg, 'utf8').split('\n');
    const c = lines.findIndex((l) => l.startsWith('c '));
    const later = [...lines];
    const [cl] = later.splice(c, 1);
    later.splice(c + 1, 0, cl!);
    writeFileSync(seg, later.join('\n'));
    expect(verify(t.file).lines).toEqual([]);
    const earlier = [...lines];
    earlier.splice(c, 1);
    earlier.splice(c - 1, 0, cl!);
    writeFileSync(seg, earlier.join('\n'));
    expect(verify(t.file).lines).toEqual([
      expect.stringMatching(
        /chain:\d+: checkpoint claims 7 records but stands after record 6 of a segment starting at 0/,
      ),
    ]);
  });

  it('keeps memory bounded in hosts: beyond maxHosts, records are chained as (other) and still verify', () => {
    const t = new TestLog(undefined, { maxHosts: 2 });
    t.write(12, ['a', 'b', 'c', 'd'], 1);
    t.w.close();
    const seg = readFileSync(`${t.file}.evidence/0000000000000000.chain`, 'utf8');
    expect(seg.match(/^h \d+ \S+ (.*)$/gm)?.map((l) => l.split(' ')[3])).toEqual(['a', 'b', '(other)']);
    expect(verify(t.file).lines).toEqual([]);
  });

  it('refuses an evidence directory that is a symbolic link or writable by others', () => {
    const d = tempDir();
    mkdirSync(path.join(d, 'elsewhere'), { mode: 0o700 });
    symlinkSync(path.join(d, 'elsewhere'), path.join(d, 'audit.log.evidence'));
    expect(() => new TestLog(d)).toThrow(/evidence directory .* is a symbolic link/);
    unlinkSync(path.join(d, 'audit.log.evidence'));
    mkdirSync(path.join(d, 'audit.log.evidence'), { mode: 0o700 });
    chmodSync(path.join(d, 'audit.log.evidence'), 0o777);
    expect(() => new TestLog(d)).toThrow(/writable by others/);
  });
});

describe('tampering with records of a log written through the writer', () => {
  function written(count = 60): TestLog {
    const t = new TestLog();
    t.write(count);
    t.w.close();
    return t;
  }

  it('an edited record: its line', async () => {
    const t = written();
    const lines = t.lines();
    lines[24] = lines[24]!.replace('success=yes', 'success=no');
    t.setLines(lines);
    expect(verify(t.file).lines).toEqual([
      `${t.file}:25: record changed: it does not match record index 24 of the evidence`,
    ]);
    const res = await cli(['verify', '--key', t.vkey(), t.file]);
    expect(res.code).toBe(1);
    expect(res.stdout).toBe(
      `${t.file}:25: record changed: it does not match record index 24 of the evidence\n`,
    );
    expect(res.stderr).toContain(`NOT intact: 1 problem(s); the first: ${t.file}:25:`);
  });

  it('a deleted record: the line where it is missing', () => {
    const t = written();
    const lines = t.lines();
    lines.splice(30, 1);
    t.setLines(lines);
    expect(verify(t.file).lines).toEqual([
      `${t.file}:31: record deleted before this line: record index 30 is missing`,
    ]);
  });

  it('an inserted record: its line', () => {
    const t = written();
    const lines = t.lines();
    lines.splice(12, 0, record(999));
    t.setLines(lines);
    expect(verify(t.file).lines).toEqual([`${t.file}:13: record inserted: it is not in the evidence`]);
  });

  it('reordered records: the line of the one out of place', () => {
    const t = written();
    const lines = t.lines();
    [lines[40], lines[41]] = [lines[41]!, lines[40]!];
    t.setLines(lines);
    const r = verify(t.file).lines;
    expect(r).toHaveLength(1);
    expect(r[0]).toMatch(
      new RegExp(
        `^${t.file}:4[12]: record out of order: it is record index 4[01], which belongs at line 4[12]$`,
      ),
    );
    // A record moved far away.
    const moved = t.lines();
    const [x] = moved.splice(5, 1);
    moved.splice(50, 0, x!);
    t.setLines(moved);
    expect(verify(t.file).lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/record out of order: it is record index 41, which belongs/),
      ]),
    );
  });

  it('a truncated log: where it ends and how many records are gone, also when cut inside a record', () => {
    const t = written();
    t.setLines(t.lines().slice(0, 57));
    expect(verify(t.file).lines).toEqual([
      `${t.file}:58: log truncated: 3 record(s) from here on are missing (record index 57..59)`,
    ]);
    const size = statSync(t.file).size;
    truncateSync(t.file, size - 10);
    expect(verify(t.file).lines).toEqual([
      `${t.file}:57: log truncated: 4 record(s) from here on are missing (record index 56..59) (the last line is cut short inside a record)`,
    ]);
  });

  it('a log and its evidence changed together: the signed checkpoint catches it, with the range', () => {
    const t = new TestLog();
    t.write(30);
    t.w.checkpoint();
    t.write(30);
    t.w.close();
    const lines = t.lines();
    lines[40] = `${lines[40]} forged=1`;
    t.setLines(lines);
    // Rewrite the evidence entry to the forged line's digest, as an attacker without the key would.
    const seg = `${t.file}.evidence/0000000000000000.chain`;
    const text = readFileSync(seg, 'utf8').split('\n');
    const rIdx = text.findIndex(
      (l, i) => /^[rR] /.test(l) && text.slice(0, i).filter((x) => /^[rR] /.test(x)).length === 40,
    );
    const parts = text[rIdx]!.split(' ');
    parts[2] = createHash('sha256').update(lines[40]!).digest('base64');
    text[rIdx] = parts.join(' ');
    writeFileSync(seg, text.join('\n'));
    const r = verify(t.file).lines;
    expect(r).toEqual([
      expect.stringMatching(
        /0000000000000000\.chain:\d+: signed checkpoint over 60 records does not match the evidence: entries between record index 30 and 59 were changed \(audit\.log lines 31\.\.60\)$/,
      ),
      `${t.file}.evidence/checkpoint: checkpoint over 60 records does not match the evidence: records before index 60 were changed`,
    ]);
  });

  it('a log and its evidence truncated together: caught by a checkpoint kept elsewhere, and by the latest checkpoint file', async () => {
    const t = new TestLog();
    t.write(40);
    t.w.close();
    const kept = path.join(t.dir, 'kept-checkpoint');
    writeFileSync(kept, readFileSync(`${t.file}.evidence/checkpoint`));
    // Remove the last 10 records from the log and their entries (and the checkpoint) from the evidence.
    t.setLines(t.lines().slice(0, 30));
    const seg = `${t.file}.evidence/0000000000000000.chain`;
    const entries = readFileSync(seg, 'utf8').split('\n');
    let seen = 0;
    const cut = entries.findIndex((l) => /^[rR] /.test(l) && ++seen === 31);
    writeFileSync(seg, `${entries.slice(0, cut).join('\n')}\n`);
    const res = await cli(['verify', '--key', t.vkey(), '--checkpoint', kept, t.file]);
    expect(res.code).toBe(1);
    expect(res.stdout).toContain(`${kept}: checkpoint covers 40 records but the evidence holds only 30`);
    expect(res.stdout).toContain(`${t.file}.evidence/checkpoint: checkpoint covers 40 records`);
  });

  it('a side file with a malformed entry: named with its line; the writer refuses to go on from it', () => {
    const t = written(10);
    const seg = `${t.file}.evidence/0000000000000000.chain`;
    const at = readFileSync(seg, 'utf8').split('\n').length;
    appendFileSync(seg, 'r 1 not-base64\n');
    expect(verify(t.file).lines).toContain(`${seg}:${at}: malformed evidence entry 'r 1 not-base64'`);
    expect(() => t.open()).toThrow(
      new RegExp(`0000000000000000\\.chain:${at}: malformed evidence entry.*move .* aside`),
    );
  });
});

describe('rotation', () => {
  it('a rotated set verifies as a whole and file by file; the chain goes on across files', async () => {
    const t = new TestLog();
    t.write(25);
    t.rotate();
    t.write(25, ['web1', 'web3']);
    t.rotate();
    t.write(10);
    t.w.close();
    expect(readdirSync(`${t.file}.evidence`).filter((n) => n.endsWith('.chain'))).toEqual([
      '0000000000000000.chain',
      '0000000000000025.chain',
      '0000000000000050.chain',
    ]);
    const r = verify(t.dir);
    expect(r.lines).toEqual([]);
    expect(r).toMatchObject({ logs: 3, records: 60 });
    for (const f of [`${t.file}.2`, `${t.file}.1`, t.file]) expect(verify(f).lines).toEqual([]);
    const res = await cli(['verify', '--key', t.vkey(), t.dir]);
    expect(res.code).toBe(0);
    // The host chains continue: the second segment declares web1's head as the first left it.
    const seg2 = readFileSync(`${t.file}.evidence/0000000000000025.chain`, 'utf8');
    expect(seg2).toMatch(/^h 1 \S+ web1$/m);
    expect(seg2).not.toMatch(/^h 1 A{43}= web1$/m);
    // Tampering with that declaration breaks the chain.
    writeFileSync(
      `${t.file}.evidence/0000000000000025.chain`,
      seg2.replace(/^h 1 \S+ web1$/m, `h 1 ${'A'.repeat(43)}= web1`),
    );
    expect(verify(t.dir).lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/0000000000000025\.chain:8: the chain of host web1 does not continue/),
      ]),
    );
  });

  it('a log renamed by logrotate (dateext) verifies as part of the set and on its own', () => {
    const t = new TestLog();
    t.write(12);
    renameSync(t.file, `${t.file}-20261201`);
    t.w.rotate();
    t.write(4);
    t.w.close();
    expect(verify(t.dir).lines).toEqual([]);
    expect(verify(t.dir).logs).toBe(2);
    expect(verify(`${t.file}-20261201`).lines).toEqual([]);
    expect(verify(`${t.file}-20261201`).records).toBe(12);
  });

  it('a rotated log deleted with its evidence pruned at the next rotation still verifies; a deleted middle file does not', () => {
    const t = new TestLog();
    for (let k = 0; k < 3; k++) {
      t.write(10);
      t.rotate(3);
    }
    t.write(5);
    // num_logs = 3: audit.log.3 would be the oldest; auditd removes it.
    unlinkSync(`${t.file}.3`);
    t.rotate(3);
    t.write(5);
    t.w.close();
    expect(readdirSync(`${t.file}.evidence`).filter((n) => n.endsWith('.chain')).length).toBe(4);
    expect(verify(t.dir).lines).toEqual([]);
    unlinkSync(`${t.file}.2`);
    expect(verify(t.dir).lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/no log file matches this evidence: the log was deleted, renamed or replaced/),
      ]),
    );
  });
});

describe('crashes never read as tampering', () => {
  it('records in the log that the chain lacks (killed between the two writes): a warning, then chained at the next start', () => {
    const t = new TestLog();
    t.write(20);
    t.w.checkpoint();
    // The process dies after writing two records to the log, before append().
    appendFileSync(t.file, `${record(100)}\n${record(101)}\n`);
    const before = verify(t.file);
    expect(before.lines).toEqual([]);
    expect(before.warnings.join('\n')).toContain('the last 2 record(s) are not chained yet');
    t.open();
    t.write(5);
    t.w.close();
    const after = verify(t.file);
    expect(after.lines).toEqual([]);
    expect(after.warnings.join('\n')).toContain('2 record(s) were chained by re-reading the log');
    expect(readFileSync(`${t.file}.evidence/0000000000000000.chain`, 'utf8')).toMatch(/^R 1 /m);
  });

  it('a torn last entry of the side file: a warning, then cut and re-read at the next start', () => {
    const t = new TestLog();
    t.write(20);
    const seg = `${t.file}.evidence/0000000000000000.chain`;
    appendFileSync(t.file, `${record(20)}\n`);
    appendFileSync(seg, 'r 1 AbCd'); // killed in the middle of writing the entry
    const before = verify(t.file);
    expect(before.lines).toEqual([]);
    expect(before.warnings.join('\n')).toContain('incomplete last entry (8 bytes)');
    t.open();
    t.w.close();
    const after = verify(t.file);
    expect(after.lines).toEqual([]);
    expect(readFileSync(seg, 'utf8')).not.toContain('AbCd');
  });

  it('kill -9 of a process writing log and evidence as fast as it can: verify finds no problem, before and after a restart', async () => {
    const d = tempDir();
    const script = `
      import { appendFileSync } from 'node:fs';
      import { EvidenceWriter } from ${JSON.stringify(path.join(REPO_ROOT, 'dist/src/evidence/writer.js'))};
      const log = ${JSON.stringify(path.join(d, 'audit.log'))};
      const w = EvidenceWriter.open({ logFile: log, keyFile: ${JSON.stringify(path.join(d, 'keys/signing.key'))}, checkpointIntervalMs: 20 });
      let i = 0;
      const step = () => {
        for (let k = 0; k < 50; k++, i++) {
          const lines = Buffer.from(Array.from({ length: 1 + (i % 7) }, (_, j) => 'node=h' + (i % 3) + ' type=SYSCALL msg=audit(1700000000.000:' + i + '): n=' + j + '\\n').join(''));
          appendFileSync(log, lines);
          w.append('h' + (i % 3), lines);
          if (i === 2000) process.stdout.write('ready\\n');
        }
        setImmediate(step);
      };
      step();
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    pids.push(child.pid!);
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s) => (out += s));
    await pollUntil(() => out.includes('ready'), {
      timeoutMs: 30_000,
      what: 'the writer to have written 2,000 batches',
    });
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(child.pid!, 'SIGKILL');
    await exited;
    const log = path.join(d, 'audit.log');
    const before = verify(log);
    expect(before.lines).toEqual([]);
    const w = EvidenceWriter.open({
      logFile: log,
      keyFile: path.join(d, 'keys/signing.key'),
      checkpointIntervalMs: 0,
    });
    w.close();
    const after = verify(log);
    expect(after.lines).toEqual([]);
    expect(after.warnings.filter((x) => /not chained yet|incomplete/.test(x))).toEqual([]);
    expect(after.records).toBe(readFileSync(log, 'utf8').split('\n').length - 1);
  });

  it('a log that lost its unsigned tail (power loss with a lazy fsync): recorded at restart, a warning; a lost signed record is a problem', () => {
    const t = new TestLog();
    t.write(30);
    t.w.checkpoint();
    t.write(6);
    // Power loss: the log's last 4 records never reached the disk, their entries did. The process restarts.
    t.setLines(t.lines().slice(0, 32));
    t.open();
    t.write(3);
    t.w.close();
    const r = verify(t.file);
    expect(r.lines).toEqual([]);
    expect(r.warnings.join('\n')).toContain(
      '4 record(s) (index 32..35) were missing from the log at a restart and had not been signed',
    );
    expect(readFileSync(`${t.file}.evidence/0000000000000000.chain`, 'utf8')).toMatch(/^x 4$/m);
    // Lost records that a checkpoint had signed cannot be a crash: the log was fsynced before signing.
    const u = new TestLog();
    u.write(30);
    u.w.checkpoint();
    u.setLines(u.lines().slice(0, 27));
    u.open();
    u.w.close();
    expect(verify(u.file).lines).toEqual([
      `${u.file}: record index 29 was signed in a checkpoint but is missing from the log: removed`,
      `${u.file}: record index 28 was signed in a checkpoint but is missing from the log: removed`,
      `${u.file}: record index 27 was signed in a checkpoint but is missing from the log: removed`,
    ]);
  });

  it('a rotation cut short by a crash (log renamed, writer not told): finished at the next start', () => {
    const t = new TestLog();
    t.write(20);
    renameSync(t.file, `${t.file}.1`);
    appendFileSync(`${t.file}.1`, `${record(500)}\n`); // written just before the rename, never chained
    t.open();
    t.write(5);
    t.w.close();
    const r = verify(t.dir);
    expect(r.lines).toEqual([]);
    expect(r.logs).toBe(2);
    expect(r.records).toBe(26);
  });

  it('evidence switched on for an existing log: its records are adopted (re-read) and verify', () => {
    const d = tempDir();
    writeFileSync(path.join(d, 'audit.log'), `${record(1)}\n${record(2)}\n`);
    const t = new TestLog(d);
    t.write(3);
    t.w.close();
    const r = verify(t.file);
    expect(r.lines).toEqual([]);
    expect(r.records).toBe(5);
  });
});

const canMount = requireOrSkip({
  suite: 'evidence on a really full disk (a private tmpfs)',
  root: true,
  binaries: ['unshare', 'mount'],
});

describe.skipIf(!canMount)('a really full disk (a private tmpfs)', () => {
  it('side files that cannot be written, a rotation in between: finished once there is room, nothing unchained, few log lines', async () => {
    const d = tempDir();
    const fsDir = path.join(d, 'fs');
    mkdirSync(fsDir);
    const dist = (m: string) => JSON.stringify(path.join(REPO_ROOT, 'dist/src/evidence', m));
    // Runs inside the private mount namespace: the tmpfs is visible to it alone.
    const script = `
      import { appendFileSync, closeSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
      import { EvidenceWriter } from ${dist('writer.js')};
      import { formatProblem, verifyPath } from ${dist('verify.js')};
      import { loadSigningKey } from ${dist('keys.js')};
      import { parseVerifierKey } from ${dist('note.js')};
      const D = ${JSON.stringify(fsDir)};
      const file = D + '/audit.log';
      const keyFile = D + '/keys/signing.key';
      const errors = [];
      const log = { info() {}, warn() {}, error(_o, m) { errors.push(m); } };
      const w = EvidenceWriter.open({ logFile: file, keyFile, checkpointIntervalMs: 0, log });
      let n = 0;
      const line = (host) => Buffer.from('node=' + host + ' type=SYSCALL msg=audit(1700000000.000:' + n + '): n=' + n++ + ' pad=' + 'x'.repeat(100) + '\\n');
      const write = (count, host) => {
        for (let i = 0; i < count; i++) { const l = line(host); appendFileSync(file, l); w.append(host, l); }
      };
      const fill = (f) => {
        const fd = openSync(f, 'w');
        for (const size of [1 << 16, 1 << 12, 1]) {
          const chunk = Buffer.alloc(size);
          try { for (;;) writeSync(fd, chunk); } catch (e) { if (e.code !== 'ENOSPC') throw e; }
        }
        closeSync(fd);
      };
      write(100, 'a');
      // In the log before the disk fills; their evidence comes after.
      const pending = Array.from({ length: 300 }, () => line('b'));
      appendFileSync(file, Buffer.concat(pending));
      fill(D + '/filler');
      const t0 = Date.now();
      for (const l of pending) w.append('b', l);
      const laggingWhileFull = w.status().lagging;
      renameSync(file, file + '.1');
      w.rotate();
      const laggingAfterRotate = w.status().lagging;
      const elapsed = Date.now() - t0;
      const errorsWhileFull = errors.length;
      unlinkSync(D + '/filler');
      write(50, 'c'); // the new log, the disk has room again
      w.checkpoint();
      const laggingAfterRoom = w.status().lagging;
      write(50, 'd');
      w.close();
      const key = parseVerifierKey(loadSigningKey({ file: keyFile, create: false }).verifier.text);
      const r = verifyPath(D, { keys: [key] });
      process.stdout.write(JSON.stringify({
        laggingWhileFull, laggingAfterRotate, laggingAfterRoom, elapsed, errorsWhileFull,
        errors: errors.slice(0, 5), problems: r.problems.map(formatProblem), records: r.records, logs: r.logs,
      }));
    `;
    const [cmd, argv] = inPrivateTmpfs(fsDir, '2m', process.execPath, ['--input-type=module', '-e', script]);
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    pids.push(child.pid!);
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (s) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s) => (err += s));
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code, err).toBe(0);
    const r = JSON.parse(out);
    expect(r.laggingWhileFull, 'the side file could not be written').toBe(true);
    expect(r.laggingAfterRotate, 'the rotation waits for room').toBe(true);
    expect(r.laggingAfterRoom, 'level with the log once there is room').toBe(false);
    expect(r.errors[0]).toMatch(/ENOSPC/);
    // One line for the first failure, then at most one per retry (RETRY_MS = 1 s) and the rotation's attempt.
    expect(r.errorsWhileFull).toBeLessThanOrEqual(3 + Math.ceil(r.elapsed / 1000));
    expect(r.problems).toEqual([]);
    expect(r.logs).toBe(2);
    expect(r.records).toBe(500);
  });
});

describe('inclusion proofs', () => {
  it('--prove LINE prints a proof that --proof checks on its own; an altered proof fails', async () => {
    const t = new TestLog();
    t.write(50);
    t.rotate();
    t.write(10);
    t.w.close();
    const res = await cli(['verify', '--key', t.vkey(), '--prove', '17', `${t.file}.1`]);
    expect(res.code).toBe(0);
    const proof = JSON.parse(res.stdout);
    expect(proof).toMatchObject({
      line: 17,
      index: 16,
      host: 'db1',
      tree_size: 50,
      record: t.lines(`${t.file}.1`)[16],
    });
    const key = parseVerifierKey(t.vkey()) as never;
    expect(verifyInclusionProof(proof, [key])).toEqual([]);
    const file = path.join(t.dir, 'proof.json');
    writeFileSync(file, res.stdout);
    const check = await cli(['verify', '--proof', file, '--key', t.vkey()]);
    expect(check.code).toBe(0);
    writeFileSync(file, JSON.stringify({ ...proof, host: 'web1' }));
    const bad = await cli(['verify', '--proof', file, '--key', t.vkey()]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toContain('do not lead to the signed root');
    expect(
      verifyInclusionProof({ ...proof, record_base64: Buffer.from('forged').toString('base64') }, [key]),
    ).toHaveLength(1);
    // A line of the current log after the last checkpoint... is covered by the close checkpoint; a changed line is not provable.
    const lines = t.lines();
    lines[3] = `${lines[3]} x=1`;
    t.setLines(lines);
    const changed = await cli(['verify', '--key', t.vkey(), '--prove', '4', t.file]);
    expect(changed.code).toBe(1);
    expect(changed.stdout).toContain(`${t.file}:4: cannot prove inclusion`);
  });
});

describe('keys', () => {
  it('refuses a key readable by others, a key directory writable by others, and a symlinked key', () => {
    const d = tempDir();
    const keyFile = path.join(d, 'keys', 'signing.key');
    const k = loadSigningKey({ file: keyFile, create: true, name: 'test-key' });
    expect(k.created).toBe(true);
    expect(k.verifier.text).toMatch(/^test-key\+[0-9a-f]{8}\+/);
    expect(loadSigningKey({ file: keyFile, create: true }).verifier.text).toBe(k.verifier.text);
    chmodSync(keyFile, 0o440);
    expect(() => loadSigningKey({ file: keyFile, create: false })).toThrow(
      /readable or writable by others \(mode 0440\)/,
    );
    chmodSync(keyFile, 0o400);
    chmodSync(path.dirname(keyFile), 0o770);
    expect(() => loadSigningKey({ file: keyFile, create: false })).toThrow(/writable by its group/);
    chmodSync(path.dirname(keyFile), 0o700);
    const link = path.join(d, 'keys', 'link.key');
    symlinkSync(keyFile, link);
    expect(() => loadSigningKey({ file: link, create: false })).toThrow(/symbolic link/);
    mkdirSync(path.join(d, 'other'), { mode: 0o700 });
    expect(() => loadSigningKey({ file: path.join(d, 'other', 'none.key'), create: false })).toThrow(
      /ENOENT/,
    );
  });

  it('pubkey without a key says how to get one', async () => {
    const d = tempDir();
    const res = await cli(['pubkey', '--key-file', path.join(d, 'none.key')]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('no evidence signing key at');
    const gen = await cli([
      'pubkey',
      '--key-file',
      path.join(d, 'k', 'new.key'),
      '--generate',
      '--name',
      'n1',
    ]);
    expect(gen.code).toBe(0);
    expect(gen.stdout).toMatch(/^n1\+[0-9a-f]{8}\+\S+\n$/);
  });
});
