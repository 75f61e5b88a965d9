/**
 * Plugin mode's log reaches the operator: the real auditd 3.0.9, started forking as Debian's unit starts it
 * (`auditd` without -n/-f, so the plugin's stderr is /dev/null), launches our plugin from its plugins.d; the
 * server goes away; the failure is in syslog (the sandbox's /dev/log) at warning and error priority, facility
 * daemon, identifier auditrelay with the plugin's pid. A configuration error that keeps the plugin from starting
 * is there too (src/log.ts reportFailure).
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { startForkingAuditd } from '../helpers/forking-auditd.js';
import { NetnsSandbox, type SyslogEntry } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDITD_BIN, auditdConfText, defaultAuditdSettings } from '../helpers/real-auditd.js';
import { pollUntil, terminate } from '../helpers/wait.js';

const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');
const DAEMON = 3;
const WARNING = 4;
const ERR = 3;

const available = requireOrSkip({
  suite: 'plugin mode logs to syslog under the real forking auditd (Debian 3.0.9)',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN],
  files: [
    path.join(REPO_ROOT, 'dist/src/cli.js'),
    path.join(REPO_ROOT, 'native/build/Release/auditrelay_unix.node'),
  ],
});

/** pids of running processes whose command line contains `needle`. */
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

const facility = (e: SyslogEntry) => (e.priority === undefined ? -1 : e.priority >> 3);
const severity = (e: SyslogEntry) => (e.priority === undefined ? -1 : e.priority & 7);

