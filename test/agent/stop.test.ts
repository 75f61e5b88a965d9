/**
 * SIGTERM always ends the agent within `drain_timeout` plus `STOP_MARGIN_MS`, whatever the queue and the
 * link do (issue 10): here with the queue full (input paused, records held) and the server down, in-process
 * with the memory queue and as a real process with `mode = forward`, whose queue lock must be free for the
 * replacement afterwards.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { STOP_MARGIN_MS } from '../../src/agent/agent.js';
import { type RunningAgent, records, startAgent } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
let agent: RunningAgent | undefined;
const children: ChildProcess[] = [];
let dir = '';

afterEach(async () => {
  if (agent) {
    agent.input.end();
    await agent.done.catch(() => {});
  }
  agent = undefined;
  for (const c of children.splice(0)) await terminate(c, 'SIGKILL', 5000);
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = '';
});

/** A loopback port on which nothing listens. */
async function deadPort(): Promise<number> {
  const s = new ScriptServer();
  const port = await s.start();
  await s.stop();
  return port;
}

/** Resolves with `p`, or rejects once `ms` have passed. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

describe('stop', () => {
  it('ends within drain_timeout + margin with the queue full and the server down (memory queue)', async () => {
    agent = startAgent(await deadPort(), { queueDepth: 5, drainTimeout: 1 });
    const a = agent;
    a.write(records(1, 50));
    await pollUntil(() => a.agent.queue.depth === 5 && a.agent.status().held > 0, {
      timeoutMs: 10_000,
      what: 'the queue to be full with records held',
    });
    a.agent.stop('SIGTERM');
    const code = await within(a.done, 1000 + STOP_MARGIN_MS, 'the exit');
    expect(code).toBe(1);
    expect(a.logs.some((l) => /drain deadline/.test(l.msg))).toBe(true);
  });

  it('ends within drain_timeout + margin when the input ends with records held and the server down', async () => {
    agent = startAgent(await deadPort(), { queueDepth: 5, drainTimeout: 1 });
    const a = agent;
    a.write(records(1, 50));
    await pollUntil(() => a.agent.status().held > 0, { timeoutMs: 10_000, what: 'records held' });
    a.input.end(); // end of file: the records the queue refused are still held
    const code = await within(a.done, 1000 + STOP_MARGIN_MS, 'the exit');
    expect(code).toBe(1);
    expect(a.logs.some((l) => /drain deadline/.test(l.msg))).toBe(true);
  });

  it('mode = forward: SIGTERM with the queue full and the server down exits in time and frees the queue', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-stop-'));
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${await deadPort()}`,
        'mode = forward',
        `queue_dir = ${path.join(dir, 'queue')}`,
        'queue_max_bytes = 16K',
        'drain_timeout = 1',
        'reconnect_initial_ms = 20',
        'reconnect_max_ms = 200',
        '',
      ].join('\n'),
    );
    const start = () => {
      let err = '';
      const child = spawn(process.execPath, [BIN, 'agent', '--config', conf], {
        stdio: ['pipe', 'ignore', 'pipe'],
      });
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
      });
      child.stdin!.on('error', () => {});
      children.push(child);
      return { child, err: () => err };
    };
    const first = start();
    first.child.stdin!.write(`${records(1, 1000).join('\n')}\n`);
    await pollUntil(() => /queue is full/.test(first.err()), {
      timeoutMs: 10_000,
      what: 'the durable queue to be full',
      diagnostics: () => first.err().slice(-2000),
    });
    first.child.kill('SIGTERM');
    const exit = await waitForExit(first.child, 1000 + STOP_MARGIN_MS);
    expect(exit.code).toBe(1);
    // The queue directory's lock is free: a replacement starts on it.
    const second = start();
    await pollUntil(() => /durable queue open/.test(second.err()), {
      timeoutMs: 10_000,
      what: 'the replacement to open the queue',
      diagnostics: () => second.err().slice(-2000),
    });
    expect(second.err()).not.toMatch(/in use by process/);
  });
});
