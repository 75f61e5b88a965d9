import path from 'node:path';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { encodeEvent } from '../../src/protocol/codec.js';
import { keyOf, startTlsCollector, tempDir, writeKey } from './support.js';

describe('race', () => {
  it('data right behind Finished', async () => {
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
        }, 1500);
        s.on('data', () => {
          clearTimeout(t);
          s.destroy();
          resolve(true);
        });
        s.on('error', () => {});
      });
      if (!ok) bad++;
    }
    console.log('bad', bad);
    expect(bad).toBe(0);
    await c.stop();
  });
});
