/**
 * sd_notify (src/service/notify.ts) against a fake NOTIFY_SOCKET: Node cannot receive unix datagrams, so a
 * small python3 program binds the datagram socket (a path, or an abstract name), receives with SO_PASSCRED
 * (the sender's pid, as systemd sees it, which is what NotifyAccess=main checks), closes the file descriptors
 * of systemd-notify's barrier message (as PID 1 does, which lets systemd-notify return) and prints one JSON
 * line per datagram. With `--hold` it never reads, as a PID 1 that does not keep up.
 *
 * Default transport: the native binding (auditrelay_unix), sending from our own pid. Fallback without it:
 * systemd-notify.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { datagramTransport, SdNotifier } from '../../src/service/notify.js';
import { loadUnixDgram, unixAddonPath } from '../../src/service/unix-dgram.js';
import { findBinary, requireOrSkip } from '../helpers/prereq.js';
import { pollUntil, terminate } from '../helpers/wait.js';

const RECEIVER = String.raw`
import array, json, os, socket, struct, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\0' + name[1:] if name.startswith('@') else name)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print(json.dumps({"ready": True}), flush=True)
if len(sys.argv) > 2 and sys.argv[2] == '--hold':
    sys.stdin.read()
while True:
    data, anc, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(64 * 4) + socket.CMSG_SPACE(12))
    pid = None
    fds = 0
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array('i')
            a.frombytes(cdata[:len(cdata) - len(cdata) % 4])
            for fd in a:
                os.close(fd)
                fds += 1
        elif level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', cdata[:12])[0]
    print(json.dumps({"data": data.decode("utf-8", "replace"), "pid": pid, "fds": fds}), flush=True)
`;

interface Datagram {
  data: string;
  pid: number | null;
  fds: number;
}

let root = '';
const procs: ChildProcess[] = [];

afterEach(async () => {
  for (const p of procs.splice(0)) await terminate(p, 'SIGTERM', 5000);
  if (root) rmSync(root, { recursive: true, force: true });
  root = '';
});

async function receiver(
  name: string,
  opts: { hold?: boolean } = {},
): Promise<{ got: Datagram[]; messages: () => string[] }> {
  const script = join(root, 'receiver.py');
  writeFileSync(script, RECEIVER);
  const child = spawn(findBinary('python3')!, [script, name, ...(opts.hold ? ['--hold'] : [])], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  procs.push(child);
  const got: Datagram[] = [];
  let ready = false;
  let buf = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const v = JSON.parse(buf.slice(0, nl)) as Datagram & { ready?: boolean };
      buf = buf.slice(nl + 1);
      if (v.ready) ready = true;
      else got.push(v);
    }
  });
  await pollUntil(() => ready, { timeoutMs: 10_000, what: 'the python receiver', diagnostics: () => stderr });
  // systemd-notify's barrier message (BARRIER=1 + a pipe fd) is part of the protocol, not ours.
  return { got, messages: () => got.filter((d) => d.data !== 'BARRIER=1').map((d) => d.data) };
}

/** CAP_SYS_ADMIN in our effective set: systemd-notify can then send in our name. */
function hasSysAdmin(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? (BigInt(`0x${m[1]}`) & (1n << 21n)) !== 0n : false;
}

const nativeAvailable = requireOrSkip({
  suite: 'sd_notify through the native binding (python3 receiver)',
  binaries: ['python3'],
  files: [unixAddonPath()],
});

