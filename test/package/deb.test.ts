/**
 * The Debian package on a bare Debian 12 (docs/packaging.md): `npm run package`'s script builds the .deb; a fresh
 * debootstrap'd bookworm root without Node (test/package/debian-root.ts, cached) gets it with dpkg; inside a
 * network + mount namespace (NetnsSandbox, whose /dev/log the test serves) and chroot'ed into that root:
 * - `auditrelay` is on PATH and runs with the package's own Node; directories, modes, the inactive plugins.d
 *   file, the units (not enabled), the manual pages are where they belong, and nothing runs;
 * - `auditrelay check-config` on Debian's audisp-remote.conf reports its empty `remote_server` (exit 6), and passes
 *   on a copy with a server set, as an administrator would edit it;
 * - the root's own auditd 3.0.9, started forking as Debian's unit starts it, runs the agent as its plugin
 *   (plugins.d entry switched to `active = yes`, audisp-remote.conf edited): records sent to that auditd reach the
 *   package's collector; the plugin logs to syslog, and a lost server is a warning there;
 * - `dpkg -r` leaves nothing but the conffile (and the directories holding data the test produced), `dpkg -P`
 *   removes that too;
 * - lintian has nothing to say (errors, warnings or information).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { type ForkingAuditd, startForkingAuditd } from '../helpers/forking-auditd.js';
import { NetnsSandbox, SANDBOX_PATH, type SyslogEntry } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';
import { debianRootTarball, extractRoot } from './debian-root.js';

const available = requireOrSkip({
  suite: 'Debian package on a debootstrapped Debian 12 root',
  root: true,
  namespaces: true,
  binaries: [
    'debootstrap',
    'dpkg-deb',
    'dpkg-shlibdeps',
    'lintian',
    'strip',
    'readelf',
    'chroot',
    'tar',
    'zstd',
    'unshare',
    'nsenter',
    'mount',
    'ip',
    'ss',
  ],
  files: [
    path.join(REPO_ROOT, 'dist/scripts/package-deb.js'),
    path.join(REPO_ROOT, 'native/build/Release/auditrelay_unix.node'),
    path.join(REPO_ROOT, 'native/build/Release/auditrelay_gssapi.node'),
  ],
});

const VERSION = (
  JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }
).version;
const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const PLUGIN_NEEDLE = 'agent\0--config\0/etc/audit/audisp-remote.conf';
/** dpkg-query's output format: `${Status}` etc. */
const show = (...fields: string[]) => `-f=${fields.map((f) => `\${${f}}`).join(' ')}`;

function pidsWith(needle: string): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(needle);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/**
 * The CPU-heavy steps (compressing, lintian, unpacking the root) run at a lower priority: the suite runs two test
 * files at a time, and the other one's agents and collectors must not starve.
 */
const NICE = ['-n', '10'];

/** `node dist/scripts/package-deb.js --out DIR`, without blocking the event loop. */
function buildPackage(out: string): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      'nice',
      [...NICE, process.execPath, path.join(REPO_ROOT, 'dist/scripts/package-deb.js'), '--out', out],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, AUDITRELAY_DEB_COMPRESSION: 'gzip:1' },
      },
    );
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('close', (status) => resolve({ status, output }));
  });
}

