/**
 * Load for the TLS benchmark (bench/tls.ts), one process per role, run inside the benchmark's namespace:
 *
 *   tls-client handshakes --port P --seconds S --concurrency C (--identity ID --key HEX | --cert F --cert-key F --ca F)
 *       C loops, each: connect, TLS handshake, one record, its ACK, close. Prints {handshakes, failures, seconds,
 *       p50, p99} (ms for connect → ACK).
 *   tls-client latency --port P --seconds S --interval-ms I (credentials as above)
 *       One TLS session; a record every I ms; prints {acks, p50, p99, max} of send → ACK (ms).
 *   tls-client stall --port P --count N --addresses A --seconds S [--hello-hex HEX]
 *       N connections from A loopback addresses (127.0.1.x), half sending nothing, half half a ClientHello; held
 *       for S seconds; prints {opened, closedByServer}.
 */

import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { encodeEvent, FrameDecoder } from '../src/protocol/codec.js';
import { MAX_AUDIT_MESSAGE_LENGTH } from '../src/protocol/constants.js';

const { values: o, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string' },
    seconds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '8' },
    'interval-ms': { type: 'string', default: '10' },
    identity: { type: 'string' },
    key: { type: 'string' },
    cert: { type: 'string' },
    'cert-key': { type: 'string' },
    ca: { type: 'string' },
    count: { type: 'string', default: '1000' },
    addresses: { type: 'string', default: '250' },
    'hello-hex': { type: 'string' },
  },
});
const port = Number(o.port);
const seconds = Number(o.seconds);
const RECORD = Buffer.from(
  "type=USER_CMD msg=audit(1700000000.000:1): pid=1 uid=0 auid=0 ses=1 msg='cmd=6C73 res=success'\n",
);

function connectOptions(): tls.ConnectionOptions {
  const base = { host: '127.0.0.1', port, minVersion: 'TLSv1.3' as const };
  if (o.key) {
    const psk = Buffer.from(o.key, 'hex');
    return {
      ...base,
      ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256',
      pskCallback: () => ({ psk, identity: o.identity! }),
      checkServerIdentity: () => undefined,
    };
  }
  return {
    ...base,
    cert: readFileSync(o.cert!),
    key: readFileSync(o['cert-key']!),
    ca: readFileSync(o.ca!),
    servername: 'collector.test',
  };
}

const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** One connection: handshake, one record, its ACK. Resolves with the time taken, rejects on failure. */
function oneShot(options: tls.ConnectionOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const socket = tls.connect(options);
    const decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('timeout'));
    }, 10_000);
    socket.once('secureConnect', () => socket.write(encodeEvent(1, RECORD)));
    socket.on('data', (chunk: Buffer) => {
      if (decoder.push(chunk).length > 0) {
        clearTimeout(timer);
        socket.destroy();
        resolve(performance.now() - t);
      }
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    });
  });
}

async function handshakes(): Promise<void> {
  const options = connectOptions();
  const end = performance.now() + seconds * 1000;
  const times: number[] = [];
  let failures = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Number(o.concurrency) }, async () => {
      while (performance.now() < end) {
        try {
          times.push(await oneShot(options));
        } catch {
          failures++;
        }
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  console.log(
    JSON.stringify({
      handshakes: times.length,
      failures,
      seconds: elapsed,
      p50: percentile(times, 50),
      p99: percentile(times, 99),
    }),
  );
}

async function latency(): Promise<void> {
  const socket = tls.connect(connectOptions());
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  const decoder = new FrameDecoder({ maxPayload: MAX_AUDIT_MESSAGE_LENGTH });
  const sentAt = new Map<number, number>();
  const lat: number[] = [];
  socket.on('data', (chunk: Buffer) => {
    const now = performance.now();
    for (const m of decoder.push(chunk)) {
      const t = sentAt.get(m.sequence);
      if (t !== undefined) lat.push(now - t);
      sentAt.delete(m.sequence);
    }
  });
  const interval = Number(o['interval-ms']);
  const end = performance.now() + seconds * 1000;
  let seq = 0;
  // Ready for the driver: it starts the flood now.
  console.error('ready');
  while (performance.now() < end) {
    seq++;
    sentAt.set(seq, performance.now());
    socket.write(encodeEvent(seq, RECORD));
    await new Promise((r) => setTimeout(r, interval));
  }
  await new Promise((r) => setTimeout(r, 1000));
  socket.destroy();
  console.log(
    JSON.stringify({
      sent: seq,
      acks: lat.length,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: Math.max(...lat),
    }),
  );
}

async function stall(): Promise<void> {
  const hello = o['hello-hex'] ? Buffer.from(o['hello-hex'], 'hex') : Buffer.alloc(0);
  const count = Number(o.count);
  const addresses = Number(o.addresses);
  let opened = 0;
  let closedByServer = 0;
  const sockets: net.Socket[] = [];
  for (let i = 0; i < count; i++) {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: `127.0.1.${(i % addresses) + 1}` });
    s.on('error', () => {});
    s.once('connect', () => {
      opened++;
      if (i % 2 === 1 && hello.length > 0) s.write(hello.subarray(0, hello.length >> 1));
    });
    s.once('close', () => closedByServer++);
    sockets.push(s);
  }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  for (const s of sockets) s.destroy();
  console.log(JSON.stringify({ opened, closedByServer }));
}

const mode = positionals[0];
if (mode === 'handshakes') await handshakes();
else if (mode === 'latency') await latency();
else if (mode === 'stall') await stall();
else {
  console.error('usage: tls-client handshakes|latency|stall --port P ...');
  process.exit(2);
}