describe.skipIf(!nativeAvailable)('sd_notify through the native binding (the default)', () => {
  it('sends READY, STATUS, RELOADING, WATCHDOG and STOPPING in order, from our own pid (NotifyAccess=main)', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const sock = join(root, 'notify.sock');
    const r = await receiver(sock);
    const logs: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: sock }, log });
    expect(n.enabled).toBe(true);
    await n.ready('forwarding to 192.0.2.1:60');
    await n.status('queue: 3 records\nsecond line');
    await n.reloading();
    await n.ready();
    await n.watchdog();
    await n.stopping();
    await n.close();
    await pollUntil(() => r.messages().length === 6, { timeoutMs: 10_000, what: '6 notifications' });
    expect(r.messages()).toEqual([
      'READY=1\nSTATUS=forwarding to 192.0.2.1:60',
      'STATUS=queue: 3 records second line',
      'RELOADING=1',
      'READY=1',
      'WATCHDOG=1',
      'STOPPING=1',
    ]);
    // No child process: every datagram comes from this process, no barrier, no descriptor passed.
    expect(r.got.every((d) => d.pid === process.pid && d.fds === 0)).toBe(true);
    expect(n.stats).toMatchObject({ sent: 6, failed: 0 });
    expect(logs.filter((l) => l.level >= 40)).toEqual([]);
  });

  it('an abstract NOTIFY_SOCKET (@name) works too', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const name = `@auditrelay-test-${process.pid}-${Date.now()}`;
    const r = await receiver(name);
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: name } });
    await n.ready();
    await n.watchdogTrigger();
    await pollUntil(() => r.messages().length === 2, { timeoutMs: 10_000, what: 'READY=1' });
    expect(r.messages()).toEqual(['READY=1', 'WATCHDOG=trigger']);
    expect(r.got.map((d) => d.pid)).toEqual([process.pid, process.pid]);
  });

  it('pings the watchdog every WATCHDOG_USEC/2', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const sock = join(root, 'notify.sock');
    const r = await receiver(sock);
    const n = new SdNotifier({
      env: { NOTIFY_SOCKET: sock, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) },
      log: pino({ level: 'silent' }),
    });
    expect(n.watchdogMs).toBe(200);
    n.startWatchdog();
    await pollUntil(() => r.messages().filter((m) => m === 'WATCHDOG=1').length >= 3, {
      timeoutMs: 10_000,
      what: '3 watchdog pings',
    });
    await n.close();
    expect(new Set(r.messages())).toEqual(new Set(['WATCHDOG=1']));
  });

  it('a missing socket: the failure is logged once with its errno, never rejects', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const logs: { level: number; msg: string; transport?: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
    const sock = join(root, 'absent.sock');
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: sock }, log });
    await n.ready();
    await n.status('x');
    expect(n.stats.failed).toBe(2);
    const errors = logs.filter((l) => l.level === 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.transport).toBe('datagram');
    expect(errors[0]?.msg).toBe(
      `systemd notification READY failed: sendto ${sock}: No such file or directory`,
    );
  });

  it('a receiver that does not read never blocks us: sends fail with EAGAIN once its queue is full', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const sock = join(root, 'notify.sock');
    await receiver(sock, { hold: true });
    const logs: { level: number; msg: string }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: sock }, log });
    // net.unix.max_dgram_qlen (default 512) datagrams fit in the receiver's queue; the next ones cannot.
    const qlen = Number(readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
    for (let i = 0; i < qlen + 50; i++) void n.status(`${i}`);
    await n.close();
    expect(n.stats.sent).toBeGreaterThan(0);
    expect(n.stats.failed).toBeGreaterThan(0);
    expect(n.stats.sent + n.stats.failed).toBe(qlen + 50);
    expect(logs.filter((l) => l.level === 50).map((l) => l.msg)).toEqual([
      `systemd notification STATUS failed: sendto ${sock}: Resource temporarily unavailable`,
    ]);
  });

  it('the binding reports errors as Node does (code, errno, syscall)', () => {
    const unix = loadUnixDgram();
    if (typeof unix === 'string') throw new Error(unix);
    let caught: NodeJS.ErrnoException | undefined;
    try {
      unix.sendTo('/nonexistent/auditrelay.sock', Buffer.from('x'));
    } catch (err) {
      caught = err as NodeJS.ErrnoException;
    }
    expect(caught).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'sendto' });
    expect(() => unix.sendTo(`/${'x'.repeat(200)}`, Buffer.from('x'))).toThrow(
      expect.objectContaining({ code: 'ENAMETOOLONG' }),
    );
  });
});

