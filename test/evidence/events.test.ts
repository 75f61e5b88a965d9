/**
 * Events as JSON (docs/events.md): the record parser, the streaming grouper (interleaving, missing EOE, late
 * records, bounds on hostile input), EXECVE/PROCTITLE decoding, and `auditrelay events` on every real log of the
 * corpus, each output line checked against docs/schema/event-v1.schema.json with Ajv (draft 2020-12, strict).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseBody, parseHeader } from '../../src/evidence/audit-record.js';
import { type AuditEvent, EventGrouper, type EventGrouperOptions } from '../../src/evidence/events.js';
import { corpusFiles, hasSharedCorpus, REPO_ROOT, SHARED_CORPUS_DIR, splitLines } from '../helpers/corpus.js';

const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');
const SCHEMA = JSON.parse(readFileSync(path.join(REPO_ROOT, 'docs/schema/event-v1.schema.json'), 'utf8'));
const ajv = new Ajv2020({ strict: true, allErrors: true });
const validate = ajv.compile(SCHEMA);

function group(lines: string[], options: Partial<EventGrouperOptions> = {}): AuditEvent[] {
  const out: AuditEvent[] = [];
  const g = new EventGrouper({ ...options, emit: (e) => out.push(e) });
  for (const l of lines) g.push(l);
  g.flush();
  for (const e of out)
    expect(validate(JSON.parse(JSON.stringify(e))), ajv.errorsText(validate.errors)).toBe(true);
  return out;
}

const rec = (type: string, stamp: string, body: string, node?: string) =>
  `${node ? `node=${node} ` : ''}type=${type} msg=audit(${stamp}): ${body}`;

describe('record parser', () => {
  it('splits node, type and stamp, and rejects lines that are not records', () => {
    const h = parseHeader('node=web1 type=SYSCALL msg=audit(1615114232.375:15558): arch=c000003e')!;
    expect(h).toMatchObject({ node: 'web1', type: 'SYSCALL', stamp: '1615114232.375:15558', serial: 15558 });
    expect(h.seconds * 1000 + h.millis).toBe(1615114232375);
    for (const bad of [
      '',
      '# comment',
      'type=UNKNOWN[1329] msg=?',
      'type=SYSCALL msg=audit(abc:1): x=1',
      'Jan  1 00:00:00 host kernel: audit: type=1400 audit(1.2:3): x',
      'node=x',
      `type=SYSCALL msg=audit(${'9'.repeat(17)}.000:1): x=1`,
    ]) {
      expect(parseHeader(bad), bad).toBeNull();
    }
  });

  it('keeps every field: quoted, unquoted, empty, odd values, duplicates, free words, msg and ENRICHED parts', () => {
    const line =
      'type=USER_ACCT msg=audit(1.002:3): pid=1 uid=0 subj==unconfined op= a=b avc:  denied  { read } x=1 x=2 ' +
      `msg='op=PAM:accounting grantors=pam_unix acct="root" cmd=2F62696E2F6C73202D6C : exe="/usr/bin/su" res=success'\x1dUID="root" SADDR={ fam=inet port=1 }`;
    const b = parseBody(line, parseHeader(line)!);
    expect({ ...b.fields }).toEqual({ pid: '1', uid: '0', subj: '=unconfined', op: '', a: 'b', x: '1' });
    expect(b.dup).toEqual([['x', '2']]);
    expect(b.text).toBe('avc: denied { read }');
    expect({ ...b.msg }).toEqual({
      op: 'PAM:accounting',
      grantors: 'pam_unix',
      acct: 'root',
      cmd: '/bin/ls -l',
      exe: '/usr/bin/su',
      res: 'success',
    });
    expect(b.msgText).toBe(':');
    expect({ ...b.hex }).toEqual({ 'msg.cmd': '2F62696E2F6C73202D6C' });
    expect({ ...b.enriched }).toEqual({ UID: 'root', SADDR: '{ fam=inet port=1 }' });
  });

  it('decodes hex only where auditd encodes (untrusted strings), never numbers that look like hex', () => {
    const line = rec(
      'SYSCALL',
      '1.000:1',
      'a0=ABCDEF a1=12 comm=636174 exe="/usr/bin/cat" key=(null) name=4142 data=41 inode=1234',
    );
    const b = parseBody(line, parseHeader(line)!);
    expect(b.fields).toMatchObject({
      a0: 'ABCDEF',
      a1: '12',
      comm: 'cat',
      exe: '/usr/bin/cat',
      key: '(null)',
      name: 'AB',
      data: 'A',
      inode: '1234',
    });
    expect({ ...b.hex }).toEqual({ comm: '636174', name: '4142', data: '41' });
  });

  it('a field named __proto__ is an ordinary field', () => {
    const line = rec('USER', '1.000:1', '__proto__=x constructor=y');
    const b = parseBody(line, parseHeader(line)!);
    expect(JSON.stringify(b.fields)).toBe('{"__proto__":"x","constructor":"y"}');
    expect(Object.getPrototypeOf(b.fields)).toBe(Object.prototype);
    // A name that exists on Object.prototype is not mistaken for a field already seen.
    const t = rec('USER', '1.000:1', 'toString=a hasOwnProperty=b');
    expect(JSON.stringify(parseBody(t, parseHeader(t)!).fields)).toBe(
      '{"toString":"a","hasOwnProperty":"b"}',
    );
  });
});

describe('grouping', () => {
  it('groups interleaved events by node and stamp; EOE and PROCTITLE end them; userspace records stand alone', () => {
    const events = group([
      rec('SYSCALL', '10.000:1', 'syscall=59'),
      rec('SYSCALL', '10.000:2', 'syscall=2'),
      rec('SYSCALL', '10.000:1', 'syscall=59', 'other'),
      rec('USER_LOGIN', '10.000:3', "pid=1 msg='op=login res=success'"),
      rec('CWD', '10.000:1', 'cwd="/"'),
      rec('PATH', '10.000:2', 'item=0 name="/etc/x"'),
      rec('EOE', '10.000:2', ''),
      rec('PROCTITLE', '10.000:1', 'proctitle=6C73'),
      rec('EOE', '10.000:1', ''),
    ]);
    expect(events.map((e) => [e.node, e.id, e.end, e.records.map((r) => r.type).join(',')])).toEqual([
      [null, '10.000:3', 'single', 'USER_LOGIN'],
      [null, '10.000:2', 'eoe', 'SYSCALL,PATH'],
      [null, '10.000:1', 'proctitle', 'SYSCALL,CWD,PROCTITLE'],
      ['other', '10.000:1', 'flush', 'SYSCALL'],
    ]);
  });

  it('a record after its event was written out starts part 2; an EOE after it is dropped', () => {
    const out: AuditEvent[] = [];
    const g = new EventGrouper({ emit: (e) => out.push(e) });
    g.push(rec('SYSCALL', '10.000:1', 'syscall=1'));
    g.push(rec('PROCTITLE', '10.000:1', 'proctitle="x"'));
    g.push(rec('PATH', '10.000:1', 'item=0'));
    g.push(rec('EOE', '10.000:1', ''));
    g.flush();
    expect(out.map((e) => [e.end, e.part, e.records.length])).toEqual([
      ['proctitle', undefined, 2],
      ['eoe', 2, 1],
    ]);
    expect(g.stats.lateParts).toBe(1);
  });

  it('ends an event once its node’s audit clock is past it by the window, per node', () => {
    const out: AuditEvent[] = [];
    const g = new EventGrouper({ emit: (e) => out.push(e), lagMs: 2000 });
    g.push(rec('AVC', '100.000:1', 'x=1'));
    g.push(rec('AVC', '100.000:1', 'x=1', 'b'));
    g.push(rec('AVC', '101.500:2', 'x=2'));
    expect(out).toHaveLength(0);
    // Node b's clock jumping ahead does not end node-less events.
    g.push(rec('AVC', '500.000:9', 'x=9', 'b'));
    expect(out.map((e) => [e.node, e.id, e.end])).toEqual([['b', '100.000:1', 'timeout']]);
    g.push(rec('AVC', '102.600:3', 'x=3'));
    expect(out.map((e) => e.id)).toEqual(['100.000:1', '100.000:1']);
    expect(out[1]!.node).toBeNull();
    g.flush();
    expect(out.map((e) => e.id)).toEqual(['100.000:1', '100.000:1', '101.500:2', '500.000:9', '102.600:3']);
  });

  it('expireIdle() writes out events that received nothing since the previous call (live streams)', () => {
    const out: AuditEvent[] = [];
    const g = new EventGrouper({ emit: (e) => out.push(e) });
    g.push(rec('SYSCALL', '10.000:1', 'syscall=1'));
    g.expireIdle();
    expect(out).toHaveLength(0);
    g.push(rec('SYSCALL', '10.000:2', 'syscall=2'));
    g.expireIdle();
    expect(out.map((e) => [e.id, e.end])).toEqual([['10.000:1', 'timeout']]);
    g.expireIdle();
    expect(out.map((e) => e.id)).toEqual(['10.000:1', '10.000:2']);
  });

  it('stays bounded on hostile input: open events, buffered bytes, records per event', () => {
    const out: AuditEvent[] = [];
    const g = new EventGrouper({
      emit: (e) => out.push(e),
      maxOpenEvents: 100,
      maxBufferedBytes: 64 * 1024,
      maxEventRecords: 50,
    });
    let maxOpen = 0;
    let maxBytes = 0;
    // 5,000 distinct events, none ever completed, all at the same time (the clock never advances).
    for (let i = 0; i < 5000; i++) {
      g.push(rec('AVC', `10.000:${i}`, `pad=${'x'.repeat(i % 7 === 0 ? 2000 : 10)}`));
      maxOpen = Math.max(maxOpen, g.openEvents);
      maxBytes = Math.max(maxBytes, g.bufferedBytes);
    }
    expect(maxOpen).toBeLessThanOrEqual(100);
    expect(maxBytes).toBeLessThanOrEqual(64 * 1024);
    // One event with 120 records comes out in parts of at most 50.
    for (let i = 0; i < 120; i++) g.push(rec('PATH', '20.000:1', `item=${i}`));
    g.flush();
    const parts = out.filter((e) => e.id === '20.000:1');
    expect(parts.map((e) => [e.records.length, e.end, e.part])).toEqual([
      [50, 'oversize', undefined],
      [50, 'oversize', 2],
      [20, 'flush', 3],
    ]);
    expect(out.reduce((n, e) => n + e.records.length, 0)).toBe(5120);
    expect(g.stats.byEnd.evicted).toBeGreaterThan(4000);
  });

  it('assembles EXECVE arguments: quoted, hex, split aN[i] pieces over several records, and missing ones', () => {
    const big = Buffer.from('x y'.repeat(10)).toString('hex').toUpperCase();
    const [ev] = group([
      rec('SYSCALL', '1.000:7', 'syscall=59 key=6B31016B32'),
      rec('EXECVE', '1.000:7', `argc=4 a0="sh" a1=2D6320 a2_len=60 a2[0]=${big.slice(0, 30)}`),
      rec('EXECVE', '1.000:7', `a2[1]=${big.slice(30)} a3="last"`),
      rec('PROCTITLE', '1.000:7', 'proctitle=7368002D6320'),
    ]);
    expect(ev!.process).toEqual({
      args: ['sh', '-c ', 'x y'.repeat(10), 'last'],
      args_count: 4,
      title: 'sh -c ',
      title_args: ['sh', '-c '],
    });
    expect(ev!.keys).toEqual(['k1', 'k2']);
    const [lost] = group([rec('EXECVE', '1.000:8', 'argc=3 a0="a" a2="c"')]);
    expect(lost!.process).toEqual({ args: ['a', '', 'c'], args_count: 3, args_incomplete: true });
  });
});

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], input?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

/** Lines of a file that are audit records other than EOE (what must come out, each exactly once). */
function recordLines(file: string): string[] {
  return splitLines(readFileSync(file))
    .map((l) => l.toString('utf8'))
    .filter((l) => {
      const h = parseHeader(l);
      return h !== null && h.type !== 'EOE';
    });
}

