/**
 * What the audit tools read: the corpus records sent through real connections to the collector, its log rotated
 * halfway (SIGUSR1's rotation), then the real `ausearch -if` and `aureport -if` of audit 3.0.9 (Debian 12) and
 * 4.2.1 (sid, test/helpers/peers.ts) run on the rotated file and on the current one. Each tool finds in them exactly
 * what it finds in the same records written as auditd writes them (the files are byte for byte those records), and
 * every corpus record is found.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_LOG_MANAGEMENT } from '../../src/collector/log-store.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { expectedRecords, loadCorpus } from '../helpers/corpus.js';
import { AUDIT42_RUN, FETCH_HINT } from '../helpers/peers.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { WireClient } from '../helpers/wire-client.js';
import { cleanup, onCleanup, startCollector } from './harness.js';

afterEach(cleanup);

const available = requireOrSkip({
  suite: 'ausearch and aureport (3.0.9 and 4.2.1) on the collector log',
  binaries: ['ausearch', 'aureport'],
  files: [AUDIT42_RUN],
});
if (!available) console.warn(`(4.2.1: ${FETCH_HINT})`);

/** The tools of each version: argv prefix. */
const TOOLS: Record<string, (tool: string) => string[]> = {
  '3.0.9': (tool) => [findBinary(tool) ?? tool],
  '4.2.1': (tool) => [AUDIT42_RUN, tool],
};

function run(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'latin1', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!available)('ausearch and aureport on the collector log and its rotated file', () => {
  it('find the corpus records as in a log auditd wrote (3.0.9 and 4.2.1)', async () => {
    const records = loadCorpus({ includeShared: false }).flatMap((f) => expectedRecords(f.bytes));
    const half = Math.floor(records.length / 2);
    const c = await startCollector({ logManagement: { ...DEFAULT_LOG_MANAGEMENT, numLogs: 5 } });
    const client = await WireClient.connect({ host: '127.0.0.1', port: c.port });
    onCleanup(() => client.destroy());
    const send = async (part: Buffer[], first: number) => {
      const before = client.replies.length;
      await client.write(
        Buffer.concat(part.map((r, i) => encodeEvent(first + i, Buffer.concat([r, Buffer.from('\n')])))),
      );
      const replies = await client.waitForReplies(before + part.length, 30_000);
      expect(new Set(replies.slice(before).map((r) => r.type))).toEqual(new Set([MessageType.ACK]));
    };
    await send(records.slice(0, half), 2);
    await c.collector.rotate('test');
    await send(records.slice(half), 2 + half);
    await c.stop();

    // The rotated file and the current one are, byte for byte, those records as auditd writes them.
    const asAuditd = (rs: Buffer[]) => Buffer.concat(rs.flatMap((r) => [r, Buffer.from('\n')]));
    const rotated = `${c.logFile}.1`;
    expect(readFileSync(rotated).equals(asAuditd(records.slice(0, half)))).toBe(true);
    expect(readFileSync(c.logFile).equals(asAuditd(records.slice(half)))).toBe(true);
    const direct = [path.join(c.dir, 'direct-1.log'), path.join(c.dir, 'direct-2.log')];
    writeFileSync(direct[0]!, asAuditd(records.slice(0, half)));
    writeFileSync(direct[1]!, asAuditd(records.slice(half)));
    const whole = path.join(c.dir, 'direct.log');
    writeFileSync(whole, asAuditd(records));

    for (const [version, tool] of Object.entries(TOOLS)) {
      // ausearch: every record of every event, raw.
      const found: string[] = [];
      for (const [i, file] of [rotated, c.logFile].entries()) {
        const ours = run([...tool('ausearch'), '--raw', '-if', file]);
        const theirs = run([...tool('ausearch'), '--raw', '-if', direct[i]!]);
        expect(ours.status, `${version} ausearch -if ${file}: ${ours.stderr}`).toBe(0);
        expect(ours.stdout, `${version} ausearch -if ${file}`).toBe(theirs.stdout);
        found.push(...ours.stdout.split('\n').filter((l) => l !== '' && !l.startsWith('----')));
      }
      const all = run([...tool('ausearch'), '--raw', '-if', whole]).stdout.split('\n');
      const inWhole = new Set(all.filter((l) => l !== '' && !l.startsWith('----')));
      expect(new Set(found), `${version}: ausearch finds the same records in the rotated set`).toEqual(
        inWhole,
      );
      // Nearly every corpus record is an event ausearch reports (a few corpus lines are not audit records).
      expect(found.length, version).toBeGreaterThan(records.length * 0.9);
      // aureport: the same report for each file as for the same records written directly.
      for (const [i, file] of [rotated, c.logFile].entries()) {
        for (const report of [[], ['--summary', '-i'], ['-e', '-i'], ['-x', '-i']]) {
          const ours = run([...tool('aureport'), ...report, '-if', file]);
          const theirs = run([...tool('aureport'), ...report, '-if', direct[i]!]);
          expect(ours.status, `${version} aureport ${report.join(' ')} -if ${file}: ${ours.stderr}`).toBe(0);
          expect(ours.stdout, `${version} aureport ${report.join(' ')}`).toBe(theirs.stdout);
        }
      }
      const events = [rotated, c.logFile].map((file) =>
        Number(/Number of events: (\d+)/.exec(run([...tool('aureport'), '-if', file]).stdout)?.[1]),
      );
      expect(events[0]! + events[1]!, version).toBeGreaterThan(0);
    }
    // Sanity check of the 4.2.1 tools themselves.
    expect(execFileSync(AUDIT42_RUN, ['ausearch', '-v'], { encoding: 'utf8' })).toMatch(/4\.2\.1/);
  });
});