const available = requireOrSkip({
  suite: 'sd_notify (systemd-notify + python3 receiver)',
  binaries: ['systemd-notify', 'python3'],
});

/** `unix: '…'`: as an installation without the native binding. */
const NO_BINDING = 'the unix socket binding is not built (test)';

describe.skipIf(!available)('sd_notify through systemd-notify (fallback without the binding)', () => {
  it('sends READY, STATUS, WATCHDOG and STOPPING in order; systemd-notify waits for the barrier', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const sock = join(root, 'notify.sock');
    const r = await receiver(sock);
    const logs: { level: number; msg: string }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: sock }, log, unix: NO_BINDING });
    expect(n.enabled).toBe(true);
    // It says that the shipped units (NotifyAccess=main) need a drop-in.
    expect(logs.filter((l) => l.level === 40).map((l) => l.msg)).toEqual([
      expect.stringMatching(
        /sd_notify through .*systemd-notify \(the unix socket binding is not built \(test\)\).*NotifyAccess=all/,
      ),
    ]);
    await n.ready('forwarding to 192.0.2.1:60');
    await n.status('queue: 3 records\nsecond line');
    await n.watchdog();
    await n.stopping();
    await n.close();
    await pollUntil(() => r.messages().length === 4, { timeoutMs: 10_000, what: '4 notifications' });
    expect(r.messages()).toEqual([
      'READY=1\nSTATUS=forwarding to 192.0.2.1:60',
      'STATUS=queue: 3 records second line',
      'WATCHDOG=1',
      'STOPPING=1',
    ]);
    // Each message was followed by a barrier carrying one fd, which the receiver closed.
    expect(r.got.filter((d) => d.data === 'BARRIER=1').every((d) => d.fds === 1)).toBe(true);
    expect(n.stats).toMatchObject({ sent: 4, failed: 0 });
    const senders = new Set(r.got.filter((d) => d.data !== 'BARRIER=1').map((d) => d.pid));
    if (hasSysAdmin())
      expect([...senders]).toEqual([process.pid]); // sent in our name
    else expect(senders.has(process.pid)).toBe(false); // its own pid: the unit needs NotifyAccess=all
  });

  it('an abstract NOTIFY_SOCKET (@name) works too', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const name = `@auditrelay-test-${process.pid}-${Date.now()}`;
    const r = await receiver(name);
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: name }, unix: NO_BINDING });
    await n.ready();
    await pollUntil(() => r.messages().length === 1, { timeoutMs: 10_000, what: 'READY=1' });
    expect(r.messages()).toEqual(['READY=1']);
  });

  it('pings the watchdog every WATCHDOG_USEC/2', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const sock = join(root, 'notify.sock');
    const r = await receiver(sock);
    const n = new SdNotifier({
      env: { NOTIFY_SOCKET: sock, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) },
      log: pino({ level: 'silent' }),
      unix: NO_BINDING,
    });
    expect(n.watchdogMs).toBe(200);
    n.startWatchdog();
    await pollUntil(() => r.messages().filter((m) => m === 'WATCHDOG=1').length >= 3, {
      timeoutMs: 10_000,
      what: '3 watchdog pings',
    });
    await n.close();
    expect(new Set(r.messages())).toEqual(new Set(['WATCHDOG=1']));
  });

  it('a watchdog meant for another process (WATCHDOG_PID) is not ours', () => {
    const n = new SdNotifier({
      env: { NOTIFY_SOCKET: '/nonexistent', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' },
    });
    expect(n.watchdogMs).toBeNull();
  });

  it('failures are logged once and never reject (a missing socket)', async () => {
    root = mkdtempSync(join(tmpdir(), 'auditrelay-notify-'));
    const logs: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
    const n = new SdNotifier({ env: { NOTIFY_SOCKET: join(root, 'absent.sock') }, log, unix: NO_BINDING });
    await n.ready();
    await n.status('x');
    expect(n.stats.failed).toBe(2);
    expect(logs.filter((l) => l.level === 50)).toHaveLength(1);
    expect(logs.find((l) => l.level === 50)?.msg).toMatch(
      /systemd notification READY failed: .*systemd-notify failed \(exit status \d+\)/,
    );
  });
});