describe('auditrelay events on the corpus', () => {
  const files = corpusFiles({ includeShared: true });
  const results = new Map<string, CliResult>();

  beforeAll(async () => {
    if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('run `npm run build` first');
    if (!hasSharedCorpus()) {
      console.warn(
        `[events] shared corpus ${SHARED_CORPUS_DIR} absent: only the committed fixtures are checked`,
      );
    }
    // Four at a time: one process per file (each file is its own stream of events).
    const queue = [...files];
    const worker = async () => {
      for (let f = queue.shift(); f !== undefined; f = queue.shift()) {
        results.set(f, await runCli(['events', '--raw', f]));
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  });

  it('covers every committed fixture (and the shared corpus when present)', () => {
    expect(files.filter((f) => path.basename(f).startsWith('golibaudit_')).length).toBe(11);
    expect(files.filter((f) => path.basename(f).startsWith('beats_')).length).toBe(3);
  });

  it('writes valid JSON for every file, each event valid against the schema, every record exactly once', () => {
    for (const file of files) {
      const r = results.get(file)!;
      expect(r.code, `${file}: ${r.stderr}`).toBe(0);
      const events = r.stdout
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as AuditEvent);
      expect(events.length, file).toBeGreaterThan(0);
      for (const e of events) {
        expect(validate(e), `${file} ${e.id}: ${ajv.errorsText(validate.errors)}`).toBe(true);
        for (const rr of e.records) {
          const h = parseHeader(rr.raw!)!;
          expect(`${h.node ?? e.node}/${h.stamp}`).toBe(`${e.node}/${e.id}`);
        }
      }
      const out = events.flatMap((e) => e.records.map((rr) => rr.raw!));
      expect(out.sort(), file).toEqual(recordLines(file).sort());
    }
  });

  it('names the lines that are not records on stderr (file:line) and skips them', () => {
    const rhel7 = files.find((f) => path.basename(f) === 'golibaudit_auparse_audit-rhel7.log')!;
    expect(results.get(rhel7)!.stderr).toContain(
      `${rhel7}:31: not an audit record (no msg=audit(SECONDS.MILLIS:SERIAL) stamp); skipped`,
    );
  });

  function eventsOf(name: string): AuditEvent[] {
    const file = files.find((f) => path.basename(f) === name);
    if (!file) throw new Error(`${name} not in the corpus`);
    return results
      .get(file)!
      .stdout.split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as AuditEvent);
  }

  it('go-libaudit lost_messages: gaps in serials change nothing; hex exe= decoded', () => {
    const lost = eventsOf('golibaudit_testdata_lost_messages.log');
    const normal = eventsOf('golibaudit_testdata_normal.log');
    expect(lost.length).toBe(normal.length);
    expect(lost.map((e) => e.records.length)).toEqual(normal.map((e) => e.records.length));
    const exe = lost.flatMap((e) => e.records).find((r) => r.hex?.exe)!;
    expect(exe.fields.exe).toBe('/usr/bin/python2.7;58d1ccfb (deleted)');
  });

  it('go-libaudit test3: interleaved SYSCALL/PROCTITLE pairs come out whole', () => {
    const events = eventsOf('golibaudit_auparse_test3.log').filter((e) => e.records[0]!.type === 'SYSCALL');
    expect(events.length).toBe(7);
    for (const e of events) {
      expect(e.records.map((r) => r.type)).toEqual(['SYSCALL', 'PROCTITLE']);
      expect(e.end).toBe('proctitle');
    }
  });

  it('go-libaudit rhel6: hex cmd= inside msg and hex exe= are decoded, the hex kept', () => {
    const records = eventsOf('golibaudit_auparse_audit-rhel6.log').flatMap((e) => e.records);
    const cmd = records.find((r) => r.type === 'USER_CMD')!;
    expect(cmd.msg!.cmd).toBe('/usr/lib64/nagios/plugins/check_asterisk_sip_peers -p 107');
    expect(cmd.hex!['msg.cmd']).toMatch(/^2F7573/);
  });

  describe.skipIf(!hasSharedCorpus())(
    'GPL files of the shared corpus (read from shared/, never committed)',
    () => {
      it('laurel reordered trace: every event complete through its late EOE, no part split', () => {
        const events = eventsOf('laurel_shell-proc-trace-reordered.log');
        expect(events.length).toBe(9);
        expect(events.every((e) => e.end === 'eoe' && e.part === undefined)).toBe(true);
        const exec = events.filter((e) => e.process?.args);
        expect(exec.map((e) => e.process!.args)).toEqual(
          expect.arrayContaining([['/bin/sh', './src/testdata/double-fork/test-script.sh']]),
        );
      });

      it('laurel execve with node= and ENRICHED: node kept, interpreted fields separate', () => {
        const [e] = eventsOf('laurel_record-execve.log');
        expect(e!.node).toBe('work');
        expect(e!.end).toBe('proctitle');
        expect(e!.records[0]!.enriched).toMatchObject({ ARCH: 'x86_64', SYSCALL: 'execve', AUID: 'user' });
        expect(e!.records[0]!.fields.key).toBe('(null)');
        expect(e!.process).toMatchObject({ args: ['whoami'], args_count: 1, title: 'whoami' });
      });

      it('laurel perl reverse shell: hex EXECVE argument and PROCTITLE decoded', () => {
        const [e] = eventsOf('laurel_record-perl-reverse-shell.log');
        expect(e!.process!.args![2]).toMatch(/^use Socket;\$i="10\.0\.0\.1";/);
        expect(e!.process!.title_args!.slice(0, 2)).toEqual(['perl', '-e']);
      });

      it('audit-userspace test4: a 48-argument EXECVE', () => {
        const e = eventsOf('audit-userspace_auparse_test4.log').find((x) => x.process?.args)!;
        expect(e.process!.args_count).toBe(48);
        expect(e.process!.args!.length).toBe(48);
        expect(e.process!.args_incomplete).toBeUndefined();
      });
    },
  );

  it('reads stdin without FILE, and reports an unreadable file with AR_EVIDENCE wording and exit 1', async () => {
    const r = await runCli(['events'], `${rec('USER_END', '5.000:1', 'pid=1')}\n`);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ id: '5.000:1', end: 'single' });
    // A line longer than 1 MiB is not a record: named and skipped, the records around it still come out.
    const long = `${rec('USER_END', '5.000:2', 'pid=2')}\n${'x'.repeat(2 * 1024 * 1024)}\n${rec('USER_END', '5.000:3', 'pid=3')}\n`;
    const lr = await runCli(['events', '-'], long);
    expect(lr.code).toBe(0);
    expect(
      lr.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).id),
    ).toEqual(['5.000:2', '5.000:3']);
    expect(lr.stderr).toContain(
      'stdin:2: line of 2097152 bytes is longer than 1048576 (not an audit record); skipped',
    );
    const missing = await runCli(['events', '/nonexistent/audit.log']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('cannot read /nonexistent/audit.log: ENOENT');
  });
});