describe.skipIf(!available)('the Debian package on a bare Debian 12', () => {
  let work = '';
  let deb = '';
  let root = '';
  let sandbox: NetnsSandbox;
  let lintian: Promise<{ status: number | null; output: string }>;
  const started: ChildProcess[] = [];
  const timings: Record<string, number> = {};
  let auditd: ForkingAuditd | undefined;

  const at = (p: string) => path.join(root, p);
  /** A command inside the chroot, inside the sandbox. */
  const inRoot = (cmd: string[], opts: { input?: string; timeoutMs?: number } = {}) =>
    sandbox.exec('/usr/sbin/chroot', [root, ...cmd], {
      env: { PATH: SANDBOX_PATH, LANG: 'C.UTF-8' },
      timeoutMs: opts.timeoutMs ?? 60_000,
      ...(opts.input !== undefined ? { input: opts.input } : {}),
    });
  const time = async <T>(what: string, fn: () => Promise<T> | T): Promise<T> => {
    const t = performance.now();
    try {
      return await fn();
    } finally {
      timings[what] = Math.round((performance.now() - t) / 100) / 10;
    }
  };

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'auditrelay-deb-'));
    // The debootstrapped root (made once, then cached) while the package is built.
    const cache = time('the debootstrap root (cached in .cache/debootstrap)', () => debianRootTarball());
    cache.catch(() => {}); // awaited below; a failure must not surface first as an unhandled rejection
    // The script `npm run package` runs (after its build), into a directory of our own. Compressed with gzip -1
    // instead of the default xz -1: the same package for dpkg and lintian, 10 s instead of 20-40 s of CI.
    const built = await time('build the .deb', () => buildPackage(work));
    expect(built.status, built.output).toBe(0);
    deb = path.join(
      work,
      `auditrelay_${VERSION}_${spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout.trim()}.deb`,
    );
    expect(existsSync(deb), built.output).toBe(true);
    // lintian runs meanwhile (about half a minute); its verdict is the last test.
    lintian = new Promise((resolve) => {
      const child = spawn('nice', [...NICE, 'lintian', '--info', '--fail-on', 'none', deb], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      started.push(child);
      let output = '';
      child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
      child.on('close', (status) => resolve({ status, output }));
    });
    const made = await cache;
    if (made.created) timings['debootstrap (no cache yet)'] = Math.round(made.seconds);
    root = await time('extract the root', () => extractRoot(made.tarball, work));

    sandbox = await NetnsSandbox.create();
    // The chroot sees the sandbox's /dev (its /dev/log is the test's syslog sink, through the sandbox directory,
    // bound at the same path), a fresh /proc and a private /run.
    const mount = (args: string[]) => sandbox.run('/bin/mount', args);
    await sandbox.run('/bin/mkdir', ['-p', at(sandbox.dir)]);
    await mount(['-t', 'proc', 'proc', at('proc')]);
    await mount(['--rbind', '/dev', at('dev')]);
    await mount(['--bind', sandbox.dir, at(sandbox.dir)]);
    await mount(['-t', 'tmpfs', '-o', 'mode=0755,size=16m', 'run', at('run')]);
    writeFileSync(path.join(root, 'tmp', 'auditrelay.deb'), readFileSync(deb));
  }, 30 * 60_000);

  afterAll(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy(); // its mounts (proc, dev, run in the root) go with its mount namespace
    if (work) rmSync(work, { recursive: true, force: true });
    console.log(`[package test] seconds: ${JSON.stringify(timings)}`);
  }, 120_000);

  it('the root is a Debian 12 without Node', async () => {
    expect(readFileSync(at('etc/debian_version'), 'utf8')).toMatch(/^12\./);
    const node = await inRoot(['/bin/sh', '-c', 'command -v node nodejs']);
    expect(node.stdout).toBe('');
    expect(node.code).not.toBe(0);
  });

  it('dpkg installs it; its Depends are there; nothing is started or enabled', async () => {
    const r = await time('dpkg -i', () =>
      inRoot(['dpkg', '-i', '/tmp/auditrelay.deb'], { timeoutMs: 180_000 }),
    );
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const status = await inRoot(['dpkg-query', '-W', show('Status', 'Version', 'Depends'), 'auditrelay']);
    expect(status.stdout).toMatch(new RegExp(`^install ok installed ${VERSION.replaceAll('.', '\\.')} `));
    for (const dep of ['libc6', 'libstdc++6', 'libgcc-s1', 'libgssapi-krb5-2', 'libkrb5-3'])
      expect(status.stdout).toContain(dep);
    expect((await inRoot(['dpkg', '--audit'])).stdout).toBe('');
    // Not enabled, not started.
    expect(existsSync(at('etc/systemd/system/multi-user.target.wants/auditrelay-agent.service'))).toBe(false);
    expect(pidsWith('/usr/lib/auditrelay/')).toEqual([]);
  }, 240_000);

  it('auditrelay is on PATH with its own Node; files, directories and modes are where they belong', async () => {
    expect(readlinkSync(at('usr/bin/auditrelay'))).toBe('../lib/auditrelay/bin/auditrelay');
    const v = await inRoot(['auditrelay', '--version']);
    expect({ code: v.code, stdout: v.stdout, stderr: v.stderr }).toEqual({
      code: 0,
      stdout: `auditrelay ${VERSION}\n`,
      stderr: '',
    });
    const nodeVersion = await inRoot(['/usr/lib/auditrelay/bin/node', '-p', 'process.versions.node']);
    expect(nodeVersion.stdout.trim()).toBe(process.versions.node);
    // Both bindings load there (libgssapi-krb5-2 from the Depends).
    const load = await inRoot([
      '/usr/lib/auditrelay/bin/node',
      '-e',
      "for (const a of ['unix', 'gssapi']) require('/usr/lib/auditrelay/native/build/Release/auditrelay_' + a + '.node')",
    ]);
    expect(load.code, load.stderr).toBe(0);
    // …and the program finds them where it looks (PACKAGE_ROOT/native/build/Release).
    const found = await inRoot([
      '/usr/lib/auditrelay/bin/node',
      '--input-type=module',
      '-e',
      "const u = await import('/usr/lib/auditrelay/dist/src/service/unix-dgram.js'); " +
        "const g = await import('/usr/lib/auditrelay/dist/src/krb5/gssapi.js'); " +
        'console.log(typeof u.loadUnixDgram(), g.isGssapiAvailable())',
    ]);
    expect(found.stdout, found.stderr).toBe('object true\n');
    const mode = (p: string) => {
      const st = statSync(at(p));
      return `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
    };
    expect({
      queue: mode('var/spool/auditrelay'),
      state: mode('var/lib/auditrelay'),
      logs: mode('var/log/auditrelay'),
      etc: mode('etc/auditrelay'),
      plugin: mode('etc/audit/plugins.d/auditrelay.conf'),
      wrapper: mode('usr/lib/auditrelay/auditrelay-plugin'),
    }).toEqual({
      queue: '750 0:0',
      state: '700 0:0',
      logs: '750 0:0',
      etc: '750 0:0',
      plugin: '640 0:0',
      wrapper: '755 0:0',
    });
    // auditd's directories keep auditd's modes.
    expect(mode('etc/audit')).toBe('750 0:0');
    const plugin = readFileSync(at('etc/audit/plugins.d/auditrelay.conf'), 'utf8');
    expect(plugin).toMatch(/^active = no$/m);
    expect(plugin).toMatch(/^path = \/usr\/lib\/auditrelay\/auditrelay-plugin$/m);
    expect(readFileSync(at('var/lib/dpkg/info/auditrelay.conffiles'), 'utf8')).toBe(
      '/etc/audit/plugins.d/auditrelay.conf\n',
    );
    for (const unit of ['auditrelay-agent.service', 'auditrelay-collector.service']) {
      const text = readFileSync(at(`lib/systemd/system/${unit}`), 'utf8');
      const exec = /^ExecStart=(\S+)/m.exec(text)?.[1];
      expect(exec).toBe('/usr/lib/auditrelay/bin/node');
      expect(existsSync(at(exec!.slice(1)))).toBe(true);
    }
    for (const page of [
      'man8/auditrelay.8.gz',
      'man5/auditrelay-agent.conf.5.gz',
      'man5/auditrelay-collector.conf.5.gz',
    ])
      expect(existsSync(at(`usr/share/man/${page}`)), page).toBe(true);
    expect(existsSync(at('usr/share/doc/auditrelay/docs/packaging.md'))).toBe(true);
    expect(existsSync(at('usr/share/doc/auditrelay/copyright'))).toBe(true);
  });

  it("check-config: Debian's audisp-remote.conf has an empty remote_server (exit 6); with a server it passes", async () => {
    const shipped = await inRoot(['auditrelay', 'check-config', '/etc/audit/audisp-remote.conf']);
    expect(shipped.code).toBe(6);
    expect(shipped.stderr).toMatch(
      /^auditrelay: config error: \/etc\/audit\/audisp-remote\.conf:\d+: remote_server: .+\n$/,
    );
    // The administrator's edit, as docs/packaging.md says.
    const conf = at('etc/audit/audisp-remote.conf');
    writeFileSync(
      conf,
      readFileSync(conf, 'utf8')
        .replace(/^remote_server =.*$/m, 'remote_server = 127.0.0.1')
        .replace(/^port = .*$/m, `port = ${COLLECTOR_PORT}`),
    );
    const edited = await inRoot(['auditrelay', 'check-config', '/etc/audit/audisp-remote.conf']);
    expect(edited.code, edited.stderr).toBe(0);
    expect(edited.stderr).toBe('/etc/audit/audisp-remote.conf: configuration is valid\n');
    expect(edited.stdout).toMatch(/^remote_server = 127\.0\.0\.1$/m);
  });

  it("the root's auditd runs the agent as its plugin: records reach the collector; the log is in syslog", async () => {
    // The collector of the package, in the root.
    const collector = sandbox.spawn(
      '/usr/sbin/chroot',
      [
        root,
        'auditrelay',
        'collector',
        '--listen',
        `127.0.0.1:${COLLECTOR_PORT}`,
        '--log',
        '/var/log/auditrelay/received.log',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: SANDBOX_PATH } },
    );
    started.push(collector);
    await pollUntil(async () => (await sandbox.tcpListeners(COLLECTOR_PORT)).length > 0, {
      timeoutMs: 30_000,
      what: 'the collector to listen',
    });
    // auditd as an aggregator (it must not touch the host kernel's audit settings), with our plugin active.
    const auditdConf = at('etc/audit/auditd.conf');
    writeFileSync(
      auditdConf,
      readFileSync(auditdConf, 'utf8')
        .replace(/^local_events = .*$/m, 'local_events = no')
        .replace(/^#*tcp_listen_port = .*$/m, `tcp_listen_port = ${AUDITD_PORT}`)
        .replace(/^distribute_network = .*$/m, 'distribute_network = yes'),
    );
    const pluginConf = at('etc/audit/plugins.d/auditrelay.conf');
    writeFileSync(pluginConf, readFileSync(pluginConf, 'utf8').replace(/^active = no$/m, 'active = yes'));
    expect(readFileSync(at('etc/audit/plugins.d/au-remote.conf'), 'utf8')).toMatch(/^active = no$/m);
    auditd = await time('auditd starts the plugin', async () => {
      const a = await startForkingAuditd(
        sandbox,
        ['/usr/sbin/chroot', root, '/sbin/auditd'],
        at('run/auditd.pid'),
      );
      await pollUntil(() => pidsWith(PLUGIN_NEEDLE).length === 1, { timeoutMs: 30_000, what: 'the plugin' });
      return a;
    });
    const plugin = pidsWith(PLUGIN_NEEDLE)[0]!;
    const ours = (e: SyslogEntry) =>
      e.tag === 'auditrelay' && e.pid === plugin && e.priority !== undefined && e.priority >> 3 === 3;
    await sandbox.waitForSyslog((e) => ours(e) && /agent starting/.test(e.message), {
      timeoutMs: 30_000,
      what: 'the plugin saying it starts, in syslog',
    });

    // A client sends records to that auditd: the package's agent, reading stdin.
    writeFileSync(
      at('tmp/client.conf'),
      `remote_server = 127.0.0.1\nport = ${AUDITD_PORT}\nqueue_dir = /root/client-queue\nstate_file = /root/client.state\n`,
    );
    chmodSync(at('tmp/client.conf'), 0o640);
    const sent = Array.from(
      { length: 20 },
      (_, i) =>
        `type=USER_CMD msg=audit(1700000000.${100 + i}:${700 + i}): pid=1 uid=0 cmd=package-test-${i}`,
    );
    const client = await inRoot(['auditrelay', 'agent', '--config', '/tmp/client.conf'], {
      input: `${sent.join('\n')}\n`,
      timeoutMs: 60_000,
    });
    expect(client.code, client.stderr).toBe(0);
    const received = () => {
      try {
        return readFileSync(at('var/log/auditrelay/received.log'), 'latin1')
          .split('\n')
          .filter((l) => l.includes('package-test-'))
          .map((l) => l.replace(/^node=\S+ /, ''));
      } catch {
        return [];
      }
    };
    await pollUntil(() => received().length >= sent.length, {
      timeoutMs: 30_000,
      what: `${sent.length} records at the collector, through auditd and the plugin`,
      diagnostics: () => `received:\n${received().join('\n')}\nsyslog:\n${sandbox.syslogText().slice(-3000)}`,
    });
    // Our collector adds each record's identity (` rid=<agent>:<number>`, docs/protocol.md); the rest is as sent.
    expect(
      received().every((l) => / rid=[a-z2-7]{26}:\d+$/.test(l)),
      received().join('\n'),
    ).toBe(true);
    expect(received().map((l) => l.replace(/ rid=[a-z2-7]{26}:\d+$/, ''))).toEqual(sent);

    // The server goes away: a warning in syslog.
    const from = sandbox.syslogCount;
    await terminate(collector, 'SIGKILL', 5000);
    const warning = await sandbox.waitForSyslog((e) => ours(e) && (e.priority! & 7) === 4, {
      timeoutMs: 30_000,
      what: 'a warning from the plugin in syslog',
      fromIndex: from,
    });
    expect(warning.message).toMatch(/link to the server lost/);

    await auditd.stop();
    await pollUntil(() => pidsWith(PLUGIN_NEEDLE).length === 0, {
      timeoutMs: 30_000,
      what: 'the plugin to exit',
    });
  }, 240_000);

  it('dpkg -r leaves only the conffile (and the data the test produced); dpkg -P removes it', async () => {
    const files = spawnSync('dpkg-deb', ['-c', deb], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter((l) => l)
      .map((l) => /\.(\/\S*)(?: -> .*)?$/.exec(l)?.[1] ?? '')
      .map((p) => (p.length > 1 ? p.replace(/\/$/, '') : p))
      .filter((p) => p && p !== '/');
    const removal = await time('dpkg -r', () => inRoot(['dpkg', '-r', 'auditrelay'], { timeoutMs: 120_000 }));
    expect(removal.code, `${removal.stdout}\n${removal.stderr}`).toBe(0);
    // The plugin is still active in the conffile: the administrator is told.
    expect(removal.stderr).toContain('/etc/audit/plugins.d/auditrelay.conf is active');
    const status = await inRoot(['dpkg-query', '-W', show('Status'), 'auditrelay']);
    expect(status.stdout).toBe('deinstall ok config-files');
    const exists = (p: string) => {
      try {
        lstatSync(at(p.slice(1)));
        return true;
      } catch {
        return false;
      }
    };
    const left = files.filter(exists);
    // Directories shared with other packages (/etc, /usr/bin, …) stay, as do the conffile and the directories
    // holding data: the collector's log, its evidence signing key (created at its first start), and the records
    // the plugin could not deliver after the collector was killed (auditd's own DAEMON_* records of the client's
    // disconnection and of its stop), kept in queue_dir.
    const shared = left.filter((p) => !p.includes('auditrelay'));
    const withData = ['/var/log/auditrelay', '/var/lib/auditrelay', '/var/spool/auditrelay'].filter(
      (d) => readdirSync(at(d.slice(1))).length > 0,
    );
    expect(withData).toContain('/var/log/auditrelay');
    expect(withData).toContain('/var/lib/auditrelay');
    expect(left.filter((p) => !shared.includes(p)).sort()).toEqual(
      ['/etc/audit/plugins.d/auditrelay.conf', ...withData].sort(),
    );
    // The log and the evidence kept beside it (docs/evidence.md).
    expect(readdirSync(at('var/log/auditrelay')).sort()).toEqual(['received.log', 'received.log.evidence']);
    const purge = await time('dpkg -P', () => inRoot(['dpkg', '-P', 'auditrelay'], { timeoutMs: 120_000 }));
    expect(purge.code, `${purge.stdout}\n${purge.stderr}`).toBe(0);
    for (const d of withData) expect(purge.stderr).toContain(`${d} is not empty and was kept`);
    expect(exists('/etc/audit/plugins.d/auditrelay.conf')).toBe(false);
    expect((await inRoot(['dpkg-query', '-W', show('Status'), 'auditrelay'])).stdout).toBe('');
    expect(
      files
        .filter(exists)
        .filter((p) => p.includes('auditrelay'))
        .sort(),
    ).toEqual(withData.sort());
  }, 300_000);

  // lintian takes 20-40 s on a quiet machine; at its lower priority, beside the rest of the suite, over a minute.
  it(
    'lintian reports nothing (errors, warnings, information)',
    async () => {
      const r = await time('lintian (overlapping the tests above)', () => lintian);
      const findings = r.output.split('\n').filter((l) => /^[EWIX]: /.test(l));
      expect(findings, r.output).toEqual([]);
      expect(r.status).toBe(0);
    },
    10 * 60_000,
  );
});
