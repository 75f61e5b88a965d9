/**
 * The load of the many-hosts benchmark (bench/collector-ops.ts runs it inside the benchmark's network namespace):
 * CLIENTS managed-format connections spread over ADDRESSES loopback source addresses, each sending one record every
 * 1/RATE s (a node name of its own, so each is a host) and a heartbeat when it sent nothing for HEARTBEAT s; PROBES
 * well-behaved clients that send one record at a time every PROBE_MS and wait for its ACK; IDLE connections that
 * never send anything (the server's tcp_client_max_idle reaps them). Every reply is matched to its request: the
 * time from a record's write to its ACK is its latency. At the end one JSON line on stdout.
 *
 *   node dist/bench/many-hosts-load.js --port 60 [--clients 2000] [--addresses 8] [--rate 0.5] [--seconds 60]
 *
 * Node built-ins only (it is the yardstick, run the same against auditd and our collector).
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    clients: { type: 'string', default: '2000' },
    addresses: { type: 'string', default: '8' },
    rate: { type: 'string', default: '0.5' },
    heartbeat: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '60' },
    probes: { type: 'string', default: '4' },
    'probe-ms': { type: 'string', default: '20' },
    idle: { type: 'string', default: '200' },
  },
});
const PORT = Number(o.port);
const CLIENTS = Number(o.clients);
const ADDRESSES = Number(o.addresses);
const RATE = Number(o.rate);
const HEARTBEAT_MS = Number(o.heartbeat) * 1000;
const SECONDS = Number(o.seconds);
const PROBES = Number(o.probes);
const PROBE_MS = Number(o['probe-ms']);
const IDLE = Number(o.idle);

const MAGIC = 0xff0000fe;
function frame(type: number, seq: number, payload: Buffer): Buffer {
  const b = Buffer.allocUnsafe(16 + payload.length);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(0, 4);
  b.writeUInt32LE(type, 6);
  b.writeUInt16LE(payload.length, 10);
  b.writeUInt32LE(seq >>> 0, 12);
  payload.copy(b, 16);
  return b;
}

const now = () => performance.now();

interface Conn {
  socket: net.Socket;
  name: string;
  seq: number;
  /** seq → write time (records only). */
  waiting: Map<number, number>;
  buf: Buffer;
  lastSend: number;
  next: number;
  closedByServer: boolean;
  probe: boolean;
}

const latencies: number[] = [];
const probeLatencies: number[] = [];
let sent = 0;
let acked = 0;
let otherReplies = 0;
let activeClosed = 0;
const idleClosedAt: number[] = [];

function onData(c: Conn, chunk: Buffer): void {
  c.buf = c.buf.length ? Buffer.concat([c.buf, chunk]) : chunk;
  let off = 0;
  while (c.buf.length - off >= 16) {
    const len = c.buf.readUInt16LE(off + 10);
    if (c.buf.length - off < 16 + len) break;
    const type = c.buf.readUInt32LE(off + 6);
    const seq = c.buf.readUInt32LE(off + 12);
    off += 16 + len;
    const t = c.waiting.get(seq);
    if (t === undefined) continue; // a heartbeat's ACK
    c.waiting.delete(seq);
    if (type !== 0x40000000) {
      otherReplies++;
      continue;
    }
    acked++;
    (c.probe ? probeLatencies : latencies).push(now() - t);
    if (c.probe) setTimeout(() => sendRecord(c), PROBE_MS);
  }
  c.buf = c.buf.subarray(off);
}

let serial = 1;
function sendRecord(c: Conn): void {
  if (c.socket.destroyed || stopping) return;
  const seq = ++c.seq;
  const n = serial++;
  const payload = Buffer.from(
    `node=${c.name} type=USER_CMD msg=audit(${1_700_000_000 + Math.floor(n / 1000)}.${String(n % 1000).padStart(3, '0')}:${n}): pid=${n % 32768} uid=0 auid=1000 ses=1 msg='cwd="/root" cmd=2F62696E2F7472756500 exe="/usr/bin/sudo" terminal=pts/0 res=success'\n`,
  );
  c.waiting.set(seq, now());
  c.lastSend = now();
  sent++;
  c.socket.write(frame(0, seq, payload));
}

