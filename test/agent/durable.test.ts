/**
 * `mode = forward`: the durable queue survives kill -9 of the agent; a restarted agent delivers the
 * backlog by itself. Real processes, real TCP on loopback.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
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

describe('durable queue (mode = forward)', () => {
  it('keeps records through kill -9 of the agent and delivers them after a restart, with no new input', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-durable-'));
    server = new ScriptServer();
    const port = await server.start();
    // The server withholds every record's ack (it answers the probe heartbeat, as any server does: with record
    // identities the agent sends records once the probe is answered): all records stay queued.
    server.reply = (m) => (m.type === MessageType.HEARTBEAT ? 'ack' : 'none');
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${port}`,
        'mode = forward',
        'max_in_flight = 256',
        `queue_dir = ${path.join(dir, 'queue')}`,
        'reconnect_initial_ms = 20',
        'reconnect_max_ms = 200',
        'log_level = info',
        '',
      ].join('\n'),
    );
    const first = agent(conf);
    first.stdin!.write(`${records(1, 500).join('\n')}\n`);
    await server.waitForRecords(256); // a full window is in flight: everything was read and queued
    first.kill('SIGKILL');
    await waitForExit(first, 5000);

    server.reply = () => 'ack';
    const second = agent(conf);
    // No input at all: stdin stays open; the backlog goes out by itself.
    await pollUntil(() => new Set(seqs(server!.lines())).size >= 500, {
      timeoutMs: 20_000,
      what: 'all 500 records',
      diagnostics: () => second.err().slice(-2000),
    });
    second.stdin!.end();
    expect(await waitForExit(second, 20_000)).toEqual({ code: 0, signal: null });
    const { lost, duplicates } = gapsAndDuplicates(seqs(server.lines()), 500);
    expect(lost).toEqual([]);
    // Only the records in flight at the kill may arrive twice.
    expect(duplicates).toBeLessThanOrEqual(256);
    expect(second.err()).toMatch(/durable queue open/);
  });

  it('refuses a second agent on the same queue directory with a clear message', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-durable-'));
    server = new ScriptServer();
    const port = await server.start();
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(conf, `remote_server = 127.0.0.1\nport = ${port}\nmode = forward\nqueue_dir = ${dir}/q\n`);
    const first = agent(conf);
    await server.waitForConnections(1);
    const second = agent(conf);
    const exit = await waitForExit(second, 10_000);
    expect(exit.code).toBe(1);
    expect(second.err()).toMatch(/in use by process \d+/);
    first.stdin!.end();
    expect(await waitForExit(first, 10_000)).toEqual({ code: 0, signal: null });
  });
});
