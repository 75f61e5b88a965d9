/**
 * Record identities are for auditrelay collectors only (docs/protocol.md): a real auditd (Debian's 3.0.9 and
 * audit 4.2.1) answers the agent's hello with an empty ACK, so the agent sends plain MESSAGEs, and its log gains
 * nothing: the same network records byte for byte, and the same records of its own (accept, close) as for an
 * agent with `record_ids = no`. Inside a private network+mount namespace, as the other interop suites.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { AUDIT42_RUN } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDITD_BIN, DEFAULT_AUDITD_PORT, startRealAuditd } from '../helpers/real-auditd.js';
import { terminate, waitForExit } from '../helpers/wait.js';

const PORT = DEFAULT_AUDITD_PORT;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');

const available = requireOrSkip({
  suite: 'record identities with the real auditd 3.0.9 and 4.2.1',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN],
  files: [path.join(REPO_ROOT, 'dist/src/cli.js'), AUDIT42_RUN],
});

describe.skipIf(!available)('record identities with a real auditd', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];

  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  /** Runs an agent with `record_ids` on or off, feeds it `lines`, and waits for it to exit 0. */
  async function runAgent(name: string, recordIds: boolean, lines: string[]): Promise<string> {
    const dir = sandbox!.dir;
    const conf = path.join(dir, `${name}.conf`);
    writeFileSync(
      conf,
      [
        'remote_server = 127.0.0.1',
        `port = ${PORT}`,
        `queue_dir = ${path.join(dir, `${name}-queue`)}`,
        `state_file = ${path.join(dir, `${name}.state`)}`,
        `record_ids = ${recordIds ? 'yes' : 'no'}`,
        'drain_timeout = 20',
        'log_level = debug',
        '',
      ].join('\n'),
    );
    let err = '';
    const child = sandbox!.spawn(process.execPath, [BIN, 'agent', '--config', conf], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { AUDITRELAY_LOG_FORMAT: 'json' },
    });
    started.push(child);
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.stdin!.end(lines.map((l) => `${l}\n`).join(''));
    expect(await waitForExit(child, 60_000), err).toEqual({ code: 0, signal: null });
    return err;
  }

  /** auditd's own record types, in order (`type=DAEMON_ACCEPT` …), without their variable fields. */
  const ownTypes = (own: string[]) => own.map((l) => / type=(\S+) /.exec(l)?.[1] ?? l);

  for (const audit42 of [false, true]) {
    it(`${audit42 ? 'audit 4.2.1' : 'Debian 3.0.9'}: the log is what it is without record identities`, async () => {
      sandbox = await NetnsSandbox.create();
      const auditd = await startRealAuditd(sandbox, { port: PORT, audit42 });
      const batch = (tag: string) =>
        Array.from(
          { length: 50 },
          (_, i) => `type=USER_CMD msg=audit(1700000000.${i}:${i}): tag=${tag} n=${i}`,
        );
      await runAgent('plain', false, batch('plain'));
      await auditd.waitForLines(50);
      const ownBefore = auditd.ownRecords().length;
      const err = await runAgent('rid', true, batch('rid'));
      const received = await auditd.waitForLines(100);
      await auditd.stop();
      // The network records, byte for byte: no hello, no record number, no rid field.
      expect(received.map((r) => r.toString('latin1'))).toEqual([...batch('plain'), ...batch('rid')]);
      // auditd's own records for the second agent are those it wrote for the first (accept, close).
      const own = auditd.ownRecords();
      const second = ownTypes(own.slice(ownBefore)).filter((t) => t !== 'DAEMON_END');
      const first = ownTypes(own.slice(0, ownBefore)).filter((t) => t !== 'DAEMON_START');
      expect(second).toEqual(first);
      expect(auditd.readLog().toString('latin1')).not.toMatch(/auditrelay-hello|auditrelay 1|rid=/);
      expect(err).toMatch(/record identities on/);
    });
  }
});
