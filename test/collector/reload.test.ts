/**
 * SIGHUP reloads the collector's configuration without dropping a connected client (docs/configuration.md,
 * "Reloading the collector"): the built collector (a process) with clients sending all along and a loop opening
 * new connections; a new backlog and limits apply at once (no connection refused meanwhile), a new port is
 * listened on before the old one stops (the connected clients stay on theirs), a key that needs a restart is kept
 * and named, a new log_file is opened, a bad file keeps the running configuration. The reload-policy table and its
 * list in docs/configuration.md are one.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  COLLECTOR_RELOAD_POLICY,
  type CollectorReloadPolicy,
  collectorKeyName,
} from '../../src/collector/reload-policy.js';
import { MessageType } from '../../src/protocol/constants.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';
import { cleanup, linesOf, onCleanup, RecordClient, tempDir } from './harness.js';

afterEach(cleanup);

const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Opens connections to `port` one after the other until stopped; counts those refused or reset. */
function connectLoop(port: () => number): { stop(): Promise<{ ok: number; failed: string[] }> } {
  let running = true;
  let ok = 0;
  const failed: string[] = [];
  const done = (async () => {
    while (running) {
      const p = port();
      await new Promise<void>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: p });
        s.once('connect', () => {
          ok++;
          s.destroy();
          resolve();
        });
        s.once('error', (err: NodeJS.ErrnoException) => {
          failed.push(`${p}: ${err.code}`);
          resolve();
        });
      });
      // A connection every few milliseconds is enough to find an instant without a listener.
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
      return { ok, failed };
    },
  };
}

