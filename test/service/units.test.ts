/**
 * The systemd units in packaging/systemd: `systemd-analyze verify` (syntax, known directives, executables),
 * `systemd-analyze security --offline` (exposure level), and the directives docs/service.md promises.
 *
 * `verify` fails when an Exec*= binary does not exist. The units name the Debian package's Node runtime,
 * /usr/lib/auditrelay/bin/node (UNIT_NODE); the test copies each
 * unit to a temporary directory and replaces that path by the node running the tests (process.execPath),
 * leaving everything else — including /usr/bin/auditrelay, which verify does not check because it is an
 * argument — unchanged. systemd is not started: only the analyzer runs.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, signalAndWait, terminate } from '../helpers/wait.js';

const REPO = path.resolve(import.meta.dirname, '..', '..');
const UNITS = ['auditrelay-agent.service', 'auditrelay-collector.service'];
const MAX_EXPOSURE = 2.5;
/** The Node runtime of the Debian package (docs/packaging.md), named by ExecStart. */
const UNIT_NODE = '/usr/lib/auditrelay/bin/node';

/** `Key=value` lines per section; repeated keys keep every value. */
function parseUnit(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    const key = `${section}.${line.slice(0, eq)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

const unitText = (name: string) => readFileSync(path.join(REPO, 'packaging', 'systemd', name), 'utf8');

describe('systemd units: directives', () => {
  for (const name of UNITS) {
    it(`${name}: Type=notify with a watchdog, restarts, and the hardening docs/service.md describes`, () => {
      const u = parseUnit(unitText(name));
      const one = (k: string) => {
        const v = u.get(`Service.${k}`);
        expect(v, `${name}: ${k}`).toBeDefined();
        return v!.at(-1)!;
      };
      expect(one('Type')).toBe('notify');
      // The main process sends its notifications itself (src/service/notify.ts, native binding).
      expect(one('NotifyAccess')).toBe('main');
      // The journal files the log under auditrelay with the priorities of its <N> prefixes (src/log.ts).
      expect(one('SyslogIdentifier')).toBe('auditrelay');
      expect(one('SyslogFacility')).toBe('daemon');
      expect(one('SyslogLevelPrefix')).toBe('yes');
      expect(Number.parseInt(one('WatchdogSec'), 10)).toBeGreaterThan(0);
      expect(one('Restart')).toBe('on-failure');
      expect(one('RestartPreventExitStatus').split(' ')).toEqual(['2', '6']);
      expect(one('ExecStart')).toMatch(
        /^\/usr\/lib\/auditrelay\/bin\/node --jitless --no-expose-wasm .*\/usr\/lib\/auditrelay\/bin\/auditrelay\.js (agent|collector) --config /,
      );
      expect(one('MemoryDenyWriteExecute')).toBe('yes');
      for (const k of [
        'NoNewPrivileges',
        'ProtectHome',
        'PrivateTmp',
        'PrivateDevices',
        'LockPersonality',
        'ProtectKernelTunables',
        'ProtectKernelModules',
        'ProtectKernelLogs',
        'ProtectControlGroups',
        'RestrictNamespaces',
        'RestrictRealtime',
        'RestrictSUIDSGID',
      ])
        expect(one(k), `${name}: ${k}`).toBe('yes');
      expect(one('ProtectSystem')).toBe('strict');
      expect(one('RestrictAddressFamilies').split(' ').sort()).toEqual(
        ['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX'].sort(),
      );
      expect(u.get('Service.SystemCallFilter')?.[0]).toBe('@system-service');
      expect(one('CapabilityBoundingSet')).toBe(name.includes('agent') ? '' : 'CAP_NET_BIND_SERVICE');
      expect(u.get('Install.WantedBy')).toEqual(['multi-user.target']);
    });
  }

  it('the agent may write exactly its queue, state and runtime directories', () => {
    const u = parseUnit(unitText('auditrelay-agent.service'));
    expect(u.get('Service.ReadWritePaths')).toEqual(['/var/spool/auditrelay']);
    expect(u.get('Service.StateDirectory')).toEqual(['auditrelay']);
    expect(u.get('Service.RuntimeDirectory')).toEqual(['auditrelay']);
    expect(u.get('Service.ExecStartPre')).toEqual(['+/bin/mkdir -p -m 0700 /var/spool/auditrelay']);
  });
});

const available = requireOrSkip({ suite: 'systemd units (systemd-analyze)', binaries: ['systemd-analyze'] });

describe.skipIf(!available)('systemd units: systemd-analyze', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'auditrelay-units-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const analyze = findBinary('systemd-analyze') ?? 'systemd-analyze';

  /** The unit with the package's Node replaced by the node running the tests. */
  function copy(name: string): string {
    const file = path.join(dir, name);
    writeFileSync(file, unitText(name).replaceAll(`${UNIT_NODE} `, `${process.execPath} `));
    return file;
  }

  for (const name of UNITS) {
    it(`${name}: systemd-analyze verify reports nothing`, () => {
      const file = copy(name);
      const r = spawnSync(analyze, ['verify', '--man=no', '--generators=no', file], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      // verify exits 0 for unknown directives and bad values too (it "ignores" them): any output is a finding.
      expect({ status: r.status, stdout: r.stdout.trim(), stderr: r.stderr.trim() }).toEqual({
        status: 0,
        stdout: '',
        stderr: '',
      });
    });

    it(`${name}: systemd-analyze security rates it at most ${MAX_EXPOSURE}`, () => {
      const file = copy(name);
      const r = spawnSync(analyze, ['security', '--offline=true', '--no-pager', file], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(r.stdout);
      expect(m, `${r.stdout}\n${r.stderr}`).not.toBeNull();
      expect(Number(m![1])).toBeLessThanOrEqual(MAX_EXPOSURE);
    });
  }

  it('a unit with a mistake is reported (the check is not vacuous)', () => {
    const file = path.join(dir, 'broken.service');
    writeFileSync(file, unitText('auditrelay-agent.service').replace('Type=notify', 'Type=notfy'));
    const r = spawnSync(analyze, ['verify', '--man=no', '--generators=no', file], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/Failed to parse service type/);
  });
});

/** The unit's ExecStart as argv, with the repository's entry point instead of the installed one. */
function execStart(name: string): string[] {
  const line = parseUnit(unitText(name)).get('Service.ExecStart')!.at(-1)!;
  return line
    .split(' ')
    .map((a) => (a === UNIT_NODE ? process.execPath : a))
    .map((a) =>
      a === '/usr/lib/auditrelay/bin/auditrelay.js' ? path.join(REPO, 'bin', 'auditrelay.js') : a,
    );
}

function requireBuild(): void {
  if (!existsSync(path.join(REPO, 'dist', 'src', 'cli.js')))
    throw new Error('dist/src/cli.js is missing: run `npm run build` before this test');
}

describe('the ExecStart command line', () => {
  it("node with the unit's flags loads the CLI, and prints no warning", () => {
    requireBuild();
    const argv = execStart('auditrelay-agent.service');
    const cmd = argv.indexOf('agent');
    const r = spawnSync(argv[0]!, [...argv.slice(1, cmd), '--version'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toMatch(/^auditrelay \d+\.\d+\.\d+/);
  });
});

const cc = findBinary('cc') ?? findBinary('gcc');
const mdweAvailable = requireOrSkip({
  suite: 'service ExecStart under MemoryDenyWriteExecute (PR_SET_MDWE)',
  binaries: ['cc'],
});

describe.skipIf(!mdweAvailable)(
  'the ExecStart command line under MemoryDenyWriteExecute (PR_SET_MDWE)',
  () => {
    it('the collector starts, listens and stops cleanly on SIGTERM', async () => {
      requireBuild();
      const dir = mkdtempSync(path.join(tmpdir(), 'auditrelay-mdwe-'));
      try {
        const mdwe = path.join(dir, 'mdwe');
        // test/plugin/mdwe.c: prctl(PR_SET_MDWE) then exec, the kernel's form of MemoryDenyWriteExecute=yes.
        const build = spawnSync(cc!, ['-O2', '-o', mdwe, path.join(REPO, 'test', 'plugin', 'mdwe.c')], {
          encoding: 'utf8',
        });
        expect(build.status, build.stderr).toBe(0);
        const argv = execStart('auditrelay-collector.service');
        const cmd = argv.indexOf('collector');
        const args = [
          ...argv.slice(0, cmd + 1),
          '--listen',
          '127.0.0.1:0',
          '--log',
          path.join(dir, 'audit.log'),
          '--evidence-key-file',
          path.join(dir, 'keys', 'signing.key'),
        ];
        const child = spawn(mdwe, args, {
          stdio: ['ignore', 'ignore', 'pipe'],
          env: { AUDITRELAY_LOG_FORMAT: 'json' },
        });
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString();
        });
        try {
          await pollUntil(
            () => {
              if (child.exitCode !== null) {
                if (child.exitCode === 125)
                  throw new Error(`PR_SET_MDWE is not available on this kernel: ${stderr}`);
                throw new Error(`the collector exited with status ${child.exitCode}: ${stderr}`);
              }
              return stderr.includes('collector listening');
            },
            { timeoutMs: 30_000, what: 'the collector to listen', diagnostics: () => stderr },
          );
          expect(await signalAndWait(child, 'SIGTERM', 15_000)).toEqual({ code: 0, signal: null });
        } finally {
          await terminate(child, 'SIGKILL', 5000);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);
