/**
 * The server's ceiling: a minimal pipelined managed-format client with no queue, no retries and a large
 * window (refilled in large writes once half of it is acknowledged). It sends every record of FILE (one per
 * line) to HOST:PORT, reads the acks as they come, and prints one JSON line: records, seconds from connect
 * to the last ack, records/s, its own CPU time and peak RSS.
 *
 *   node dist/bench/reference-client.js --port 60 --file records.txt [--host 127.0.0.1] [--window 8192]
 *
 * With `--announce`, a first JSON line `{"connectedAt": <ms since the epoch>}` at connect: a bench that times the
 * run by the server's log (bench/wan.ts) starts its clock there, since a server that drops acknowledgements
 * (auditd over a long path) leaves this client waiting for ever for the last ones.
 *
 * Deliberately self-contained (no import from src/): it is the yardstick, not the thing measured.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    file: { type: 'string' },
    window: { type: 'string', default: '8192' },
    announce: { type: 'boolean', default: false },
  },
});
if (values.port === undefined || values.file === undefined) {
  process.stderr.write('usage: reference-client --port PORT --file FILE [--host HOST] [--window N]\n');
  process.exit(2);
}
const window = Number(values.window);
const data = readFileSync(values.file);
const records: Buffer[] = [];
for (let start = 0, nl = data.indexOf(10); nl !== -1; start = nl + 1, nl = data.indexOf(10, start)) {
  records.push(data.subarray(start, nl + 1)); // with its '\n', as audisp-remote sends it
}

const header = (seq: number, length: number): Buffer => {
  const h = Buffer.allocUnsafe(16);
  h.writeUInt32LE(0xff0000fe, 0); // magic
  h.writeUInt16LE(0, 4); // header and message version
  h.writeUInt32LE(0, 6); // type: MESSAGE
  h.writeUInt16LE(length, 10);
  h.writeUInt32LE(seq, 12);
  return h;
};

const t0 = process.hrtime.bigint();
const socket = net.connect({ host: values.host, port: Number(values.port), noDelay: true });
let sent = 0;
let acked = 0;
let pending: Buffer = Buffer.alloc(0);

function pump(): void {
  const frames: Buffer[] = [];
  while (sent < records.length && sent - acked < window) {
    const r = records[sent]!;
    sent++;
    frames.push(header(sent, r.length), r);
  }
  if (frames.length > 0) socket.write(Buffer.concat(frames));
}

socket.on('connect', () => {
  if (values.announce) {
    process.stdout.write(`${JSON.stringify({ connectedAt: performance.timeOrigin + performance.now() })}\n`);
  }
  pump();
});
socket.on('data', (chunk: Buffer) => {
  pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
  let off = 0;
  while (pending.length - off >= 16) {
    const length = pending.readUInt16LE(off + 10);
    if (pending.length - off < 16 + length) break;
    const type = pending.readUInt32LE(off + 6);
    if (type !== 0x40000000) throw new Error(`unexpected reply type 0x${type.toString(16)}`);
    acked++;
    off += 16 + length;
  }
  pending = pending.subarray(off);
  if (acked === records.length) {
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage();
    process.stdout.write(
      `${JSON.stringify({
        records: acked,
        seconds,
        recordsPerSecond: acked / seconds,
        cpuSeconds: (cpu.user + cpu.system) / 1e6,
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
      })}\n`,
    );
    socket.end();
    return;
  }
  // Refill in large writes: once half the window is acknowledged.
  if (sent - acked <= window / 2) pump();
});
socket.on('error', (err) => {
  process.stderr.write(`reference client: ${err.message}\n`);
  process.exit(1);
});