describe('SIGHUP', () => {
  it('reloads with clients connected: limits, backlog, a new port and a new log file apply; restart-only keys are kept and named; a bad file changes nothing', async () => {
    const dir = tempDir();
    const conf = path.join(dir, 'collector.conf');
    const log = path.join(dir, 'audit.log');
    const port1 = await freePort();
    const base = [
      `log_file = ${log}`,
      `evidence_key_file = ${dir}/keys/signing.key`,
      'tcp_listen_address = 127.0.0.1',
      'tcp_max_per_addr = 64',
      'tcp_listen_queue = 128',
      'log_level = info',
    ];
    const write = (lines: string[]) => writeFileSync(conf, `${lines.join('\n')}\n`, { mode: 0o600 });
    write([...base, `tcp_listen_port = ${port1}`]);
    const collector: ChildProcess = spawn(process.execPath, [BIN, 'collector', '--config', conf], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' },
    });
    onCleanup(async () => {
      await terminate(collector, 'SIGTERM', 10_000);
    });
    let stderr = '';
    collector.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const logged = (re: RegExp) => stderr.split('\n').filter((l) => re.test(l));
    await pollUntil(() => stderr.includes('"collector listening"'), {
      timeoutMs: 20_000,
      what: 'the collector to listen',
      diagnostics: () => stderr,
    });
    let reloads = 0;
    const hup = async (what: string) => {
      collector.kill('SIGHUP');
      reloads++;
      await pollUntil(() => logged(/"msg":"SIGHUP: configuration/).length === reloads, {
        timeoutMs: 15_000,
        what,
        diagnostics: () => stderr,
      });
    };
    const a = await RecordClient.connect(port1, 'a', { node: 'web1', localAddress: '127.0.0.2' });
    const b = await RecordClient.connect(port1, 'b', { node: 'web2', localAddress: '127.0.0.3' });
    let sending = true;
    const traffic = [a, b].map(async (cl) => {
      while (sending) expect(new Set(await cl.send(20))).toEqual(new Set([MessageType.ACK]));
    });
    // New connections all along (on the port of the moment): none may be refused by a reload.
    const loop1 = connectLoop(() => port1);

    // 1. Backlog and limits on the same port: listen(2) again on the same socket; nothing refused.
    write([
      ...base.map((l) => l.replace('tcp_listen_queue = 128', 'tcp_listen_queue = 2048')),
      `tcp_listen_port = ${port1}`,
      'host_silence_timeout = 600',
    ]);
    await hup('reload 1');
    expect(
      logged(/"msg":"SIGHUP: configuration reloaded: host_silence_timeout, tcp_listen_queue"/),
    ).toHaveLength(1);
    const ss = findBinary('ss');
    if (ss) {
      const listening = execFileSync(ss, ['-ltnH', `sport = :${port1}`], { encoding: 'utf8' });
      expect(listening.trim().split(/\s+/)[2]).toBe(
        String(Math.min(2048, Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8')))),
      );
    }

    const phase1 = await loop1.stop();
    expect(phase1.failed).toEqual([]);
    expect(phase1.ok).toBeGreaterThan(0);

    // 2. A new port: listened on before the old one stops accepting; the connected clients stay on theirs.
    const port2 = await freePort();
    write([...base, `tcp_listen_port = ${port2}`]);
    await hup('reload 2');
    const loop2 = connectLoop(() => port2);
    expect(logged(/"msg":"collector re-listening"/)).toHaveLength(1);
    const old = await new Promise<string>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: port1 });
      s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      s.once('connect', () => {
        s.destroy();
        resolve('connected');
      });
    });
    expect(old).toBe('ECONNREFUSED');
    const c = await RecordClient.connect(port2, 'c', { node: 'web3' });
    expect(new Set(await c.send(10))).toEqual(new Set([MessageType.ACK]));

    // 3. A key that needs a restart is kept, and said so; 4. a bad file keeps everything.
    write([...base, `tcp_listen_port = ${port2}`, 'evidence = no']);
    await hup('reload 3');
    expect(logged(/"msg":"SIGHUP: evidence can only change with a restart; kept as they were"/)).toHaveLength(
      1,
    );
    write([...base, `tcp_listen_port = ${port2}`, 'tcp_max_per_addr = many']);
    await hup('the refused reload');
    expect(
      logged(/"msg":"SIGHUP: configuration not reloaded \(.*tcp_max_per_addr.*\); keeping the running one"/),
    ).toHaveLength(1);

    // 5. A new log file: opened (its evidence with it); the old one keeps what was written before.
    const log2 = path.join(dir, 'audit2.log');
    write([...base.map((l) => l.replace(log, log2)), `tcp_listen_port = ${port2}`]);
    await hup('reload 5');
    expect(logged(/"msg":"log_file changed: now writing /)).toHaveLength(1);
    expect(new Set(await c.send(10))).toEqual(new Set([MessageType.ACK]));

    sending = false;
    await Promise.all(traffic);
    // The clients connected before the reloads were never closed by them.
    expect([a.wire.closed, b.wire.closed, c.wire.closed]).toEqual([false, false, false]);
    const phase2 = await loop2.stop();
    expect(phase2.failed).toEqual([]);
    expect(phase2.ok).toBeGreaterThan(0);
    collector.kill('SIGTERM');
    await pollUntil(() => collector.exitCode !== null || undefined, { timeoutMs: 15_000, what: 'the exit' });
    expect(collector.exitCode, stderr).toBe(0);
    // Every record the clients got an ACK for is in one of the two logs, once.
    const all = [...linesOf([log]), ...linesOf([log2])];
    const sent = [a, b, c].flatMap((cl) => cl.written());
    expect(all.sort()).toEqual(sent.sort());
    expect(linesOf([log2]).length).toBeGreaterThanOrEqual(10);
  });

  it('the reload policy table is the list in docs/configuration.md', () => {
    const doc = readFileSync(path.join(REPO_ROOT, 'docs', 'configuration.md'), 'utf8');
    const block = doc.slice(
      doc.indexOf('<!-- collector-reload-policy:begin -->'),
      doc.indexOf('<!-- collector-reload-policy:end -->'),
    );
    const documented: Record<string, CollectorReloadPolicy> = {};
    for (const m of block.matchAll(/^- \*\*(live|listener|restart)\*\*[^:]*: (.*)$/gm)) {
      for (const k of m[2]!.matchAll(/`([a-z0-9_]+)`/g)) documented[k[1]!] = m[1] as CollectorReloadPolicy;
    }
    const table = Object.fromEntries(
      Object.entries(COLLECTOR_RELOAD_POLICY).map(([k, v]) => [collectorKeyName(k), v]),
    );
    expect(documented).toEqual(table);
  });
});
