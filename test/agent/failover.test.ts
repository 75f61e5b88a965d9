/**
 * Agent failover (issue 14 item 1): a real agent CLI with `remote_server = A, B` between two of our collectors
 * (real loopback sockets): on A while it works, on B at once when A shuts down (ENDING), back on A by the failback
 * probe once A works again; every record in A's or B's log, none lost, none twice in one log.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, onCleanup, startCollector, tempDir } from '../collector/harness.js';
import { gapsAndDuplicates, records, seqs } from '../helpers/agent-harness.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');

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

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

const logLines = (file: string) =>
  existsSync(file) ? readFileSync(file, 'latin1').split('\n').slice(0, -1) : [];
const tagged = (file: string, tag: string) => logLines(file).filter((l) => l.includes(`tag=${tag} `));

describe('agent failover between two collectors', () => {
  it('A, then B when A ends, then A again (failback probe); nothing lost', async () => {
    const dir = tempDir('auditrelay-failover-');
    const [pa, pb] = [await freePort(), await freePort()];
    const dirA = path.join(dir, 'a');
    const dirB = path.join(dir, 'b');
    mkdirSync(dirA, { mode: 0o700 });
    mkdirSync(dirB, { mode: 0o700 });
    let a = await startCollector({ port: pa }, dirA);
    const b = await startCollector({ port: pb }, dirB);
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      [
        `remote_server = 127.0.0.1:${pa}, 127.0.0.1:${pb}`,
        'mode = forward',
        `queue_dir = ${path.join(dir, 'queue')}`,
        `state_file = ${path.join(dir, 'agent.state')}`,
        'reconnect_initial_ms = 20',
        'reconnect_max_ms = 200',
        'failback_interval = 1',
        'log_level = debug',
        '',
      ].join('\n'),
    );
    const ag = agent(conf);
    ag.stdin!.write(`${records(1, 100, 'one').join('\n')}\n`);
    await pollUntil(() => tagged(a.logFile, 'one').length >= 100, {
      timeoutMs: 15_000,
      what: 'batch 1 on A',
    });

    // A shuts down (ENDING): the agent goes to B at once.
    await a.stop();
    ag.stdin!.write(`${records(101, 100, 'two').join('\n')}\n`);
    await pollUntil(() => tagged(b.logFile, 'two').length >= 100, {
      timeoutMs: 15_000,
      what: 'batch 2 on B',
      diagnostics: () => ag.err().slice(-3000),
    });
    expect(ag.err()).toMatch(
      /"msg":"failing over from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+ \(remote_server entry 2 of 2\)"/,
    );

    // A works again: within failback_interval the probe finds it and the agent goes back.
    a = await startCollector({ port: pa }, dirA);
    await pollUntil(() => ag.err().includes('answers again: going back to it'), {
      timeoutMs: 15_000,
      what: 'the failback to A',
      diagnostics: () => ag.err().slice(-3000),
    });
    ag.stdin!.end(`${records(201, 100, 'three').join('\n')}\n`);
    expect(await waitForExit(ag, 20_000)).toEqual({ code: 0, signal: null });

    const onA = logLines(a.logFile);
    const onB = logLines(b.logFile);
    expect(tagged(a.logFile, 'three')).toHaveLength(100);
    const { lost } = gapsAndDuplicates(seqs([...onA, ...onB]), 300);
    expect(lost).toEqual([]);
    // Within one collector's log, no record twice (record identities).
    expect(gapsAndDuplicates(seqs(onA), 300).duplicates).toBe(0);
    expect(gapsAndDuplicates(seqs(onB), 300).duplicates).toBe(0);
  });
});
