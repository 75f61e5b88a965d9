/**
 * The real auditd started the way Debian's auditd.service starts it: `auditd` without -n or -f, so it forks
 * (Type=forking). The parent waits until the daemon has initialised, then exits 0; the daemon setsid()s, points
 * its stdio — and so its plugins' stdin's siblings, stdout and stderr — at /dev/null, and writes its pid file.
 * That /dev/null stderr is what an auditd plugin gets on a real host (real-auditd.ts runs `auditd -n`, which
 * redirects stdio too but does not fork).
 *
 * The daemon is no child of ours: it is found through its pid file (read inside the sandbox, whose /run is
 * private), stopped by pid, and in any case killed by the sandbox's destroy() (every process of its network
 * namespace).
 */
import { readFileSync } from 'node:fs';
import type { NetnsSandbox } from './netns.js';
import { pollUntil, waitForExit } from './wait.js';

export interface ForkingAuditd {
  readonly pid: number;
  /** SIGTERM, then waits until the process is gone. */
  stop(timeoutMs?: number): Promise<void>;
  alive(): boolean;
}

/** Still running (a zombie waiting for its reaper counts as gone). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Runs `command` (e.g. `[AUDITD_BIN, '-c', dir]`, or `['/usr/sbin/chroot', root, '/sbin/auditd']`) in the sandbox,
 * waits for the forking parent to exit 0, and reads the daemon's pid from `pidFile` (a path inside the sandbox).
 */
export async function startForkingAuditd(
  sandbox: NetnsSandbox,
  command: readonly string[],
  pidFile: string,
  opts: { diagnostics?: () => string } = {},
): Promise<ForkingAuditd> {
  const [cmd, ...args] = command;
  const parent = sandbox.spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  parent.stdout?.setEncoding('utf8').on('data', (c: string) => {
    output += c;
  });
  parent.stderr?.setEncoding('utf8').on('data', (c: string) => {
    output += c;
  });
  const exit = await waitForExit(parent, 20_000);
  const diag = () =>
    `${command.join(' ')}: ${JSON.stringify(exit)} ${output.trim()}\nsyslog:\n${sandbox.syslogText()}\n${opts.diagnostics?.() ?? ''}`;
  if (exit.code !== 0) throw new Error(`auditd did not start\n${diag()}`);
  const pid = await pollUntil(
    async () => {
      const r = await sandbox.exec('/bin/cat', [pidFile]);
      const n = Number(r.stdout.trim());
      return r.code === 0 && Number.isInteger(n) && n > 0 && processAlive(n) ? n : undefined;
    },
    { timeoutMs: 10_000, what: `auditd's pid in ${pidFile}`, diagnostics: diag },
  );
  return {
    pid,
    alive: () => processAlive(pid),
    async stop(timeoutMs = 15_000) {
      if (!processAlive(pid)) return;
      process.kill(pid, 'SIGTERM');
      await pollUntil(() => !processAlive(pid), {
        timeoutMs,
        what: `auditd (pid ${pid}) to exit`,
        diagnostics: diag,
      });
    },
  };
}