describe('sd_notify without systemd', () => {
  it('is disabled without NOTIFY_SOCKET: every call is a no-op', async () => {
    const n = new SdNotifier({ env: {} });
    expect(n.enabled).toBe(false);
    expect(n.watchdogMs).toBeNull();
    await n.ready();
    n.startWatchdog();
    await n.close();
    expect(n.stats.sent).toBe(0);
  });

  it('a native datagram sender gets the exact bytes; unsetEnvironment hides the variables from children', async () => {
    const sent: [string, string][] = [];
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '30000000' };
    const n = new SdNotifier({
      env,
      pid: 42,
      unsetEnvironment: true,
      transport: datagramTransport((p, b) => void sent.push([p, b.toString('utf8')])),
    });
    expect(env).toEqual({});
    expect(n.watchdogMs).toBe(30_000);
    await n.ready('up');
    await n.reloading();
    await n.watchdogTrigger();
    expect(sent).toEqual([
      ['@x', 'READY=1\nSTATUS=up'],
      ['@x', 'RELOADING=1'],
      ['@x', 'WATCHDOG=trigger'],
    ]);
  });

  it('a watchdog ping waiting behind a slow message is not queued twice', async () => {
    let release: () => void = () => {};
    const sent: string[] = [];
    const n = new SdNotifier({
      env: { NOTIFY_SOCKET: '/x' },
      transport: {
        name: 'slow',
        send: (_s, m) => {
          sent.push(m);
          return m.startsWith('STATUS') ? new Promise<void>((r) => (release = r)) : Promise.resolve();
        },
      },
    });
    const slow = n.status('busy');
    await pollUntil(() => sent.length === 1, { timeoutMs: 5000, what: 'the slow message to start' });
    void n.watchdog();
    void n.watchdog();
    void n.watchdog();
    release();
    await slow;
    await n.close();
    expect(sent).toEqual(['STATUS=busy', 'WATCHDOG=1']);
    expect(n.stats.watchdogSkipped).toBe(2);
  });

  it('stops pinging while unhealthy (systemd then restarts the service) and resumes when healthy', async () => {
    vi.useFakeTimers();
    try {
      const sent: string[] = [];
      const logs: { level: number; msg: string }[] = [];
      const log = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
      const n = new SdNotifier({
        env: { NOTIFY_SOCKET: '/x', WATCHDOG_USEC: '1000000' },
        log,
        transport: { name: 'mem', send: async (_s, m) => void sent.push(m) },
      });
      let healthy = true;
      n.startWatchdog(() => healthy);
      await vi.advanceTimersByTimeAsync(1000); // 2 periods of 500 ms
      expect(sent).toEqual(['WATCHDOG=1', 'WATCHDOG=1']);
      healthy = false;
      await vi.advanceTimersByTimeAsync(5000);
      expect(sent).toHaveLength(2);
      expect(logs.filter((l) => l.level === 50).map((l) => l.msg)).toEqual([
        'unhealthy: watchdog pings stopped; systemd restarts the service after 1000 ms unless it recovers',
      ]);
      healthy = true;
      await vi.advanceTimersByTimeAsync(500);
      expect(sent).toHaveLength(3);
      await n.close();
      await vi.advanceTimersByTimeAsync(5000);
      expect(sent).toHaveLength(3);
    } finally {
      vi.useRealTimers();
    }
  });
});