describe.skipIf(!available)('plugin mode: the log goes to syslog', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  /** The plugins.d entry of packaging/, with this checkout's wrapper, and auditd's configuration directory. */
  function setUp(dir: string, agentConf: string): string {
    const pluginDir = path.join(dir, 'plugins.d');
    mkdirSync(pluginDir, { recursive: true });
    const wrapper = path.join(dir, 'auditrelay-plugin');
    const template = readFileSync(path.join(REPO_ROOT, 'packaging/auditrelay-plugin'), 'utf8');
    writeFileSync(
      wrapper,
      template
        .replace(/^NODE=.*$/m, `NODE=${process.execPath}`)
        .replace(/^AUDITRELAY_HOME=.*$/m, `AUDITRELAY_HOME=${REPO_ROOT}`),
    );
    chmodSync(wrapper, 0o755);
    const pluginConf = readFileSync(path.join(REPO_ROOT, 'packaging/plugins.d/auditrelay.conf'), 'utf8')
      .replace('active = no', 'active = yes')
      .replace('path = /usr/lib/auditrelay/auditrelay-plugin', `path = ${wrapper}`)
      .replace('args = --config /etc/audit/audisp-remote.conf', `args = --config ${agentConf}`);
    writeFileSync(path.join(pluginDir, 'auditrelay.conf'), pluginConf, { mode: 0o640 });
    const auditdDir = path.join(dir, 'auditd');
    mkdirSync(auditdDir, { mode: 0o700 });
    const settings = {
      ...defaultAuditdSettings({ port: AUDITD_PORT, dir: auditdDir, nodeName: 'syslog-test' }),
      plugin_dir: pluginDir,
    };
    writeFileSync(path.join(auditdDir, 'auditd.conf'), auditdConfText(settings), { mode: 0o640 });
    return auditdDir;
  }

  it('a lost server is logged at warning and error, facility daemon, as auditrelay[pid]', async () => {
    sandbox = await NetnsSandbox.create();
    const sbx = sandbox;
    const dir = sbx.dir;
    const collector = sbx.spawn(
      process.execPath,
      [BIN, 'collector', '--listen', `127.0.0.1:${COLLECTOR_PORT}`, '--log', path.join(dir, 'forwarded.log')],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    started.push(collector);
    await pollUntil(async () => (await sbx.tcpListeners(COLLECTOR_PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
    });
    const agentConf = path.join(dir, 'agent.conf');
    writeFileSync(
      agentConf,
      `remote_server = 127.0.0.1\nport = ${COLLECTOR_PORT}\nreconnect_initial_ms = 50\nreconnect_max_ms = 200\n` +
        `state_file = ${path.join(dir, 'agent.state')}\nqueue_dir = ${path.join(dir, 'queue')}\n`,
      { mode: 0o640 },
    );
    const auditdDir = setUp(dir, agentConf);
    const auditd = await startForkingAuditd(sbx, [AUDITD_BIN, '-c', auditdDir], '/run/auditd.pid');

    // The plugin starts (its stderr is /dev/null) and says so in syslog, at info.
    const plugin = await pollUntil(() => pidsWith(agentConf)[0], { timeoutMs: 15_000, what: 'the plugin' });
    expect(readlinkSync(`/proc/${plugin}/fd/2`)).toBe('/dev/null'); // as Debian's forking auditd leaves it
    const started1 = await sbx.waitForSyslog(
      (e) => e.tag === 'auditrelay' && /agent starting/.test(e.message),
      {
        timeoutMs: 20_000,
        what: '"agent starting" in syslog',
      },
    );
    expect(started1).toMatchObject({ pid: plugin });
    expect(facility(started1)).toBe(DAEMON);
    expect(severity(started1)).toBe(6);
    // Connected to the collector, then the collector goes away.
    await pollUntil(
      async () =>
        (await sbx.tcpSockets(['state', 'established', 'dport', '=', `:${COLLECTOR_PORT}`])).some((s) =>
          s.users.some((u) => u.pid === plugin),
        ),
      { timeoutMs: 15_000, what: 'the plugin to connect to the collector' },
    );
    const from = sbx.syslogCount;
    await terminate(collector, 'SIGKILL', 5000);

    const ours = (e: SyslogEntry) => e.tag === 'auditrelay' && e.pid === plugin && facility(e) === DAEMON;
    const warning = await sbx.waitForSyslog((e) => ours(e) && severity(e) === WARNING, {
      timeoutMs: 20_000,
      what: 'a warning from the plugin in syslog',
      fromIndex: from,
    });
    expect(warning.message).toMatch(/link to the server lost/);
    // After max_tries_per_record failed reconnections: network_failure_action (stop: an error, and it goes on).
    const error = await sbx.waitForSyslog((e) => ours(e) && severity(e) === ERR, {
      timeoutMs: 20_000,
      what: 'an error from the plugin in syslog',
      fromIndex: from,
    });
    expect(error.message).toMatch(/server unreachable|127\.0\.0\.1/);
    // glibc's syslog() header: `<PRI>Mmm dd hh:mm:ss auditrelay[pid]: `.
    expect(error.raw).toMatch(
      new RegExp(`^<27>[A-Z][a-z]{2} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d auditrelay\\[${plugin}\\]: `),
    );

    await auditd.stop();
    await pollUntil(() => pidsWith(agentConf).length === 0, {
      timeoutMs: 15_000,
      what: 'the plugin to exit',
    });
  });

  it('a configuration error that keeps the plugin from starting is in syslog too', async () => {
    sandbox = await NetnsSandbox.create();
    const sbx = sandbox;
    const agentConf = path.join(sbx.dir, 'agent.conf');
    writeFileSync(agentConf, 'remote_server =\n', { mode: 0o640 }); // Debian's shipped value: an error
    const auditdDir = setUp(sbx.dir, agentConf);
    const auditd = await startForkingAuditd(sbx, [AUDITD_BIN, '-c', auditdDir], '/run/auditd.pid');
    const entry = await sbx.waitForSyslog((e) => e.tag === 'auditrelay' && /config error/.test(e.message), {
      timeoutMs: 20_000,
      what: 'the configuration error in syslog',
    });
    expect(facility(entry)).toBe(DAEMON);
    expect(severity(entry)).toBe(ERR);
    expect(entry.message).toContain(`${agentConf}:1: remote_server`);
    await auditd.stop();
  });
});
