/**
 * The TLS benchmark (issue 11), in one run and one private namespace (the tests' NetnsSandbox):
 *
 * - records/s of our agent (`mode = forward`, its default max_in_flight) over tls and over tcp, to the real auditd 4.2.1
 *   (Debian sid, test/helpers/peers.ts) and to our collector (the built CLI); plus mutual X.509 to our collector;
 *   the same records (the corpus repeated), repetitions interleaved; the tls/tcp ratio per server;
 * - handshakes per second: concurrent clients that each connect, make the TLS handshake, send one record, wait
 *   for its ACK and close (bench/tls-client.ts), against our collector (PSK, X.509) and auditd 4.2.1 (PSK);
 * - the ACK latency of an established TLS session (a record every 10 ms) with and without 1,000 connections
 *   stalled mid-handshake (half silent, half half a ClientHello, from 250 addresses), against our collector
 *   (goal: within 50 ms) and auditd 4.2.1.
 *
 *   npm run bench:tls                       # the TLS section of BENCHMARKS.md
 *   npm run bench:tls -- --smoke            # every case once, few records: checks it runs; nothing written
 *   npm run bench:tls -- --records 200000 --reps 5
 *
 * The report goes between `<!-- bench-tls:begin` and `<!-- bench-tls:end -->` in BENCHMARKS.md.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { expectedRecords, loadCorpus, REPO_ROOT } from '../test/helpers/corpus.js';
import { NetnsSandbox, SANDBOX_PATH } from '../test/helpers/netns.js';
import { AUDIT42_RUN, audit42Version } from '../test/helpers/peers.js';
import { findBinary, missingPrerequisites } from '../test/helpers/prereq.js';
import { startRealAuditd } from '../test/helpers/real-auditd.js';
import { hasExited, pollUntil, terminate, waitForExit } from '../test/helpers/wait.js';
import { keyOf, makePki, type Pki, writeKey } from '../test/tls/support.js';
import { cpuSeconds, foreignCores, foreignTicks, machine, memory, waitQuiet } from './host.js';
import { LogTail } from './log-tail.js';
import { AGENT_BIN, Peers } from './peers.js';
import { replaceBetween } from './report.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = path.join(HERE, 'tls-client.js');

const { values: opt } = parseArgs({
  options: {
    records: { type: 'string', default: '100000' },
    reps: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '5' },
    smoke: { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
if (opt.quick) {
  opt.records = '30000';
  opt.reps = '1';
  opt.seconds = '3';
}
if (opt.smoke) {
  opt.records = '2000';
  opt.reps = '1';
  opt.seconds = '1';
}
const SMOKE = opt.smoke;
const OUT = opt.out ?? (SMOKE ? null : path.join(REPO_ROOT, 'BENCHMARKS.md'));
const N = Number(opt.records);
const REPS = Number(opt.reps);
const SECONDS = Number(opt.seconds);
const log = (line: string) => console.log(line);

const missing = missingPrerequisites({
  suite: 'bench:tls',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount'],
  files: [AUDIT42_RUN],
});
if (missing.length > 0) {
  console.error(`bench:tls: cannot run here:\n${missing.map((m) => `  - ${m}`).join('\n')}`);
  process.exit(2);
}

const sandbox = await NetnsSandbox.create();
const peers = new Peers(sandbox);
let exiting = false;
const cleanup = async (code: number) => {
  if (exiting) return;
  exiting = true;
  await sandbox.destroy().catch((err: Error) => console.error(`bench:tls: ${err.message}`));
  process.exit(code);
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void cleanup(130));
const ourPids = () =>
  new Set([process.pid, sandbox.holderPid, ...sandbox.runningProcesses.map((c) => c.pid!)]);
const quiet = async () => {
  if (!SMOKE) await waitQuiet(ourPids, log);
};

// ---------------------------------------------------------------------------------------------------------
// Keys, certificates, records

const KEY = writeKey(path.join(sandbox.dir, 'psk.key'));
const KEY_HEX = keyOf(KEY).toString('hex');
const IDENTITY = 'bench-host';
const pki: Pki | null = findBinary('openssl') ? makePki(path.join(sandbox.dir, 'pki')) : null;
const client = pki?.client('agent.bench.test') ?? null;

const CORPUS = loadCorpus({ includeShared: false })
  .flatMap((f) => expectedRecords(f.bytes.subarray(0, f.bytes.lastIndexOf(0x0a) + 1)))
  .filter((line) => line.includes(0x20) && line.length <= 8953);
const RECORDS = Buffer.concat(
  Array.from({ length: N }, (_, i) => [CORPUS[i % CORPUS.length]!, Buffer.from('\n')]).flat(),
);

async function feedAll(stream: NodeJS.WritableStream, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length; off += 256 * 1024) {
    if (!stream.write(buf.subarray(off, Math.min(buf.length, off + 256 * 1024)))) {
      await new Promise<void>((resolve) => stream.once('drain', () => resolve()));
    }
  }
}

type ServerKind = 'auditd 4.2.1' | 'our collector';
type Transport = 'tcp' | 'tls' | 'x509';

interface Server {
  child: ChildProcess;
  port: number;
  logPath: string;
  skipPrefix: string | null;
  stop(): Promise<void>;
}

const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;

async function auditd42(transport: Transport): Promise<Server> {
  const extraConf: Record<string, string | number> =
    transport === 'tls' ? { transport: 'TLS', tls_psk_file: KEY, tls_psk_identity: IDENTITY } : {};
  const d = await startRealAuditd(sandbox, { port: AUDITD_PORT, audit42: true, extraConf });
  return {
    child: d.child,
    port: AUDITD_PORT,
    logPath: d.logPath,
    skipPrefix: `node=${d.nodeName} `,
    stop: async () => {
      await d.stop(15_000);
    },
  };
}

let counter = 0;
async function collector(transport: Transport): Promise<Server> {
  const dir = path.join(sandbox.dir, `collector-${++counter}`);
  mkdirSync(dir, { recursive: true });
  const logPath = path.join(dir, 'collector.log');
  const conf = path.join(dir, 'auditd.conf');
  const tlsLines =
    transport === 'tls'
      ? ['transport = TLS', `tls_psk_file = ${KEY}`, `tls_psk_identity = ${IDENTITY}`]
      : transport === 'x509'
        ? [
            'transport = TLS',
            'tls_auth = x509',
            `tls_ca_file = ${pki!.caCert}`,
            `tls_cert_file = ${pki!.serverCert}`,
            `tls_key_file = ${pki!.serverKey}`,
          ]
        : [];
  writeFileSync(
    conf,
    [
      `tcp_listen_port = ${COLLECTOR_PORT}`,
      `log_file = ${logPath}`,
      'tcp_max_per_addr = 1024',
      'tcp_listen_queue = 4096',
      ...tlsLines,
      '',
    ].join('\n'),
    { mode: 0o640 },
  );
  const child = sandbox.spawn(process.execPath, [AGENT_BIN, 'collector', '--config', conf], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { PATH: SANDBOX_PATH, AUDITRELAY_LOG_FORMAT: 'json' },
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  await pollUntil(
    async () => {
      if (hasExited(child)) throw new Error(`collector exited: ${err}`);
      return (await sandbox.tcpListeners(COLLECTOR_PORT)).some((l) =>
        l.users.some((u) => u.pid === child.pid),
      );
    },
    { timeoutMs: 15_000, what: 'the collector to listen', diagnostics: () => err },
  );
  return {
    child,
    port: COLLECTOR_PORT,
    logPath,
    skipPrefix: null,
    stop: async () => {
      await terminate(child, 'SIGTERM', 15_000);
    },
  };
}

const start = (s: ServerKind, t: Transport) => (s === 'auditd 4.2.1' ? auditd42(t) : collector(t));

function agentLines(t: Transport): string[] {
  if (t === 'tls') return ['transport = tls', `tls_psk_file = ${KEY}`, `tls_psk_identity = ${IDENTITY}`];
  if (t === 'x509') {
    return [
      'transport = tls',
      'tls_auth = x509',
      `tls_ca_file = ${pki!.caCert}`,
      `tls_cert_file = ${client!.cert}`,
      `tls_key_file = ${client!.key}`,
      'tls_server_name = collector.test',
    ];
  }
  return [];
}

interface Throughput {
  recordsPerSecond: number;
  cpuSeconds: number;
  serverCpuSeconds: number;
  peakRss: number;
  foreignCores: number;
}

async function throughput(s: ServerKind, t: Transport): Promise<Throughput> {
  await quiet();
  const server = await start(s, t);
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const serverCpu0 = cpuSeconds(server.child.pid!);
  try {
    const agent = peers.agent(server.port, { extra: agentLines(t) });
    await pollUntil(
      async () =>
        (await sandbox.tcpSockets(['state', 'established', 'sport', '=', `:${server.port}`])).length > 0,
      { timeoutMs: 15_000, what: 'the agent to connect', diagnostics: agent.stderrText },
    );
    const f0 = foreignTicks(ourPids());
    const t0 = performance.now();
    const fed = feedAll(agent.input, RECORDS);
    const tEnd = await tail.waitFor(N, 600_000, agent.stderrText);
    await fed;
    const seconds = (tEnd - t0) / 1000;
    const result = {
      recordsPerSecond: N / seconds,
      cpuSeconds: cpuSeconds(agent.child.pid!),
      serverCpuSeconds: cpuSeconds(server.child.pid!) - serverCpu0,
      peakRss: memory(agent.child.pid!).hwm,
      foreignCores: foreignCores(f0, foreignTicks(ourPids()), seconds).cores,
    };
    await agent.finish();
    if (tail.count !== N) throw new Error(`${s} ${t}: ${tail.count} records arrived, expected ${N}`);
    return result;
  } finally {
    tail.stop();
    await server.stop();
  }
}

function credentials(t: Transport): string[] {
  return t === 'x509'
    ? ['--cert', client!.cert, '--cert-key', client!.key, '--ca', pki!.caCert]
    : ['--identity', IDENTITY, '--key', KEY_HEX];
}

async function runClient(args: string[], onReady?: () => void): Promise<Record<string, number>> {
  const child = sandbox.spawn(process.execPath, [CLIENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    if (onReady && err.includes('ready')) {
      const ready = onReady;
      onReady = undefined;
      ready();
    }
  });
  const exit = await waitForExit(child, 120_000);
  if (exit.code !== 0) throw new Error(`tls-client ${args[0]} failed: ${err}`);
  return JSON.parse(out) as Record<string, number>;
}

async function handshakes(s: ServerKind, t: Transport): Promise<Record<string, number>> {
  await quiet();
  const server = await start(s, t);
  try {
    const cpu0 = cpuSeconds(server.child.pid!);
    const r = await runClient([
      'handshakes',
      '--port',
      String(server.port),
      '--seconds',
      String(SECONDS),
      '--concurrency',
      '8',
      ...credentials(t),
    ]);
    return {
      ...r,
      perSecond: r.handshakes! / r.seconds!,
      serverCpuSeconds: cpuSeconds(server.child.pid!) - cpu0,
    };
  } finally {
    await server.stop();
  }
}

/** The first bytes of a TLS-PSK ClientHello (for the stalled connections). */
async function clientHello(): Promise<Buffer> {
  return new Promise((resolve) => {
    const srv = net.createServer((c) =>
      c.once('data', (d: Buffer) => {
        resolve(d);
        c.destroy();
        srv.close();
      }),
    );
    srv.listen(0, '127.0.0.1', () => {
      const c = tls.connect({
        host: '127.0.0.1',
        port: (srv.address() as net.AddressInfo).port,
        minVersion: 'TLSv1.3',
        pskCallback: () => ({ psk: keyOf(KEY), identity: IDENTITY }),
        checkServerIdentity: () => undefined,
      });
      c.on('error', () => {});
    });
  });
}

