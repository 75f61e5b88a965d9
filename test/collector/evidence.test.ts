/**
 * The evidence store wired into the collector (issue 15 item 3, docs/evidence.md): the built collector (a process,
 * evidence in its worker thread, on by default) receives records over real client connections and rotates its log
 * with SIGUSR1; `auditrelay verify` finds the fresh log and the rotated set intact, and catches each of an edited,
 * a deleted, an inserted, a reordered record and a truncated log in copies of that set, at the right line, with
 * exit status 1. The hosts of the chain are the senders' identities (node names here).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { pollUntil, terminate } from '../helpers/wait.js';
import { cleanup, linesOf, logSet, RecordClient, tempDir } from './harness.js';

const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');

afterEach(cleanup);

interface Cli {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Cli> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let set: { dir: string; log: string; key: string; lines: string[][] };

afterAll(() => {
  if (set) rmSync(set.dir, { recursive: true, force: true });
});

beforeAll(async () => {
  // Kept for every test of the file (tempDir's would go after the first one).
  const dir = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-collector-evidence-'));
  chmodSync(dir, 0o700);
  const log = path.join(dir, 'audit.log');
  const keyFile = path.join(dir, 'keys', 'signing.key');
  const collector: ChildProcess = spawn(
    process.execPath,
    [BIN, 'collector', '--listen', '127.0.0.1:0', '--log', log, '--evidence-key-file', keyFile],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' } },
  );
  let stderr = '';
  collector.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  try {
    const port = await pollUntil(() => /"port":(\d+),[^\n]*"collector listening"/.exec(stderr)?.[1], {
      timeoutMs: 20_000,
      what: 'the collector to listen',
      diagnostics: () => stderr,
    });
    const clients = await Promise.all(
      ['web1', 'web2', 'db1'].map((node, i) =>
        RecordClient.connect(Number(port), node, { node, localAddress: `127.0.0.${i + 2}` }),
      ),
    );
    for (let round = 1; round <= 3; round++) {
      await Promise.all(clients.map((c) => c.send(40)));
      if (round < 3) {
        collector.kill('SIGUSR1');
        await pollUntil(() => stderr.split('"reason":"SIGUSR1"').length - 1 === round, {
          timeoutMs: 10_000,
          what: `rotation #${round}`,
          diagnostics: () => stderr,
        });
      }
    }
    for (const c of clients) c.wire.end();
    collector.kill('SIGTERM');
    await pollUntil(() => collector.exitCode !== null || undefined, { timeoutMs: 15_000, what: 'the exit' });
    expect(collector.exitCode, stderr).toBe(0);
  } finally {
    await terminate(collector, 'SIGKILL', 5000);
  }
  const pub = await cli(['pubkey', '--key-file', keyFile]);
  expect(pub.code, pub.stderr).toBe(0);
  const key = path.join(dir, 'collector.vkey');
  writeFileSync(key, pub.stdout);
  set = { dir, log, key, lines: logSet(log).map((f) => linesOf([f])) };
}, 60_000);

/** A copy of the set in a new private directory (files, evidence and key, modes kept). */
function copy(): { dir: string; log: string } {
  const dir = tempDir('auditrelay-collector-evidence-copy-');
  execFileSync('cp', ['-a', `${set.dir}/.`, dir]);
  execFileSync('chmod', [
    'u+w',
    ...['audit.log.2', 'audit.log.1', 'audit.log'].map((n) => path.join(dir, n)),
  ]);
  return { dir, log: path.join(dir, 'audit.log') };
}

function rewrite(file: string, edit: (lines: string[]) => string[]): void {
  const lines = readFileSync(file, 'latin1').split('\n').slice(0, -1);
  writeFileSync(
    file,
    edit(lines)
      .map((l) => `${l}\n`)
      .join(''),
    'latin1',
  );
}

describe("verify on a real collector's log", () => {
  it('a fresh log and the rotated set verify, with the key printed by pubkey; the hosts are the senders', async () => {
    expect(set.lines.map((l) => l.length)).toEqual([120, 120, 120]);
    const all = await cli(['verify', '--key', `@${set.key}`, set.dir]);
    expect(all.code, all.stdout + all.stderr).toBe(0);
    expect(all.stdout).toBe('');
    expect(all.stderr).toMatch(/intact: 3 log file\(s\), 360 record\(s\)/);
    const current = await cli(['verify', '--key', `@${set.key}`, set.log]);
    expect(current.code, current.stdout + current.stderr).toBe(0);
    const segments = execFileSync('sh', ['-c', `cat ${set.log}.evidence/*.chain`], { encoding: 'utf8' });
    const hosts = new Set([...segments.matchAll(/^h \d+ \S+ (\S+)$/gm)].map((m) => m[1]));
    expect(hosts).toEqual(new Set(['web1', 'web2', 'db1']));
  });

  const cases: [string, (log: string) => void, RegExp][] = [
    [
      'an edited record',
      (log) => rewrite(`${log}.1`, (l) => l.map((x, i) => (i === 9 ? x.replace('uid=0', 'uid=1') : x))),
      /^.*audit\.log\.1:10: record changed: it does not match record index \d+ of the evidence$/,
    ],
    [
      'a deleted record',
      (log) => rewrite(`${log}.1`, (l) => l.filter((_, i) => i !== 19)),
      /^.*audit\.log\.1:20: record deleted before this line: record index \d+ is missing$/,
    ],
    [
      'an inserted record',
      (log) =>
        rewrite(`${log}.1`, (l) => [
          ...l.slice(0, 29),
          'node=web1 type=USER_LOGIN msg=audit(1700000000.000:1): pid=1 uid=0 res=success',
          ...l.slice(29),
        ]),
      /^.*audit\.log\.1:30: record inserted: it is not in the evidence$/,
    ],
    [
      'reordered records',
      (log) => rewrite(`${log}.1`, (l) => [...l.slice(0, 39), l[40]!, l[39]!, ...l.slice(41)]),
      /^.*audit\.log\.1:4[01]: record out of order: it is record index \d+, which belongs at line 4[01]$/,
    ],
    [
      'a truncated log',
      (log) => {
        // The last three records and half of the one before them.
        const text = readFileSync(log, 'latin1');
        const cut = text.slice(0, -1).split('\n').slice(0, -3).join('\n').length + 1;
        truncateSync(log, cut - 40);
      },
      /^.*audit\.log:117: log truncated: 4 record\(s\) from here on are missing \(record index 356\.\.359\) \(the last line is cut short inside a record\)$/,
    ],
  ];
  for (const [what, tamper, first] of cases) {
    it(`${what}: caught, the first problem at its line, exit 1`, async () => {
      const c = copy();
      tamper(c.log);
      const r = await cli(['verify', '--key', `@${set.key}`, c.dir]);
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.stdout.split('\n')[0]).toMatch(first);
    });
  }
});
