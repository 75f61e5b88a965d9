#!/usr/bin/env node
/**
 * Benchmark: our agent vs the real audisp-remote (Debian 3.0.9), both sending to the real auditd 3.0.9 on
 * loopback, plus our agent → our collector, a max_in_flight sweep, a 1,000,000-record backlog, and a minimal
 * pipelined reference client that gives each server's ceiling. Same machine, same records, one run.
 *
 *   npm run bench                      # = npm run build && node bench/run.mjs (needs root: namespaces, mounts)
 *   node bench/run.mjs --quick         # fewer records, one repetition (a smoke run)
 *   node bench/run.mjs --records 200000 --reps 5 --backlog 1000000 --out BENCHMARKS.md
 *
 * Everything runs inside private network + mount namespaces (the process re-executes itself under
 * `unshare`): a private loopback (auditd on its usual port 60), a private /run (auditd's pid file), a private
 * /dev with /dev/log served by this process (the daemons' syslog output is captured, not sent to the host),
 * and audisp-remote's fixed /etc/audit/audisp-remote.conf bind-mounted over inside the namespace only.
 *
 * What is measured, per client (see BENCHMARKS.md for the discussion):
 * - records/s: N records written to the client's stdin as fast as it reads them; time from the first write
 *   to the moment the N-th record is in the server's log (inotify on the log file). The reference client
 *   reports its own time from connect to the last ack (no stdin).
 * - latency: a separate run at a fixed offered load (--rate records/s): for each record, the time from its
 *   write to the client's stdin to its appearance in the server's log (end to end; the same measure for
 *   every client). p50 and p99.
 * - CPU: utime + stime of the client process (/proc/<pid>/stat) when the last record arrived, including
 *   start-up; also per record. The server's CPU during the run is reported too.
 * - peak RSS: VmHWM (/proc/<pid>/status).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const AGENT_BIN = path.join(ROOT, 'bin/auditrelay.js');
const REFERENCE = path.join(HERE, 'reference-client.mjs');
const CORPUS_DIR = path.join(ROOT, 'test/fixtures/corpus');
const SYSLOG_SOCK = '/run/auditrelay-bench-syslog.sock';
const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const CLK_TCK = 100;

const { values: opt } = parseArgs({
  options: {
    records: { type: 'string', default: '200000' },
    reps: { type: 'string', default: '5' },
    rate: { type: 'string', default: '5000' },
    'latency-seconds': { type: 'string', default: '4' },
    backlog: { type: 'string', default: '1000000' },
    windows: { type: 'string', default: '16,64,256,1024,4096' },
    out: { type: 'string', default: path.join(ROOT, 'BENCHMARKS.md') },
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'cpu-prof': { type: 'string' },
    only: { type: 'string' },
    inside: { type: 'boolean', default: false },
  },
});
if (opt.quick) {
  opt.records = '50000';
  opt.reps = '1';
  opt.backlog = '200000';
  opt['latency-seconds'] = '2';
}
const N = Number(opt.records);
const REPS = Number(opt.reps);

// ---------------------------------------------------------------------------------------------------------
// Private namespaces: re-execute under unshare with a setup script, then run inside.

const SETUP = `
set -eu
ip link set lo up
mount -t tmpfs -o mode=0755,size=16m auditrelay-bench-run /run
if [ ! -L /var/run ]; then mount --bind /run /var/run; fi
mkdir /run/.hostdev
mount --rbind /dev /run/.hostdev
mount -t tmpfs -o mode=0755,size=1m auditrelay-bench-dev /dev
for n in null zero full random urandom tty; do
  if [ -e "/run/.hostdev/$n" ]; then : > "/dev/$n"; mount --bind "/run/.hostdev/$n" "/dev/$n"; fi
done
mkdir /dev/pts /dev/shm
mount -t tmpfs -o mode=1777,size=64m auditrelay-bench-shm /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
ln -s ${SYSLOG_SOCK} /dev/log
exec "$@"
`;

if (!opt.inside) {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (private network and mount namespaces, mounts, the real auditd)');
    process.exit(2);
  }
  for (const bin of ['/usr/sbin/auditd', '/usr/sbin/audisp-remote']) {
    if (!existsSync(bin)) {
      console.error(`bench: ${bin} not found (apt-get install auditd audispd-plugins)`);
      process.exit(2);
    }
  }
  const args = process.argv.slice(2);
  const r = spawnSync(
    'unshare',
    [
      '--net',
      '--mount',
      '--propagation',
      'private',
      '--',
      'bash',
      '-c',
      SETUP,
      'bench-setup',
      process.execPath,
      ...process.execArgv,
      fileURLToPath(import.meta.url),
      ...args,
      '--inside',
    ],
    { stdio: 'inherit' },
  );
  process.exit(r.status ?? 1);
}

// ---------------------------------------------------------------------------------------------------------
// Inside the namespaces.

const WORK = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-bench-'));
const started = new Set();
const syslog = [];

function log(...args) {
  console.log(...args);
}

/** Kills every process of ours, then everything else in this network namespace (daemons that setsid()). */
function cleanup() {
  for (const c of started) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {}
  }
  const me = readlinkSync('/proc/self/ns/net');
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readlinkSync(`/proc/${d}/ns/net`) === me) process.kill(Number(d), 'SIGKILL');
    } catch {}
  }
  rmSync(WORK, { recursive: true, force: true });
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => process.exit(130));