function connect(name: string, localAddress: string, probe: boolean, idle: boolean): Promise<Conn | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: o.host!, port: PORT, localAddress, noDelay: true });
    const c: Conn = {
      socket,
      name,
      seq: 1,
      waiting: new Map(),
      buf: Buffer.alloc(0),
      lastSend: now(),
      next: 0,
      closedByServer: false,
      probe,
    };
    socket.once('connect', () => resolve(c));
    socket.once('error', () => resolve(null));
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => onData(c, d));
    socket.on('close', () => {
      if (stopping) return;
      c.closedByServer = true;
      // An idle connection never sends: lastSend is when it connected.
      if (idle) idleClosedAt.push((now() - c.lastSend) / 1000);
      else activeClosed++;
    });
  });
}

let stopping = false;

async function main(): Promise<void> {
  const conns: Conn[] = [];
  let connectFailures = 0;
  const t0 = now();
  for (let i = 0; i < CLIENTS; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, CLIENTS - i) }, (_, j) => {
        const k = i + j;
        return connect(`host-${k}`, `127.0.0.${2 + (k % ADDRESSES)}`, false, false);
      }),
    );
    for (const c of batch) {
      if (c) conns.push(c);
      else connectFailures++;
    }
  }
  const idle = await Promise.all(
    Array.from({ length: IDLE }, (_, k) =>
      connect(`idle-${k}`, `127.0.2.${1 + (k % ADDRESSES)}`, false, true),
    ),
  );
  const probes = (
    await Promise.all(
      Array.from({ length: PROBES }, (_, k) => connect(`probe-${k}`, '127.0.1.1', true, false)),
    )
  ).filter((c): c is Conn => c !== null);
  const connectSeconds = (now() - t0) / 1000;
  const steady = now();
  const period = 1000 / RATE;
  for (const c of conns) c.next = steady + Math.random() * period;
  for (const p of probes) sendRecord(p);
  const tick = setInterval(() => {
    const t = now();
    for (const c of conns) {
      if (c.socket.destroyed) continue;
      if (t >= c.next) {
        sendRecord(c);
        c.next += period;
      } else if (t - c.lastSend >= HEARTBEAT_MS) {
        c.lastSend = t;
        c.socket.write(frame(1, ++c.seq, Buffer.alloc(0)));
      }
    }
  }, 10);
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  clearInterval(tick);
  const sentAtEnd = sent;
  const ackedAtEnd = acked;
  const seconds = (now() - steady) / 1000;
  // The last records' acks.
  const deadline = now() + 10_000;
  while (now() < deadline && [...conns, ...probes].some((c) => c.waiting.size > 0 && !c.socket.destroyed)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  stopping = true;
  for (const c of [...conns, ...probes]) c.socket.destroy();
  for (const c of idle) c?.socket.destroy();
  const q = (xs: number[], p: number) => {
    if (xs.length === 0) return null;
    const s = [...xs].sort((a, b) => a - b);
    return Number(s[Math.min(s.length - 1, Math.floor(p * s.length))]!.toFixed(2));
  };
  process.stdout.write(
    `${JSON.stringify({
      clients: conns.length,
      connectFailures,
      connectSeconds,
      idle: idle.filter(Boolean).length,
      probes: probes.length,
      seconds,
      sent: sentAtEnd,
      acked: ackedAtEnd,
      ackedTotal: acked,
      notAcked: sent - acked,
      otherReplies,
      recordsPerSecond: ackedAtEnd / seconds,
      latencyMs: {
        p50: q(latencies, 0.5),
        p90: q(latencies, 0.9),
        p99: q(latencies, 0.99),
        max: q(latencies, 1),
      },
      probeLatencyMs: {
        p50: q(probeLatencies, 0.5),
        p99: q(probeLatencies, 0.99),
        max: q(probeLatencies, 1),
      },
      activeClosedByServer: activeClosed,
      idleClosedByServer: idleClosedAt.length,
      idleClosedAfterSeconds: idleClosedAt.length
        ? { first: Math.min(...idleClosedAt), last: Math.max(...idleClosedAt) }
        : null,
    })}\n`,
  );
}

void main().then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`many-hosts load: ${err.stack}\n`);
    process.exit(1);
  },
);
