/**
 * A private network + mount namespace for running real daemons (auditd, audisp-remote, our own agent/collector)
 * without touching the host's network, /run, /dev/log or /etc.
 *
 * How it works (details in docs/testing.md):
 * - `create()` starts a *holder* process: `unshare --net --mount --propagation private -- bash -c <script>`.
 *   The script brings `lo` up, mounts a private tmpfs on /run (and binds it on /var/run if that is not a symlink),
 *   replaces /dev by a small private tmpfs (null, zero, full, random, urandom, tty, pts, shm, fd links) whose `/dev/log`
 *   points at a unix socket served by this process (so syslog output of the daemons is captured per sandbox), prints
 *   `ready`, and then blocks reading its stdin.
 * - Everything else runs inside via `nsenter --target <holder> --net --mount -- cmd args` (no --pid, so nsenter execs
 *   and the returned ChildProcess pid is the command's pid).
 * - `destroy()` SIGKILLs every process started through the sandbox by pid and waits for each, then closes the holder's
 *   stdin. On stdin EOF (also when the test runner dies) or on SIGINT/SIGTERM/SIGHUP the holder SIGKILLs every
 *   remaining process whose network namespace is the sandbox's (e.g. daemons that setsid()), then exits.
 *
 * The host filesystem is shared except /run, /var/run and /dev: a host path such as `sandbox.dir` is visible at the
 * same path inside. Needs real root (CAP_SYS_ADMIN + CAP_NET_ADMIN); see prereq.ts.
 */
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { requireBinary } from './prereq.js';
import { type ExitInfo, hasExited, pollUntil, signalAndWait, waitForExit } from './wait.js';

/** PATH used for processes started in the sandbox unless the caller passes an env. */
export const SANDBOX_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface SandboxSpawnOptions {
  /** Exact environment of the command. Default `{ PATH: SANDBOX_PATH }`. */
  env?: NodeJS.ProcessEnv;
  /** Default `['ignore', 'pipe', 'pipe']`. */
  stdio?: StdioOptions;
  /** Working directory inside the sandbox (`nsenter --wd`). Default: the namespace root `/`. */
  cwd?: string;
  /**
   * Start the command with SIGPIPE ignored, as auditd does for its plugins (Node/libuv resets all signal
   * dispositions to default in children). Implemented as `bash -c "trap '' PIPE; exec env -i ENV... cmd args"`,
   * so the pid is still the command's pid and the environment is still exactly `env`.
   */
  ignoreSigpipe?: boolean;
}

export interface ExecOptions {
  /** Kill the command (SIGKILL) and throw after this long. Default 15 s. */
  timeoutMs?: number;
  /** Written to the command's stdin, which is then closed. */
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
}

export interface ExecResult extends ExitInfo {
  stdout: string;
  stderr: string;
}

export interface SyslogEntry {
  /** The datagram as received (without the terminating NUL). */
  raw: string;
  /** `<PRI>` value (facility * 8 + severity), undefined if the message had none. */
  priority: number | undefined;
  /** Program tag, e.g. `auditd` or `audisp-remote`. */
  tag: string | undefined;
  /** pid in `tag[pid]`, when the program used LOG_PID (auditd does, audisp-remote does not). */
  pid: number | undefined;
  /** Message text after `tag: `. */
  message: string;
}

export interface TcpSocketInfo {
  state: string;
  local: string;
  peer: string;
  /** `users:((...))` processes owning the socket (empty for orphaned sockets). */
  users: Array<{ process: string; pid: number; fd: number }>;
}

export interface CreateSandboxOptions {
  /** Do not delete `dir` on destroy (also enabled by env AUDITRELAY_KEEP_SANDBOX=1); its path is printed. */
  keepDir?: boolean;
  /** Deadline for the holder to become ready. Default 15 s. */
  readyTimeoutMs?: number;
}

