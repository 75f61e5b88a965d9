/**
 * Plugin mode under auditd's real conditions (reference §2.2): empty environment, stdin a
 * socketpair, signals possibly blocked, and MemoryDenyWriteExecute (here: the kernel's
 * PR_SET_MDWE, the same restriction) which only a `--jitless` Node survives. SIGHUP reloads the
 * configuration without losing records; SIGUSR1 writes the state report; SIGTERM drains.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { records, seqs } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const WRAPPER = path.join(REPO_ROOT, 'packaging/auditrelay-plugin');
const children: ChildProcess[] = [];
const servers: ScriptServer[] = [];
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-plugin-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of children.splice(0)) await terminate(c, 'SIGKILL', 5000);
  for (const s of servers.splice(0)) await s.stop();
});

async function server(): Promise<ScriptServer> {
  const s = new ScriptServer();
  await s.start();
  servers.push(s);
  return s;
}

function conf(name: string, port: number, extra: string[] = []): string {
  const file = path.join(dir, name);
  writeFileSync(
    file,
    [
      'remote_server = 127.0.0.1',
      `port = ${port}`,
      'reconnect_initial_ms = 20',
      'reconnect_max_ms = 200',
      // The agent's id and record numbers live in queue_dir (record identities): never the host's default.
      `queue_dir = ${path.join(dir, `${name}.queue`)}`,
      ...extra,
      '',
    ].join('\n'),
  );
  return file;
}

/**
 * Waits until the plugin reports `n` records acknowledged (SIGUSR1's state report, asked again until it says so):
 * the server having received them does not mean the agent has read their ACKs yet.
 */
async function waitForAcked(p: ChildProcess, stateFile: string, n: number): Promise<string> {
  return pollUntil(
    () => {
      let report: string | undefined;
      try {
        report = readFileSync(stateFile, 'utf8');
      } catch {
        report = undefined;
      }
      if (report !== undefined && new RegExp(`^recordsAcked = ${n}$`, 'm').test(report)) return report;
      rmSync(stateFile, { force: true });
      p.kill('SIGUSR1');
      return undefined;
    },
    { timeoutMs: 10_000, intervalMs: 100, what: `the plugin to report ${n} records acknowledged` },
  );
}

