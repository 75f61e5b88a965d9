/**
 * The throwaway-realm harness itself: parallel realms do not collide, a port shared with another KDC is detected
 * (krb5kdc binds with SO_REUSEPORT and would silently share it), stop() reaps the process and removes the realm.
 */
import { execFile, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { checkPortOwnership, KDC_BINARIES, portIsFree, startKdc } from '../helpers/kdc.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';

const execFileAsync = promisify(execFile);
const available = requireOrSkip({ suite: 'krb5 KDC test harness', binaries: KDC_BINARIES });

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!available)('throwaway KDC harness', () => {
  it('starts independent realms in parallel and stops them completely', async () => {
    const [a, b] = await Promise.all([startKdc(), startKdc({ realm: 'OTHER.REALM' })]);
    try {
      expect(a.port).not.toBe(b.port);
      expect(a.dir).not.toBe(b.dir);
      expect(b.realm).toBe('OTHER.REALM');
      for (const kdc of [a, b]) {
        const keytab = await kdc.addPrincipal('someone');
        const { stdout } = await execFileAsync(
          findBinary('kinit')!,
          ['-k', '-t', keytab, kdc.principal('someone')],
          { env: { ...process.env, ...kdc.env } },
        );
        expect(stdout).toBe('');
        expect(await kdc.log()).toContain(`someone@${kdc.realm} for krbtgt/${kdc.realm}@${kdc.realm}`);
        expect(await checkPortOwnership(kdc.port, kdc.pid)).toBeUndefined();
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    for (const kdc of [a, b]) {
      expect(alive(kdc.pid)).toBe(false);
      expect(existsSync(kdc.dir)).toBe(false);
      expect(await portIsFree(kdc.port)).toBe(true);
    }
  });

  it('sees a port as taken when anything holds it over TCP or UDP', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const tcpPort = (server.address() as net.AddressInfo).port;
    expect(await portIsFree(tcpPort)).toBe(false);
    await new Promise((resolve) => server.close(resolve));

    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '0.0.0.0', resolve));
    const udpPort = socket.address().port;
    expect(await portIsFree(udpPort)).toBe(false);
    await new Promise<void>((resolve) => socket.close(resolve));
    expect(await portIsFree(udpPort)).toBe(true);
  });

  it('detects a second krb5kdc sharing the port (SO_REUSEPORT), which would not fail on its own', async () => {
    const kdc = await startKdc();
    // same kdc.conf, hence the same port: krb5kdc starts happily
    const intruder = spawn(findBinary('krb5kdc')!, ['-n'], {
      env: { ...process.env, ...kdc.env },
      stdio: 'ignore',
    });
    try {
      let problem: string | undefined;
      const deadline = Date.now() + 10_000;
      while (problem === undefined && Date.now() < deadline) {
        problem = await checkPortOwnership(kdc.port, kdc.pid);
        if (problem === undefined) await new Promise((r) => setTimeout(r, 20));
      }
      expect(intruder.exitCode).toBeNull();
      expect(problem).toMatch(new RegExp(`port ${kdc.port} is shared with another process`));
    } finally {
      const exited = new Promise((resolve) => intruder.once('exit', resolve));
      if (intruder.exitCode === null && intruder.signalCode === null) {
        intruder.kill('SIGKILL');
        await exited;
      }
      await kdc.stop();
    }
  });
});
