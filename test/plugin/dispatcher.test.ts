/**
 * Our agent as a plugin of the REAL auditd (Debian 3.0.9): an aggregator (`local_events = no`,
 * `distribute_network = yes`) launches it from its plugins.d; records sent to that auditd by a
 * client reach our agent through auditd's dispatcher and are forwarded to a second server (our
 * collector). All inside a private network+mount namespace.
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/corpus.js';
import { NetnsSandbox } from '../helpers/netns.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { AUDITD_BIN, startRealAuditd } from '../helpers/real-auditd.js';
import { pollUntil, terminate } from '../helpers/wait.js';

const AUDITD_PORT = 60;
const COLLECTOR_PORT = 61;
const BIN = path.join(REPO_ROOT, 'bin/auditrelay.js');

const available = requireOrSkip({
  suite: 'agent as a plugin of the real auditd dispatcher (Debian 3.0.9)',
  root: true,
  namespaces: true,
  binaries: ['unshare', 'nsenter', 'ip', 'ss', 'mount', AUDITD_BIN],
  files: [path.join(REPO_ROOT, 'dist/src/cli.js')],
});

function lines(file: string): string[] {
  try {
    return readFileSync(file, 'latin1').split('\n').slice(0, -1);
  } catch {
    return [];
  }
}

describe.skipIf(!available)('plugin under the real auditd dispatcher', () => {
  let sandbox: NetnsSandbox | undefined;
  const started: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of started.splice(0)) await terminate(c, 'SIGKILL', 5000).catch(() => {});
    await sandbox?.destroy();
    sandbox = undefined;
  });
  afterAll(() => NetnsSandbox.destroyAll());

  it('records sent to auditd reach our plugin through the dispatcher and are forwarded to a second server', async () => {
    sandbox = await NetnsSandbox.create();
    const dir = sandbox.dir;
    // The second server: our collector.
    const collectorLog = path.join(dir, 'forwarded.log');
    const collector = sandbox.spawn(
      process.execPath,
      [
        BIN,
        'collector',
        '--listen',
        `127.0.0.1:${COLLECTOR_PORT}`,
        '--log',
        collectorLog,
        '--evidence-key-file',
        path.join(dir, 'keys', 'signing.key'),
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    started.push(collector);
    await pollUntil(async () => (await sandbox!.tcpListeners(COLLECTOR_PORT)).length > 0, {
      timeoutMs: 15_000,
      what: 'the collector to listen',
    });

    // Our plugin, registered the way packaging/plugins.d/auditrelay.conf does it.
    const pluginDir = path.join(dir, 'plugins.d');
    mkdirSync(pluginDir, { recursive: true });
    const agentConf = path.join(dir, 'agent.conf');
    const stateFile = path.join(dir, 'agent.state');
    writeFileSync(
      agentConf,
      `remote_server = 127.0.0.1\nport = ${COLLECTOR_PORT}\nreconnect_initial_ms = 50\nstate_file = ${stateFile}\nqueue_dir = ${path.join(dir, 'plugin-queue')}\n`,
    );
    chmodSync(agentConf, 0o640);
    const wrapper = path.join(dir, 'auditrelay-plugin');
    // packaging/auditrelay-plugin with this checkout's paths (auditd gives the plugin no environment).
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
    writeFileSync(path.join(pluginDir, 'auditrelay.conf'), pluginConf);
    chmodSync(path.join(pluginDir, 'auditrelay.conf'), 0o640);

    const auditd = await startRealAuditd(sandbox, {
      port: AUDITD_PORT,
      extraConf: { distribute_network: 'yes', plugin_dir: pluginDir },
    });
    // A client sends records to auditd: our agent, as a network client.
    const clientConf = path.join(dir, 'client.conf');
    writeFileSync(
      clientConf,
      `remote_server = 127.0.0.1\nport = ${AUDITD_PORT}\nqueue_dir = ${path.join(dir, 'client-queue')}\nstate_file = ${path.join(dir, 'client.state')}\n`,
    );
    const client = sandbox.spawn(process.execPath, [BIN, 'agent', '--config', clientConf], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    started.push(client);
    const sent = Array.from(
      { length: 20 },
      (_, i) =>
        `type=USER_CMD msg=audit(1700000000.${100 + i}:${500 + i}): pid=1 uid=0 cmd=dispatcher-test-${i}`,
    );
    client.stdin!.end(`${sent.join('\n')}\n`);
    await auditd.waitForLines(sent.length, 20_000);

    // Through auditd's dispatcher to our plugin, and on to the collector.
    await pollUntil(
      () => lines(collectorLog).filter((l) => l.includes('dispatcher-test-')).length >= sent.length,
      {
        timeoutMs: 30_000,
        what: `${sent.length} forwarded records at the second server`,
        diagnostics: () =>
          `collector log:\n${lines(collectorLog).join('\n')}\nsyslog:\n${sandbox!.syslogText().slice(-3000)}`,
      },
    );
    const forwarded = lines(collectorLog).filter((l) => l.includes('dispatcher-test-'));
    // The dispatcher hands network records to plugins as it received them (possibly with a node= prefix).
    // The plugin's own identity comes last (record identities: its agent id, the queue's record number); the
    // client's hello did not reach auditd's log, so nothing of it is forwarded.
    const id = readFileSync(path.join(dir, 'plugin-queue', 'agent-id'), 'latin1').trim();
    expect(forwarded.map((l) => l.replace(/^node=\S+ /, '').replace(/ rid=(\S+):\d+$/, ' rid=$1'))).toEqual(
      sent.map((r) => `${r} rid=${id}`),
    );

    // auditd stops its plugin with SIGTERM; the plugin drains and exits.
    const plugin = () =>
      readdirSync('/proc')
        .filter((d) => /^\d+$/.test(d))
        .filter((pid) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(agentConf);
          } catch {
            return false;
          }
        });
    expect(plugin()).toHaveLength(1);
    await auditd.stop();
    await pollUntil(() => plugin().length === 0, {
      timeoutMs: 15_000,
      what: 'the plugin to exit after SIGTERM',
    });
  });
});
