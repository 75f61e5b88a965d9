// A small agent for tests that speaks the record-identity wire (src/protocol/record-id.ts, docs/protocol.md): a hello
// in its first heartbeat, then RECORD_ID messages (8-byte big-endian record number + text), a window of them in
// flight. The benchmark (bench/scale-out.ts) drives it for its per-record acknowledgement latencies; the tests use
// the real agent (test/helpers/scale-out.ts, AgentRig).
//
// Like the real agent with a durable queue, it keeps the highest record number acknowledged in order in
// `stateFile` (written after each batch of replies, so a kill -9 loses the last few acknowledgements and those
// records are sent again: the collector/stream must drop them). On a lost link, ENDING, DISKFULL or DISKERROR it
// reconnects (after 0.2 s, or 1 s after a refusal) and sends again from the oldest unacknowledged record.
//
// argv[2]: JSON {host, agent, port, total, stateFile, window?, bytes?, rate?}. Records are
// `node=HOST type=USER msg=audit(T:SEQ): ... tag=HOST:SEQ ...`, SEQ = 1..total. Prints `done N` and exits 0 when
// every record is acknowledged.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';

const o = JSON.parse(process.argv[2]);
const WINDOW = o.window ?? 256;
const BYTES = o.bytes ?? 300;
const MAGIC = 0xff0000fe;
const ACK = 0x40000000;
const ENDING = 0x40000001;
const HEARTBEAT = 1;
const RECORD_ID = 2;

let acked = existsSync(o.stateFile) ? Number(readFileSync(o.stateFile, 'utf8').trim() || 0) : 0;
const boot = Date.now();
let wireSeq = 1;
const started = Date.now();
/** Milliseconds from send to acknowledgement of every record acknowledged (for the benchmark). */
const latencies = [];
function report() {
  const sorted = latencies.sort((a, b) => a - b);
  const q = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0);
  return `done ${acked} p50=${q(0.5).toFixed(2)} p99=${q(0.99).toFixed(2)} ms=${Date.now() - started}`;
}

function frame(type, seq, payload) {
  const f = Buffer.alloc(16 + payload.length);
  f.writeUInt32LE(MAGIC, 0);
  f.writeUInt32LE(type >>> 0, 6);
  f.writeUInt16LE(payload.length, 10);
  f.writeUInt32LE(seq >>> 0, 12);
  payload.copy(f, 16);
  return f;
}

function record(seq) {
  const head = `node=${o.host} type=USER msg=audit(1764600000.${String(seq % 1000).padStart(3, '0')}:${seq}): pid=${seq} uid=0 auid=0 msg='op=test tag=${o.host}:${seq} pad=`;
  const tail = ` res=success'`;
  const pad = 'x'.repeat(Math.max(0, BYTES - head.length - tail.length));
  const text = Buffer.from(head + pad + tail);
  const p = Buffer.alloc(8 + text.length);
  p.writeBigUInt64BE(BigInt(seq), 0);
  text.copy(p, 8);
  return p;
}

function save() {
  const tmp = `${o.stateFile}.tmp`;
  writeFileSync(tmp, String(acked));
  renameSync(tmp, o.stateFile);
}

function connectOnce() {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port: o.port, noDelay: true });
    let buf = Buffer.alloc(0);
    let ready = false;
    let helloSeq = 0;
    /** In flight: wire seq → record number (in order). */
    const inflight = [];
    let next = acked + 1;
    let lastReply = Date.now();
    let ended = false;
    const finish = (delayMs) => {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      sock.destroy();
      setTimeout(resolve, delayMs);
    };
    const timer = setInterval(() => {
      if (inflight.length > 0 && Date.now() - lastReply > 6000) finish(200);
    }, 500);
    const pump = () => {
      if (!ready || ended) return;
      const out = [];
      const allowed = o.rate
        ? Math.floor(((Date.now() - started) / 1000) * o.rate)
        : Number.POSITIVE_INFINITY;
      while (inflight.length < WINDOW && next <= o.total && next <= allowed) {
        const s = wireSeq++;
        inflight.push([s, next, performance.now()]);
        out.push(frame(RECORD_ID, s, record(next)));
        next++;
      }
      if (out.length > 0) {
        if (inflight.length === out.length) lastReply = Date.now();
        sock.write(Buffer.concat(out));
      }
      if (o.rate && next <= o.total && inflight.length < WINDOW) setTimeout(pump, 20);
    };
    sock.on('connect', () => {
      helloSeq = wireSeq++;
      sock.write(frame(HEARTBEAT, helloSeq, Buffer.from(`auditrelay-hello 1 agent=${o.agent} boot=${boot}`)));
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let changed = false;
      while (buf.length >= 16) {
        const len = buf.readUInt16LE(10);
        if (buf.length < 16 + len) break;
        const type = buf.readUInt32LE(6);
        const seq = buf.readUInt32LE(12);
        const text = buf.subarray(16, 16 + len).toString('latin1');
        buf = buf.subarray(16 + len);
        lastReply = Date.now();
        if (type === ENDING) return finish(200);
        if (!ready) {
          if (seq !== helloSeq || type !== ACK || text !== 'auditrelay 1 rid') {
            console.error(`no rid capability: type ${type.toString(16)} text "${text}"`);
            process.exit(3);
          }
          ready = true;
          continue;
        }
        const head = inflight.shift();
        if (!head || head[0] !== seq) return finish(200);
        if (type === ACK || type === 0x50000001) {
          if (head[1] === acked + 1) acked = head[1];
          latencies.push(performance.now() - head[2]);
          changed = true;
        } else {
          // DISKFULL / DISKERROR: the record is kept; reconnect and send it again.
          if (changed) save();
          return finish(1000);
        }
      }
      if (changed) {
        save();
        if (acked >= o.total) {
          console.log(report());
          clearInterval(timer);
          sock.end();
          process.exit(0);
        }
      }
      if (!ready || inflight.length < WINDOW / 2) pump();
      else if (changed) pump();
    });
    sock.on('error', () => finish(200));
    sock.on('close', () => finish(200));
    const wake = setInterval(() => (ended ? clearInterval(wake) : ready && pump()), 100);
  });
}

for (;;) {
  if (acked >= o.total) {
    console.log(report());
    process.exit(0);
  }
  await connectOnce();
}
