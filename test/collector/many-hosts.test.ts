/**
 * Many hosts, lean (the 2,000-agent figures are the benchmark's, BENCHMARKS.md "Many hosts"): connections from
 * several loopback addresses that send a record and then nothing (idle, or gone without a FIN: the collector cannot
 * tell them apart) are reaped by tcp_client_max_idle, while a client that sends heartbeats is kept; after each of
 * three rounds the descriptors are where they started and nothing is held for clients. No timing is asserted.
 */
import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { MessageType } from '../../src/protocol/constants.js';
import { pollUntil } from '../helpers/wait.js';
import { WireClient } from '../helpers/wire-client.js';
import { cleanup, onCleanup, RecordClient, startCollector } from './harness.js';

afterEach(cleanup);

const fds = () => readdirSync('/proc/self/fd').length;

describe('many hosts', () => {
  it('idle and silent connections from 8 addresses are reaped each round; a heartbeating client stays; descriptors come back flat', async () => {
    const c = await startCollector({ clientMaxIdleMs: 300, maxPerAddr: 1024, maxHosts: 1000 });
    const alive = await RecordClient.connect(c.port, 'alive', { node: 'keeper', localAddress: '127.0.3.1' });
    await alive.send(1);
    let hb = 1000;
    const beat = setInterval(() => void alive.wire.sendHeartbeat(hb++), 100);
    onCleanup(() => clearInterval(beat));
    const baseline = fds();
    const PER_ROUND = 160;
    for (let round = 1; round <= 3; round++) {
      const clients: WireClient[] = [];
      for (let i = 0; i < PER_ROUND; i++) {
        const w = await WireClient.connect({
          host: '127.0.0.1',
          port: c.port,
          localAddress: `127.0.2.${(i % 8) + 1}`,
        });
        clients.push(w);
        // Each sends one record; half then stop reading as well (as a peer gone without a FIN looks).
        await w.sendRecords([
          {
            seq: 2,
            payload: `node=h${i % 8} type=USER_CMD msg=audit(1700000000.${i}:${round * 1000 + i}): r=${round}\n`,
          },
        ]);
        if (i % 2 === 0) w.pause();
      }
      await pollUntil(() => c.collector.stats.idleClosed === round * PER_ROUND || undefined, {
        timeoutMs: 20_000,
        what: `round ${round}: ${PER_ROUND} idle connections reaped`,
        diagnostics: () => `idleClosed ${c.collector.stats.idleClosed}, clients ${c.collector.stats.clients}`,
      });
      for (const w of clients) w.destroy();
      await pollUntil(() => clients.every((w) => w.closed) || undefined, {
        timeoutMs: 10_000,
        what: 'clients closed',
      });
      await pollUntil(() => fds() === baseline || undefined, {
        timeoutMs: 10_000,
        what: `round ${round}: descriptors back to ${baseline}`,
        diagnostics: () => `${fds()} open`,
      });
      expect(c.collector.stats.clients).toBe(1);
      expect(c.collector.buffered).toBe(0);
    }
    // The heartbeating client was never closed and still gets its records acknowledged.
    expect(alive.wire.closed).toBe(false);
    expect(await alive.send(3)).toEqual([MessageType.ACK, MessageType.ACK, MessageType.ACK]);
    // Hosts: the 8 node names and the keeper, each accounted; none of the reaped ones is still connected.
    const hosts = c.collector.hostsStatus();
    expect(hosts.hosts).toBe(9);
    expect(hosts.connected).toBe(1);
    expect(hosts.list.find((h) => h.host === 'h0')).toMatchObject({
      records: 3 * (PER_ROUND / 8),
      connected: false,
    });
  });
});
