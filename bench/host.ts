/**
 * What the benchmark reads about processes and the machine: CPU and memory of a process (/proc), the CPU other
 * processes on the host use (the machine may be shared), and a description of the machine for the report.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';

const CLK_TCK = 100;

/** utime + stime in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** VmHWM and VmRSS in bytes. */
export function memory(pid: number): { hwm: number; rss: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { hwm: kb('VmHWM'), rss: kb('VmRSS') };
}

export interface TickSnapshot {
  ticks: number;
  who: [number, string, number][];
}

/**
 * CPU ticks of every user-space process on the host that is not ours (kernel threads excluded: the softirq and
 * journal work our own runs cause is theirs).
 */
export function foreignTicks(ours: Set<number>): TickSnapshot {
  let ticks = 0;
  const who: [number, string, number][] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || ours.has(Number(d))) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`).length === 0) continue; // kernel thread
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const t = Number(f[11]) + Number(f[12]);
      ticks += t;
      who.push([Number(d), stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), t]);
    } catch {
      // gone meanwhile
    }
  }
  return { ticks, who };
}

/** Cores used by other processes between two foreignTicks snapshots over `seconds`. */
export function foreignCores(
  a: TickSnapshot,
  b: TickSnapshot,
  seconds: number,
): { cores: number; names: string[] } {
  const before = new Map(a.who.map(([pid, , t]) => [pid, t]));
  let ticks = 0;
  const names: string[] = [];
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

/**
 * Waits (up to 3 minutes) until other processes use less than QUIET_CORES; returns what was seen. `ours` is
 * called at each probe (processes come and go).
 */
export async function waitQuiet(
  ours: () => Set<number>,
  log: (line: string) => void,
): Promise<{ cores: number; names: string[] }> {
  const t0 = Date.now();
  for (;;) {
    const a = foreignTicks(ours());
    await delay(500);
    const load = foreignCores(a, foreignTicks(ours()), 0.5);
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

export interface Machine {
  nproc: number;
  cpu: string;
  memory: string;
  kernel: string;
  node: string;
  auditd: string;
  disk: string;
}

export function machine(workDir: string): Machine {
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
    disk: execFileSync('findmnt', ['-no', 'SOURCE,FSTYPE', '-T', workDir], { encoding: 'utf8' }).trim(),
  };
}
