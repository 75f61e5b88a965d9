/**
 * A throwaway MIT Kerberos realm for tests: database, KDC and keytabs in a temporary directory, the KDC on a
 * loopback port, everything selected through environment variables (KRB5_CONFIG, KRB5_KDC_PROFILE, ...). Nothing
 * under /etc is read or changed, and no root is needed.
 *
 *   const kdc = await startKdc();
 *   const keytab = await kdc.addPrincipal('auditd/localhost');
 *   // child processes: spawn(cmd, args, { env: { ...process.env, ...kdc.env } })
 *   // in-process (the GSS binding reads KRB5_CONFIG): const restore = kdc.applyToProcess(); ... restore();
 *   await kdc.stop();
 *
 * Binaries (Debian): krb5kdc, kdb5_util (krb5-kdc), kadmin.local (krb5-admin-server), kinit (krb5-user).
 *
 * Port choice: krb5kdc binds its sockets with SO_REUSEPORT, so it does NOT fail when the port is already taken: it
 * shares it and requests then land at random on either process. So the port is probed (TCP and UDP, loopback and
 * wildcard, binds without SO_REUSEPORT) before starting, and after start-up the harness checks in /proc that every
 * socket on that port belongs to our KDC, retrying with another port otherwise.
 *
 * Inside a network namespace (`namespace: sandbox`, test/helpers/netns.ts) krb5kdc and the readiness kinit run in
 * the sandbox (its loopback is private, so the port is free by construction: default 88); kadmin.local works on
 * the database files and runs here. `stopServer()`/`startServer()` take the KDC down and back on the same port
 * without touching the realm (for "KDC unreachable" tests).
 */