async function latencyUnderStall(s: ServerKind, stalled: number): Promise<Record<string, number>> {
  await quiet();
  const server = await start(s, 'tls');
  const hello = await clientHello();
  try {
    const flood: { run: Promise<Record<string, number>> | null } = { run: null };
    const seconds = Math.max(2, SECONDS);
    const r = await runClient(
      [
        'latency',
        '--port',
        String(server.port),
        '--seconds',
        String(seconds),
        '--interval-ms',
        '10',
        ...credentials('tls'),
      ],
      () => {
        if (stalled > 0) {
          flood.run = runClient([
            'stall',
            '--port',
            String(server.port),
            '--count',
            String(stalled),
            '--addresses',
            '250',
            '--seconds',
            String(seconds),
            '--hello-hex',
            hello.toString('hex'),
          ]);
        }
      },
    );
    const f = flood.run ? await flood.run : null;
    return { ...r, ...(f ? { opened: f.opened!, closedByServer: f.closedByServer! } : {}) };
  } finally {
    await server.stop();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Report

const fmt = (x: number) => Math.round(x).toLocaleString('en-US');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const m = machine(sandbox.dir);
  const version = audit42Version();
  log(
    `bench:tls: ${fmt(N)} records × ${REPS} repetition(s), ${version}${SMOKE ? ' — smoke run, not a measurement' : ''}`,
  );
  const cases: [ServerKind, Transport][] = [
    ['auditd 4.2.1', 'tcp'],
    ['auditd 4.2.1', 'tls'],
    ['our collector', 'tcp'],
    ['our collector', 'tls'],
    ...(pki ? [['our collector', 'x509'] as [ServerKind, Transport]] : []),
  ];
  const runs = new Map<string, Throughput[]>();
  for (let rep = 1; rep <= REPS; rep++) {
    for (const [s, t] of cases) {
      const r = await throughput(s, t);
      log(
        `  [${rep}/${REPS}] agent → ${s} over ${t}: ${fmt(r.recordsPerSecond)} records/s (agent cpu ${r.cpuSeconds.toFixed(2)} s, server cpu ${r.serverCpuSeconds.toFixed(2)} s, foreign load ${r.foreignCores.toFixed(2)})`,
      );
      runs.set(`${s}|${t}`, [...(runs.get(`${s}|${t}`) ?? []), r]);
    }
  }
  const tput = (s: ServerKind, t: Transport) => {
    const rs = runs.get(`${s}|${t}`)!;
    const v = rs.map((r) => r.recordsPerSecond);
    const mid = rs.find((r) => r.recordsPerSecond === median(v))!;
    return {
      median: median(v),
      min: Math.min(...v),
      max: Math.max(...v),
      run: mid,
      foreign: Math.max(...rs.map((r) => r.foreignCores)),
    };
  };
  const hs: [string, Record<string, number>][] = [];
  for (const [s, t] of [
    ['our collector', 'tls'],
    ...(pki ? [['our collector', 'x509']] : []),
    ['auditd 4.2.1', 'tls'],
  ] as [ServerKind, Transport][]) {
    const r = await handshakes(s, t);
    log(
      `  handshakes ${s} ${t === 'x509' ? 'X.509' : 'PSK'}: ${fmt(r.perSecond!)}/s (${r.failures} failed), connect → ack p50 ${r.p50!.toFixed(1)} ms, p99 ${r.p99!.toFixed(1)} ms`,
    );
    hs.push([`${s}, ${t === 'x509' ? 'mutual X.509' : 'PSK'}`, r]);
  }
  const lat: [string, number, Record<string, number>][] = [];
  for (const s of ['our collector', 'auditd 4.2.1'] as ServerKind[]) {
    for (const stalled of [0, 1000]) {
      const r = await latencyUnderStall(s, stalled);
      log(
        `  ack latency ${s}, ${stalled} stalled handshakes: p50 ${r.p50!.toFixed(2)} ms, p99 ${r.p99!.toFixed(2)} ms, max ${r.max!.toFixed(2)} ms (${r.acks}/${r.sent} acks)`,
      );
      lat.push([s, stalled, r]);
    }
  }

  const rows: string[] = [];
  for (const s of ['auditd 4.2.1', 'our collector'] as ServerKind[]) {
    const tcp = tput(s, 'tcp');
    for (const t of ['tcp', 'tls', 'x509'] as Transport[]) {
      if (!runs.has(`${s}|${t}`)) continue;
      const r = tput(s, t);
      rows.push(
        `| agent → ${s} | ${t === 'x509' ? 'tls, mutual X.509' : t === 'tls' ? 'tls, PSK' : 'tcp'} | ${fmt(r.median)} (${fmt(r.min)}–${fmt(r.max)}) | ${t === 'tcp' ? '—' : `${((100 * r.median) / tcp.median).toFixed(0)} %`} | ${r.run.cpuSeconds.toFixed(2)} | ${r.run.serverCpuSeconds.toFixed(2)} | ${(r.run.peakRss / 1e6).toFixed(0)} MB |`,
      );
    }
  }
  const block = [
    `Run of ${new Date().toISOString()}: \`npm run bench:tls${process.argv.slice(2).length ? ` -- ${process.argv.slice(2).join(' ')}` : ''}\` — ${fmt(N)} records, ${REPS} repetition(s), interleaved; ${version} (Debian sid) via \`.cache/peers/audit/run\`; node ${m.node}, ${m.nproc} CPUs (${m.cpu}).${SMOKE ? ' **Smoke run: not a measurement.**' : ''}`,
    '',
    '### Records/s over TLS and TCP, same run',
    '',
    "Our agent (`mode = forward`, the default `max_in_flight`) writes the corpus records to the server as fast as it takes them; the clock runs from the first record to the last one in the server's log. tls: TLS 1.3, `TLS_AES_128_GCM_SHA256`, X25519 (PSK), records in TLS records of whole messages of at most 8970 bytes (docs/tls.md). Median (min–max).",
    '',
    '| | transport | records/s | of tcp | agent CPU s | server CPU s | agent peak RSS |',
    '|---|---|---|---|---|---|---|',
    ...rows,
    '',
    `Largest load of other processes during a measured run: ${Math.max(...[...runs.values()].flat().map((r) => r.foreignCores)).toFixed(2)} cores.`,
    '',
    '### Handshakes per second',
    '',
    `8 concurrent clients (bench/tls-client.ts) for ${SECONDS} s, each: connect, TLS 1.3 handshake, one record, its ACK, close.`,
    '',
    '| server | handshakes/s | failed | connect → ACK p50 | p99 | server CPU s |',
    '|---|---|---|---|---|---|',
    ...hs.map(
      ([name, r]) =>
        `| ${name} | ${fmt(r.perSecond!)} | ${r.failures} | ${r.p50!.toFixed(1)} ms | ${r.p99!.toFixed(1)} ms | ${r.serverCpuSeconds!.toFixed(2)} |`,
    ),
    '',
    '### An established session while 1,000 handshakes stall',
    '',
    `One TLS-PSK session sends a record every 10 ms for ${Math.max(2, SECONDS)} s; from its start, 1,000 connections from 250 loopback addresses stall mid-handshake (half send nothing, half half a ClientHello). Goal: its ACKs within 50 ms. Our collector: handshake_timeout 5 s, max_pending_handshakes 256; auditd 4.2.1: 5 s, 32.`,
    '',
    '| server | stalled connections | ACK p50 | p99 | max | ACKs | stalled ones closed by the server while held |',
    '|---|---|---|---|---|---|---|',
    ...lat.map(
      ([s, n, r]) =>
        `| ${s} | ${n} | ${r.p50!.toFixed(2)} ms | ${r.p99!.toFixed(2)} ms | ${r.max!.toFixed(2)} ms | ${r.acks}/${r.sent} | ${n > 0 ? `${r.closedByServer}/${r.opened}` : '—'} |`,
    ),
    '',
  ].join('\n');
  log(`\n${block}`);
  if (OUT) {
    replaceBetween(OUT, 'bench-tls', block);
    log(`written to ${OUT}`);
  } else log('(smoke run: nothing written)');
}

try {
  await main();
  await cleanup(0);
} catch (err) {
  console.error(err);
  await cleanup(1);
}