const HOLDER_SCRIPT = String.raw`
set -eu
sock=$1
cleanup_dir=$2
ip link set lo up
mount -t tmpfs -o mode=0755,size=16m auditrelay-run /run
if [ ! -L /var/run ]; then mount --bind /run /var/run; fi
mkdir /run/.hostdev
mount --rbind /dev /run/.hostdev
mount -t tmpfs -o mode=0755,size=1m auditrelay-dev /dev
for n in null zero full random urandom tty; do
  if [ -e "/run/.hostdev/$n" ]; then : > "/dev/$n"; mount --bind "/run/.hostdev/$n" "/dev/$n"; fi
done
mkdir /dev/pts /dev/shm
if [ -d /run/.hostdev/pts ]; then mount --rbind /run/.hostdev/pts /dev/pts; fi
mount -t tmpfs -o mode=1777,size=16m auditrelay-shm /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
ln -s "$sock" /dev/log
sweep() {
  me=$(readlink /proc/$$/ns/net)
  for d in /proc/[0-9]*; do
    p=\${d#/proc/}
    [ "$p" = "$$" ] && continue
    ns=$(readlink "$d/ns/net" 2>/dev/null) || continue
    if [ "$ns" = "$me" ]; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}
finish() {
  sweep
  if [ -n "$cleanup_dir" ]; then rm -rf -- "$cleanup_dir"; fi
  exit 0
}
trap finish INT TERM HUP
echo ready
while IFS= read -r _; do :; done
finish
`.replaceAll('\\$', '$');

const SYSLOG_RE =
  /^<(\d{1,3})>(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d )?([^\s:[\]]+)(?:\[(\d+)\])?: ?([\s\S]*)$/;

function parseSyslog(raw: string): SyslogEntry {
  const m = SYSLOG_RE.exec(raw);
  if (!m) return { raw, priority: undefined, tag: undefined, pid: undefined, message: raw };
  return {
    raw,
    priority: Number(m[1]),
    tag: m[2],
    pid: m[3] === undefined ? undefined : Number(m[3]),
    message: m[4] ?? '',
  };
}

function sandboxBaseDir(): string {
  const tmp = os.tmpdir();
  // A temp dir under /run or /dev would be hidden inside the sandbox by its private mounts.
  return /^\/(run|var\/run|dev)(\/|$)/.test(tmp) ? '/tmp' : tmp;
}

export class NetnsSandbox {
  private static readonly live = new Set<NetnsSandbox>();

  /** pid of the holder process (= the namespaces' anchor; `nsenter --target`). */
  readonly holderPid: number;
  /** Private host directory for this sandbox (visible at the same path inside); removed by destroy(). */
  readonly dir: string;

  private readonly holder: ChildProcess;
  private readonly holderStderr: string[];
  private readonly tracked = new Set<ChildProcess>();
  private readonly syslogServer: net.Server;
  private readonly syslogEntries: SyslogEntry[];
  private readonly syslogConns: Set<net.Socket>;
  private readonly keepDir: boolean;
  private readonly nsenter: string;
  private readonly bash: string;
  private readonly envBin: string;
  private destroyed = false;

  private constructor(init: {
    holder: ChildProcess;
    holderStderr: string[];
    dir: string;
    syslogServer: net.Server;
    syslogEntries: SyslogEntry[];
    syslogConns: Set<net.Socket>;
    keepDir: boolean;
  }) {
    this.holder = init.holder;
    this.holderPid = init.holder.pid!;
    this.holderStderr = init.holderStderr;
    this.dir = init.dir;
    this.syslogServer = init.syslogServer;
    this.syslogEntries = init.syslogEntries;
    this.syslogConns = init.syslogConns;
    this.keepDir = init.keepDir;
    this.nsenter = requireBinary('nsenter');
    this.bash = requireBinary('bash');
    this.envBin = requireBinary('env');
  }