import { type ChildProcess, execFile, type StdioOptions, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { findBinary } from './prereq.js';

const execFileAsync = promisify(execFile);

/** Executables the harness needs, for requireOrSkip({ binaries: KDC_BINARIES }). */
export const KDC_BINARIES = ['krb5kdc', 'kdb5_util', 'kadmin.local', 'kinit'] as const;

/** Debian package of each binary, for messages. */
export const KDC_PACKAGES: Record<(typeof KDC_BINARIES)[number], string> = {
  krb5kdc: 'krb5-kdc',
  kdb5_util: 'krb5-kdc',
  'kadmin.local': 'krb5-admin-server',
  kinit: 'krb5-user',
};

/** Where krb5kdc and kinit run when not in this process's network namespace (NetnsSandbox fits). */
export interface KdcNamespace {
  spawn(
    cmd: string,
    args: readonly string[],
    opts: { env: NodeJS.ProcessEnv; stdio: StdioOptions },
  ): ChildProcess;
  exec(
    cmd: string,
    args: readonly string[],
    opts: { env: NodeJS.ProcessEnv; timeoutMs: number },
  ): Promise<{ code: number | null; stderr: string }>;
}

export interface KdcOptions {
  /** Realm name. Default TEST.REALM. */
  realm?: string;
  /** Host name used in host-based service names and mapped to the realm. Default localhost. */
  hostname?: string;
  /** Realm-wide maximum ticket life (kdc.conf max_life), e.g. '10m'. Default 24h. */
  maxLife?: string;
  /** Keep the temporary directory after stop() (also: AUDITRELAY_KEEP_KDC=1). */
  keep?: boolean;
  /** Deadline for the KDC to answer a kinit after it was spawned. Default 10 s. */
  startTimeoutMs?: number;
  /** Run krb5kdc (and the readiness kinit) in this namespace, e.g. a NetnsSandbox. */
  namespace?: KdcNamespace;
  /** Port; default random free one, or 88 inside a namespace. */
  port?: number;
}

export interface PrincipalOptions {
  /** Per-principal maximum ticket life (addprinc -maxlife), e.g. '5m'. */
  maxLife?: string;
  /** Keytab file to write; default `<dir>/<name with / and @ replaced>.keytab`. */
  keytab?: string;
}

export interface Kdc {
  realm: string;
  hostname: string;
  /** Temporary directory holding the database, configuration, keytabs and logs. */
  dir: string;
  port: number;
  pid: number;
  /** Path of the generated krb5.conf (also env.KRB5_CONFIG). */
  krb5Conf: string;
  /**
   * Only the Kerberos variables; merge with process.env for children. KRB5CCNAME, KRB5_KTNAME and
   * KRB5_CLIENT_KTNAME point at files that do not exist, so anything relying on the default ccache or keytab
   * instead of an explicit one fails visibly.
   */
  env: Record<string, string>;
  /** Milliseconds from spawning krb5kdc to the first successful kinit. */
  startupMs: number;
  /** Creates `name` (realm appended when missing) with a random key and exports it; returns the keytab path. */
  addPrincipal(name: string, opts?: PrincipalOptions): Promise<string>;
  /** Gives `name` a new random key (kvno + 1) and writes it to a new keytab; earlier keytabs become stale. */
  rotateKey(name: string, keytab?: string): Promise<string>;
  /** Runs one kadmin.local query and returns its output. */
  kadmin(query: string): Promise<string>;
  /** Full principal name (`name@REALM` unless name already has a realm). */
  principal(name: string): string;
  /** Sets this realm's variables in process.env (for the in-process GSS binding); returns a function undoing it. */
  applyToProcess(): () => void;
  /** The KDC's log, for diagnostics. */
  log(): Promise<string>;
  /** Kills the KDC (SIGTERM, then SIGKILL after 5 s), waits for it, removes the directory unless kept. */
  stop(): Promise<void>;
  /** Takes the KDC process down; the realm, its files and the port stay (clients get "Cannot contact any KDC"). */
  stopServer(): Promise<void>;
  /** Starts the KDC again on the same port after stopServer(), and waits until it answers. */
  startServer(): Promise<void>;
}

/** True when nothing is bound to `port` on TCP or UDP, loopback or wildcard (binds without SO_REUSEPORT). */
export async function portIsFree(port: number): Promise<boolean> {
  const tcp = (host: string) =>
    new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
    });
  const udp = (host: string) =>
    new Promise<boolean>((resolve) => {
      const socket = dgram.createSocket({ type: 'udp4', reuseAddr: false });
      socket.once('error', () => {
        socket.close();
        resolve(false);
      });
      socket.bind(port, host, () => socket.close(() => resolve(true)));
    });
  for (const host of ['127.0.0.1', '0.0.0.0']) {
    if (!(await tcp(host)) || !(await udp(host))) return false;
  }
  return true;
}

/** A free port in [20000, 32000), below Linux's default ephemeral range (32768-60999). */
async function pickPort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = randomInt(20000, 32000);
    if (await portIsFree(port)) return port;
  }
  throw new Error('startKdc: no free loopback port found in [20000, 32000) after 50 tries');
}

/** Socket inodes bound to `port`: TCP listeners and UDP sockets, IPv4 and IPv6. */
async function socketInodesOnPort(port: number): Promise<{ tcp: Set<string>; udp: Set<string> }> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const result = { tcp: new Set<string>(), udp: new Set<string>() };
  for (const [file, kind] of [
    ['/proc/net/tcp', 'tcp'],
    ['/proc/net/tcp6', 'tcp'],
    ['/proc/net/udp', 'udp'],
    ['/proc/net/udp6', 'udp'],
  ] as const) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const local = fields[1];
      const state = fields[3];
      const inode = fields[9];
      if (local === undefined || inode === undefined || !local.endsWith(`:${hexPort}`)) continue;
      if (kind === 'tcp' && state !== '0A') continue; // LISTEN only; accepted connections share the port
      result[kind].add(inode);
    }
  }
  return result;
}

