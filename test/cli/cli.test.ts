/**
 * The built CLI (`node bin/auditrelay.js`, run `npm run build` first): exit statuses and messages, and an
 * end-to-end run of `collector` + `agent` over loopback with the fixture corpus. Every process started here is
 * killed by pid in afterEach, even when a test fails.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectedRecords, loadCorpus } from '../helpers/corpus.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(REPO, 'bin', 'auditrelay.js');
const FIXTURE_CONFIG_DIR = path.join(REPO, 'test', 'fixtures', 'config');

interface Proc {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once the process exited and its stdout and stderr were read to the end. */
  closed: Promise<void>;
}

const procs: Proc[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const p of procs.splice(0)) {
    if (p.child.exitCode === null && p.child.signalCode === null && p.child.pid !== undefined) {
      try {
        process.kill(p.child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

beforeAll(() => {
  if (!existsSync(path.join(REPO, 'dist', 'src', 'cli.js'))) {
    throw new Error('dist/src/cli.js is missing: run `npm run build` before the CLI tests');
  }
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-cli-test-'));
  dirs.push(dir);
  return dir;
}

function writeFile(dir: string, name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text, { mode: 0o644 });
  return file;
}

/** Starts `node bin/auditrelay.js ...args` from the repository root. */
function start(args: string[], opts: { stdin?: Buffer } = {}): Proc {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: REPO,
    env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const p: Proc = {
    child,
    stdout: '',
    stderr: '',
    exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
    closed: new Promise((resolve) => child.once('close', () => resolve())),
  };
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    p.stdout += s;
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    p.stderr += s;
  });
  // A child that exits before reading all of its stdin must not fail the test with EPIPE.
  child.stdin!.on('error', () => {});
  if (opts.stdin) child.stdin!.end(opts.stdin);
  else child.stdin!.end();
  procs.push(p);
  return p;
}

/** Waits for the exit (and the end of its output) with a deadline. */
async function finished(p: Proc, deadlineMs: number) {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `process ${p.child.pid} (${p.child.spawnargs.slice(1).join(' ')}) did not exit within ${deadlineMs} ms\n` +
              `stdout: ${p.stdout}\nstderr: ${p.stderr}`,
          ),
        ),
      deadlineMs,
    );
  });
  try {
    const result = await Promise.race([
      p.exited.then(async (r) => {
        await p.closed;
        return r;
      }),
      timeout,
    ]);
    return { ...result, stdout: p.stdout, stderr: p.stderr };
  } finally {
    clearTimeout(timer);
  }
}

function run(args: string[], opts: { stdin?: Buffer } = {}) {
  return finished(start(args, opts), 20_000);
}

/** Polls `probe` until true, with a deadline. */
async function pollUntil(probe: () => boolean, deadlineMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A port that was free a moment ago (bind port 0, read it, close). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

describe('cli: usage', () => {
  it('--help prints the usage and exits 0', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^usage: auditrelay <command> \[options\]/);
    for (const cmd of ['agent', 'collector', 'check-config', 'demo']) expect(r.stdout).toContain(`  ${cmd}`);
    expect(r.stderr).toBe('');
  });

  it('--version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    const r = await run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`auditrelay ${pkg.version}\n`);
  });

  it('no command: usage, exit 2', async () => {
    const r = await run([]);
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/^usage: auditrelay/);
  });

  it('unknown command: exit 2 with a message naming it', async () => {
    const r = await run(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe("auditrelay: unknown command 'frobnicate'");
    expect(r.stderr).toContain('usage: auditrelay');
  });

  it('unknown option: exit 2 with a message naming it', async () => {
    const r = await run(['check-config', '--bogus', 'x.conf']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toContain("'--bogus'");
  });
});