  static async create(opts: CreateSandboxOptions = {}): Promise<NetnsSandbox> {
    const unshare = requireBinary('unshare');
    const bash = requireBinary('bash');
    requireBinary('nsenter');
    requireBinary('ip');
    const dir = realpathSync(mkdtempSync(path.join(sandboxBaseDir(), 'auditrelay-sbx-')));
    const syslogPath = path.join(dir, 'syslog.sock');
    if (Buffer.byteLength(syslogPath) > 100)
      throw new Error(`sandbox dir path too long for a unix socket: ${dir}`);

    const syslogEntries: SyslogEntry[] = [];
    const syslogConns = new Set<net.Socket>();
    const syslogServer = net.createServer((conn) => {
      syslogConns.add(conn);
      conn.once('close', () => syslogConns.delete(conn));
      // glibc's syslog() falls back to SOCK_STREAM when /dev/log is a stream socket and then terminates every
      // message with a NUL byte.
      let pending = '';
      conn.setEncoding('utf8');
      conn.on('data', (chunk: string) => {
        pending += chunk;
        let nul = pending.indexOf('\0');
        while (nul >= 0) {
          syslogEntries.push(parseSyslog(pending.slice(0, nul).replace(/\n$/, '')));
          pending = pending.slice(nul + 1);
          nul = pending.indexOf('\0');
        }
      });
      conn.on('end', () => {
        if (pending.length > 0) syslogEntries.push(parseSyslog(pending.replace(/\n$/, '')));
        pending = '';
      });
      conn.on('error', () => {});
    });
    await new Promise<void>((resolve, reject) => {
      syslogServer.once('error', reject);
      syslogServer.listen(syslogPath, () => {
        syslogServer.off('error', reject);
        resolve();
      });
    });

    const keepDir = opts.keepDir ?? process.env.AUDITRELAY_KEEP_SANDBOX === '1';
    const holder = spawn(
      unshare,
      [
        '--net',
        '--mount',
        '--propagation',
        'private',
        '--',
        bash,
        '-c',
        HOLDER_SCRIPT,
        'auditrelay-sandbox',
        syslogPath,
        keepDir ? '' : dir, // the holder removes it too, so it goes away even if this process dies
      ],
      // detached: own process group, so a terminal Ctrl-C does not kill the holder before it has swept.
      { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: SANDBOX_PATH }, detached: true },
    );
    const holderStderr: string[] = [];
    holder.stderr?.setEncoding('utf8');
    holder.stderr?.on('data', (chunk: string) => holderStderr.push(chunk));
    holder.stdin?.on('error', () => {});