async function socketInodesOfPid(pid: number): Promise<Set<string>> {
  const inodes = new Set<string>();
  const fdDir = `/proc/${pid}/fd`;
  for (const fd of await readdir(fdDir)) {
    try {
      const target = await readlink(path.join(fdDir, fd));
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m?.[1]) inodes.add(m[1]);
    } catch {
      // fd closed meanwhile
    }
  }
  return inodes;
}

/** undefined when process `pid` owns the port alone (TCP listener + UDP socket), else what is wrong. */
export async function checkPortOwnership(port: number, pid: number): Promise<string | undefined> {
  const onPort = await socketInodesOnPort(port);
  const ours = await socketInodesOfPid(pid);
  if (onPort.tcp.size === 0 || onPort.udp.size === 0) {
    return `expected a TCP listener and a UDP socket on port ${port}, found ${onPort.tcp.size} and ${onPort.udp.size}`;
  }
  const foreign = [...onPort.tcp, ...onPort.udp].filter((inode) => !ours.has(inode));
  if (foreign.length > 0) {
    return `port ${port} is shared with another process (socket inodes ${foreign.join(', ')})`;
  }
  return undefined;
}

function krb5Conf(realm: string, hostname: string, port: number): string {
  return `[libdefaults]
  default_realm = ${realm}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  # host-based names: no reverse DNS, no canonicalisation, no search-domain qualification of short names
  rdns = false
  dns_canonicalize_hostname = false
  qualify_shortname = ""
  ignore_acceptor_hostname = false
  forwardable = false
  proxiable = false

[realms]
  ${realm} = {
    kdc = 127.0.0.1:${port}
  }

[domain_realm]
  ${hostname} = ${realm}
  .${hostname} = ${realm}
`;
}

function kdcConf(realm: string, dir: string, port: number, maxLife: string): string {
  return `[kdcdefaults]
  kdc_listen = 127.0.0.1:${port}
  kdc_tcp_listen = 127.0.0.1:${port}

[realms]
  ${realm} = {
    database_name = ${dir}/principal
    key_stash_file = ${dir}/stash
    acl_file = ${dir}/kadm5.acl
    max_life = ${maxLife}
    max_renewable_life = 0
  }

[logging]
  kdc = FILE:${dir}/kdc.log
  admin_server = FILE:${dir}/kadmin.log
  default = FILE:${dir}/krb5lib.log
`;
}

function binary(name: string): string {
  const found = findBinary(name);
  if (found === undefined) {
    const pkg = KDC_PACKAGES[name as keyof typeof KDC_PACKAGES] ?? 'the MIT krb5 packages';
    throw new Error(`startKdc: ${name} not found (sudo apt-get install ${pkg})`);
  }
  return found;
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  if (await waitForExit(child, 5000)) return;
  child.kill('SIGKILL');
  if (!(await waitForExit(child, 5000))) {
    throw new Error(`krb5kdc pid ${child.pid} did not die after SIGKILL`);
  }
}

