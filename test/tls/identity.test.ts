/**
 * The host identity stamp (` peer_id=<kind>:<name>`) and the node= policy (src/collector/identity.ts), and proof that
 * auditd's own tool still parses stamped logs: the real `ausearch` 3.0.9 (Debian 12) and 4.2.1 (sid) read every
 * stamped corpus record (`ausearch -if FILE --raw` returns each line, `-i` finds each event, `--node` selects by
 * node), an ENRICHED record with its GS separator included.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  applyIdentity,
  encodeIdentityName,
  identityNodes,
  identityStamp,
  neutralizeField,
  nodeBelongs,
  type PeerIdentity,
  recordNode,
} from '../../src/collector/identity.js';
import { unescapeLogLine } from '../../src/collector/sanitize.js';
import { expectedRecords, loadCorpus } from '../helpers/corpus.js';
import { AUDIT42_RUN, audit42Version, FETCH_HINT } from '../helpers/peers.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { tempDir } from './support.js';

const psk: PeerIdentity = { kind: 'tls-psk', name: 'host-1', nodes: ['web1.example.com'] };
const b = (s: string) => Buffer.from(s, 'latin1');
const apply = (line: string, id: PeerIdentity | null, policy: Parameters<typeof applyIdentity>[2]) => {
  const d = applyIdentity(b(line), id, policy);
  return d.action === 'refuse'
    ? { refused: d.node }
    : { line: d.line.toString('latin1'), mismatch: d.mismatch };
};

describe('the stamp', () => {
  it('peer_id=<kind>:<name>, the name %-encoded outside a safe set', () => {
    expect(identityStamp(psk).toString()).toBe(' peer_id=tls-psk:host-1');
    expect(identityStamp({ kind: 'krb5', name: 'auditd/web1.example.com@EXAMPLE.COM' }).toString()).toBe(
      ' peer_id=krb5:auditd/web1.example.com@EXAMPLE.COM',
    );
    expect(identityStamp({ kind: 'address', name: '::ffff:192.0.2.7' }).toString()).toBe(
      ' peer_id=addr:::ffff:192.0.2.7',
    );
    expect(encodeIdentityName('web 1 "x"=%\u00e9')).toBe('web%201%20%22x%22%3D%25%C3%A9');
  });

  it("a client's own peer_id= field is escaped (reversibly) so the collector's is the only one", () => {
    expect(neutralizeField(b('a=1 peer_id=x:y b peer_id=z')).toString()).toBe(
      'a=1 peer_id\\x3dx:y b peer_id\\x3dz',
    );
    expect(neutralizeField(b('peer_id=x')).toString()).toBe('peer_id\\x3dx');
    expect(neutralizeField(b('not_peer_id=x')).toString()).toBe('not_peer_id=x');
    const line = apply("type=USER msg=audit(1.0:1): msg='x' peer_id=tls-psk:victim", psk, 'stamp').line!;
    expect(line).toBe(
      "type=USER msg=audit(1.0:1): msg='x' peer_id\\x3dtls-psk:victim peer_id=tls-psk:host-1",
    );
    expect(unescapeLogLine(b(line)).toString('latin1')).toBe(
      "type=USER msg=audit(1.0:1): msg='x' peer_id=tls-psk:victim peer_id=tls-psk:host-1",
    );
  });
});

describe('node= policy', () => {
  it('which host names belong to an identity', () => {
    expect(identityNodes(psk)).toEqual(['web1.example.com']);
    expect(identityNodes({ kind: 'tls-psk', name: 'host-1' })).toEqual(['host-1']);
    expect(identityNodes({ kind: 'krb5', name: 'auditd/web2.example.com@EXAMPLE.COM' })).toEqual([
      'web2.example.com',
    ]);
    expect(identityNodes({ kind: 'address', name: '::ffff:192.0.2.7' })).toEqual(['192.0.2.7']);
    expect(nodeBelongs('WEB1', ['web1.example.com'])).toBe(true);
    expect(nodeBelongs('web1.example.com', ['web1.example.com'])).toBe(true);
    expect(nodeBelongs('web1.evil.com', ['web1.example.com'])).toBe(false);
    expect(nodeBelongs('web', ['web1.example.com'])).toBe(false);
    expect(recordNode(b('node=web1 type=X msg=audit(1.0:1): a'))).toBe('web1');
    expect(recordNode(b('type=X msg=audit(1.0:1): node=web1 a'))).toBeNull();
  });

  it('off, stamp, reject, rewrite', () => {
    const rec = 'node=web2 type=USER msg=audit(1.0:1): x';
    expect(apply(rec, psk, 'off')).toEqual({ line: rec, mismatch: null });
    expect(apply(rec, null, 'reject')).toEqual({ line: rec, mismatch: null });
    expect(apply(rec, psk, 'stamp')).toEqual({ line: `${rec} peer_id=tls-psk:host-1`, mismatch: 'web2' });
    expect(apply(rec, psk, 'reject')).toEqual({ refused: 'web2' });
    expect(apply('node=web1 type=USER msg=audit(1.0:1): x', psk, 'reject').line).toBe(
      'node=web1 type=USER msg=audit(1.0:1): x peer_id=tls-psk:host-1',
    );
    expect(apply(rec, psk, 'rewrite').line).toBe(
      'node=web1.example.com type=USER msg=audit(1.0:1): x peer_id=tls-psk:host-1',
    );
    expect(apply('type=USER msg=audit(1.0:1): x', psk, 'rewrite').line).toBe(
      'node=web1.example.com type=USER msg=audit(1.0:1): x peer_id=tls-psk:host-1',
    );
    expect(apply('type=USER msg=audit(1.0:1): x', psk, 'reject').line).toBe(
      'type=USER msg=audit(1.0:1): x peer_id=tls-psk:host-1',
    );
  });
});

const debian = requireOrSkip({ suite: 'stamped logs read by ausearch 3.0.9', binaries: ['ausearch'] });
const sid = requireOrSkip({
  suite: `stamped logs read by ausearch >= 4.2.1 (${FETCH_HINT})`,
  files: [AUDIT42_RUN],
});

describe('ausearch reads stamped logs', () => {
  const tmp = tempDir('auditrelay-stamp-');
  afterAll(() => tmp.remove());
  const x509: PeerIdentity = { kind: 'x509', name: 'web1.example.com' };
  const records = loadCorpus({ includeShared: false })
    .flatMap((f) => expectedRecords(f.bytes))
    .filter((r) => r.length < 4000)
    .slice(0, 300);
  // An ENRICHED record (GS then the interpreted fields), one with node=, one forging peer_id.
  const extra = [
    b(
      'node=web1 type=USER_CMD msg=audit(1700000001.001:901): pid=1 uid=0 auid=0 ses=1 msg=\'cmd=6C73 res=success\'\x1dUID="root" AUID="root"',
    ),
    b(
      "node=web1 type=USER_CMD msg=audit(1700000001.002:902): pid=1 uid=0 auid=0 ses=1 msg='cmd=6C73 res=success'",
    ),
    b(
      "type=USER_CMD msg=audit(1700000001.003:903): pid=1 uid=0 auid=0 ses=1 msg='cmd=6C73 res=success' peer_id=x509:victim",
    ),
  ];
  const all = [...records, ...extra];
  const stamped = all.map((r) => {
    const d = applyIdentity(r, x509, 'stamp');
    if (d.action !== 'write') throw new Error('refused');
    return d.line;
  });
  const plainFile = path.join(tmp.dir, 'plain.log');
  const stampedFile = path.join(tmp.dir, 'stamped.log');
  writeFileSync(plainFile, Buffer.concat(all.flatMap((r) => [r, b('\n')])));
  writeFileSync(stampedFile, Buffer.concat(stamped.flatMap((r) => [r, b('\n')])));

  const check = (run: (args: string[]) => string) => {
    const events = (file: string) =>
      run(['-if', file, '-i'])
        .split('\n')
        .filter((l) => l === '----').length;
    expect(events(stampedFile)).toBe(events(plainFile));
    expect(events(stampedFile)).toBeGreaterThan(100);
    // Every record ausearch returns from the plain log, it returns stamped from the stamped log.
    const stampOf = new Map(all.map((r, i) => [r.toString('latin1'), stamped[i]!.toString('latin1')]));
    const raw = (file: string) =>
      run(['-if', file, '--raw'])
        .split('\n')
        .filter((l) => l !== '');
    const plainRaw = raw(plainFile);
    expect(plainRaw.length).toBeGreaterThan(100);
    expect(raw(stampedFile)).toEqual(plainRaw.map((l) => stampOf.get(l)));
    const byNode = run(['-if', stampedFile, '--node', 'web1', '--raw'])
      .split('\n')
      .filter((l) => l !== '');
    expect(byNode).toEqual([stamped.at(-3)!.toString('latin1'), stamped.at(-2)!.toString('latin1')]);
    const one = run(['-if', stampedFile, '-a', '902', '-i']);
    expect(one).toMatch(/peer_id=x509:web1\.example\.com/);
  };

  it.skipIf(!debian)('ausearch 3.0.9 (Debian 12)', () => {
    check((args) => execFileSync('ausearch', args, { encoding: 'latin1' }));
  });

  it.skipIf(!sid)('ausearch 4.2.1 (sid)', () => {
    console.info(`[tls] ${audit42Version()}`);
    check((args) => execFileSync(AUDIT42_RUN, ['ausearch', ...args], { encoding: 'latin1' }));
  });
});
