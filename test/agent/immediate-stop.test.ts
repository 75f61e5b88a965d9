/**
 * `mode = immediate` (Debian's shipped setting: the memory queue) loses nothing at a clean stop: SIGTERM with
 * the server down writes the undelivered records under queue_dir, and the next start sends them first, in
 * order, once each. Real agent processes, real TCP on loopback.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const children: ChildProcess[] = [];
let dir = '';
let server: ScriptServer | undefined;

afterEach(async () => {
  for (const c of children.splice(0)) await terminate(c, 'SIGKILL', 5000);
  await server?.stop();
  server = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function agent(conf: string): ChildProcess & { err: () => string } {
  let err = '';
  const child = spawn(process.execPath, [BIN, 'agent', '--config', conf], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  children.push(child);
  return Object.assign(child, { err: () => err });
}

/** The agent's SIGUSR1 report, as key = value pairs (undefined until it is written). */
function stateReport(file: string): Record<string, string> | undefined {
  if (!existsSync(file)) return undefined;
  return Object.fromEntries(
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.includes(' = '))
      .map((l) => [l.slice(0, l.indexOf(' = ')), l.slice(l.indexOf(' = ') + 3)]),
  );
}

describe('mode = immediate: a clean stop keeps the undelivered records', () => {
  it('SIGTERM with the server down, restart with the server up: every record arrives, in order, once', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-immediate-'));
    // A port with nobody listening: reserve one, then close it.
    const probe = new ScriptServer();
    const port = await probe.start();
    await probe.stop();
    const state = path.join(dir, 'agent.state');
    const queueDir = path.join(dir, 'queue');
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${port}`,
        'mode = immediate',
        `queue_dir = ${queueDir}`,
        `state_file = ${state}`,
        'reconnect_initial_ms = 20',
        'reconnect_max_ms = 200',
        'drain_timeout = 1',
        'startup_failure_action = ignore',
        '',
      ].join('\n'),
    );
    const first = agent(conf);
    // SIGUSR1 only once the agent's handler is installed (right after it logs that it starts).
    await pollUntil(() => /agent starting/.test(first.err()), {
      timeoutMs: 15_000,
      what: 'the agent to start',
    });
    first.stdin!.write(`${records(1, 500).join('\n')}\n`);
    // Everything is read into the memory queue (the server is down, nothing can leave).
    await pollUntil(
      () => {
        first.kill('SIGUSR1');
        return stateReport(state)?.recordsQueued === '500';
      },
      {
        timeoutMs: 15_000,
        intervalMs: 200,
        what: '500 records queued',
        diagnostics: () => first.err().slice(-2000),
      },
    );
    first.kill('SIGTERM');
    const exit = await waitForExit(first, 15_000);
    expect(exit.code, first.err().slice(-3000)).toBe(1); // records left undelivered: status 1, as documented
    expect(first.err()).toMatch(/500 undelivered record\(s\) written to .*queue/);
    expect(readdirSync(queueDir).some((n) => n.startsWith('seg-'))).toBe(true);

    // The server comes up on the same port; the next start sends the saved records first, then new ones.
    server = new ScriptServer();
    await server.start(port);
    const second = agent(conf);
    await pollUntil(() => server!.records.length >= 500, {
      timeoutMs: 20_000,
      what: 'the 500 saved records',
      diagnostics: () => second.err().slice(-2000),
    });
    second.stdin!.end(`${records(501, 20).join('\n')}\n`);
    expect(await waitForExit(second, 20_000)).toEqual({ code: 0, signal: null });
    const got = seqs(server.lines());
    expect(got).toEqual(Array.from({ length: 520 }, (_, i) => i + 1));
    expect(gapsAndDuplicates(got, 520)).toEqual({ lost: [], duplicates: 0 });
    expect(second.err()).toMatch(/500 record\(s\) saved at the last stop/);
    // Delivered: nothing is left to send a third time.
    expect(readdirSync(queueDir).filter((n) => n.startsWith('seg-'))).toEqual([]);
  });
});