export async function startKdc(opts: KdcOptions = {}): Promise<Kdc> {
  const realm = opts.realm ?? 'TEST.REALM';
  const hostname = opts.hostname ?? 'localhost';
  const keep = opts.keep ?? process.env.AUDITRELAY_KEEP_KDC === '1';
  const startTimeoutMs = opts.startTimeoutMs ?? 10_000;
  const maxLife = opts.maxLife ?? '24h';
  const bins = {
    krb5kdc: binary('krb5kdc'),
    kdb5_util: binary('kdb5_util'),
    kadmin: binary('kadmin.local'),
    kinit: binary('kinit'),
  };

  const dir = await mkdtemp(path.join(os.tmpdir(), 'auditrelay-kdc-'));
  const env: Record<string, string> = {
    KRB5_CONFIG: path.join(dir, 'krb5.conf'),
    KRB5_KDC_PROFILE: path.join(dir, 'kdc.conf'),
    KRB5CCNAME: `FILE:${path.join(dir, 'default.ccache')}`,
    KRB5_KTNAME: `FILE:${path.join(dir, 'default.keytab')}`,
    KRB5_CLIENT_KTNAME: `FILE:${path.join(dir, 'default-client.keytab')}`,
    KRB5RCACHEDIR: dir,
    KRB5RCACHENAME: `file2:${path.join(dir, 'default.rcache')}`,
  };
  const childEnv = () => ({ ...process.env, ...env });
  const principal = (name: string) => (name.includes('@') ? name : `${name}@${realm}`);
  const kadmin = async (query: string): Promise<string> => {
    try {
      const { stdout, stderr } = await execFileAsync(bins.kadmin, ['-r', realm, '-q', query], {
        env: childEnv(),
        timeout: 30_000,
      });
      // kadmin.local exits 0 even when the query fails; its errors go to stderr
      const errors = stderr
        .split('\n')
        .filter((l) => l.trim() !== '' && !/^Authenticating as principal|^No policy specified/.test(l));
      if (errors.length > 0) throw new Error(errors.join('\n'));
      return stdout;
    } catch (err) {
      throw new Error(`kadmin.local -q '${query}' failed: ${(err as Error).message}`);
    }
  };
  const keytabPath = (name: string, suffix = '') =>
    path.join(dir, `${principal(name).replace(/[/@]/g, '_')}${suffix}.keytab`);

  let child: ChildProcess | undefined;
  const onProcessExit = () => child?.kill('SIGKILL');
  const fail = async (err: unknown): Promise<never> => {
    if (child) await killAndWait(child).catch(() => undefined);
    process.off('exit', onProcessExit);
    if (!keep) await rm(dir, { recursive: true, force: true });
    throw err;
  };

  try {
    await writeFile(path.join(dir, 'kadm5.acl'), '');
    // kdb5_util and kadmin.local only need the database location; the port is filled in when the KDC starts.
    await writeConf(dir, 'krb5.conf', krb5Conf(realm, hostname, 1));
    await writeConf(dir, 'kdc.conf', kdcConf(realm, dir, 1, maxLife));
    await execFileAsync(bins.kdb5_util, ['create', '-s', '-P', 'masterpw', '-r', realm], {
      env: childEnv(),
      timeout: 30_000,
    });
    const probeKeytab = keytabPath('kdcprobe');
    await kadmin(`addprinc -randkey ${principal('kdcprobe')}`);
    await kadmin(`ktadd -k ${probeKeytab} ${principal('kdcprobe')}`);

    const ns = opts.namespace;
    /** Spawns krb5kdc on `port` and waits until a kinit from the probe keytab succeeds. */
    const launch = async (port: number): Promise<{ kdc: ChildProcess; startupMs: number }> => {
      const started = performance.now();
      const args = ['-n', '-r', realm, '-P', path.join(dir, 'kdc.pid')];
      const kdc = ns
        ? ns.spawn(bins.krb5kdc, args, { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] })
        : spawn(bins.krb5kdc, args, { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
      child = kdc;
      process.once('exit', onProcessExit);
      let stderr = '';
      kdc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
        stderr += chunk;
      });
      let spawnError: Error | undefined;
      kdc.once('error', (e) => {
        spawnError = e;
      });
      const kinitArgs = ['-k', '-t', probeKeytab, principal('kdcprobe')];
      const kinitEnv = { ...childEnv(), KRB5CCNAME: `FILE:${path.join(dir, 'probe.ccache')}` };
      const kinit = async (): Promise<string | undefined> => {
        if (ns) {
          const r = await ns.exec(bins.kinit, kinitArgs, { env: kinitEnv, timeoutMs: 5000 });
          return r.code === 0 ? undefined : r.stderr.trim() || `kinit exited with ${r.code}`;
        }
        try {
          await execFileAsync(bins.kinit, kinitArgs, { env: kinitEnv, timeout: 5000 });
          return undefined;
        } catch (e) {
          return ((e as { stderr?: string }).stderr ?? (e as Error).message).trim();
        }
      };

      // Deterministic readiness: a kinit from a keytab succeeds, within a deadline.
      const deadline = Date.now() + startTimeoutMs;
      for (;;) {
        if (kdc.exitCode !== null || kdc.signalCode !== null) {
          throw new Error(
            `krb5kdc exited during start-up (code ${kdc.exitCode}, signal ${kdc.signalCode}): ${stderr.trim()}`,
          );
        }
        if (spawnError) throw new Error(`cannot spawn krb5kdc: ${spawnError.message}`);
        const kinitError = await kinit();
        if (kinitError === undefined) break;
        if (Date.now() >= deadline) {
          throw new Error(
            `krb5kdc did not answer within ${startTimeoutMs} ms on 127.0.0.1:${port}; last kinit error: ` +
              `${kinitError}; krb5kdc stderr: ${stderr.trim()}`,
          );
        }
        await delay(25);
      }
      return { kdc, startupMs: performance.now() - started };
    };

    let lastProblem = '';
    for (let attempt = 1; attempt <= 5; attempt++) {
      // A fresh network namespace has every port free: no probing, no sharing possible.
      const port = ns ? (opts.port ?? 88) : (opts.port ?? (await pickPort()));
      await writeConf(dir, 'krb5.conf', krb5Conf(realm, hostname, port));
      await writeConf(dir, 'kdc.conf', kdcConf(realm, dir, port, maxLife));
      let { kdc, startupMs } = await launch(port);

      const problem = ns ? undefined : await checkPortOwnership(port, kdc.pid!);
      if (problem !== undefined) {
        lastProblem = problem;
        await killAndWait(kdc);
        process.off('exit', onProcessExit);
        child = undefined;
        if (opts.port !== undefined) break;
        continue;
      }

      const kdcHandle: Kdc = {
        realm,
        hostname,
        dir,
        port,
        pid: kdc.pid!,
        krb5Conf: env.KRB5_CONFIG!,
        env,
        startupMs,
        principal,
        kadmin,
        async addPrincipal(name, popts = {}) {
          const full = principal(name);
          const maxLife = popts.maxLife ? ` -maxlife "${popts.maxLife}"` : '';
          await kadmin(`addprinc -randkey${maxLife} ${full}`);
          const keytab = popts.keytab ?? keytabPath(name);
          await kadmin(`ktadd -k ${keytab} ${full}`);
          return keytab;
        },
        async rotateKey(name, keytab) {
          const full = principal(name);
          const target = keytab ?? keytabPath(name, `-${Date.now()}-${randomInt(1e6)}`);
          await kadmin(`ktadd -k ${target} ${full}`);
          return target;
        },
        applyToProcess() {
          const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
          Object.assign(process.env, env);
          return () => {
            for (const [k, v] of Object.entries(saved)) {
              if (v === undefined) delete process.env[k];
              else process.env[k] = v;
            }
          };
        },
        async log() {
          const file = path.join(dir, 'kdc.log');
          return existsSync(file) ? readFile(file, 'utf8') : '';
        },
        async stop() {
          await killAndWait(kdc);
          process.off('exit', onProcessExit);
          if (!keep) await rm(dir, { recursive: true, force: true });
        },
        async stopServer() {
          await killAndWait(kdc);
          process.off('exit', onProcessExit);
        },
        async startServer() {
          if (kdc.exitCode === null && kdc.signalCode === null) throw new Error('the KDC is running');
          ({ kdc, startupMs } = await launch(port));
          kdcHandle.pid = kdc.pid!;
        },
      };
      return kdcHandle;
    }
    throw new Error(`startKdc: gave up after 5 ports; last problem: ${lastProblem}`);
  } catch (err) {
    return fail(err);
  }
}

async function writeConf(dir: string, name: string, text: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, text);
  return file;
}
