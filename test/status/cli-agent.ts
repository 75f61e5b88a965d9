/**
 * A real agent process (`node bin/auditrelay.js agent --config FILE`) with its status listener on a free loopback
 * port, its queue_dir and state_file in the test's own temporary directory, stdin kept open for records. For the
 * health and page tests (test/status/).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { type CliProcess, startCli } from '../cli/process.js';
import { pollUntil } from '../helpers/wait.js';

export interface StatusAgent {
  proc: CliProcess;
  /** http://127.0.0.1:PORT */
  url: string;
  dir: string;
  write(lines: string[]): void;
  cleanup(): void;
}

export async function startStatusAgent(
  port: number,
  extra: Record<string, string | number>,
): Promise<StatusAgent> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-health-'));
  const keys: Record<string, string | number> = {
    remote_server: '127.0.0.1',
    port,
    queue_dir: path.join(dir, 'queue'),
    state_file: path.join(dir, 'agent.state'),
    status_listen: '127.0.0.1:0',
    reconnect_initial_ms: 50,
    reconnect_max_ms: 300,
    log_level: 'info',
    ...extra,
  };
  const conf = path.join(dir, 'agent.conf');
  writeFileSync(
    conf,
    Object.entries(keys)
      .map(([k, v]) => `${k} = ${v}\n`)
      .join(''),
    { mode: 0o640 },
  );
  const proc = startCli(['agent', '--config', conf], { stdin: 'keep-open' });
  await proc.waitForOutput(/"status page listening"/, 'the status listener of the agent');
  const url = /"url":"(http:\/\/127\.0\.0\.1:\d+)\/"/.exec(proc.stdout() + proc.stderr())![1]!;
  return {
    proc,
    url,
    dir,
    write: (lines) => proc.child.stdin!.write(`${lines.join('\n')}\n`),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request with node:http (HEAD included), the whole answer. */
export function request(url: string, method = 'GET'): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
        // An event stream never ends: its first event is enough.
        if (res.headers['content-type'] === 'text/event-stream' && body.includes('\n\n')) req.destroy();
      });
      const done = () => resolve({ status: res.statusCode!, headers: res.headers, body });
      res.on('end', done);
      res.on('close', done);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Waits until GET /health answers `status` (and a body that matches `body`, when given); returns the body. */
export async function waitForHealth(
  url: string,
  status: number,
  what: string,
  body?: RegExp,
  timeoutMs = 20_000,
): Promise<string> {
  let last: HttpAnswer | null = null;
  await pollUntil(
    async () => {
      last = await request(`${url}/health`);
      return last.status === status && (body === undefined || body.test(last.body));
    },
    { timeoutMs, intervalMs: 100, what, diagnostics: () => JSON.stringify(last) },
  );
  return last!.body;
}
