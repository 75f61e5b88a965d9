/**
 * The command line behaves like a daemon's: `auditrelay <command> --help` prints that command's usage and exits 0
 * for every command; an expected failure (address in use, missing directory, bad --url, demo --rounds 0, ...) is
 * one line saying what, where and what to do, with the exit status of docs/errors.md, never a stack trace or
 * exit 70; `status` reads a collector's configuration as well as an agent's.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { killAll, requireBuild, runCli, startCli } from './process.js';

const COMMANDS = [
  'agent',
  'collector',
  'sink',
  'check-config',
  'status',
  'import-queue',
  'events',
  'verify',
  'pubkey',
  'report',
  'demo',
];

const dirs: string[] = [];
const servers: (net.Server | http.Server)[] = [];

beforeAll(requireBuild);

afterEach(async () => {
  await killAll();
  for (const s of servers.splice(0)) {
    (s as http.Server).closeAllConnections?.();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-daemon-cli-'));
  dirs.push(dir);
  return dir;
}

function file(dir: string, name: string, text: string): string {
  const f = path.join(dir, name);
  writeFileSync(f, text, { mode: 0o640 });
  return f;
}

/** A server on 127.0.0.1 (port chosen by the kernel) that stays up for the test. */
async function listen<S extends net.Server | http.Server>(server: S): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as net.AddressInfo).port;
}

/** A port nothing listens on (bound, read, closed). */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** An expected failure: exactly one line on stderr, `auditrelay: ...`, no stack trace, not exit 70. */
function expectOneLine(r: { code: number | null; stderr: string; stdout: string }, code: number, re: RegExp) {
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^auditrelay: /);
  expect(lines[0]).toMatch(re);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.code, r.stderr).toBe(code);
}

/** A usage error: its line first, then the command's usage; exit 2. */
function expectUsageError(r: { code: number | null; stderr: string }, command: string, re: RegExp) {
  expect(r.code, r.stderr).toBe(2);
  const [first, blank, usage] = r.stderr.split('\n');
  expect(first).toMatch(/^auditrelay: /);
  expect(first).toMatch(re);
  expect(blank).toBe('');
  expect(usage).toMatch(new RegExp(`^usage: auditrelay ${command} `));
  expect(r.stderr).not.toMatch(/^\s+at /m);
}