async function pollUntil(probe, { timeoutMs, what, intervalMs = 10 }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(intervalMs);
  }
}

function track(child) {
  started.add(child);
  child.once('exit', () => started.delete(child));
  let err = '';
  child.stderr?.on('data', (d) => {
    err = (err + d.toString()).slice(-20_000);
  });
  child.stderrText = () => err;
  return child;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child, timeoutMs) {
  if (exited(child)) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve, reject) => {
    const t = setTimeout(
      () => reject(new Error(`pid ${child.pid} did not exit within ${timeoutMs} ms`)),
      timeoutMs,
    );
    child.once('exit', (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal });
    });
  });
}

async function kill(child, sig = 'SIGKILL') {
  if (exited(child)) return;
  try {
    process.kill(child.pid, sig);
  } catch {}
  await waitExit(child, 15_000).catch(async () => {
    process.kill(child.pid, 'SIGKILL');
    await waitExit(child, 5000);
  });
}

/** utime + stime in seconds. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/**
 * CPU ticks of every user-space process on the host that is not ours (kernel threads excluded: the
 * softirq and journal work our own runs cause is theirs). The machine may be shared: a run during which
 * other processes were busy is repeated.
 */
function foreignTicks(ours) {
  let ticks = 0;
  const who = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || ours.has(Number(d))) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`).length === 0) continue; // kernel thread
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const t = Number(f[11]) + Number(f[12]);
      ticks += t;
      who.push([Number(d), stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), t]);
    } catch {}
  }
  return { ticks, who };
}

/** Our processes: this one and everything we started. */
function ourPids() {
  return new Set([process.pid, ...[...started].map((c) => c.pid)]);
}

/** Cores used by other processes between two foreignTicks snapshots over `seconds`. */
function foreignCores(a, b, seconds) {
  const before = new Map(a.who.map(([pid, , t]) => [pid, t]));
  let ticks = 0;
  const names = [];
  for (const [pid, name, t] of b.who) {
    const d = t - (before.get(pid) ?? t);
    if (d > 0) {
      ticks += d;
      if (d / CLK_TCK / seconds > 0.05) names.push(`${name}[${pid}]`);
    }
  }
  return { cores: ticks / CLK_TCK / seconds, names };
}

const QUIET_CORES = 0.15;

/** Waits (up to 3 minutes) until other processes use less than QUIET_CORES; returns what was seen. */
async function waitQuiet() {
  const t0 = Date.now();
  for (;;) {
    const a = foreignTicks(ourPids());
    await delay(500);
    const load = foreignCores(a, foreignTicks(ourPids()), 0.5);
    if (load.cores < QUIET_CORES || Date.now() - t0 > 180_000) {
      if (load.cores >= QUIET_CORES)
        log(
          `  (machine still busy after 3 min: ${load.cores.toFixed(2)} cores by ${load.names.join(', ')}; measuring anyway)`,
        );
      else if (Date.now() - t0 > 2000)
        log(`  (waited ${((Date.now() - t0) / 1000).toFixed(0)} s for other processes to go quiet)`);
      return load;
    }
  }
}

/** VmHWM and VmRSS in bytes. */
function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { hwm: kb('VmHWM'), rss: kb('VmRSS') };
}

// Syslog of the daemons (diagnostics only).
const syslogServer = net.createServer((conn) => {
  let pending = '';
  conn.setEncoding('utf8');
  conn.on('data', (chunk) => {
    pending += chunk;
    let nul = pending.indexOf('\0');
    while (nul >= 0) {
      syslog.push(pending.slice(0, nul));
      if (syslog.length > 2000) syslog.shift();
      pending = pending.slice(nul + 1);
      nul = pending.indexOf('\0');
    }
  });
  conn.on('error', () => {});
});
await new Promise((resolve) => syslogServer.listen(SYSLOG_SOCK, resolve));
syslogServer.unref();

// ---------------------------------------------------------------------------------------------------------
// Records: the corpus, as every client forwards it, repeated to N.

function corpusRecords() {
  const out = [];
  for (const name of readdirSync(CORPUS_DIR)
    .filter((n) => n.endsWith('.log'))
    .sort()) {
    const buf = readFileSync(path.join(CORPUS_DIR, name));
    let start = 0;
    for (let nl = buf.indexOf(10); nl !== -1; start = nl + 1, nl = buf.indexOf(10, start)) {
      const line = buf.subarray(start, nl);
      const text = line.toString('latin1');
      // Records that every client forwards unchanged and auditd logs whole: not blank, not EOE, with a
      // space (audisp-remote drops lines without one), at most 8953 bytes (auditd's limit).
      if (!/\S/.test(text) || /^(\S+ )?type=EOE/.test(text) || !text.includes(' ') || line.length > 8953)
        continue;
      out.push(Buffer.from(line));
    }
  }
  return out;
}

const CORPUS = corpusRecords();

/** `n` records cycling through the corpus, each with its '\n'. */
function recordsBuffer(n) {
  const parts = [];
  for (let i = 0; i < n; i++) parts.push(CORPUS[i % CORPUS.length], Buffer.from('\n'));
  return Buffer.concat(parts);
}

const RECORDS = recordsBuffer(N);
const RECORDS_FILE = path.join(WORK, 'records.txt');
writeFileSync(RECORDS_FILE, RECORDS);

// ---------------------------------------------------------------------------------------------------------
// Servers

function auditdConf(dir, name) {
  return `${[
    'local_events = no',
    'write_logs = yes',
    `log_file = ${path.join(dir, 'audit.log')}`,
    'log_format = RAW',
    'log_group = root',
    'flush = incremental_async',
    'freq = 50',
    'num_logs = 0',
    'max_log_file = 0',
    'max_log_file_action = ignore',
    'priority_boost = 0',
    'name_format = user',
    `name = ${name}`,
    'space_left = 2',
    'space_left_action = ignore',
    'admin_space_left = 1',
    'admin_space_left_action = ignore',
    'disk_full_action = ignore',
    'disk_error_action = syslog',
    'use_libwrap = no',
    `tcp_listen_port = ${AUDITD_PORT}`,
    'tcp_listen_queue = 64',
    'tcp_max_per_addr = 1024',
    'tcp_client_max_idle = 0',
    'transport = TCP',
    'distribute_network = no',
    'q_depth = 2000',
    'overflow_action = syslog',
    'max_restarts = 0',
    `plugin_dir = ${path.join(dir, 'plugins.d')}`,
  ].join('\n')}\n`;
}

function listening(port) {
  const out = execFileSync('ss', ['-Htanl', 'sport', '=', `:${port}`], { encoding: 'utf8' });
  return out.trim().length > 0;
}

let serverCounter = 0;

async function startAuditd() {
  serverCounter++;
  const dir = path.join(WORK, `auditd-${serverCounter}`);
  mkdirSync(path.join(dir, 'plugins.d'), { recursive: true, mode: 0o750 });
  chmodSync(dir, 0o700);
  const name = `bench-own-${randomBytes(4).toString('hex')}`;
  writeFileSync(path.join(dir, 'auditd.conf'), auditdConf(dir, name), { mode: 0o640 });
  const child = track(spawn('/usr/sbin/auditd', ['-n', '-c', dir], { stdio: ['ignore', 'ignore', 'pipe'] }));
  await pollUntil(() => exited(child) || listening(AUDITD_PORT), {
    timeoutMs: 15_000,
    what: 'auditd to listen',
  });
  if (exited(child)) throw new Error(`auditd exited: ${child.stderrText()}\n${syslog.slice(-20).join('\n')}`);
  return {
    name: 'auditd 3.0.9',
    child,
    port: AUDITD_PORT,
    logPath: path.join(dir, 'audit.log'),
    skipPrefix: `node=${name} `,
    async stop() {
      await kill(child, 'SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startCollector() {
  serverCounter++;
  const dir = path.join(WORK, `collector-${serverCounter}`);
  mkdirSync(dir, { recursive: true });
  const logPath = path.join(dir, 'collector.log');
  const child = track(
    spawn(
      process.execPath,
      [AGENT_BIN, 'collector', '--listen', `127.0.0.1:${COLLECTOR_PORT}`, '--log', logPath],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json' },
      },
    ),
  );
  await pollUntil(() => exited(child) || listening(COLLECTOR_PORT), {
    timeoutMs: 15_000,
    what: 'the collector to listen',
  });
  if (exited(child)) throw new Error(`collector exited: ${child.stderrText()}`);
  return {
    name: 'our collector',
    child,
    port: COLLECTOR_PORT,
    logPath,
    skipPrefix: null,
    async stop() {
      await kill(child, 'SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Follows a server's log: counts received records (lines not starting with skipPrefix) and, when
 * `arrivals` is given, stores the time each one was first seen (inotify, plus a 5 ms poll as a safety net).
 */
class LogTail {
  count = 0;
  #offset = 0;
  #skip;
  #fd = null;
  #watcher = null;
  #timer = null;
  #waiters = [];

  constructor(file, skipPrefix, arrivals = null) {
    this.file = file;
    this.#skip = skipPrefix ? Buffer.from(skipPrefix) : null;
    this.arrivals = arrivals;
  }

  /** The first bytes of a line begun in an earlier chunk. */
  #lineStart = Buffer.alloc(0);

  /**
   * With `precise` (latency runs), every change of the file wakes us up (inotify); otherwise a 5 ms poll
   * only, so that following a log written at 100,000 lines/s does not steal CPU from the client and the
   * server (the machine may have 2 cores).
   */
  start(precise = false) {
    this.#fd = openSync(this.file, 'r');
    if (precise) this.#watcher = watch(this.file, () => this.poll());
    this.#timer = setInterval(() => this.poll(), 5);
    this.poll();
  }

  stop() {
    this.#watcher?.close();
    clearInterval(this.#timer);
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }

  poll() {
    if (this.#fd === null) return;
    const now = performance.now();
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = readSync(this.#fd, buf, 0, buf.length, this.#offset);
      if (n <= 0) break;
      this.#offset += n;
      this.#scan(buf.subarray(0, n), now);
    }
    for (const w of this.#waiters.slice()) {
      if (this.count >= w.n) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(now);
      }
    }
  }

  /** Counts complete lines; a line is ours unless it starts with the server's own prefix. */
  #scan(chunk, now) {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; start = nl + 1, nl = chunk.indexOf(10, start)) {
      // The first bytes of the line (possibly begun in the previous chunk) decide whether it is ours.
      const head =
        this.#lineStart.length > 0
          ? Buffer.concat([this.#lineStart, chunk.subarray(start, nl)])
          : chunk.subarray(start, nl);
      this.#lineStart = Buffer.alloc(0);
      if (!(this.#skip && head.subarray(0, this.#skip.length).equals(this.#skip))) {
        if (this.arrivals && this.count < this.arrivals.length) this.arrivals[this.count] = now;
        this.count++;
      }
    }
    if (start < chunk.length && this.#lineStart.length < 64) {
      this.#lineStart = Buffer.concat([this.#lineStart, chunk.subarray(start, start + 64)]);
    }
  }

  /** Resolves with the time (performance.now) at which `n` records had arrived. */
  waitFor(n, timeoutMs, diagnostics) {
    if (this.count >= n) return Promise.resolve(performance.now());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        reject(
          new Error(
            `bench: ${this.count}/${n} records in ${this.file} after ${timeoutMs} ms\n${diagnostics?.() ?? ''}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push({
        n,
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Clients

let clientCounter = 0;

function agentConfFile(port, o = {}) {
  clientCounter++;
  const dir = path.join(WORK, `agent-${clientCounter}`);
  mkdirSync(dir, { recursive: true });
  const lines = [
    'remote_server = 127.0.0.1',
    `port = ${port}`,
    `mode = ${o.mode ?? 'forward'}`,
    `queue_dir = ${path.join(dir, 'queue')}`,
    `queue_depth = ${o.queueDepth ?? 2048}`,
    `max_in_flight = ${o.window ?? 1024}`,
    'reconnect_initial_ms = 20',
    'reconnect_max_ms = 200',
    'drain_timeout = 60',
    'log_level = warn',
    ...(o.extra ?? []),
  ];
  const file = path.join(dir, 'agent.conf');
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o640 });
  return { file, dir };
}

