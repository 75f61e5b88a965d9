/**
 * `--inspect URL` streams the actor system's events to a Stately-inspector WebSocket (here a local
 * WebSocket server standing in for the inspector), loopback only unless allowed, with record data
 * redacted.
 */

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { checkInspectUrl, redact } from '../../src/status/inspect.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil, terminate } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('--inspect', () => {
  it('streams statechart events to the inspector WebSocket, without record data', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    cleanup.push(() => new Promise((r) => wss.close(() => r())));
    const messages: string[] = [];
    wss.on('connection', (ws) => ws.on('message', (m) => messages.push(m.toString())));
    const server = new ScriptServer();
    const port = await server.start();
    cleanup.push(() => server.stop());
    const conf = path.join(os.tmpdir(), `auditrelay-inspect-${process.pid}.conf`);
    const queueDir = path.join(os.tmpdir(), `auditrelay-inspect-${process.pid}.queue`);
    cleanup.push(async () => rmSync(queueDir, { recursive: true, force: true }));
    writeFileSync(
      conf,
      `remote_server = 127.0.0.1\nport = ${port}\nlog_level = warn\nqueue_dir = ${queueDir}\n`,
    );
    const wsPort = (wss.address() as { port: number }).port;
    const agent = spawn(
      process.execPath,
      [BIN, 'agent', '--config', conf, '--inspect', `ws://127.0.0.1:${wsPort}`],
      {
        stdio: ['pipe', 'ignore', 'pipe'],
      },
    );
    cleanup.push(async () => {
      await terminate(agent, 'SIGKILL', 5000);
    });
    const secret = 'type=USER_CMD msg=audit(1.000:1): cmd=SECRET-PAYLOAD-1234';
    agent.stdin.write(`${secret}\n`);
    await server.waitForRecords(1);
    await pollUntil(() => messages.some((m) => m.includes('online') && m.includes('connected')), {
      timeoutMs: 10_000,
      what: 'an inspection event showing the connected state',
    });
    agent.stdin.end();
    await once(agent, 'exit');
    const all = messages.join('\n');
    expect(all).toContain('"connection"');
    expect(all).not.toContain('SECRET-PAYLOAD');
  });

  it('refuses a non-loopback inspector unless --inspect-remote is given', () => {
    expect(() => checkInspectUrl('ws://192.0.2.10:8080', false)).toThrow(
      /not a loopback address.*--inspect-remote/,
    );
    expect(checkInspectUrl('ws://192.0.2.10:8080', true).hostname).toBe('192.0.2.10');
    expect(checkInspectUrl('ws://[::1]:8080', false).port).toBe('8080');
    expect(() => checkInspectUrl('http://127.0.0.1:1', false)).toThrow(/ws:\/\//);
  });

  it('redacts payload-like fields at any depth', () => {
    expect(redact({ type: 'X', payload: Buffer.from('secret'), nested: { record: 'r', keep: 1 } })).toEqual({
      type: 'X',
      payload: '[redacted]',
      nested: { record: '[redacted]', keep: 1 },
    });
  });
});