/** Starts the plugin the way auditd does: the wrapper, an empty environment, stdin a socketpair. */
function plugin(args: string[], opts: { prefix?: string[] } = {}): ChildProcess & { err: () => string } {
  const argv = [...(opts.prefix ?? []), WRAPPER, ...args];
  let err = '';
  const child = spawn(argv[0]!, argv.slice(1), {
    // auditd execs plugins with envp = NULL; our wrapper needs to be told where the checkout is.
    env: { NODE: process.execPath, AUDITRELAY_HOME: REPO_ROOT },
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  children.push(child);
  return Object.assign(child, { err: () => err });
}

describe('plugin mode', () => {
  it('runs with an empty environment and a socketpair on stdin, and drains on EOF', async () => {
    const s = await server();
    const p = plugin(['--config', conf('a.conf', s.port)]);
    p.stdin!.end(`${records(1, 50).join('\n')}\n`);
    expect(await waitForExit(p, 20_000), p.err()).toEqual({ code: 0, signal: null });
    expect(seqs(s.lines())).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
  });

  it('SIGTERM stops reading, delivers what was read and exits 0', async () => {
    const s = await server();
    const p = plugin(['--config', conf('t.conf', s.port)]);
    p.stdin!.write(`${records(1, 20).join('\n')}\n`);
    await s.waitForRecords(20);
    p.kill('SIGTERM');
    expect(await waitForExit(p, 20_000), p.err()).toEqual({ code: 0, signal: null });
  });

  it('SIGHUP re-reads the configuration and applies it without losing records, even with signals blocked', async () => {
    const a = await server();
    const b = await server();
    const stateFile = path.join(dir, 'run', 'hup.state');
    const file = conf('hup.conf', a.port, [`state_file = ${stateFile}`]);
    // auditd 3.0.9 starts restarted plugins with SIGHUP, SIGTERM, SIGUSR1, SIGUSR2 … blocked.
    const perl = findBinary('perl') ?? '/usr/bin/perl';
    const block = [
      '-MPOSIX',
      '-e',
      'sigprocmask(SIG_BLOCK, POSIX::SigSet->new(1, 10, 12, 15, 17, 18)) or die; exec @ARGV',
    ];
    const p = plugin(['--config', file], { prefix: [perl, ...block] });
    p.stdin!.write(`${records(1, 10).join('\n')}\n`);
    await a.waitForRecords(10);
    await waitForAcked(p, stateFile, 10);
    // Now point it at server B and reload.
    writeFileSync(file, readFileSync(file, 'utf8').replace(`port = ${a.port}`, `port = ${b.port}`));
    p.kill('SIGHUP');
    await b.waitForConnections(1);
    p.stdin!.write(`${records(11, 10).join('\n')}\n`);
    await b.waitForRecords(10);
    expect(seqs(a.lines())).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(seqs(b.lines())).toEqual(Array.from({ length: 10 }, (_, i) => i + 11));
    // A broken file is refused and the running configuration stays.
    writeFileSync(file, 'port = not-a-number\n');
    p.kill('SIGHUP');
    await pollUntil(() => /configuration not reloaded/.test(p.err()), {
      timeoutMs: 10_000,
      what: 'the refusal',
    });
    p.stdin!.end(`${records(21, 5).join('\n')}\n`);
    expect(await waitForExit(p, 20_000), p.err()).toEqual({ code: 0, signal: null });
    expect(seqs(b.lines()).slice(-5)).toEqual([21, 22, 23, 24, 25]);
  });

  it('SIGUSR1 writes the state report; SIGUSR2 is handled', async () => {
    const s = await server();
    const stateFile = path.join(dir, 'run', 'agent.state');
    const p = plugin(['--config', conf('usr1.conf', s.port, [`state_file = ${stateFile}`])]);
    p.stdin!.write(`${records(1, 3).join('\n')}\n`);
    await s.waitForRecords(3);
    const report = await waitForAcked(p, stateFile, 3);
    expect(report).toMatch(/^state\.connection = online\.connected$/m);
    expect(report).toMatch(/^recordsAcked = 3$/m);
    p.kill('SIGUSR2');
    p.stdin!.end();
    expect(await waitForExit(p, 20_000), p.err()).toEqual({ code: 0, signal: null });
  });
});

const cc = findBinary('cc') ?? findBinary('gcc');
const mdweAvailable = requireOrSkip({
  suite: 'plugin under MemoryDenyWriteExecute (PR_SET_MDWE)',
  binaries: ['cc'],
});

describe.skipIf(!mdweAvailable)('plugin under MemoryDenyWriteExecute', () => {
  let mdwe = '';
  beforeAll(() => {
    mdwe = path.join(dir, 'mdwe');
    const r = spawnSync(cc!, ['-O2', '-o', mdwe, path.join(REPO_ROOT, 'test/plugin/mdwe.c')], {
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
  });

  it('a JIT-compiling Node aborts under the restriction (the restriction is real)', () => {
    const r = spawnSync(
      mdwe,
      [process.execPath, '-e', 'for (let i = 0; i < 1e6; i++) Math.sqrt(i); console.log("ran")'],
      {
        encoding: 'utf8',
      },
    );
    if (r.status === 125) throw new Error(`PR_SET_MDWE is not available on this kernel: ${r.stderr}`);
    expect(r.status).not.toBe(0);
    expect(r.stdout).not.toContain('ran');
  });

  it('the plugin entry (node --jitless) starts, forwards and drains under it', async () => {
    const s = await server();
    const p = plugin(['--config', conf('mdwe.conf', s.port)], { prefix: [mdwe, '/bin/sh'] });
    p.stdin!.end(`${records(1, 100).join('\n')}\n`);
    expect(await waitForExit(p, 30_000), p.err()).toEqual({ code: 0, signal: null });
    expect(seqs(s.lines())).toHaveLength(100);
  });
});
