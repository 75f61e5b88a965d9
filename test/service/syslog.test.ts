/**
 * The syslog target (src/service/syslog.ts, src/log.ts) against a datagram /dev/log, as on Debian (journald's
 * /run/systemd/journal/dev-log, or rsyslog's): a small python3 program binds the datagram socket (Node cannot
 * receive unix datagrams) and prints one JSON line per message; on `hold` it stops reading, on `read` it resumes,
 * as a syslog daemon that does not keep up. The stream fallback is tested against a Node stream socket (and, with
 * the real forking auditd, in test/plugin/syslog.test.ts, whose sandbox serves /dev/log as a stream socket).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, plainText, resolveLogTarget, type StderrKind } from '../../src/log.js';
import { BACKLOG_MESSAGES, MAX_MESSAGE_BYTES, SyslogWriter, syslogTime } from '../../src/service/syslog.js';
import { unixAddonPath } from '../../src/service/unix-dgram.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';

const RECEIVER = `
import json, os, select, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
reading = not (len(sys.argv) > 2 and sys.argv[2] == '--hold')
print(json.dumps({"ready": True}), flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin] if reading else [sys.stdin], [], [])
    if sys.stdin in r:
        cmd = sys.stdin.readline().strip()
        if cmd == '':
            break
        reading = cmd == 'read'
        print(json.dumps({"ack": cmd}), flush=True)
    if s in r:
        data = s.recv(65536)
        print(json.dumps({"data": data.decode("utf-8", "replace")}), flush=True)
`;

interface Receiver {
  got: string[];
  acks: string[];
  child: ChildProcess;
  command(cmd: 'hold' | 'read'): Promise<void>;
}

let root = '';
const procs: ChildProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) await terminate(p, 'SIGTERM', 5000);
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

async function receiver(sockPath: string, opts: { hold?: boolean } = {}): Promise<Receiver> {
  const script = join(root, 'receiver.py');
  writeFileSync(script, RECEIVER);
  const child = spawn(findBinary('python3')!, [script, sockPath, ...(opts.hold ? ['--hold'] : [])], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  procs.push(child);
  const r: Receiver = {
    got: [],
    acks: [],
    child,
    async command(cmd) {
      const n = r.acks.length;
      child.stdin!.write(`${cmd}\n`);
      await pollUntil(() => r.acks.length > n, { timeoutMs: 10_000, what: `the receiver to ${cmd}` });
    },
  };
  let ready = false;
  let buf = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const v = JSON.parse(buf.slice(0, nl)) as { ready?: boolean; data?: string; ack?: string };
      buf = buf.slice(nl + 1);
      if (v.ready) ready = true;
      else if (v.ack) r.acks.push(v.ack);
      else if (v.data !== undefined) r.got.push(v.data);
    }
  });
  await pollUntil(() => ready, { timeoutMs: 10_000, what: 'the python receiver', diagnostics: () => stderr });
  return r;
}

const HEADER = /^<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) auditrelay\[(\d+)\]: (.*)$/s;

function parse(raw: string): { pri: number; time: string; pid: number; text: string } {
  const m = HEADER.exec(raw);
  if (!m) throw new Error(`not a syslog line: ${JSON.stringify(raw)}`);
  return { pri: Number(m[1]), time: m[2]!, pid: Number(m[3]), text: m[4]! };
}

describe('log target: the automatic choice and the overrides', () => {
  const kinds: [StderrKind, string][] = [
    ['tty', 'stderr'],
    ['journal', 'journal'],
    ['devnull', 'syslog'],
    ['closed', 'syslog'],
    ['other', 'stderr'],
  ];
  for (const [kind, target] of kinds) {
    it(`stderr ${kind} → ${target}`, () => {
      expect(resolveLogTarget('auto', {}, () => kind).target).toBe(target);
    });
  }

  it('log_target chooses; AUDITRELAY_LOG_TARGET overrides it; a bad override is ignored with a warning', () => {
    expect(resolveLogTarget('syslog', {}, () => 'tty')).toEqual({
      target: 'syslog',
      reason: 'log_target = syslog',
    });
    expect(resolveLogTarget('syslog', { AUDITRELAY_LOG_TARGET: 'stderr' }, () => 'devnull')).toEqual({
      target: 'stderr',
      reason: 'AUDITRELAY_LOG_TARGET = stderr',
    });
    expect(resolveLogTarget('auto', { AUDITRELAY_LOG_TARGET: 'Journal' }, () => 'other').target).toBe(
      'journal',
    );
    expect(resolveLogTarget('auto', { AUDITRELAY_LOG_TARGET: 'kafka' }, () => 'devnull').target).toBe(
      'syslog',
    );
  });

  /** What a child process decides about its own stderr. */
  function childKind(stdio: 'ignore' | 'pipe', journal: boolean): string {
    const script = `
      import { fstatSync } from 'node:fs';
      import { stderrKind } from ${JSON.stringify(join(REPO_ROOT, 'dist/src/log.js'))};
      const st = fstatSync(2, { bigint: true });
      const env = ${journal} ? { JOURNAL_STREAM: st.dev + ':' + st.ino } : { JOURNAL_STREAM: st.dev + ':1' };
      process.stdout.write(stderrKind(env));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', stdio],
      encoding: 'utf8',
    });
    return r.stdout;
  }

  it("what a process's stderr is, from its own point of view", () => {
    expect(childKind('ignore', false)).toBe('devnull'); // /dev/null: an auditd plugin
    expect(childKind('pipe', false)).toBe('other'); // a pipe whose inode JOURNAL_STREAM does not name
    expect(childKind('pipe', true)).toBe('journal'); // the stream journald handed over
  });

  it('journal: one line per message, its priority as a <N> prefix, no timestamp (journald adds it)', () => {
    const script = `
      import { fstatSync } from 'node:fs';
      import { createLogger } from ${JSON.stringify(join(REPO_ROOT, 'dist/src/log.js'))};
      const st = fstatSync(2, { bigint: true });
      process.env.JOURNAL_STREAM = st.dev + ':' + st.ino;
      const log = createLogger({ level: 'debug' });
      log.debug('d');
      log.info({ server: '192.0.2.1:60' }, 'connected');
      log.warn({ reason: 'server closed the connection (EOF)' }, 'link lost\\nsecond line');
      log.error('e');
      log.fatal('f');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr.split('\n')).toEqual([
      '<7>d',
      '<6>connected  server=192.0.2.1:60',
      '<4>link lost\\nsecond line  reason="server closed the connection (EOF)"',
      '<3>e',
      '<2>f',
      '',
    ]);
  });

  it('plain text: values with spaces, quotes or newlines are JSON-quoted; objects are JSON', () => {
    expect(plainText({ msg: 'm', rest: { a: 'x', b: 'two words', c: 3, d: { e: [1] }, f: '' } })).toBe(
      'm  a=x b="two words" c=3 d={"e":[1]} f=""',
    );
  });
});

