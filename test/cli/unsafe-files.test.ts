/**
 * The agent's and the queue's files under attack, with the built CLI (issue 9, items 3, 4 and 8): planted
 * symbolic links at temporary files, directories others can write, FIFOs where a file is read, hostile
 * lengths in an import file, a queue directory under /proc. Every case has a deadline: a hang is a failure,
 * never a stuck test run. Every process started here is killed by pid in afterEach.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
/** Long enough for a loaded machine, far shorter than "forever". */
const DEADLINE_MS = 15_000;

interface Run {
  child: ChildProcess;
  out: () => string;
  err: () => string;
}

const children: ChildProcess[] = [];
const dirs: string[] = [];
let server: ScriptServer | undefined;

beforeAll(() => {
  if (!existsSync(path.join(REPO_ROOT, 'dist', 'src', 'cli.js'))) {
    throw new Error('dist/src/cli.js is missing: run `npm run build` before the CLI tests');
  }
});

afterEach(async () => {
  for (const c of children.splice(0)) await terminate(c, 'SIGKILL', 5000);
  await server?.stop();
  server = undefined;
  for (const d of dirs.splice(0)) {
    try {
      chmodSync(d, 0o700);
    } catch {
      // gone
    }
    rmSync(d, { recursive: true, force: true });
  }
});

function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-unsafe-'));
  dirs.push(d);
  return d;
}

function start(args: string[]): Run {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return { child, out: () => out, err: () => err };
}

/** Runs to completion within the deadline (stdin closed at once). */
async function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const r = start(args);
  r.child.stdin!.end();
  const { code } = await waitForExit(r.child, DEADLINE_MS);
  return { code, out: r.out(), err: r.err() };
}

function conf(dir: string, lines: string[]): string {
  const file = path.join(dir, 'agent.conf');
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o640 });
  return file;
}

function mkfifo(file: string): void {
  execFileSync('mkfifo', ['-m', '0600', file]);
}

