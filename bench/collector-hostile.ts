/**
 * Benchmark: the built collector (a process, as an operator runs it) under the attacks of issue 9, measured over
 * time. Standalone: Node built-ins only; it spawns `bin/auditrelay.js` (or `--bin` another build, e.g. an older
 * one, with `--legacy` for a build that does not know the new keys).
 *
 *   npm run bench:hostile                              # 60 s per scenario, budget 64M, prints a Markdown table
 *   npm run bench:hostile -- --seconds 20 --only never-reading,full-speed
 *   npm run bench:hostile -- --bin /path/to/old/bin/auditrelay.js --legacy --seconds 48
 *   npm run bench:hostile -- --jitless                 # the collector as its systemd unit runs it
 *
 * Scenarios (every client on loopback; attacker 127.0.0.2, probe 127.0.0.3, agent 127.0.0.1):
 * - never-reading: one client streams small records and never reads its acknowledgements.
 * - full-speed: one client sends 8.9 kB records as fast as the collector takes them and reads its acks.
 *   In both, a probe client sends one record every 10 ms (stop-and-wait) and the ack latency is recorded;
 *   the collector's RSS (/proc/<pid>/status VmRSS) is sampled every 500 ms.
 * - reconnect: our agent (a process, forward mode) sends 50,000 records to the collector with tcp_max_per_addr = 1,
 *   once alone and once while another client connects from the same address every 50 ms; time to the last
 *   record in the log, and duplicates in the log.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    budget: { type: 'string', default: '64M' },
    bin: { type: 'string', default: path.join(ROOT, 'bin', 'auditrelay.js') },
    legacy: { type: 'boolean', default: false },
    only: { type: 'string', default: 'never-reading,full-speed,reconnect' },
    records: { type: 'string', default: '50000' },
    /** auditd.conf flush mode for the collector (default: the collector's default, incremental_async). */
    flush: { type: 'string' },
    /** Run the collector as its systemd unit does: node --jitless --no-expose-wasm. */
    jitless: { type: 'boolean', default: false },
  },
});
const SECONDS = Number(opt.seconds);
const BIN = opt.bin;
const WORK = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-bench-hostile-'));
const children = new Set<ChildProcess>();

function cleanup(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(WORK, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

// ---------------------------------------------------------------------------------------------------------
// Wire format (16-byte header, little-endian), kept here so the benchmark needs nothing from src/.

const MAGIC = 0xff0000fe;
function frame(type: number, seq: number, payload: Buffer): Buffer {
  const b = Buffer.allocUnsafe(16 + payload.length);
  b.writeUInt32LE(MAGIC, 0);
  b[4] = 0;
  b[5] = 0;
  b.writeUInt32LE(type, 6);
  b.writeUInt16LE(payload.length, 10);
  b.writeUInt32LE(seq >>> 0, 12);
  payload.copy(b, 16);
  return b;
}

/** Counts reply frames (and their types) from a byte stream. */
class ReplyCounter {
  #buf = Buffer.alloc(0);
  count = 0;
  onReply: ((type: number, seq: number) => void) | null = null;
  push(chunk: Buffer): void {
    let buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    while (buf.length >= 16) {
      const len = buf.readUInt16LE(10);
      if (buf.length < 16 + len) break;
      this.count++;
      this.onReply?.(buf.readUInt32LE(6), buf.readUInt32LE(12));
      buf = buf.subarray(16 + len);
    }
    this.#buf = Buffer.from(buf);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The collector

interface Running {
  child: ChildProcess;
  port: number;
  log: string;
  stderr: string[];
}

async function startCollector(name: string, extra: string[] = []): Promise<Running> {
  const dir = path.join(WORK, name);
  mkdirSync(dir, { mode: 0o700 });
  const log = path.join(dir, 'audit.log');
  const conf = path.join(dir, 'collector.conf');
  writeFileSync(
    conf,
    `${(opt.legacy
      ? []
      : [`memory_budget = ${opt.budget}`, `evidence_key_file = ${path.join(dir, 'keys', 'signing.key')}`]
    )
      .concat(opt.flush ? [`flush = ${opt.flush}`] : [], extra)
      .join('\n')}\nlog_level = info\n`,
    {
      mode: 0o600,
    },
  );
  const child = spawn(
    process.execPath,
    [BIN, 'collector', '--config', conf, '--listen', '127.0.0.1:0', '--log', log],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { PATH: process.env.PATH, AUDITRELAY_LOG_FORMAT: 'json' },
    },
  );
  children.add(child);
  const stderr: string[] = [];
  let partial = '';
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      const parts = (partial + s).split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) {
        if (stderr.length < 2000) stderr.push(line);
        try {
          const e = JSON.parse(line) as { msg: string; port?: number };
          if (e.msg === 'collector listening') resolve(Number(e.port));
        } catch {
          // not JSON
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`collector exited ${code}: ${stderr.join('\n')}`)));
  });
  return { child, port, log, stderr };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve();
    }, 10_000);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

function rssMiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

function connect(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress, noDelay: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------
// never-reading / full-speed, with a probe

interface AttackResult {
  scenario: string;
  baselineMiB: number;
  peakMiB: number;
  lastMiB: number;
  probes: number;
  p50: number;
  p99: number;
  max: number;
  probeTimeouts: number;
  attackerAcks: number;
  collectorAlive: boolean;
  logMiB: number;
}

async function attack(scenario: 'never-reading' | 'full-speed'): Promise<AttackResult> {
  const c = await startCollector(scenario);
  const pid = c.child.pid!;
  await sleep(1000);
  const baseline = rssMiB(pid) ?? Number.NaN;
  let peak = baseline;
  let last = baseline;
  const sampler = setInterval(() => {
    const r = rssMiB(pid);
    if (r !== null) {
      last = r;
      peak = Math.max(peak, r);
    }
  }, 500);

  // The attacker.
  const attacker = await connect(c.port, '127.0.0.2');
  attacker.on('error', () => {});
  const acks = new ReplyCounter();
  if (scenario === 'never-reading') attacker.pause();
  else attacker.on('data', (d: Buffer) => acks.push(d));
  const payload =
    scenario === 'never-reading'
      ? Buffer.from('type=USER_CMD msg=audit(1700000000.000:1): pid=1 msg=x\n')
      : Buffer.alloc(8900, 0x41);
  let seq = 0;
  let attacking = true;
  const pump = () => {
    while (attacking && !attacker.destroyed) {
      const batch: Buffer[] = [];
      for (let k = 0; k < (scenario === 'never-reading' ? 256 : 8); k++) batch.push(frame(0, ++seq, payload));
      if (!attacker.write(Buffer.concat(batch))) {
        attacker.once('drain', pump);
        return;
      }
    }
  };
  pump();

  // The probe: one record at a time, every 10 ms.
  const probe = await connect(c.port, '127.0.0.3');
  probe.on('error', () => {});
  const probeReplies = new ReplyCounter();
  let waiting: (() => void) | null = null;
  probeReplies.onReply = () => waiting?.();
  probe.on('data', (d: Buffer) => probeReplies.push(d));
  const latencies: number[] = [];
  let timeouts = 0;
  const end = Date.now() + SECONDS * 1000;
  let n = 0;
  while (Date.now() < end && !probe.destroyed) {
    n++;
    const t0 = process.hrtime.bigint();
    const got = new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), 30_000);
      waiting = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
    probe.write(frame(0, n, Buffer.from(`type=USER_CMD msg=audit(1700000001.000:${n}): probe=${n}\n`)));
    if (await got) latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    else timeouts++;
    waiting = null;
    await sleep(10);
  }
  attacking = false;
  clearInterval(sampler);
  const alive = c.child.exitCode === null && c.child.signalCode === null;
  attacker.destroy();
  probe.destroy();
  let logMiB = 0;
  try {
    logMiB = statSync(c.log).size / 2 ** 20;
  } catch {
    // no log
  }
  await stop(c.child);
  return {
    scenario,
    baselineMiB: baseline,
    peakMiB: peak,
    lastMiB: last,
    probes: latencies.length,
    p50: pct(latencies, 50),
    p99: pct(latencies, 99),
    max: Math.max(0, ...latencies),
    probeTimeouts: timeouts,
    attackerAcks: acks.count,
    collectorAlive: alive,
    logMiB,
  };
}

// ---------------------------------------------------------------------------------------------------------
// reconnect loop beside our agent