    const cleanupFailedStart = async (): Promise<void> => {
      holder.stdin?.end();
      if (!hasExited(holder)) await signalAndWait(holder, 'SIGKILL', 5000).catch(() => {});
      for (const conn of syslogConns) conn.destroy();
      syslogServer.close();
      rmSync(dir, { recursive: true, force: true });
    };

    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        const timeoutMs = opts.readyTimeoutMs ?? 15_000;
        const timer = setTimeout(
          () => reject(new Error(`sandbox holder not ready after ${timeoutMs} ms: ${holderStderr.join('')}`)),
          timeoutMs,
        );
        holder.stdout?.setEncoding('utf8');
        holder.stdout?.on('data', (chunk: string) => {
          out += chunk;
          if (out.includes('ready\n')) {
            clearTimeout(timer);
            resolve();
          }
        });
        holder.once('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        holder.once('exit', (code, signal) => {
          clearTimeout(timer);
          reject(
            new Error(
              `sandbox holder exited during setup (code ${code}, signal ${signal}): ${holderStderr.join('').trim()}`,
            ),
          );
        });
      });
    } catch (err) {
      await cleanupFailedStart();
      throw err;
    }

    const sandbox = new NetnsSandbox({
      holder,
      holderStderr,
      dir,
      syslogServer,
      syslogEntries,
      syslogConns,
      keepDir,
    });
    NetnsSandbox.live.add(sandbox);
    return sandbox;
  }

  /** Destroys every sandbox created by this process that is still alive (for afterAll safety nets). */
  static async destroyAll(): Promise<void> {
    await Promise.all([...NetnsSandbox.live].map((s) => s.destroy()));
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** Processes started through this sandbox that have not exited yet. */
  get runningProcesses(): readonly ChildProcess[] {
    return [...this.tracked].filter((c) => !hasExited(c));
  }

  /**
   * Starts `cmd args` inside the namespaces. The returned child is tracked and killed by destroy().
   * `cmd` should be an absolute path.
   */
  spawn(cmd: string, args: readonly string[] = [], opts: SandboxSpawnOptions = {}): ChildProcess {
    if (this.destroyed) throw new Error('sandbox already destroyed');
    const env = opts.env ?? { PATH: SANDBOX_PATH };
    const nsArgs = ['--target', String(this.holderPid), '--net', '--mount'];
    if (opts.cwd !== undefined) nsArgs.push(`--wd=${opts.cwd}`);
    nsArgs.push('--');
    let spawnEnv = env;
    if (opts.ignoreSigpipe) {
      const envArgs = Object.entries(env)
        .filter((e): e is [string, string] => e[1] !== undefined)
        .map(([k, v]) => `${k}=${v}`);
      nsArgs.push(
        this.bash,
        '-c',
        `trap '' PIPE; exec "$@"`,
        'sigpipe-ignored',
        this.envBin,
        '-i',
        ...envArgs,
        cmd,
        ...args,
      );
      spawnEnv = { PATH: SANDBOX_PATH };
    } else {
      nsArgs.push(cmd, ...args);
    }
    const child = spawn(this.nsenter, nsArgs, {
      stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'],
      env: spawnEnv,
    });
    if (child.pid === undefined) {
      // spawn failure is reported asynchronously through 'error'; keep the object so callers see it.
      child.once('error', () => {});
    }
    this.tracked.add(child);
    child.once('exit', () => this.tracked.delete(child));
    return child;
  }

  /** Runs a command inside the sandbox to completion and collects its output (does not throw on non-zero exit). */
  async exec(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    const spawnOpts: SandboxSpawnOptions = {
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    };
    if (opts.env !== undefined) spawnOpts.env = opts.env;
    const child = this.spawn(cmd, args, spawnOpts);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (c: string) => {
      stdout += c;
    });
    child.stderr?.on('data', (c: string) => {
      stderr += c;
    });
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const timeoutMs = opts.timeoutMs ?? 15_000;
    let exit: ExitInfo;
    try {
      exit = await Promise.race([waitForExit(child, timeoutMs), spawnError]);
    } catch (err) {
      await signalAndWait(child, 'SIGKILL', 5000).catch(() => {});
      throw new Error(`sandbox exec ${cmd} ${args.join(' ')} failed: ${(err as Error).message}\n${stderr}`);
    }
    // 'exit' can precede the end of the stdio streams; wait for them to close.
    await Promise.all(
      [child.stdout, child.stderr].map(
        (s) =>
          new Promise<void>((resolve) =>
            s === null || s.closed ? resolve() : s.once('close', () => resolve()),
          ),
      ),
    );
    return { ...exit, stdout, stderr };
  }

  /** Like exec but throws unless the command exits with status 0. */
  async run(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<string> {
    const res = await this.exec(cmd, args, opts);
    if (res.code !== 0) {
      throw new Error(
        `sandbox command failed (code ${res.code}, signal ${res.signal}): ${cmd} ${args.join(' ')}\n${res.stderr}`,
      );
    }
    return res.stdout;
  }

  /**
   * Bind-mounts the host file `hostPath` over `targetPath` inside the sandbox only (e.g. over the fixed
   * /etc/audit/audisp-remote.conf). `targetPath` must already exist (the host's file is hidden, never modified).
   */
  async bindFile(hostPath: string, targetPath: string): Promise<void> {
    await this.run(requireBinary('mount'), ['--bind', hostPath, targetPath]);
  }

  /** Mounts an empty private tmpfs over the existing directory `targetPath` inside the sandbox. */
  async mountTmpfs(targetPath: string, mode = '0755'): Promise<void> {
    await this.run(requireBinary('mount'), [
      '-t',
      'tmpfs',
      '-o',
      `mode=${mode},size=64m`,
      'auditrelay-tmp',
      targetPath,
    ]);
  }

  /** TCP sockets inside the sandbox, from `ss -Htanp` plus an optional ss filter, e.g. `['sport', '=', ':60']`. */
  async tcpSockets(filter: readonly string[] = []): Promise<TcpSocketInfo[]> {
    const out = await this.run(requireBinary('ss'), ['-Htanp', ...filter]);
    return out
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .map((line) => {
        const cols = line.trim().split(/\s+/);
        const users = [...line.matchAll(/\("([^"]*)",pid=(\d+),fd=(\d+)\)/g)].map((m) => ({
          process: m[1] ?? '',
          pid: Number(m[2]),
          fd: Number(m[3]),
        }));
        return { state: cols[0] ?? '', local: cols[3] ?? '', peer: cols[4] ?? '', users };
      });
  }

  /** Processes listening on TCP `port` inside the sandbox. */
  async tcpListeners(port: number): Promise<TcpSocketInfo[]> {
    const all = await this.tcpSockets(['state', 'listening', 'sport', '=', `:${port}`]);
    return all;
  }

  /**
   * Aborts (SOCK_DESTROY, `ss -K`) every established TCP socket whose local port is `localPort`: the kernel sends an
   * RST to the peer. Returns the sockets that were killed. Requires CONFIG_INET_DIAG_DESTROY; throws when the
   * sockets are still there afterwards.
   */
  async resetTcpConnections(localPort: number): Promise<TcpSocketInfo[]> {
    const filter = ['state', 'established', 'sport', '=', `:${localPort}`];
    const before = await this.tcpSockets(filter);
    await this.run(requireBinary('ss'), ['-K', '-Htn', ...filter]);
    const after = await this.tcpSockets(filter);
    const stillThere = after.filter((a) => before.some((b) => b.local === a.local && b.peer === a.peer));
    if (stillThere.length > 0) {
      throw new Error(
        `ss -K did not destroy ${stillThere.length} socket(s) on port ${localPort}; kernel without CONFIG_INET_DIAG_DESTROY?`,
      );
    }
    return before;
  }

  /** Everything written to /dev/log inside this sandbox so far (auditd, audisp-remote, ... diagnostics). */
  syslog(): SyslogEntry[] {
    return [...this.syslogEntries];
  }

  /** Syslog messages formatted one per line, for error messages. */
  syslogText(): string {
    return this.syslogEntries.map((e) => e.raw).join('\n');
  }

  /** Waits until a syslog entry at index >= `fromIndex` matches. Returns it. */
  async waitForSyslog(
    predicate: (entry: SyslogEntry) => boolean,
    opts: { timeoutMs: number; what: string; fromIndex?: number },
  ): Promise<SyslogEntry> {
    return pollUntil(() => this.syslogEntries.slice(opts.fromIndex ?? 0).find(predicate), {
      timeoutMs: opts.timeoutMs,
      what: opts.what,
      diagnostics: () => `syslog of the sandbox:\n${this.syslogText()}`,
    });
  }

  /** Number of syslog entries so far (use as `fromIndex` for waitForSyslog). */
  get syslogCount(): number {
    return this.syslogEntries.length;
  }

  /**
   * Kills every process started through the sandbox (SIGKILL, by pid) and waits for each, then stops the holder
   * (which SIGKILLs anything left in the namespace), closes the syslog socket and removes `dir`. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    NetnsSandbox.live.delete(this);
    const problems: string[] = [];
    await Promise.all(
      [...this.tracked].map((child) =>
        signalAndWait(child, 'SIGKILL', 10_000).catch((err: Error) => problems.push(err.message)),
      ),
    );
    this.holder.stdin?.end();
    try {
      await waitForExit(this.holder, 10_000);
    } catch {
      await signalAndWait(this.holder, 'SIGKILL', 10_000).catch((err: Error) => problems.push(err.message));
    }
    // server.close() waits for open connections; every writer is dead by now, drop whatever is left.
    const closed = new Promise<void>((resolve) => this.syslogServer.close(() => resolve()));
    for (const conn of this.syslogConns) conn.destroy();
    await closed;
    if (this.keepDir) {
      console.warn(`[netns sandbox] kept ${this.dir}`);
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
    if (problems.length > 0) throw new Error(`sandbox destroy: ${problems.join('; ')}`);
  }

  /** Holder stderr (setup errors). */
  holderDiagnostics(): string {
    return this.holderStderr.join('');
  }
}