describe('cli: every command has its own --help', () => {
  it('the overview lists exactly the commands, each with its synopsis', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    const listed = [...r.stdout.matchAll(/^ {2}([a-z-]+) {2,}/gm)].map((m) => m[1]);
    expect(listed).toEqual(COMMANDS);
    expect(r.stdout).toContain('auditrelay <command> --help');
  });

  it.each(COMMANDS)('%s --help: that usage on stdout, exit 0', async (command) => {
    const r = await runCli([command, '--help']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(new RegExp(`^usage: auditrelay ${command} `));
    expect(r.stdout).toMatch(/^ {2}-h, --help +this text$/m);
    expect(r.stdout).toMatch(/^exit status: 0 /m);
  });

  it('-h, `help COMMAND` and --help after other options say the same', async () => {
    const want = (await runCli(['agent', '--help'])).stdout;
    for (const args of [
      ['agent', '-h'],
      ['help', 'agent'],
      ['agent', '--config', '/nonexistent', '--help'],
    ]) {
      const r = await runCli(args);
      expect({ args, code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
        args,
        code: 0,
        stdout: want,
        stderr: '',
      });
    }
  });

  it('help for an unknown command: exit 2 naming it', async () => {
    const r = await runCli(['help', 'frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe("auditrelay: help: unknown command 'frobnicate'");
  });
});

describe('cli: bad options are one line naming the option, then the usage (exit 2)', () => {
  it.each([
    [['agent', '--bogus'], 'agent', /^auditrelay: agent: unknown option '--bogus'$/],
    [['agent', '--config'], 'agent', /^auditrelay: agent: --config needs a value$/],
    [
      ['collector', '--listen', '127.0.0.1:1', '--log'],
      'collector',
      /^auditrelay: collector: --log needs a value$/,
    ],
    [
      ['import-queue', '--skip', '-1'],
      'import-queue',
      /--skip needs a value; to give one that starts with '-', write --skip=VALUE$/,
    ],
    [['import-queue', '--skip=-1'], 'import-queue', /^auditrelay: --skip must be a whole number, not '-1'$/],
    [
      ['import-queue', '--dry-run=yes'],
      'import-queue',
      /^auditrelay: import-queue: --dry-run takes no value$/,
    ],
    [['demo', 'extra'], 'demo', /^auditrelay: demo: unexpected argument 'extra'$/],
    [
      ['demo', '--rounds', '0'],
      'demo',
      /^auditrelay: --rounds must be a whole number of 1 or more, not '0'$/,
    ],
    [
      ['demo', '--rate', 'fast'],
      'demo',
      /^auditrelay: --rate must be a whole number of 1 or more, not 'fast'$/,
    ],
    [
      ['status', '--url', 'nonsense'],
      'status',
      /^auditrelay: --url: 'nonsense' is not a URL; expected http:\/\/HOST:PORT/,
    ],
    [
      ['status', '--url', 'ftp://127.0.0.1/'],
      'status',
      /^auditrelay: --url: 'ftp:\/\/127\.0\.0\.1\/' is not an http:\/\/ URL/,
    ],
    [
      ['status', '--url', 'http://127.0.0.1:1', '--config', 'x'],
      'status',
      /^auditrelay: status takes --url or --config, not both$/,
    ],
    [['check-config', 'a', 'b'], 'check-config', /^auditrelay: check-config takes exactly one FILE$/],
  ])('%j', async (args, command, re) => {
    expectUsageError(await runCli(args), command, re);
  });
});

describe('cli: expected failures are one line with what, where and what to do (exit 1)', () => {
  it('collector: the address is in use', async () => {
    const port = await listen(net.createServer());
    const log = path.join(tempDir(), 'audit.log');
    const r = await runCli([
      'collector',
      '--listen',
      `127.0.0.1:${port}`,
      '--log',
      log,
      '--evidence-key-file',
      path.join(path.dirname(log), 'keys', 'signing.key'),
    ]);
    expectOneLine(
      r,
      1,
      new RegExp(
        `^auditrelay: collector: cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use by another process \\(see \`ss -ltnp 'sport = :${port}'\`\\); stop that process or choose another port$`,
      ),
    );
  });

  it('collector: the log directory does not exist', async () => {
    const missing = path.join(tempDir(), 'missing');
    const r = await runCli([
      'collector',
      '--listen',
      '127.0.0.1:0',
      '--log',
      path.join(missing, 'audit.log'),
    ]);
    expectOneLine(
      r,
      1,
      new RegExp(
        `^auditrelay: directory of log_file ${missing} does not exist; create it \\(e\\.g\\. \`mkdir -p -m 0750 ${missing}\`\\) or choose another path$`,
      ),
    );
  });

  it('collector: --log names a directory (also through a config file)', async () => {
    const dir = tempDir();
    for (const args of [
      ['collector', '--listen', '127.0.0.1:0', '--log', dir],
      [
        'collector',
        '--config',
        file(dir, 'auditd.conf', `tcp_listen_port = 1\nlog_file = ${dir}\n`),
        '--listen',
        '127.0.0.1:0',
      ],
    ]) {
      expectOneLine(
        await runCli(args),
        1,
        new RegExp(`^auditrelay: log_file ${dir} is a directory; give the path of a file`),
      );
    }
  });

  it('status: nothing listens at --url', async () => {
    const port = await closedPort();
    expectOneLine(
      await runCli(['status', '--url', `http://127.0.0.1:${port}`]),
      1,
      new RegExp(
        `^auditrelay: status: cannot reach http://127\\.0\\.0\\.1:${port}/status: ECONNREFUSED \\(connection refused\\); is the agent or collector running, with status_listen = 127\\.0\\.0\\.1:${port}\\?$`,
      ),
    );
  });

  it('status: a server that closes the connection without answering (fetch() would end silently with 0)', async () => {
    const port = await listen(net.createServer((s) => s.destroy()));
    expectOneLine(
      await runCli(['status', '--url', `http://127.0.0.1:${port}/`]),
      1,
      /cannot reach http:\/\/127\.0\.0\.1:\d+\/status: the connection was closed without an answer/,
    );
  });

  it('status: an HTTP server that is not a status listener (404, HTML, foreign JSON)', async () => {
    const answers: [number, string, RegExp][] = [
      [
        404,
        'not here',
        /answered HTTP 404: it is not an auditrelay status listener; check the URL or status_listen$/,
      ],
      [200, '<html></html>', /did not answer with JSON: it is not an auditrelay status listener/],
      [200, '{"role":"printer"}', /answered JSON without an agent or collector role/],
    ];
    for (const [status, body, re] of answers) {
      const port = await listen(http.createServer((_req, res) => res.writeHead(status).end(body)));
      expectOneLine(await runCli(['status', '--url', `http://127.0.0.1:${port}`]), 1, re);
    }
  });

  it("status: a listener on a port fetch() refuses (the Fetch standard's block list, e.g. 6000) is reached", async () => {
    const server = http.createServer((_req, res) =>
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"role":"agent","state":"connected"}'),
    );
    servers.push(server);
    let port: number | undefined;
    for (const candidate of [10080, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 5060, 5061, 4190]) {
      const bound = await new Promise<boolean>((resolve) => {
        server.once('error', () => resolve(false));
        server.listen(candidate, '127.0.0.1', () => resolve(true));
      });
      if (bound) {
        port = candidate;
        break;
      }
    }
    expect(port, 'every port of the list is taken on this host').toBeDefined();
    const r = await runCli(['status', '--url', `http://127.0.0.1:${port}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^auditrelay agent\n {2}state +connected\n/);
  });

  it('import-queue: a queue file that is a directory is refused before the queue directory is created', async () => {
    const dir = tempDir();
    const conf = file(dir, 'agent.conf', `remote_server = 127.0.0.1\nqueue_dir = ${dir}/q\n`);
    const r = await runCli(['import-queue', '--config', conf, '--queue-file', dir]);
    expectOneLine(
      r,
      1,
      new RegExp(`^auditrelay: ${dir} is a directory, not a regular file: give audisp-remote's queue file`),
    );
    expect(() => mkdirSync(path.join(dir, 'q'))).not.toThrow(); // it was not created
  });

  it('import-queue: a missing queue file creates nothing either', async () => {
    const dir = tempDir();
    const conf = file(dir, 'agent.conf', `remote_server = 127.0.0.1\nqueue_dir = ${dir}/q\n`);
    const r = await runCli(['import-queue', '--config', conf, '--queue-file', path.join(dir, 'none')]);
    expectOneLine(r, 1, /none does not exist: nothing to import/);
    expect(() => mkdirSync(path.join(dir, 'q'))).not.toThrow();
  });
});

describe('cli: signals during start-up', () => {
  it("collector: a SIGTERM before it listens stops it cleanly (exit 0), not with Node's default action", async () => {
    const dir = tempDir();
    // An auditd.conf key the collector ignores: its warning is the first thing the collector logs.
    const conf = file(
      dir,
      'auditd.conf',
      `local_events = yes\nlog_file = ${dir}/audit.log\nevidence_key_file = ${dir}/keys/signing.key\n`,
    );
    const collector = startCli(['collector', '--config', conf, '--listen', '127.0.0.1:0']);
    await collector.waitForOutput(/local_events: ignored/, 'the warning logged at start');
    process.kill(collector.pid, 'SIGTERM');
    const exit = await collector.finished();
    expect({ code: exit.code, signal: exit.signal }, exit.stderr).toEqual({ code: 0, signal: null });
    expect(exit.stderr).toMatch(/"signal":"SIGTERM","msg":"stopping: sending ENDING to every client"/);
  });
});

describe('cli: status reads a configuration of either kind', () => {
  it("a collector's auditd.conf-style file: its status_listen, and the collector answers", async () => {
    const dir = tempDir();
    const statusPort = await closedPort();
    const conf = file(
      dir,
      'collector.conf',
      `tcp_listen_port = 60\ntcp_listen_address = 127.0.0.1\nlog_file = ${dir}/audit.log\nevidence_key_file = ${dir}/keys/signing.key\nstatus_listen = 127.0.0.1:${statusPort}\n`,
    );
    const collector = startCli(['collector', '--config', conf, '--listen', '127.0.0.1:0']);
    await collector.waitForOutput(/"status page listening"/, 'the status listener');
    const r = await runCli(['status', '--config', conf]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^auditrelay collector\n/);
    expect(r.stdout).toMatch(/^ {2}accepted +0$/m);
    const j = await runCli(['status', '--config', conf, '--json']);
    expect(JSON.parse(j.stdout)).toMatchObject({ role: 'collector', clients: 0 });
  });

  it("an agent's file without status_listen, and a collector's: say which and what to set (exit 2)", async () => {
    const dir = tempDir();
    const agent = file(dir, 'agent.conf', 'remote_server = 127.0.0.1\n');
    const collector = file(dir, 'auditd.conf', `tcp_listen_port = 60\nlog_file = ${dir}/a.log\n`);
    for (const [f, kind] of [
      [agent, 'agent'],
      [collector, 'collector'],
    ] as const) {
      const r = await runCli(['status', '--config', f]);
      expectUsageError(
        r,
        'status',
        new RegExp(
          `^auditrelay: status_listen is not set in ${f} \\(the ${kind}'s configuration\\); set status_listen = 127\\.0\\.0\\.1:PORT there and restart the ${kind}, or pass --url http://HOST:PORT$`,
        ),
      );
    }
  });

  it('a file that fits neither: the agent loader names the key (exit 6)', async () => {
    const dir = tempDir();
    const f = file(dir, 'x.conf', 'remote_server = 127.0.0.1\ntcp_listen_port = 60\n');
    const r = await runCli(['status', '--config', f]);
    expectOneLine(r, 6, new RegExp(`^auditrelay: config error: ${f}:2: tcp_listen_port: unknown key`));
  });
});
