/**
 * `auditrelay import-queue`: audisp-remote's forward-mode queue file goes into our durable queue,
 * and the agent then delivers it (reference §6.5 layout, wrap-around included).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { ScriptServer } from '../helpers/script-server.js';
import { terminate, waitForExit } from '../helpers/wait.js';

const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const ENTRY = 12288;
let dir = '';
const children: ChildProcess[] = [];
let server: ScriptServer | undefined;
afterEach(async () => {
  for (const c of children.splice(0)) await terminate(c, 'SIGKILL', 5000);
  await server?.stop();
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function run(args: string[], stdin = ''): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdin!.end(stdin);
  return waitForExit(child, 30_000).then(({ code }) => ({ code, out, err }));
}

describe('import-queue', () => {
  it('imports an audisp-remote queue file in queue order and the agent delivers it', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-import-cli-'));
    // 4 slots, head at 3: the queue wraps from slot 3 to slots 0 and 1.
    const buf = Buffer.alloc(5 * ENTRY);
    Buffer.from('\0audisp-remote', 'latin1').copy(buf, 0);
    buf.writeUInt32BE(4, 16);
    buf.writeUInt32BE(ENTRY, 20);
    buf.writeUInt32BE(3, 24);
    buf.writeUInt32BE(3, 28);
    const recs = [
      'type=USER_CMD msg=audit(1.0:1): a',
      'type=USER_CMD msg=audit(1.0:2): b',
      'type=USER_CMD msg=audit(1.0:3): c',
    ];
    for (const [slot, text] of [3, 0, 1].map((s, i) => [s, recs[i]] as const)) {
      Buffer.from(`${text}\n\0`, 'latin1').copy(buf, (slot + 1) * ENTRY);
    }
    const queueFile = path.join(dir, 'remote.log');
    writeFileSync(queueFile, buf);
    server = new ScriptServer();
    const port = await server.start();
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(
      conf,
      `remote_server = 127.0.0.1\nport = ${port}\nmode = forward\nqueue_file = ${queueFile}\nqueue_dir = ${dir}/q\n`,
    );
    const dry = await run(['import-queue', '--config', conf, '--dry-run']);
    expect(dry, dry.err).toMatchObject({ code: 0 });
    expect(dry.out).toMatch(/^would import 3 record\(s\)/);
    const r = await run(['import-queue', '--config', conf]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^imported 3 record\(s\) from .*remote\.log into .*\/q/);
    // The agent starts with no input and delivers the imported backlog.
    const agent = await run(['agent', '--config', conf]);
    expect(agent.code, agent.err).toBe(0);
    expect(server.lines()).toEqual(recs);
  });

  it('refuses a file that is not an audisp-remote queue with a clear message', async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-import-cli-'));
    const bad = path.join(dir, 'bad.log');
    writeFileSync(bad, Buffer.alloc(64));
    const conf = path.join(dir, 'agent.conf');
    writeFileSync(conf, `remote_server = 127.0.0.1\nqueue_dir = ${dir}/q\n`);
    const r = await run(['import-queue', '--config', conf, '--queue-file', bad]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/is not an audisp-remote queue file/);
  });
});