describe('FIFOs where a file is read: a clear error, never a hang', () => {
  it('check-config on a FIFO', async () => {
    const fifo = path.join(tempDir(), 'agent.conf');
    mkfifo(fifo);
    const r = await run(['check-config', fifo]);
    expect(r.code).toBe(6);
    expect(r.err).toMatch(/is a FIFO; only a regular file is accepted/);
  });

  it('import-queue with a FIFO as the queue file', async () => {
    const dir = tempDir();
    const fifo = path.join(dir, 'remote.log');
    mkfifo(fifo);
    const c = conf(dir, ['mode = forward', `queue_dir = ${dir}/q`, `queue_file = ${fifo}`]);
    const r = await run(['import-queue', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/remote\.log is a FIFO, not a regular file: give audisp-remote's queue file/);
  });

  it('a SIGHUP while the config file is a FIFO keeps the running configuration and the agent responsive', async () => {
    const dir = tempDir();
    server = new ScriptServer();
    const port = await server.start();
    const c = conf(dir, ['remote_server = 127.0.0.1', `port = ${port}`, `state_file = ${dir}/state`]);
    const agent = start(['agent', '--config', c]);
    await server.waitForConnections(1, DEADLINE_MS);
    unlinkSync(c);
    mkfifo(c);
    agent.child.kill('SIGHUP');
    await pollUntil(() => /SIGHUP: configuration not reloaded/.test(agent.err()), {
      timeoutMs: DEADLINE_MS,
      what: 'the reload refusal',
      diagnostics: () => agent.err().slice(-2000),
    });
    expect(agent.err()).toMatch(/is a FIFO/);
    agent.child.stdin!.end(`type=USER_CMD msg=audit(1.0:1): after the reload\n`);
    expect(await waitForExit(agent.child, DEADLINE_MS)).toEqual({ code: 0, signal: null });
    expect(server.lines()).toEqual(['type=USER_CMD msg=audit(1.0:1): after the reload']);
  });

  it('a FIFO as the ack cursor, the lock or a segment of the queue is set aside at start', async () => {
    const dir = tempDir();
    const q = path.join(dir, 'q');
    mkdirSync(q, { mode: 0o700 });
    mkfifo(path.join(q, 'ack'));
    mkfifo(path.join(q, 'lock'));
    mkfifo(path.join(q, 'seg-00000000000000000001.log'));
    server = new ScriptServer();
    const port = await server.start();
    const c = conf(dir, [
      'remote_server = 127.0.0.1',
      `port = ${port}`,
      'mode = forward',
      `queue_dir = ${q}`,
    ]);
    const r = await run(['agent', '--config', c]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/ack cursor .*ack is unusable \(a FIFO/);
    expect(r.err).toMatch(/segment .*seg-0+1\.log .*a FIFO/);
    expect(r.err).toMatch(/took over a lock file with unreadable content .*is a FIFO/);
  });
});

describe('lengths and counts from files', () => {
  it('import-queue: a 32-byte file whose header claims 0xFFFFFFFF entries is a clear error, no crash', async () => {
    const dir = tempDir();
    const head = Buffer.alloc(32);
    Buffer.from('\0audisp-remote', 'latin1').copy(head, 0);
    head.writeUInt32BE(0xffffffff, 16); // num_entries
    head.writeUInt32BE(12288, 20); // entry_size
    head.writeUInt32BE(0, 24); // queue_head
    head.writeUInt32BE(0xffffffff, 28); // queue_length
    const file = path.join(dir, 'remote.log');
    writeFileSync(file, head);
    const c = conf(dir, ['mode = forward', `queue_dir = ${dir}/q`, `queue_file = ${file}`]);
    const r = await run(['import-queue', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/remote\.log is truncated: 32 bytes, the header says .*nothing was imported/);
  });

  it('import-queue: an entry_size of 4 GiB is refused before anything is allocated', async () => {
    const dir = tempDir();
    const head = Buffer.alloc(32);
    Buffer.from('\0audisp-remote', 'latin1').copy(head, 0);
    head.writeUInt32BE(1, 16);
    head.writeUInt32BE(0xffffffff, 20);
    head.writeUInt32BE(0, 24);
    head.writeUInt32BE(1, 28);
    const file = path.join(dir, 'remote.log');
    writeFileSync(file, head);
    const c = conf(dir, ['mode = forward', `queue_dir = ${dir}/q`, `queue_file = ${file}`]);
    const r = await run(['import-queue', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/corrupt header: entry_size 4294967295 is above/);
  });
});

describe('directories', () => {
  it('queue_dir under /proc is a clear error, not a busy loop', async () => {
    const dir = tempDir();
    const c = conf(dir, ['mode = forward', `queue_dir = /proc/auditrelay-test-${process.pid}/q`]);
    const r = await run(['agent', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /queue directory \(queue_dir\) \/proc\/auditrelay-test-\d+\/q is under \/proc, on a kernel file system \(proc\)/,
    );
  });

  it('a queue_dir others can write is refused at start, with the fix', async () => {
    const dir = tempDir();
    const q = path.join(dir, 'q');
    mkdirSync(q);
    chmodSync(q, 0o1777);
    const c = conf(dir, ['mode = forward', `queue_dir = ${q}`]);
    const r = await run(['agent', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(
      /queue directory \(queue_dir\) .*\/q is writable by others \(mode 01777\).*chmod go-w/,
    );
  });

  it('a state_file in a directory others can write is refused at start', async () => {
    const dir = tempDir();
    const open = path.join(dir, 'run');
    mkdirSync(open);
    chmodSync(open, 0o1777);
    const c = conf(dir, [`state_file = ${open}/agent.state`]);
    const r = await run(['agent', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/directory of state_file .*\/run is writable by others.*chmod go-w/);
  });

  it('a tail_state_file in a directory others can write is refused at start', async () => {
    const dir = tempDir();
    const open = path.join(dir, 'lib');
    mkdirSync(open);
    chmodSync(open, 0o777);
    writeFileSync(path.join(dir, 'audit.log'), '');
    const c = conf(dir, [
      'mode = forward',
      `queue_dir = ${dir}/q`,
      `input = tail:${dir}/audit.log`,
      `tail_state_file = ${open}/tail.state`,
    ]);
    const r = await run(['agent', '--config', c]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/directory of tail_state_file .*\/lib is writable by others.*chmod go-w/);
  });
});

describe('planted symbolic links are never followed', () => {
  it("SIGUSR1: a link planted at the state file's old temporary name is left alone", async () => {
    const dir = tempDir();
    const victim = path.join(dir, 'victim');
    writeFileSync(victim, 'precious\n');
    const runDir = path.join(dir, 'run');
    mkdirSync(runDir, { mode: 0o700 });
    const stateFile = path.join(runDir, 'agent.state');
    server = new ScriptServer();
    const port = await server.start();
    const c = conf(dir, ['remote_server = 127.0.0.1', `port = ${port}`, `state_file = ${stateFile}`]);
    const agent = start(['agent', '--config', c]);
    await server.waitForConnections(1, DEADLINE_MS);
    symlinkSync(victim, `${stateFile}.${agent.child.pid}.tmp`);
    agent.child.kill('SIGUSR1');
    await pollUntil(() => existsSync(stateFile) || /state report/.test(agent.err()), {
      timeoutMs: DEADLINE_MS,
      what: 'the state report',
      diagnostics: () => agent.err().slice(-2000),
    });
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readFileSync(stateFile, 'utf8')).toMatch(/^time = /);
    agent.child.stdin!.end();
    expect(await waitForExit(agent.child, DEADLINE_MS)).toEqual({ code: 0, signal: null });
  });
});
