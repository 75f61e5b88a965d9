/**
 * The programs the benchmark measures, each started inside the benchmark's network namespace with the test
 * helpers: the real auditd (test/helpers/real-auditd.ts) and audisp-remote (test/helpers/real-audisp-remote.ts),
 * our collector and agent (the built CLI, bin/auditrelay.js), and the reference client.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT } from '../test/helpers/corpus.js';
import { type NetnsSandbox, SANDBOX_PATH } from '../test/helpers/netns.js';
import { requireBinary } from '../test/helpers/prereq.js';
import {
  AUDISP_REMOTE_CONF_PATH,
  audispRemoteConf,
  startRealAudispRemote,
} from '../test/helpers/real-audisp-remote.js';
import { DEFAULT_AUDITD_PORT, startRealAuditd } from '../test/helpers/real-auditd.js';
import { hasExited, pollUntil, terminate, waitForExit } from '../test/helpers/wait.js';

export const AGENT_BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
/** The compiled reference client, next to this file in dist/bench. */
export const REFERENCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'reference-client.js');
export const AUDITD_PORT = DEFAULT_AUDITD_PORT;
export const COLLECTOR_PORT = 61;

/** The last 20,000 characters of a child's stderr. */
function captureStderr(child: ChildProcess): () => string {
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  return () => err;
}

export interface Server {
  name: string;
  child: ChildProcess;
  port: number;
  logPath: string;
  /** Lines that start with this are the server's own records, not received ones. */
  skipPrefix: string | null;
  stop(): Promise<void>;
}

export interface Client {
  child: ChildProcess;
  /** The stream the records are written to (the client's stdin). */
  input: Writable;
  /** The agent's directory (config, queue). */
  dir?: string;
  stderrText(): string;
  /** Ends the input and waits for the client to exit (an agent must exit 0). */
  finish(): Promise<void>;
}

export interface AgentOptions {
  /** The server's address (default 127.0.0.1: the namespace's loopback). */
  host?: string;
  window?: number | undefined;
  mode?: 'forward' | 'immediate';
  queueDepth?: number;
  jitless?: boolean;
  cpuProf?: string | undefined;
  extra?: string[];
}

export class Peers {
  #counter = 0;

  constructor(readonly sandbox: NetnsSandbox) {}

  /** The real auditd 3.0.9 with the test harness's settings (test/helpers/real-auditd.ts). */
  async auditd(): Promise<Server> {
    const auditd = await startRealAuditd(this.sandbox, { port: AUDITD_PORT });
    return {
      name: 'auditd 3.0.9',
      child: auditd.child,
      port: AUDITD_PORT,
      logPath: auditd.logPath,
      skipPrefix: `node=${auditd.nodeName} `,
      async stop() {
        await auditd.stop(15_000);
        rmSync(auditd.dir, { recursive: true, force: true });
      },
    };
  }

