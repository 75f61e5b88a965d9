/**
 * Every record exactly once, end to end (issue 14 item 2, docs/protocol.md "Record identities"): a real agent CLI
 * (mode = forward) under load is killed with SIGKILL while records are in flight to our collector (file output),
 * then restarted on the same queue_dir. Before record identities the restart wrote a full window (up to
 * max_in_flight = 1,024) a second time; now the collector recognises them: every record's tag is in the log once.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, onCleanup, startCollector, tempDir } from '../collector/harness.js';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const N = 40_000;

afterEach(cleanup);

function agent(conf: string): ChildProcess & { err: () => string } {
  let err = '';
  const child = spawn(process.execPath, [BIN, 'agent', '--config', conf], {
    stdio: ['pipe', 'ignore', 'pipe'],
    env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' },
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  onCleanup(async () => {
    await terminate(child, 'SIGKILL', 5000).catch(() => {});
  });
  return Object.assign(child, { err: () => err });
}

/** A port nobody listens on now (the collector takes it later). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** The agent's state report (SIGUSR1 → state_file) as key → value. */
async function agentState(child: ChildProcess, file: string): Promise<Map<string, string>> {
  child.kill('SIGUSR1');
  await pollUntil(() => existsSync(file) && readFileSync(file, 'utf8').includes(`pid = ${child.pid}`), {
    timeoutMs: 5000,
    what: 'the state report',
  });
  const text = readFileSync(file, 'utf8');
  return new Map(text.split('\n').map((l) => l.split(' = ', 2) as [string, string]));
}

const logLines = (file: string) =>
  existsSync(file) ? readFileSync(file, 'latin1').split('\n').slice(0, -1) : [];

describe('every record exactly once (record identities)', () => {
  it(`agent kill -9 under load, restarted: each of ${N} records is in the collector's log once`, async () => {
    const dir = tempDir('auditrelay-once-');
    const port = await freePort();
    const conf = path.join(dir, 'agent.conf');
    const stateFile = path.join(dir, 'agent.state');
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${port}`,
        'mode = forward',
        'max_in_flight = 1024',
        `queue_dir = ${path.join(dir, 'queue')}`,
        `state_file = ${stateFile}`,
        'reconnect_initial_ms = 20',
        'reconnect_max_ms = 100',
        'log_level = info',
        '',
      ].join('\n'),
    );
    // Everything is queued first (no collector yet), so that the kill leaves records queued and in flight.
    const first = agent(conf);
    first.stdin!.write(`${records(1, N, 'once').join('\n')}\n`);
    // SIGUSR1 only once its handler is there (the default action ends the process).
    await pollUntil(() => first.err().includes('agent starting'), {
      timeoutMs: 10_000,
      what: 'the agent to start',
    });
    await pollUntil(async () => (await agentState(first, stateFile)).get('queueDepth') === String(N), {
      timeoutMs: 30_000,
      what: `${N} records queued`,
      diagnostics: () => first.err().slice(-2000),
    });
    const c = await startCollector({ port });
    // Under load: killed while the log fills.
    await pollUntil(() => logLines(c.logFile).length >= 4000, {
      timeoutMs: 30_000,
      intervalMs: 2,
      what: '4000 records in the log',
    });
    first.kill('SIGKILL');
    await waitForExit(first, 5000);
    const atKill = logLines(c.logFile).length;
    expect(atKill).toBeLessThan(N);

    const second = agent(conf);
    await pollUntil(() => new Set(seqs(logLines(c.logFile))).size >= N, {
      timeoutMs: 60_000,
      what: `all ${N} records in the log`,
      diagnostics: () => `have ${logLines(c.logFile).length}\n${second.err().slice(-2000)}`,
    });
    second.stdin!.end();
    expect(await waitForExit(second, 20_000)).toEqual({ code: 0, signal: null });
    const lines = logLines(c.logFile);
    const { lost, duplicates } = gapsAndDuplicates(seqs(lines), N);
    expect(lost).toEqual([]);
    expect(duplicates).toBe(0);
    expect(lines).toHaveLength(N);
    // The restart did send records the collector had written already: it dropped them.
    expect(c.collector.stats.duplicates).toBeGreaterThan(0);
    // Every line carries its identity, the agent's id from queue_dir and the queue's record number.
    const id = readFileSync(path.join(dir, 'queue', 'agent-id'), 'latin1').trim();
    expect(lines[0]).toMatch(new RegExp(` rid=${id}:1$`));
    expect(lines[N - 1]).toMatch(new RegExp(` rid=${id}:${N}$`));
  });
});
