/**
 * A dead idle link is found without heartbeats (Debian ships `heartbeat_timeout = 0`): every link the agent
 * dials has TCP keepalive with the first probe after KEEPALIVE_IDLE_MS, then 10 probes 1 s apart (set by
 * libuv on the same call), so the kernel resets a silent link within about 40 s. Checked on the socket
 * options a real dial sets, seen with strace.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KEEPALIVE_IDLE_MS } from '../../src/agent/transport.js';
import { REPO_ROOT } from '../helpers/corpus.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';

const available = requireOrSkip({ suite: 'TCP keepalive of the agent links (strace)', binaries: ['strace'] });

describe.skipIf(!available)('TCP keepalive', () => {
  it('sets keepalive on every link: idle 30 s, interval 1 s, 10 probes (dead within about 40 s)', () => {
    const transport = path.join(REPO_ROOT, 'dist/src/agent/transport.js');
    const script = `
      import net from 'node:net';
      import { dialTcp } from ${JSON.stringify(transport)};
      const server = net.createServer((s) => s.destroy()).listen(0, '127.0.0.1', async () => {
        const link = await dialTcp({ host: '127.0.0.1', port: server.address().port, localPort: 0, signal: new AbortController().signal });
        link.close();
        server.close();
      });`;
    const res = spawnSync(
      findBinary('strace')!,
      ['-f', '-e', 'trace=setsockopt', process.execPath, '--input-type=module', '-e', script],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(res.status, res.stderr).toBe(0);
    const opt = (name: string) => Number(new RegExp(`${name}, \\[(\\d+)\\]`).exec(res.stderr)?.[1]);
    expect(opt('SO_KEEPALIVE')).toBe(1);
    expect(opt('TCP_KEEPIDLE')).toBe(KEEPALIVE_IDLE_MS / 1000);
    expect(opt('TCP_KEEPINTVL')).toBe(1);
    expect(opt('TCP_KEEPCNT')).toBe(10);
  });
});