  /** Our collector (the built CLI). */
  async collector(): Promise<Server> {
    const dir = path.join(this.sandbox.dir, `collector-${++this.#counter}`);
    mkdirSync(dir, { recursive: true });
    const logPath = path.join(dir, 'collector.log');
    const child = this.sandbox.spawn(
      process.execPath,
      [
        AGENT_BIN,
        'collector',
        '--listen',
        `127.0.0.1:${COLLECTOR_PORT}`,
        '--log',
        logPath,
        '--evidence-key-file',
        path.join(dir, 'keys', 'signing.key'),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: SANDBOX_PATH, AUDITRELAY_LOG_FORMAT: 'json' } },
    );
    const stderr = captureStderr(child);
    await pollUntil(
      async () => {
        if (hasExited(child)) throw new Error(`collector exited: ${stderr()}`);
        const listeners = await this.sandbox.tcpListeners(COLLECTOR_PORT);
        return listeners.some((l) => l.users.some((u) => u.pid === child.pid));
      },
      { timeoutMs: 15_000, what: 'the collector to listen', diagnostics: stderr },
    );
    return {
      name: 'our collector',
      child,
      port: COLLECTOR_PORT,
      logPath,
      skipPrefix: null,
      async stop() {
        await terminate(child, 'SIGTERM', 15_000);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }

  /** Our agent (a process, records on stdin), `mode = forward` unless told otherwise. */
  agent(port: number, o: AgentOptions = {}): Client {
    const dir = path.join(this.sandbox.dir, `agent-${++this.#counter}`);
    mkdirSync(dir, { recursive: true });
    const lines = [
      `remote_server = ${o.host ?? '127.0.0.1'}`,
      `port = ${port}`,
      `mode = ${o.mode ?? 'forward'}`,
      `queue_dir = ${path.join(dir, 'queue')}`,
      `queue_depth = ${o.queueDepth ?? 2048}`,
      ...(o.window === undefined ? [] : [`max_in_flight = ${o.window}`]),
      'reconnect_initial_ms = 20',
      'reconnect_max_ms = 200',
      'drain_timeout = 60',
      'log_level = warn',
      ...(o.extra ?? []),
    ];
    const file = path.join(dir, 'agent.conf');
    writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o640 });
    const nodeArgs = [
      ...(o.jitless ? ['--jitless'] : []),
      ...(o.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`] : []),
    ];
    const child = this.sandbox.spawn(process.execPath, [...nodeArgs, AGENT_BIN, 'agent', '--config', file], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { PATH: SANDBOX_PATH, AUDITRELAY_LOG_FORMAT: 'json' },
    });
    const stderrText = captureStderr(child);
    child.stdin!.on('error', () => {});
    return {
      child,
      input: child.stdin!,
      dir,
      stderrText,
      async finish() {
        child.stdin!.end();
        const exit = await waitForExit(child, 120_000);
        if (exit.code !== 0) throw new Error(`agent exited ${JSON.stringify(exit)}: ${stderrText()}`);
      },
    };
  }

  /**
   * The real audisp-remote 3.0.9 with Debian's settings (queue_depth = 10240, as Debian ships it), started as
   * auditd starts plugins (test/helpers/real-audisp-remote.ts): empty environment, SIGPIPE ignored, stdin a
   * socketpair, its fixed config path bind-mounted over inside the namespace only.
   */
  async audispRemote(port: number, host = '127.0.0.1'): Promise<Client> {
    const remote = await startRealAudispRemote(this.sandbox, {
      confText: audispRemoteConf({ port, server: host, extra: { queue_depth: 10240 } }),
    });
    const stderrText = captureStderr(remote.child);
    const sandbox = this.sandbox;
    return {
      child: remote.child,
      input: remote.child.stdin!,
      stderrText,
      async finish() {
        // Under auditd its stdin is a socketpair: at EOF it exits without flushing (everything has arrived).
        await remote.end();
        await remote.waitForExit(30_000).catch(() => terminate(remote.child, 'SIGKILL', 5000));
        await sandbox.run(requireBinary('umount'), [AUDISP_REMOTE_CONF_PATH]);
      },
    };
  }

  /** The reference client: sends `recordsFile` to `port` and exits; stdout is its JSON line (bench/reference-client.ts). */
  reference(port: number, recordsFile: string, host = '127.0.0.1', extra: string[] = []): ChildProcess {
    return this.sandbox.spawn(
      process.execPath,
      [
        REFERENCE,
        '--host',
        host,
        '--port',
        String(port),
        '--file',
        recordsFile,
        '--window',
        '8192',
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
  }

  /** Waits until a client is connected to `server` (the server saw the connection). */
  async waitConnected(server: Server): Promise<void> {
    await pollUntil(
      async () =>
        (await this.sandbox.tcpSockets(['state', 'established', 'sport', '=', `:${server.port}`])).length > 0,
      { timeoutMs: 15_000, what: 'the client to connect' },
    );
  }

  /**
   * GET /status of a status listener on `port` inside the namespace, from this process (which is outside it):
   * a small forwarder inside the namespace bridges a unix socket in the sandbox directory (visible to both) to
   * 127.0.0.1:port. Returns a function that fetches the parsed status, or null while it does not answer.
   */
  async statusReader(port: number): Promise<() => Promise<Record<string, unknown> | null>> {
    const socketPath = path.join(this.sandbox.dir, `status-${port}.sock`);
    // A forwarder of an earlier run on the same port left its socket file: listen() would fail on it.
    rmSync(socketPath, { force: true });
    const forward = `
      const net = require('node:net');
      const [socketPath, port] = process.argv.slice(1);
      net.createServer((c) => {
        const u = net.connect(Number(port), '127.0.0.1');
        c.pipe(u).pipe(c);
        c.on('error', () => u.destroy());
        u.on('error', () => c.destroy());
      }).listen(socketPath, () => console.log('ready'));`;
    const child = this.sandbox.spawn(process.execPath, ['-e', forward, socketPath, String(port)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    await pollUntil(
      () => {
        if (child.exitCode !== null) throw new Error(`the status forwarder exited: ${err.trim()}`);
        return out.includes('ready');
      },
      { timeoutMs: 60_000, what: 'the status forwarder' },
    );
    return () =>
      new Promise((resolve) => {
        const req = http.get({ socketPath, path: '/status', timeout: 5000 }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            body += c;
          });
          res.on('end', () => {
            try {
              resolve(res.statusCode === 200 ? (JSON.parse(body) as Record<string, unknown>) : null);
            } catch {
              resolve(null);
            }
          });
          res.on('error', () => resolve(null));
        });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve(null));
      });
  }
}