/** Our agent (a process, records on stdin). */
function startAgent(port, o = {}) {
  const { file, dir } = agentConfFile(port, o);
  const nodeArgs = [
    ...(o.jitless ? ['--jitless'] : []),
    ...(o.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`] : []),
  ];
  const child = track(
    spawn(process.execPath, [...nodeArgs, AGENT_BIN, 'agent', '--config', file], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { PATH: process.env.PATH, AUDITRELAY_LOG_FORMAT: 'json' },
    }),
  );
  child.stdin.on('error', () => {});
  return {
    child,
    dir,
    async finish() {
      child.stdin.end();
      const exit = await waitExit(child, 120_000);
      if (exit.code !== 0) throw new Error(`agent exited ${JSON.stringify(exit)}: ${child.stderrText()}`);
    },
  };
}

let audispCounter = 0;

/** The real audisp-remote 3.0.9, with its config bind-mounted over the fixed path (this namespace only). */
function startAudispRemote(port) {
  audispCounter++;
  const conf = path.join(WORK, `audisp-remote-${audispCounter}.conf`);
  writeFileSync(
    conf,
    `${[
      'remote_server = 127.0.0.1',
      `port = ${port}`,
      'transport = tcp',
      'mode = immediate',
      'queue_depth = 10240',
      'format = managed',
      'network_retry_time = 1',
      'max_tries_per_record = 3',
      'max_time_per_record = 5',
      'heartbeat_timeout = 0',
      'network_failure_action = stop',
      'disk_low_action = ignore',
      'disk_full_action = warn_once',
      'disk_error_action = warn_once',
      'remote_ending_action = reconnect',
      'generic_error_action = syslog',
      'generic_warning_action = syslog',
      'queue_error_action = stop',
      'overflow_action = syslog',
      'startup_failure_action = warn_once_continue',
    ].join('\n')}\n`,
    { mode: 0o640 },
  );
  chmodSync(conf, 0o640);
  execFileSync('mount', ['--bind', conf, '/etc/audit/audisp-remote.conf']);
  // As auditd starts plugins: empty environment, SIGPIPE ignored, stdin a socketpair.
  const child = track(
    spawn('/bin/bash', ['-c', `trap '' PIPE; exec env -i /usr/sbin/audisp-remote`], {
      stdio: ['pipe', 'ignore', 'pipe'],
    }),
  );
  child.stdin.on('error', () => {});
  return {
    child,
    async finish() {
      // Under auditd its stdin is a socketpair: at EOF it exits without flushing (everything has arrived).
      child.stdin.end();
      await waitExit(child, 30_000).catch(() => kill(child));
      execFileSync('umount', ['/etc/audit/audisp-remote.conf']);
    },
  };
}

/** Writes `buf` to `stream` as fast as it is read. */
async function feedAll(stream, buf) {
  const SLICE = 256 * 1024;
  for (let off = 0; off < buf.length; off += SLICE) {
    if (!stream.write(buf.subarray(off, Math.min(buf.length, off + SLICE)))) {
      await new Promise((resolve, reject) => {
        const done = (err) => {
          stream.off('drain', done);
          stream.off('error', done);
          if (err) reject(err);
          else resolve();
        };
        stream.on('drain', done);
        stream.on('error', done);
      });
    }
  }
}

/** Writes records at `rate` per second; `sentAt[i]` = time record i was written. */
async function feedPaced(stream, records, rate, sentAt) {
  const t0 = performance.now();
  let i = 0;
  while (i < records.length) {
    const due = Math.min(records.length, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    if (due > i) {
      const now = performance.now();
      const parts = [];
      for (; i < due; i++) {
        parts.push(records[i], Buffer.from('\n'));
        sentAt[i] = now;
      }
      if (!stream.write(Buffer.concat(parts))) await new Promise((resolve) => stream.once('drain', resolve));
    }
    await delay(1);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Runs

function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Waits until the agent is connected (the server saw the connection) so that its start-up is not timed. */
async function waitConnected(server) {
  await pollUntil(
    () => {
      const out = execFileSync('ss', ['-Htan', 'state', 'established', 'sport', '=', `:${server.port}`], {
        encoding: 'utf8',
      });
      return out.trim().length > 0;
    },
    { timeoutMs: 15_000, what: 'the client to connect' },
  );
}

/**
 * One throughput run: N records, as fast as the client takes them, on a quiet machine. A run during which
 * other processes on the host used more than 0.25 of a core is repeated (at most twice more); the result
 * says how much foreign load there was.
 * kind: 'reference' | 'agent' | 'jitless' | 'audisp-remote' | 'agent-immediate'.
 */
async function throughput(kind, serverKind, o = {}) {
  let best = null;
  for (let attempt = 1; attempt <= 3; attempt++) {
    await waitQuiet();
    const r = await throughputOnce(kind, serverKind, o);
    if (!best || r.foreignCores < best.foreignCores) best = r;
    if (r.foreignCores <= 0.25) break;
    log(
      `  (${kind} → ${serverKind}: other processes used ${r.foreignCores.toFixed(2)} cores (${r.foreignNames.join(', ')}); measuring again)`,
    );
  }
  return best;
}

async function throughputOnce(kind, serverKind, o) {
  const server = serverKind === 'auditd' ? await startAuditd() : await startCollector();
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const serverCpu0 = cpuSeconds(server.child.pid);
  try {
    if (kind === 'reference') {
      const foreign0 = foreignTicks(ourPids());
      const w0 = performance.now();
      const child = track(
        spawn(
          process.execPath,
          [REFERENCE, '--port', String(server.port), '--file', RECORDS_FILE, '--window', '8192'],
          {
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        ),
      );
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
      });
      const exit = await waitExit(child, 300_000);
      if (exit.code !== 0) throw new Error(`reference client failed: ${child.stderrText()}`);
      await tail.waitFor(N, 60_000);
      const foreign = foreignCores(foreign0, foreignTicks(ourPids()), (performance.now() - w0) / 1000);
      const r = JSON.parse(out);
      return {
        kind,
        server: server.name,
        window: 8192,
        recordsPerSecond: r.recordsPerSecond,
        seconds: r.seconds,
        cpuSeconds: r.cpuSeconds,
        peakRss: r.peakRssBytes,
        serverCpuSeconds: cpuSeconds(server.child.pid) - serverCpu0,
        foreignCores: foreign.cores,
        foreignNames: foreign.names,
      };
    }
    let client;
    if (kind === 'audisp-remote') client = startAudispRemote(server.port);
    else
      client = startAgent(server.port, {
        window: o.window,
        jitless: kind === 'jitless',
        mode: kind === 'agent-immediate' ? 'immediate' : 'forward',
        queueDepth: kind === 'agent-immediate' ? 1_000_000 : 2048,
        cpuProf: o.cpuProf,
      });
    if (kind !== 'audisp-remote') await waitConnected(server);
    const foreign0 = foreignTicks(ourPids());
    const t0 = performance.now();
    const fed = feedAll(client.child.stdin, RECORDS);
    const tEnd = await tail.waitFor(
      N,
      600_000,
      () => `${client.child.stderrText()}\n${syslog.slice(-10).join('\n')}`,
    );
    await fed;
    const seconds = (tEnd - t0) / 1000;
    const foreign = foreignCores(foreign0, foreignTicks(ourPids()), seconds);
    const cpu = cpuSeconds(client.child.pid);
    const mem = memory(client.child.pid);
    const serverCpu = cpuSeconds(server.child.pid) - serverCpu0;
    await client.finish();
    if (tail.count !== N) throw new Error(`${kind}: ${tail.count} records arrived, expected ${N}`);
    // A sound run has no reconnect (auditd drops acks it cannot write: a too large window would show here).
    const reconnects = (client.child.stderrText().match(/link to the server lost/g) ?? []).length;
    if (reconnects > 0)
      log(`  (${kind} → ${serverKind}: the agent lost its link ${reconnects} time(s) during the run)`);
    return {
      reconnects,
      kind,
      server: server.name,
      window: kind === 'audisp-remote' ? 1 : (o.window ?? 1024),
      recordsPerSecond: N / seconds,
      seconds,
      cpuSeconds: cpu,
      peakRss: mem.hwm,
      serverCpuSeconds: serverCpu,
      foreignCores: foreign.cores,
      foreignNames: foreign.names,
    };
  } finally {
    tail.stop();
    await server.stop();
  }
}

/** End-to-end latency at a fixed offered load: write to the client's stdin → line in the server's log. */
async function latency(kind, serverKind, o = {}) {
  await waitQuiet();
  const rate = Number(opt.rate);
  const count = Math.round(rate * Number(opt['latency-seconds']));
  const records = Array.from({ length: count }, (_, i) => CORPUS[i % CORPUS.length]);
  const server = serverKind === 'auditd' ? await startAuditd() : await startCollector();
  const arrivals = new Float64Array(count);
  const sentAt = new Float64Array(count);
  const tail = new LogTail(server.logPath, server.skipPrefix, arrivals);
  tail.start(true);
  try {
    let client;
    if (kind === 'audisp-remote') client = startAudispRemote(server.port);
    else client = startAgent(server.port, { window: o.window, jitless: kind === 'jitless' });
    if (kind !== 'audisp-remote') await waitConnected(server);
    await feedPaced(client.child.stdin, records, rate, sentAt);
    await tail.waitFor(count, 120_000);
    await client.finish();
    // The first 10% warm up (JIT, connection); the rest is measured.
    const lat = [];
    for (let i = Math.floor(count / 10); i < count; i++) lat.push(arrivals[i] - sentAt[i]);
    lat.sort((a, b) => a - b);
    return {
      kind,
      server: server.name,
      rate,
      records: count,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: lat.at(-1),
    };
  } finally {
    tail.stop();
    await server.stop();
  }
}

/** Peak RSS of the agent while 1,000,000 records pile up in the durable queue (server down), then drain. */
async function backlog() {
  await waitQuiet();
  const n = Number(opt.backlog);
  const statusPort = 62;
  const agent = startAgent(AUDITD_PORT, { extra: [`status_listen = 127.0.0.1:${statusPort}`] });
  const status = async () => {
    try {
      const res = await fetch(`http://127.0.0.1:${statusPort}/status`);
      return await res.json();
    } catch {
      return null;
    }
  };
  await pollUntil(status, { timeoutMs: 15_000, what: 'the agent status listener' });
  const buf = recordsBuffer(n);
  const t0 = performance.now();
  await feedAll(agent.child.stdin, buf);
  let peakDuring = 0;
  await pollUntil(
    async () => {
      peakDuring = Math.max(peakDuring, memory(agent.child.pid).rss);
      const s = await status();
      return s && s.queueDepth >= n && s.held === 0;
    },
    { timeoutMs: 300_000, what: `${n} records queued`, intervalMs: 50 },
  );
  const appendSeconds = (performance.now() - t0) / 1000;
  const queued = memory(agent.child.pid);
  const diskBytes = readdirSync(path.join(agent.dir, 'queue'))
    .filter((f) => f.startsWith('seg-'))
    .reduce((sum, f) => sum + statSync(path.join(agent.dir, 'queue', f)).size, 0);
  // The server comes up: the backlog drains from disk.
  const server = await startAuditd();
  const tail = new LogTail(server.logPath, server.skipPrefix);
  tail.start();
  const t1 = performance.now();
  let peakDrain = 0;
  const sampler = setInterval(() => {
    try {
      peakDrain = Math.max(peakDrain, memory(agent.child.pid).rss);
    } catch {}
  }, 20);
  const tEnd = await tail.waitFor(n, 600_000, () => agent.child.stderrText());
  clearInterval(sampler);
  const final = memory(agent.child.pid);
  await agent.finish();
  tail.stop();
  await server.stop();
  return {
    records: n,
    diskBytes,
    appendSeconds,
    rssQueued: queued.rss,
    hwmQueued: queued.hwm,
    peakRss: Math.max(final.hwm, peakDrain, peakDuring),
    drainSeconds: (tEnd - t1) / 1000,
    drainPerSecond: n / ((tEnd - t1) / 1000),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Main

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function summarize(runs) {
  const rps = runs.map((r) => r.recordsPerSecond);
  const pick = runs.find((r) => r.recordsPerSecond === median(rps));
  return {
    ...pick,
    min: Math.min(...rps),
    max: Math.max(...rps),
    cpuSeconds: median(runs.map((r) => r.cpuSeconds)),
    peakRss: Math.max(...runs.map((r) => r.peakRss)),
    serverCpuSeconds: median(runs.map((r) => r.serverCpuSeconds)),
    foreignCores: Math.max(...runs.map((r) => r.foreignCores ?? 0)),
    reconnects: runs.reduce((n, r) => n + (r.reconnects ?? 0), 0),
    reps: runs.length,
  };
}

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown';
  const mhz = /^cpu MHz\s*:\s*(.+)$/m.exec(cpuinfo)?.[1];
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const auditd =
    spawnSync('dpkg-query', ['-W', `-f=${'$'}{Version}`, 'auditd'], { encoding: 'utf8' }).stdout || 'unknown';
  return {
    nproc: os.availableParallelism(),
    cpu: `${model}${mhz ? ` (${Math.round(Number(mhz))} MHz)` : ''}`,
    memory: `${(memKb / 1024 / 1024).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    auditd,
    disk: execFileSync('findmnt', ['-no', 'SOURCE,FSTYPE', '-T', WORK], { encoding: 'utf8' }).trim(),
  };
}

const LABEL = {
  reference: 'reference client (pipelined, no queue)',
  agent: 'auditrelay agent (durable queue)',
  jitless: 'auditrelay agent --jitless (durable queue)',
  'agent-immediate': 'auditrelay agent (memory queue)',
  'audisp-remote': 'audisp-remote 3.0.9 (stop-and-wait)',
};

const fmtInt = (x) => Math.round(x).toLocaleString('en-US');
const fmtMB = (b) => `${(b / 1e6).toFixed(0)} MB`;

/** `--only kind:server[:window]`: one throughput run (repeated --reps times), printed; no report. */
async function only(spec) {
  const [kind, server, window] = spec.split(':');
  for (let rep = 1; rep <= REPS; rep++) {
    const r = await throughput(kind, server, {
      ...(window ? { window: Number(window) } : {}),
      ...(opt['cpu-prof'] ? { cpuProf: opt['cpu-prof'] } : {}),
    });
    log(
      `${kind} → ${server}: ${fmtInt(r.recordsPerSecond)} records/s in ${r.seconds.toFixed(2)} s, cpu ${r.cpuSeconds.toFixed(2)} s, server cpu ${r.serverCpuSeconds.toFixed(2)} s, peak RSS ${fmtMB(r.peakRss)}, foreign load ${r.foreignCores.toFixed(2)} cores`,
    );
  }
}

/** The former default, kept for comparison. */
const COMPARISON_WINDOW = 256;

/** Throughput cases: [kind, server, max_in_flight or undefined (the default, 1024)]. */
const PLAN = [
  ['reference', 'auditd'],
  ['agent', 'auditd'],
  ['agent', 'auditd', COMPARISON_WINDOW],
  ['jitless', 'auditd'],
  ['audisp-remote', 'auditd'],
  ['reference', 'collector'],
  ['agent', 'collector'],
  ['agent', 'collector', COMPARISON_WINDOW],
  ['jitless', 'collector'],
];

const keyOf = (kind, server, window) => `${kind}|${server}${window ? `|${window}` : ''}`;

async function main() {
  if (opt.only) {
    await only(opt.only);
    return;
  }
  const m = machine();
  const startedAt = new Date().toISOString();
  log(
    `bench: ${N} records (${(RECORDS.length / 1e6).toFixed(1)} MB, ${CORPUS.length} distinct corpus records), ${REPS} repetition(s)`,
  );
  log(`machine: ${JSON.stringify(m)}`);
  const raw = new Map();
  // Round-robin over the repetitions so that drift on a shared machine hits every client alike.
  for (let rep = 1; rep <= REPS; rep++) {
    for (const [kind, server, window] of PLAN) {
      const r = await throughput(kind, server, window ? { window } : {});
      log(
        `  [${rep}/${REPS}] ${kind}${window ? ` (max_in_flight ${window})` : ''} → ${server}: ${fmtInt(r.recordsPerSecond)} records/s, cpu ${r.cpuSeconds.toFixed(2)} s, peak RSS ${fmtMB(r.peakRss)}`,
      );
      const key = keyOf(kind, server, window);
      raw.set(key, [...(raw.get(key) ?? []), r]);
    }
  }
  const tput = new Map([...raw].map(([k, runs]) => [k, summarize(runs)]));

  const windows = opt.windows.split(',').map(Number);
  const sweep = [];
  for (const w of windows) {
    const runs = [];
    for (let rep = 1; rep <= REPS; rep++) runs.push(await throughput('agent', 'auditd', { window: w }));
    const s = summarize(runs);
    const lat = await latency('agent', 'auditd', { window: w });
    sweep.push({ window: w, ...s, p50: lat.p50, p99: lat.p99 });
    log(
      `  max_in_flight ${w}: ${fmtInt(s.recordsPerSecond)} records/s; latency p50 ${lat.p50.toFixed(2)} ms p99 ${lat.p99.toFixed(2)} ms`,
    );
  }

  const lat = new Map();
  for (const [kind, server] of [
    ['agent', 'auditd'],
    ['jitless', 'auditd'],
    ['audisp-remote', 'auditd'],
    ['agent', 'collector'],
  ]) {
    const r = await latency(kind, server);
    lat.set(keyOf(kind, server), r);
    log(`  latency ${kind} → ${server}: p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms`);
  }

  const bl = await backlog();
  log(
    `  backlog ${fmtInt(bl.records)}: RSS ${fmtMB(bl.rssQueued)} queued, peak ${fmtMB(bl.peakRss)}; drained at ${fmtInt(bl.drainPerSecond)} records/s`,
  );

  if (opt['cpu-prof']) {
    mkdirSync(opt['cpu-prof'], { recursive: true });
    await throughput('agent', 'auditd', { cpuProf: opt['cpu-prof'] });
    log(`  CPU profile of agent → auditd written to ${opt['cpu-prof']}`);
  }

  const result = {
    startedAt,
    machine: m,
    records: N,
    reps: REPS,
    throughput: Object.fromEntries(tput),
    sweep,
    latency: Object.fromEntries(lat),
    backlog: bl,
  };
  if (opt.json) writeFileSync(opt.json, `${JSON.stringify(result, null, 2)}\n`);
  const block = report(result);
  writeReport(opt.out, block);
  log(`\n${block}`);
  log(`written to ${opt.out}`);
}

const BEGIN =
  '<!-- bench:begin — generated by bench/run.mjs; everything up to bench:end is replaced on each run -->';
const END = '<!-- bench:end -->';

/** Replaces the generated part of the report, keeping the hand-written text around it. */
function writeReport(file, block) {
  const doc = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  const next =
    a >= 0 && b > a
      ? `${doc.slice(0, a)}${BEGIN}\n${block}${doc.slice(b)}`
      : `# Benchmarks\n\n${BEGIN}\n${block}${END}\n`;
  writeFileSync(file, next);
}

function report(r) {
  const t = (k, s, w) => r.throughput[keyOf(k, s, w)];
  const refA = t('reference', 'auditd');
  const refC = t('reference', 'collector');
  const W = COMPARISON_WINDOW;
  const rows = [];
  for (const [kind, server, window] of PLAN) {
    const x = t(kind, server, window);
    const ref = server === 'auditd' ? refA : refC;
    const l = window ? undefined : r.latency[keyOf(kind, server)];
    const label = `${LABEL[kind]}${window ? `, max_in_flight = ${window}` : ''}`;
    rows.push(
      `| ${label} | ${x.server} | ${fmtInt(x.recordsPerSecond)} (${fmtInt(x.min)}–${fmtInt(x.max)}) | ${((100 * x.recordsPerSecond) / ref.recordsPerSecond).toFixed(0)} % | ${l ? `${l.p50.toFixed(2)} / ${l.p99.toFixed(2)}` : '–'} | ${x.cpuSeconds.toFixed(2)} s (${((x.cpuSeconds / r.records) * 1e6).toFixed(1)} µs) | ${fmtMB(x.peakRss)} | ${x.serverCpuSeconds.toFixed(2)} s |`,
    );
  }
  const pct = (a, b) => `${((100 * a.recordsPerSecond) / b.recordsPerSecond).toFixed(0)} %`;
  const times = (a, b) => `${(a.recordsPerSecond / b.recordsPerSecond).toFixed(2)} ×`;
  const yes = (ok) => (ok ? 'yes' : '**no**');
  const agentA = t('agent', 'auditd');
  const agentAW = t('agent', 'auditd', W);
  const jitA = t('jitless', 'auditd');
  const remote = t('audisp-remote', 'auditd');
  const agentC = t('agent', 'collector');
  const agentCW = t('agent', 'collector', W);
  const targets = [
    [
      'agent → real auditd ≥ 85 % of the reference client (durable queue on)',
      pct(agentA, refA),
      yes(agentA.recordsPerSecond >= 0.85 * refA.recordsPerSecond),
      pct(agentAW, refA),
      yes(agentAW.recordsPerSecond >= 0.85 * refA.recordsPerSecond),
    ],
    [
      'agent --jitless ≥ 2 × audisp-remote (both → real auditd)',
      times(jitA, remote),
      yes(jitA.recordsPerSecond >= 2 * remote.recordsPerSecond),
      '',
      '',
    ],
    [
      'agent → our collector ≥ 2 × what real auditd takes from the reference client',
      times(agentC, refA),
      yes(agentC.recordsPerSecond >= 2 * refA.recordsPerSecond),
      times(agentCW, refA),
      yes(agentCW.recordsPerSecond >= 2 * refA.recordsPerSecond),
    ],
    [
      `RSS ≤ 150 MB with a ${fmtInt(r.backlog.records)}-record backlog on the durable queue`,
      `${fmtMB(r.backlog.peakRss)} peak`,
      yes(r.backlog.peakRss <= 150e6),
      '',
      '',
    ],
  ];
  const foreign = Math.max(...Object.values(r.throughput).map((x) => x.foreignCores ?? 0));
  const m = r.machine;
  return `Run of ${r.startedAt}: \`npm run bench\` (= \`npm run build && node bench/run.mjs\`).

### Machine

| | |
|---|---|
| CPUs (\`nproc\`) | ${m.nproc} |
| CPU | ${m.cpu} |
| memory | ${m.memory} |
| kernel | ${m.kernel} |
| node | ${m.node} |
| auditd / audisp-remote | Debian ${m.auditd} |
| queue and log disk | ${m.disk} |

### Throughput, latency, CPU, memory

${fmtInt(r.records)} records, written to each client's stdin as fast as it reads them; records/s = ${fmtInt(r.records)} ÷ the time from the
first write to the last record in the server's log. Median of ${r.reps} run(s), min–max in brackets, runs interleaved;
other processes on the host used at most ${foreign.toFixed(2)} cores during a measured run. "Of ceiling": fraction of what the
reference client gets from the same server. Latency: separate run at ${fmtInt(Number(opt.rate))} records/s, end to end,
p50 / p99 in ms. Client CPU: utime + stime, start-up included (per record in brackets). Our agent: \`mode = forward\`
(durable queue, \`fsync = interval\`), \`max_in_flight = 1024\` (the default) unless stated.

| client | server | records/s | of ceiling | latency p50 / p99 (ms) | client CPU (per record) | client peak RSS | server CPU |
|---|---|---|---|---|---|---|---|
${rows.join('\n')}

### max_in_flight (agent → real auditd, durable queue)

| max_in_flight | records/s | of ceiling | latency p50 / p99 at ${fmtInt(Number(opt.rate))}/s (ms) | client CPU | peak RSS |
|---|---|---|---|---|---|
${r.sweep
  .map(
    (s) =>
      `| ${s.window} | ${fmtInt(s.recordsPerSecond)} (${fmtInt(s.min)}–${fmtInt(s.max)}) | ${((100 * s.recordsPerSecond) / refA.recordsPerSecond).toFixed(0)} % | ${s.p50.toFixed(2)} / ${s.p99.toFixed(2)} | ${s.cpuSeconds.toFixed(2)} s | ${fmtMB(s.peakRss)} |`,
  )
  .join('\n')}

### Backlog on the durable queue

${fmtInt(r.backlog.records)} records written while the server is down (${(r.backlog.diskBytes / 1024 / 1024).toFixed(0)} MiB of segments, accepted in
${r.backlog.appendSeconds.toFixed(1)} s), then the real auditd starts and the backlog drains from disk.

| | |
|---|---|
| RSS with the backlog queued | ${fmtMB(r.backlog.rssQueued)} |
| peak RSS (VmHWM, whole run: filling and draining) | ${fmtMB(r.backlog.peakRss)} |
| drain to the real auditd | ${r.backlog.drainSeconds.toFixed(1)} s (${fmtInt(r.backlog.drainPerSecond)} records/s) |

### Targets

| target | default (\`max_in_flight = 1024\`) | met | \`max_in_flight = ${W}\` | met |
|---|---|---|---|---|
${targets.map((c) => `| ${c.join(' | ')} |`).join('\n')}
`;
}

await main();