async function agentRun(
  loop: boolean,
): Promise<{ seconds: number; lines: number; duplicates: number; attempts: number }> {
  const name = loop ? 'reconnect-loop' : 'reconnect-alone';
  const c = await startCollector(name, opt.legacy ? [] : ['tcp_max_per_addr = 1']);
  const dir = path.join(WORK, `${name}-agent`);
  mkdirSync(dir, { mode: 0o700 });
  const conf = path.join(dir, 'agent.conf');
  writeFileSync(
    conf,
    [
      'remote_server = 127.0.0.1',
      `port = ${c.port}`,
      'mode = forward',
      `queue_dir = ${path.join(dir, 'queue')}`,
      'queue_depth = 100000',
      'reconnect_initial_ms = 20',
      'reconnect_max_ms = 200',
      'drain_timeout = 60',
      'log_level = warn',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const agent = spawn(process.execPath, [BIN, 'agent', '--config', conf], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { PATH: process.env.PATH, AUDITRELAY_LOG_FORMAT: 'json' },
  });
  children.add(agent);
  agent.stdin!.on('error', () => {});
  const TOTAL = Number(opt.records);
  let attempts = 0;
  const held: net.Socket[] = [];
  const timer = loop
    ? setInterval(() => {
        attempts++;
        const s = net.connect({ host: '127.0.0.1', port: c.port, localAddress: '127.0.0.1' });
        s.on('error', () => {});
        held.push(s);
        setTimeout(() => s.destroy(), 1000).unref();
      }, 50)
    : null;
  const t0 = Date.now();
  let text = '';
  for (let i = 1; i <= TOTAL; i++) {
    text += `type=USER_CMD msg=audit(1700000000.${String(i % 1000).padStart(3, '0')}:${i}): pid=1 uid=0 auid=1000 ses=1 msg='op=bench seq=${i} end'\n`;
    if (i % 5000 === 0) {
      agent.stdin!.write(text);
      text = '';
    }
  }
  let lines = 0;
  const deadline = Date.now() + 300_000;
  while (Date.now() < deadline) {
    try {
      lines = readFileSync(c.log, 'latin1').split('\n').length - 1;
    } catch {
      lines = 0;
    }
    if (lines >= TOTAL) break;
    await sleep(50);
  }
  const seconds = (Date.now() - t0) / 1000;
  if (timer) clearInterval(timer);
  for (const s of held) s.destroy();
  const seen = new Set<string>();
  let duplicates = 0;
  for (const m of readFileSync(c.log, 'latin1').matchAll(/ seq=(\d+) /g)) {
    if (seen.has(m[1]!)) duplicates++;
    seen.add(m[1]!);
  }
  agent.stdin!.end();
  await stop(agent);
  await stop(c.child);
  return { seconds, lines, duplicates, attempts };
}

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const only = new Set(opt.only.split(','));
  const out: string[] = [];
  out.push(
    `Collector under attack (bench/collector-hostile.ts): ${SECONDS} s per scenario, memory_budget ${opt.legacy ? '(legacy build: none)' : opt.budget}${opt.flush ? `, flush = ${opt.flush}` : ''}${opt.jitless ? ', node --jitless' : ''}, ${os.cpus().length} CPUs, Node ${process.version}, ${BIN}, load average ${os.loadavg()[0]!.toFixed(1)} at start`,
    '',
  );
  const attacks: AttackResult[] = [];
  for (const s of ['never-reading', 'full-speed'] as const) if (only.has(s)) attacks.push(await attack(s));
  if (attacks.length > 0) {
    out.push(
      '| scenario | RSS at start | peak RSS | RSS at end | probe acks | probe p50 | probe p99 | probe max | probes without ack in 30 s | attacker acks | collector alive | log |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const r of attacks) {
      out.push(
        `| ${r.scenario} | ${r.baselineMiB.toFixed(0)} MiB | ${r.peakMiB.toFixed(0)} MiB | ${r.lastMiB.toFixed(0)} MiB | ${r.probes} | ${r.p50.toFixed(2)} ms | ${r.p99.toFixed(2)} ms | ${r.max.toFixed(1)} ms | ${r.probeTimeouts} | ${r.attackerAcks} | ${r.collectorAlive ? 'yes' : '**no**'} | ${r.logMiB.toFixed(0)} MiB |`,
      );
    }
    out.push('');
  }
  if (only.has('reconnect')) {
    const alone = await agentRun(false);
    const looped = await agentRun(true);
    out.push(
      `| ${opt.records} records, our agent → collector (tcp_max_per_addr = 1) | time | lines in the log | duplicates | connects by the other client |`,
      '|---|---|---|---|---|',
      `| alone | ${alone.seconds.toFixed(2)} s | ${alone.lines} | ${alone.duplicates} | 0 |`,
      `| beside a reconnect every 50 ms from the same address | ${looped.seconds.toFixed(2)} s | ${looped.lines} | ${looped.duplicates} | ${looped.attempts} |`,
      '',
    );
  }
  console.log(out.join('\n'));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
