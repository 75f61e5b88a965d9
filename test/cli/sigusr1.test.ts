/**
 * SIGUSR1 never opens Node's debugger (Node's default handler starts the inspector on 127.0.0.1:9229, which in a
 * root daemon is root for every local user). Each long-running command gets SIGUSR1 and must then have no
 * listening socket it did not have before, do what its usage says SIGUSR1 does, and go on working. The entry
 * points start Node with src/debug-guard.ts's INSPECT_PORT_GUARD, which covers Node's own start-up.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { INSPECT_PORT_GUARD } from '../../src/debug-guard.js';
import { records } from '../helpers/agent-harness.js';
import { REPO_ROOT, readCompleteLines } from '../helpers/corpus.js';
import { listeningSockets } from '../helpers/sockets.js';
import { pollUntil, terminate, waitForExit } from '../helpers/wait.js';
import { BIN, killAll, requireBuild, startCli } from './process.js';

let dir: string;
beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-sigusr1-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(killAll);

const ports = (pid: number) => listeningSockets(pid).map((s) => s.port);

function readIfThere(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

describe('SIGUSR1 to each long-running command', () => {
  it('collector and agent (→ that collector): nothing new listens, each does its SIGUSR1 job and keeps forwarding', async () => {
    const log = path.join(dir, 'received.log');
    const collector = startCli([
      'collector',
      '--listen',
      '127.0.0.1:0',
      '--log',
      log,
      '--evidence-key-file',
      path.join(dir, 'keys', 'signing.key'),
    ]);
    await collector.waitForOutput(/"collector listening"/, 'the collector to listen');
    const port = (
      JSON.parse(
        collector
          .stderr()
          .split('\n')
          .find((l) => l.includes('"collector listening"'))!,
      ) as {
        port: number;
      }
    ).port;
    const stateFile = path.join(dir, 'agent.state');
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      `remote_server = 127.0.0.1\nport = ${port}\nstate_file = ${stateFile}\nqueue_dir = ${path.join(dir, 'queue')}\n`,
    );
    const agent = startCli(['agent', '--config', conf], { stdin: 'keep-open' });
    agent.child.stdin!.write(`${records(1, 3).join('\n')}\n`);
    await pollUntil(() => readCompleteLines(log).length === 3, {
      timeoutMs: 20_000,
      what: '3 records logged',
    });
    expect(ports(collector.pid)).toEqual([port]);
    expect(ports(agent.pid)).toEqual([]);

    for (let round = 1; round <= 2; round++) {
      process.kill(collector.pid, 'SIGUSR1');
      // The collector's SIGUSR1 rotates its log, as auditd (the second time the log is empty: not rotated).
      await pollUntil(() => collector.stderr().split('"reason":"SIGUSR1"').length - 1 === round, {
        timeoutMs: 10_000,
        what: `the collector's SIGUSR1 line #${round}`,
      });
      rmSync(stateFile, { force: true });
      process.kill(agent.pid, 'SIGUSR1');
      await pollUntil(() => readIfThere(stateFile), { timeoutMs: 10_000, what: "the agent's state report" });
      expect(ports(collector.pid)).toEqual([port]);
      expect(ports(agent.pid)).toEqual([]);
    }
    expect(collector.stderr()).toMatch(/"msg":"SIGUSR1: [^"]*received\.log rotated/);
    expect(collector.stderr()).toMatch(/"msg":"SIGUSR1: [^"]*received\.log is empty: not rotated"/);
    // Each with its identity (record identities: the agent's id from its queue_dir, the queue's record number).
    const id = readFileSync(path.join(dir, 'queue', 'agent-id'), 'latin1').trim();
    expect(readCompleteLines(`${log}.1`).map((l) => l.toString())).toEqual(
      records(1, 3).map((r, i) => `${r} rid=${id}:${i + 1}`),
    );
    expect(readFileSync(stateFile, 'utf8')).toMatch(/^recordsAcked = 3$/m);

    agent.child.stdin!.end(`${records(4, 3).join('\n')}\n`);
    expect(await agent.finished()).toMatchObject({ code: 0, signal: null });
    expect(readCompleteLines(log).map((l) => l.toString())).toEqual(
      records(4, 3).map((r, i) => `${r} rid=${id}:${i + 4}`),
    );
    process.kill(collector.pid, 'SIGTERM');
    expect(await collector.finished()).toMatchObject({ code: 0, signal: null });
    expect(`${collector.stderr()}${agent.stderr()}`).not.toMatch(/Debugger listening|inspector/i);
  });

  it('the plugin entry (packaging/auditrelay-plugin, node --jitless): the state report, nothing listening', async () => {
    const stateFile = path.join(dir, 'plugin.state');
    const conf = path.join(dir, 'plugin.conf');
    // Nothing listens on port 9 (discard) on loopback: the agent retries; SIGUSR1 must work meanwhile.
    writeFileSync(
      conf,
      `remote_server = 127.0.0.1\nport = 9\nstate_file = ${stateFile}\nqueue_dir = ${path.join(dir, 'plugin-queue')}\n`,
    );
    const plugin = startCli(['--config', conf], {
      command: [path.join(REPO_ROOT, 'packaging/auditrelay-plugin')],
      env: { NODE: process.execPath, AUDITRELAY_HOME: REPO_ROOT },
      stdin: 'keep-open',
    });
    await plugin.waitForOutput(/"agent starting"/, 'the agent to start');
    process.kill(plugin.pid, 'SIGUSR1');
    await pollUntil(() => readIfThere(stateFile), { timeoutMs: 20_000, what: 'the state report' });
    expect(ports(plugin.pid)).toEqual([]);
    plugin.child.stdin!.end();
    const exit = await plugin.finished();
    expect(exit.signal).toBeNull();
    expect(exit.stderr).not.toMatch(/Debugger listening/);
  });

  it('demo: prints its progress, nothing listens in the demo process, and it completes', async () => {
    const demo = startCli(['demo', '--rounds', '15', '--rate', '1000']);
    await demo.waitForOutput(/^auditrelay demo: \d+ real audit records/m, 'the demo to start');
    process.kill(demo.pid, 'SIGUSR1');
    await demo.waitForOutput(/records received so far/, 'the progress line');
    expect(ports(demo.pid)).toEqual([]);
    const exit = await demo.finished(60_000);
    expect(exit.code, exit.stderr).toBe(0);
    expect(exit.stderr).toMatch(/^auditrelay demo: \d+ of \d+ records received so far \(\d+ duplicated\)$/m);
    expect(exit.stderr).toMatch(/lost 0/);
  });
});

describe('SIGUSR1 during start-up, before any handler of ours', () => {
  /** A Node process with no SIGUSR1 handler that echoes stdin; `flags` go to node. */
  function bareNode(flags: string[]) {
    const child = spawn(
      process.execPath,
      [...flags, '-e', "process.stdin.on('data', (d) => process.stdout.write(d)); console.log('ready')"],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      out += s;
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      err += s;
    });
    return { child, out: () => out, err: () => err };
  }

  it('Node with INSPECT_PORT_GUARD cannot open the inspector, and stays up', async () => {
    const p = bareNode([INSPECT_PORT_GUARD]);
    try {
      await pollUntil(() => p.out().includes('ready\n'), { timeoutMs: 10_000, what: 'ready' });
      process.kill(p.child.pid!, 'SIGUSR1');
      await pollUntil(() => /Starting inspector on .*9229 failed: invalid argument/.test(p.err()), {
        timeoutMs: 10_000,
        what: "Node's attempt to start the inspector",
        diagnostics: () => p.err(),
      });
      expect(ports(p.child.pid!)).toEqual([]);
      p.child.stdin.write('still here\n');
      await pollUntil(() => p.out().includes('still here\n'), { timeoutMs: 10_000, what: 'the echo' });
    } finally {
      await terminate(p.child, 'SIGKILL', 5000);
    }
  });

  it('(control) without it, the same SIGUSR1 opens a listening inspector (here on a random loopback port)', async () => {
    const p = bareNode(['--inspect-port=127.0.0.1:0']);
    try {
      await pollUntil(() => p.out().includes('ready\n'), { timeoutMs: 10_000, what: 'ready' });
      process.kill(p.child.pid!, 'SIGUSR1');
      await pollUntil(() => ports(p.child.pid!).length === 1, { timeoutMs: 10_000, what: 'the inspector' });
    } finally {
      await terminate(p.child, 'SIGKILL', 5000);
    }
    expect(await waitForExit(p.child, 1000)).toEqual({ code: null, signal: 'SIGKILL' });
  });

  it('an inspector opened anyway is closed by closeUnrequestedInspector, unless --inspect asked for it', async () => {
    const guard = path.join(REPO_ROOT, 'dist/src/debug-guard.js');
    const script = `
      const inspector = await import('node:inspector');
      if (!inspector.url()) inspector.open(0, '127.0.0.1');
      const opened = inspector.url() !== undefined;
      const { closeUnrequestedInspector } = await import(${JSON.stringify(guard)});
      console.log(JSON.stringify({ opened, closed: closeUnrequestedInspector(), open: inspector.url() !== undefined }));`;
    const run = async (flags: string[]) => {
      const child = spawn(process.execPath, [...flags, '--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
      });
      expect(await waitForExit(child, 20_000)).toEqual({ code: 0, signal: null });
      return JSON.parse(out) as { opened: boolean; closed: boolean; open: boolean };
    };
    expect(await run([])).toEqual({ opened: true, closed: true, open: false });
    expect(await run(['--inspect=127.0.0.1:0'])).toEqual({ opened: true, closed: false, open: true });
  });

  it('every entry point starts Node with it: the command, the plugin wrapper, the systemd units', () => {
    expect(readFileSync(BIN, 'utf8').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${INSPECT_PORT_GUARD}`);
    const wrapper = readFileSync(path.join(REPO_ROOT, 'packaging/auditrelay-plugin'), 'utf8');
    expect(wrapper).toMatch(
      /^exec "\$NODE" .*'--inspect-port=\[fe80::1\]:9229' "\$AUDITRELAY_HOME\/bin\/auditrelay\.js"/m,
    );
    // The Debian package's /usr/bin/auditrelay.
    const command = readFileSync(path.join(REPO_ROOT, 'packaging/auditrelay'), 'utf8');
    expect(command).toMatch(
      /^exec \/usr\/lib\/auditrelay\/bin\/node '--inspect-port=\[fe80::1\]:9229' \/usr\/lib\/auditrelay\/bin\/auditrelay\.js "\$@"$/m,
    );
    for (const unit of ['auditrelay-agent.service', 'auditrelay-collector.service']) {
      const text = readFileSync(path.join(REPO_ROOT, 'packaging/systemd', unit), 'utf8');
      expect(text).toMatch(
        new RegExp(
          `^ExecStart=/usr/lib/auditrelay/bin/node .*${INSPECT_PORT_GUARD.replace(/[[\]]/g, '\\$&')} `,
          'm',
        ),
      );
    }
  });
});
