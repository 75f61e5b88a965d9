/**
 * Descriptor exhaustion (issue 9 item 6): the built collector started with a low RLIMIT_NOFILE (prlimit) lowers
 * its connection cap to what the limit leaves, so a client over it is refused with a log line naming the limit
 * instead of being reset silently by the kernel (EMFILE), and the clients it accepted keep working.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { BIN, Proc } from '../fault/kit.js';
import { findBinary } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';
import { WireClient } from '../helpers/wire-client.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

describe('collector: descriptor limit', () => {
  it('a low open-file limit lowers the connection cap; each client over it is refused with a log line', async () => {
    const prlimit = findBinary('prlimit');
    if (!prlimit) {
      console.warn('\n!!! SKIPPED the descriptor-limit test: prlimit (util-linux) is not installed.\n');
      return;
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-fds-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const LIMIT = 100;
    const child = spawn(
      prlimit,
      [
        `--nofile=${LIMIT}:${LIMIT}`,
        process.execPath,
        BIN,
        'collector',
        '--listen',
        '127.0.0.1:0',
        '--log',
        path.join(dir, 'audit.log'),
        '--evidence-key-file',
        path.join(dir, 'keys', 'signing.key'),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' } },
    );
    const proc = new Proc(child);
    cleanups.push(async () => {
      await terminate(child, 'SIGTERM', 5000);
    });
    const listening = await pollUntil(() => proc.logs.find((l) => l.msg === 'collector listening'), {
      timeoutMs: 15_000,
      what: 'the collector to listen',
      diagnostics: () => proc.tail(),
    });
    const cap = Number(listening.maxConnections);
    expect(cap).toBeLessThan(LIMIT - 64);
    expect(cap).toBeGreaterThan(0);
    expect(proc.logs.some((l) => /needs more descriptors than the limit of 100 allows/.test(l.msg))).toBe(
      true,
    );
    // More clients than the cap, each from its own address (so each refusal gets its own line).
    const N = cap + 10;
    const clients: WireClient[] = [];
    for (let i = 0; i < N; i++) {
      const c = await WireClient.connect({
        host: '127.0.0.1',
        port: Number(listening.port),
        localAddress: `127.0.1.${i + 1}`,
      });
      c.socket.on('error', () => {});
      clients.push(c);
      cleanups.push(() => c.destroy());
    }
    await pollUntil(
      () => proc.count(/^refused connection from 127\.0\.1\.\d+:\d+: the descriptor limit/) >= N - cap,
      {
        timeoutMs: 10_000,
        what: `${N - cap} refusals in the collector's log`,
        diagnostics: () => proc.tail(),
      },
    );
    await pollUntil(() => clients.filter((c) => c.closed).length === N - cap, {
      timeoutMs: 10_000,
      what: 'the refused clients to see their connection closed',
    });
    // The accepted ones work; the refused ones were closed (after the log line, not a silent reset).
    let acked = 0;
    for (const [i, c] of clients.entries()) {
      if (c.closed) continue;
      await c.write(encodeEvent(1, Buffer.from(`type=USER_CMD msg=audit(1.0:${i}): n=${i}\n`)));
      const [r] = await c.waitForReplies(1, 10_000);
      expect(r!.type).toBe(MessageType.ACK);
      acked++;
    }
    expect(acked).toBe(cap);
    expect(proc.count(/^refused connection/)).toBe(N - cap);
  });
});
