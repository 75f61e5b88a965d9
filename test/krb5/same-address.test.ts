/**
 * transport = krb5 and tcp_max_per_addr = 1 (issue 9 item 2): connections that never authenticate never close an
 * authenticated session from their address; a second authenticated session is admitted beside a live one once.
 */
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireCredentials, addonPath } from '../../src/krb5/gssapi.js';
import { encodeEvent } from '../../src/protocol/codec.js';
import { MessageType } from '../../src/protocol/constants.js';
import { KDC_BINARIES, type Kdc, startKdc } from '../helpers/kdc.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil } from '../helpers/wait.js';
import { installKeytab, RawKrb5Client, startKrb5Collector, tempDir } from './support.js';

const available = requireOrSkip({
  suite: 'krb5 same-address rule (real KDC)',
  binaries: KDC_BINARIES,
  files: [addonPath()],
});

const SERVER = `auditd/${os.hostname()}`;
const AGENT = 'auditd/agent1.example';

describe.skipIf(!available)('krb5: same-address connections', () => {
  let kdc: Kdc;
  let restoreEnv: () => void;
  let tmp: { dir: string; remove: () => void };
  let serverKeytab: string;
  let agentKeytab: string;

  beforeAll(async () => {
    kdc = await startKdc();
    restoreEnv = kdc.applyToProcess();
    tmp = tempDir('auditrelay-krb5-addr-');
    serverKeytab = installKeytab(await kdc.addPrincipal(SERVER), path.join(tmp.dir, 'audit.key'));
    agentKeytab = installKeytab(await kdc.addPrincipal(AGENT), path.join(tmp.dir, 'audisp-remote.key'));
  });

  afterAll(async () => {
    restoreEnv?.();
    await kdc?.stop();
    tmp?.remove();
  });

  it('raw connections that never authenticate never close an authenticated session', async () => {
    const c = await startKrb5Collector(
      tmp.dir,
      { keyFile: serverKeytab, handshakeTimeoutMs: 10_000 },
      { maxPerAddr: 1 },
    );
    const cred = await acquireCredentials({ usage: 'initiate', principal: AGENT, keytab: agentKeytab });
    const socks: net.Socket[] = [];
    try {
      const client = await RawKrb5Client.connect(c.port, cred, SERVER.replace('/', '@'));
      client.send(encodeEvent(1, Buffer.from('type=USER_CMD msg=audit(1.0:1): before\n')));
      await client.waitForReplies(1);
      // Ten raw connections from the same address that never authenticate (today: each closed the session).
      for (let i = 0; i < 10; i++) {
        const s = net.connect({ host: '127.0.0.1', port: c.port });
        s.on('error', () => {});
        socks.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      // The unauthenticated ones only displace each other (at most 4 pending per address).
      await pollUntil(() => socks.filter((s) => s.destroyed || s.readableEnded).length >= 6, {
        timeoutMs: 10_000,
        what: 'the oldest unauthenticated connections to be closed',
        diagnostics: () => c.entries.map((e) => e.msg).join('\n'),
      });
      client.send(encodeEvent(2, Buffer.from('type=USER_CMD msg=audit(1.0:2): after\n')));
      const replies = await client.waitForReplies(2);
      expect(replies.map((r) => [r.type, r.sequence])).toEqual([
        [MessageType.ACK, 1],
        [MessageType.ACK, 2],
      ]);
      expect(client.closed).toBeNull();
      expect(
        c.entries.some((e) =>
          /authenticated sessions are never closed for an unauthenticated one/.test(e.msg),
        ),
      ).toBe(true);
      expect(c.collector.stats.replacedStale).toBe(0);
      // A second authenticated client from that address is admitted beside the live one (a reconnecting agent).
      const second = await RawKrb5Client.connect(c.port, cred, SERVER.replace('/', '@'));
      second.send(encodeEvent(1, Buffer.from('type=USER_CMD msg=audit(1.0:3): second\n')));
      await second.waitForReplies(1);
      expect(client.closed).toBeNull();
      await c.waitForLog(/admitted beside them/);
      client.close();
      second.close();
    } finally {
      for (const s of socks) s.destroy();
      cred.dispose();
      await c.stop();
    }
  });
});
