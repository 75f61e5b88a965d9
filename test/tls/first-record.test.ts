import path from 'node:path';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { encodeEvent } from '../../src/protocol/codec.js';
import { keyOf, startTlsCollector, tempDir, writeKey } from './support.js';

// A client may send its first record in the same flight as its TLS Finished (audisp-remote 4.2.1 does): the
// collector must read it, not wait for more bytes that never come. 200 fresh sessions, each must get its ACK.
describe('TLS collector: a record right behind the handshake', () => {
  it('is acknowledged in every one of 200 sessions', async () => {
    const tmp = tempDir('race-');
    const k1 = writeKey(path.join(tmp.dir, 'k1'));
    const c = await startTlsCollector(tmp.dir, { pskFile: k1, pskIdentity: 'h' });
    let bad = 0;
    for (let i = 0; i < 200; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = tls.connect({
          host: '127.0.0.1',
          port: c.port,
          minVersion: 'TLSv1.3',
          ciphers: 'TLS_AES_128_GCM_SHA256',
          pskCallback: () => ({ psk: keyOf(k1), identity: 'h' }),
          checkServerIdentity: () => undefined,
        });
        s.write(encodeEvent(1, Buffer.from('type=USER msg=audit(1.0:1): x\n')));
        const t = setTimeout(() => {
          s.destroy();
          resolve(false);
        }, 10_000);
        s.on('data', () => {
          clearTimeout(t);
          s.destroy();
          resolve(true);
        });
        s.on('error', () => {});
      });
      if (!ok) bad++;
    }
    expect(bad, 'sessions whose first record got no ACK within 10 s').toBe(0);
    await c.stop();
    tmp.remove();
  }, 120_000);
});