const available = requireOrSkip({
  suite: 'syslog target against a datagram /dev/log (python3 receiver)',
  binaries: ['python3'],
  files: [unixAddonPath()],
});

describe.skipIf(!available)('syslog target: datagrams to /dev/log', () => {
  it('glibc-style lines, facility daemon, identifier auditrelay, pino levels as syslog severities', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-syslog-'));
    const sock = join(root, 'log.sock');
    const r = await receiver(sock);
    const log = createLogger({ level: 'info', target: 'syslog', syslog: { path: sock } });
    log.debug('not at info');
    log.info({ server: '192.0.2.1:60', backlog: 3 }, 'connected to the server');
    log.warn('w');
    log.error({ err: 'ECONNREFUSED' }, 'e');
    log.fatal('f');
    await pollUntil(() => r.got.length === 4, { timeoutMs: 10_000, what: '4 messages' });
    const lines = r.got.map(parse);
    expect(lines.map((l) => l.pri)).toEqual([3 * 8 + 6, 3 * 8 + 4, 3 * 8 + 3, 3 * 8 + 2]);
    expect(lines.map((l) => l.text)).toEqual([
      'connected to the server  server=192.0.2.1:60 backlog=3',
      'w',
      'e  err=ECONNREFUSED',
      'f',
    ]);
    expect(new Set(lines.map((l) => l.pid))).toEqual(new Set([process.pid]));
  });

  it('the header time is local time, as glibc writes it (%h %e %T)', () => {
    expect(syslogTime(new Date(2024, 0, 5, 7, 8, 9))).toBe('Jan  5 07:08:09');
    expect(syslogTime(new Date(2024, 11, 25, 23, 59, 0))).toBe('Dec 25 23:59:00');
  });

  it('a message longer than 8 KiB is cut on a character boundary', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-syslog-'));
    const sock = join(root, 'log.sock');
    const r = await receiver(sock);
    const w = new SyslogWriter({ path: sock });
    w.write(6, 'é'.repeat(10_000));
    await pollUntil(() => r.got.length === 1, { timeoutMs: 10_000, what: 'the message' });
    const got = r.got[0]!;
    expect(Buffer.byteLength(got)).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    expect(got).toMatch(/^<30>.*: (é)+ …\(cut\)$/s);
    w.close();
  });

  it('a daemon that does not read never blocks us; what it missed is counted and reported', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-syslog-'));
    const sock = join(root, 'log.sock');
    const r = await receiver(sock, { hold: true });
    const w = new SyslogWriter({ path: sock });
    // Its queue takes what the kernel allows (net.unix.max_dgram_qlen, our socket's send buffer); then
    // BACKLOG_MESSAGES wait with us, and the rest are lost.
    const total = 2000;
    for (let i = 0; i < total; i++) w.write(6, `m${i}`);
    const inQueue = w.stats.sent;
    expect(inQueue).toBeGreaterThan(0);
    const lost = total - inQueue - BACKLOG_MESSAGES;
    expect(lost).toBeGreaterThan(0);
    expect(w.stats.dropped).toBe(lost);
    await r.command('read');
    await pollUntil(() => r.got.length === inQueue + 1 + BACKLOG_MESSAGES, {
      timeoutMs: 10_000,
      what: 'the queued messages and the report',
      diagnostics: () => `${r.got.length} received`,
    });
    const texts = r.got.map((g) => parse(g).text);
    expect(texts.slice(0, inQueue)).toEqual(Array.from({ length: inQueue }, (_, i) => `m${i}`));
    expect(texts[inQueue]).toBe(
      `${lost} log message(s) were lost while ${sock} did not take them (${sock}: EAGAIN)`,
    );
    expect(parse(r.got[inQueue]!).pri).toBe(3 * 8 + 4);
    expect(texts.slice(inQueue + 1)).toEqual(
      Array.from({ length: BACKLOG_MESSAGES }, (_, i) => `m${total - BACKLOG_MESSAGES + i}`),
    );
    expect(w.stats).toEqual({ sent: total - lost, dropped: lost });
    w.close();
  });

  it('no daemon yet: messages wait (bounded) and go out once /dev/log appears; a restarted daemon is found again', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-syslog-'));
    const sock = join(root, 'log.sock');
    const w = new SyslogWriter({ path: sock });
    w.write(6, 'before');
    expect(w.transport).toBe('none');
    expect(w.lastError).toBe(`${sock}: ENOENT`);
    const r1 = await receiver(sock);
    await pollUntil(() => r1.got.length === 1, { timeoutMs: 10_000, what: 'the waiting message' });
    expect(parse(r1.got[0]!).text).toBe('before');
    expect(w.transport).toBe('datagram');
    // The daemon restarts: a new socket at the same path.
    await terminate(r1.child, 'SIGTERM', 5000);
    rmSync(sock);
    const r2 = await receiver(sock);
    w.write(4, 'after the restart');
    await pollUntil(() => r2.got.length === 1, { timeoutMs: 10_000, what: 'the message after the restart' });
    expect(parse(r2.got[0]!).text).toBe('after the restart');
    expect(w.stats).toEqual({ sent: 2, dropped: 0 });
    w.close();
  });
});

describe('syslog target: a stream /dev/log', () => {
  it('falls back to a stream connection with NUL-terminated messages, as glibc', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-syslog-'));
    const sock = join(root, 'log.sock');
    let data = '';
    const server = net.createServer((c) => c.on('data', (d) => (data += d.toString('utf8'))));
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      const w = new SyslogWriter({ path: sock });
      w.write(3, 'one');
      w.write(6, 'two');
      expect(w.transport).toBe('stream');
      await pollUntil(() => data.split('\0').length === 3, { timeoutMs: 10_000, what: 'two messages' });
      expect(data.split('\0').map((m) => (m ? parse(m).text : m))).toEqual(['one', 'two', '']);
      expect(parse(data.split('\0')[0]!).pri).toBe(27);
      w.close();
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