describe('cli: check-config', () => {
  it('a valid agent config: exit 0, prints the effective configuration', async () => {
    const dir = tempDir();
    const file = writeFile(
      dir,
      'audisp-remote.conf',
      'remote_server = 192.0.2.10\nport = 6000\nmax_in_flight = 64\n',
    );
    const r = await run(['check-config', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^remote_server = 192\.0\.2\.10$/m);
    expect(r.stdout).toMatch(/^port = 6000$/m);
    expect(r.stdout).toMatch(/^max_in_flight = 64$/m);
    // Defaults are printed too.
    expect(r.stdout).toMatch(/^transport = tcp$/m);
    expect(r.stderr).toBe(`${file}: configuration is valid\n`);
  });

  it('a bad agent config: exit 6, one line naming file:line, key, bad value and allowed values', async () => {
    const dir = tempDir();
    const file = writeFile(dir, 'bad.conf', '# comment\nremote_server = 192.0.2.10\ntransport = udp\n');
    const r = await run(['check-config', file]);
    expect(r.code).toBe(6);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      `auditrelay: config error: ${file}:3: transport: unknown value "udp" (allowed: tcp, krb5, tls)\n`,
    );
  });

  it('an out-of-range number: exit 6 with the range', async () => {
    const dir = tempDir();
    const file = writeFile(dir, 'bad.conf', 'remote_server = 192.0.2.10\n\nport = 70000\n');
    const r = await run(['check-config', file]);
    expect(r.code).toBe(6);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^auditrelay: config error: ${escapeRe(file)}:3: port: .*70000.*\\(allowed: 1\\.\\.65535\\)$`,
      ),
    );
  });

  it("Debian's shipped audisp-remote.conf (remote_server empty): exit 6, as upstream", async () => {
    const file = path.join(FIXTURE_CONFIG_DIR, 'debian-audisp-remote.conf');
    const r = await run(['check-config', file]);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(new RegExp(`^auditrelay: config error: ${escapeRe(file)}:6: remote_server: `));
  });

  it('a missing file: exit 6 naming the file', async () => {
    const missing = path.join(tempDir(), 'missing.conf');
    const r = await run(['check-config', missing]);
    expect(r.code).toBe(6);
    expect(r.stderr).toBe(
      `auditrelay: config error: ${missing}: config file does not exist; create it or pass --config\n`,
    );
  });

  it('no file: exit 2', async () => {
    const r = await run(['check-config']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe('auditrelay: check-config takes exactly one FILE');
  });

  it("--collector with Debian's auditd.conf: exit 0, effective settings in auditd.conf syntax, ignored keys warned", async () => {
    const file = path.join(FIXTURE_CONFIG_DIR, 'debian-auditd.conf');
    const r = await run(['check-config', '--collector', file]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toBe('# Effective auditrelay collector configuration (auditd.conf syntax)');
    for (const want of [
      'tcp_listen_port = 60',
      'tcp_listen_queue = 5',
      'tcp_max_per_addr = 1',
      'tcp_client_ports = 0-65535',
      'tcp_client_max_idle = 0',
      'log_file = /var/log/audit/audit.log',
      'tcp_listen_address = 127.0.0.1',
    ]) {
      expect(lines).toContain(want);
    }
    expect(r.stderr).toContain(`auditrelay: warning: ${file}:5: local_events: ignored`);
    expect(r.stderr.trimEnd().split('\n').at(-1)).toBe(`${file}: configuration is valid`);
  });

  it('--collector with a valid file of our own', async () => {
    const dir = tempDir();
    const file = writeFile(
      dir,
      'auditd.conf',
      'tcp_listen_port = 6061\ntcp_max_per_addr = 4\ntcp_client_max_idle = 30\nlog_file = /tmp/x/audit.log\n' +
        'tcp_client_ports = 1024-65535\ntcp_listen_address = 0.0.0.0\n',
    );
    const r = await run(['check-config', '--collector', file]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    for (const want of [
      'tcp_listen_port = 6061',
      'tcp_max_per_addr = 4',
      'tcp_client_max_idle = 30',
      'log_file = /tmp/x/audit.log',
      'tcp_client_ports = 1024-65535',
      'tcp_listen_address = 0.0.0.0',
    ]) {
      expect(lines).toContain(want);
    }
    expect(r.stderr).toBe(`${file}: configuration is valid\n`);
  });

  it('--collector with a bad file: exit 6, one line naming file:line, key, bad value and allowed values', async () => {
    const dir = tempDir();
    const file = writeFile(dir, 'auditd.conf', 'tcp_listen_port = 60\n\nflush = sometimes\n');
    const r = await run(['check-config', '--collector', file]);
    expect(r.code).toBe(6);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      `auditrelay: config error: ${file}:3: flush: unknown value "sometimes" ` +
        '(allowed: none, incremental, incremental_async, data, sync)\n',
    );
  });

  it('--collector with an agent config: exit 6 (unknown key)', async () => {
    const dir = tempDir();
    const file = writeFile(dir, 'agent.conf', 'remote_server = 192.0.2.10\n');
    const r = await run(['check-config', '--collector', file]);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(
      new RegExp(
        `^auditrelay: config error: ${escapeRe(file)}:1: remote_server: unknown key "remote_server"`,
      ),
    );
  });
});

describe('cli: agent and collector arguments', () => {
  it('agent --config with a missing file: exit 6', async () => {
    const missing = path.join(tempDir(), 'missing.conf');
    const r = await run(['agent', '--config', missing]);
    expect(r.code).toBe(6);
    expect(r.stderr).toBe(
      `auditrelay: config error: ${missing}: config file does not exist; create it or pass --config\n`,
    );
  });

  it('collector without --listen and --log: exit 2 with a message', async () => {
    const r = await run(['collector']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe(
      'auditrelay: collector needs --listen HOST:PORT and --log FILE (or --config FILE)',
    );
  });

  it('collector with --listen but no --log: exit 2', async () => {
    const r = await run(['collector', '--listen', '127.0.0.1:0']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toContain('--log FILE');
  });

  it('collector --listen bad: exit 2 with a clear message', async () => {
    const log = path.join(tempDir(), 'audit.log');
    const r = await run(['collector', '--listen', 'bad', '--log', log]);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe(
      'auditrelay: --listen: "bad" has no ":PORT"; expected HOST:PORT, e.g. 127.0.0.1:60, localhost:60 or [::1]:60',
    );
    expect(existsSync(log)).toBe(false);
  });

  it('collector --listen with a port out of range: exit 2', async () => {
    const log = path.join(tempDir(), 'audit.log');
    const r = await run(['collector', '--listen', '127.0.0.1:70000', '--log', log]);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toMatch(/^auditrelay: --listen: .*70000/);
  });
});

describe('cli: end to end', () => {
  it('agent → collector over loopback: every corpus record arrives byte-exact and in order', async () => {
    const dir = tempDir();
    const log = path.join(dir, 'audit.log');
    const port = await freePort();
    const collector = start([
      'collector',
      '--listen',
      `127.0.0.1:${port}`,
      '--log',
      log,
      '--evidence-key-file',
      path.join(dir, 'keys', 'signing.key'),
    ]);
    await pollUntil(
      () => collector.stderr.includes('"collector listening"') || collector.child.exitCode !== null,
      15_000,
      () => `the collector to listen; stderr: ${collector.stderr}`,
    );
    expect(collector.child.exitCode, collector.stderr).toBeNull();
    const listening = collector.stderr
      .split('\n')
      .filter((l) => l.includes('"collector listening"'))
      .map((l) => JSON.parse(l) as { port: number; log: string })[0]!;
    expect(listening).toMatchObject({ port, log });

    // Each file's records, with a newline ensured at the end of every file (one file lacks its final '\n':
    // concatenated as is, its last line would be joined with the next file's first).
    const input = Buffer.concat(
      loadCorpus({ includeShared: false }).flatMap(({ bytes: b }) =>
        b.length > 0 && b[b.length - 1] !== 0x0a ? [b, Buffer.from('\n')] : [b],
      ),
    );
    const expected = expectedRecords(input);
    expect(expected.length).toBeGreaterThan(150);

    const conf = writeFile(
      dir,
      'audisp-remote.conf',
      `remote_server = 127.0.0.1\nport = ${port}\nqueue_dir = ${path.join(dir, 'queue')}\n`,
    );
    const agent = await finished(start(['agent', '--config', conf], { stdin: input }), 30_000);
    expect(agent.code, agent.stderr).toBe(0);

    process.kill(collector.child.pid!, 'SIGTERM');
    const done = await finished(collector, 15_000);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain('"collector stopped"');

    // Byte-exact (latin1 maps every byte to one character, so the diff stays readable on failure), each record
    // followed by its identity (record identities: the agent's id from queue_dir, the queue's record number).
    const id = readFileSync(path.join(dir, 'queue', 'agent-id'), 'latin1').trim();
    const want = Buffer.concat(expected.flatMap((r, i) => [r, Buffer.from(` rid=${id}:${i + 1}\n`)]));
    expect(readFileSync(log).toString('latin1')).toBe(want.toString('latin1'));
  });
});
