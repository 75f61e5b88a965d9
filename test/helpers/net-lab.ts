/**
 * A routed three-namespace network: client – router – server, each a NetnsSandbox (test/helpers/netns.ts), joined
 * by two veth pairs. The router forwards between 10.77.1.0/24 (client 10.77.1.2) and 10.77.2.0/24 (server
 * 10.77.2.2). Nothing here touches the host's network: the veth pairs are created inside the router's namespace
 * with their peers moved straight into the client's and the server's.
 *
 * A *silent outage* (`cut()`) is two blackhole routes in the router, one for each end's address: every packet
 * the router would forward is discarded without an ICMP error or a RST (a blackhole route drops forwarded
 * packets silently, `ip-route(8)`), so both ends' TCP stacks see nothing at all — a pulled cable between
 * routers, not a refusal. `restore()` deletes them. Only iproute2 is needed (Debian 12 installs neither nft nor
 * iptables by default).
 *
 * A *WAN path* (`wan()`, for the benchmark; this kernel has no netem): a VXLAN overlay between the two ends
 * (10.78.0.1 – 10.78.0.2) whose UDP underlay goes through a relay process in the router, which holds every
 * datagram for the one-way delay (half the RTT, each direction) and drops a given fraction of them at random
 * (seeded, so a run can be repeated). One datagram is one TCP segment of the overlay (the MTU is 1450), so loss
 * and delay act on segments as a real path's would: both TCP stacks see the RTT, retransmit and back off. The
 * order of the datagrams is kept (a constant delay does not reorder). `measureRtt()` checks the path against
 * the configured RTT with a TCP ping-pong between the two ends. The relay computes the inner TCP checksums the ends
 * leave to the (absent) hardware.
 */
import type { ChildProcess } from 'node:child_process';
import { NetnsSandbox } from './netns.js';
import { requireBinary } from './prereq.js';
import { pollUntil, terminate } from './wait.js';

export const LAB_CLIENT = '10.77.1.2';
export const LAB_SERVER = '10.77.2.2';
const ROUTER_CLIENT_SIDE = '10.77.1.1';
const ROUTER_SERVER_SIDE = '10.77.2.1';
/** The ends' addresses on the WAN overlay (`wan()`). */
export const WAN_CLIENT = '10.78.0.1';
export const WAN_SERVER = '10.78.0.2';
const VXLAN_PORT = 4789;

/** The path the relay makes: round-trip delay added (ms, split evenly between the directions) and loss. */
export interface PathShape {
  rttMs: number;
  /** Fraction of datagrams dropped, each direction (0.01 = 1 %). */
  loss?: number;
  /** Seed of the loss's pseudo-random sequence. */
  seed?: number;
}

export interface RelayStats {
  forwarded: number;
  dropped: number;
  /** Datagrams the relay's socket lost for want of buffer (should be 0: that would be loss not asked for). */
  rcvbufErrors: number;
}

/**
 * The relay: one UDP socket on the router's VXLAN port; a datagram from the client goes to the server and the
 * other way round, after `delay` ms, unless the seeded generator drops it. One timer per direction, armed for
 * the oldest datagram. SIGUSR2 prints the counters as one JSON line.
 */
const RELAY = String.raw`
const dgram = require('node:dgram');
const fs = require('node:fs');
const [client, server, port, delayArg, lossArg, seedArg] = process.argv.slice(1);
const delay = Number(delayArg), loss = Number(lossArg);
let seed = Number(seedArg) >>> 0;
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const stats = { forwarded: 0, dropped: 0 };
const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
const lanes = {};
for (const [to] of [[client], [server]]) lanes[to] = { to, q: [], head: 0, timer: null };
const send = (lane, msg) => { stats.forwarded++; sock.send(msg, Number(port), lane.to); };
function flush(lane) {
  lane.timer = null;
  const now = performance.now();
  while (lane.head < lane.q.length && lane.q[lane.head].due <= now + 0.5) send(lane, lane.q[lane.head++].msg);
  if (lane.head > 4096 && lane.head * 2 > lane.q.length) { lane.q = lane.q.slice(lane.head); lane.head = 0; }
  arm(lane);
}
function arm(lane) {
  if (lane.timer || lane.head >= lane.q.length) return;
  lane.timer = setTimeout(flush, Math.max(0, lane.q[lane.head].due - performance.now()), lane);
}
// The ends hand their VXLAN devices TCP segments whose checksum is left to the hardware (CHECKSUM_PARTIAL: only
// the pseudo-header's sum is in the field); no hardware computes it on this path, so the relay does.
function fixTcpChecksum(msg) {
  const ip = 8 + 14;
  if (msg.length < ip + 20 || msg.readUInt16BE(8 + 12) !== 0x0800 || msg[ip + 9] !== 6) return;
  const ihl = (msg[ip] & 0x0f) * 4;
  const total = msg.readUInt16BE(ip + 2);
  const tcp = ip + ihl;
  const len = total - ihl;
  if (tcp + len > msg.length || len < 20) return;
  let sum = msg.readUInt16BE(ip + 12) + msg.readUInt16BE(ip + 14) + msg.readUInt16BE(ip + 16) + msg.readUInt16BE(ip + 18) + 6 + len;
  msg[tcp + 16] = 0;
  msg[tcp + 17] = 0;
  const end = tcp + len - 1;
  let i = tcp;
  for (; i < end; i += 2) sum += (msg[i] << 8) | msg[i + 1];
  if (i === end) sum += msg[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  msg.writeUInt16BE(~sum & 0xffff, tcp + 16);
}
sock.on('message', (msg, rinfo) => {
  const lane = rinfo.address === client ? lanes[server] : rinfo.address === server ? lanes[client] : null;
  if (!lane) return;
  fixTcpChecksum(msg);
  if (loss > 0 && random() < loss) { stats.dropped++; return; }
  if (delay <= 0) { send(lane, msg); return; }
  lane.q.push({ due: performance.now() + delay, msg });
  arm(lane);
});
const rcvbufErrors = () => {
  const lines = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const names = lines[0].trim().split(/\s+/), values = lines[1].trim().split(/\s+/);
  return Number(values[names.indexOf('RcvbufErrors')]);
};
const base = rcvbufErrors();
process.on('SIGUSR2', () => console.log(JSON.stringify({ ...stats, rcvbufErrors: rcvbufErrors() - base })));
sock.bind(Number(port), () => console.log('ready'));
`;

export class NetLab {
  #cut = false;
  #wan = false;
  #relay: { child: ChildProcess; out: () => string } | null = null;

  private constructor(
    readonly client: NetnsSandbox,
    readonly router: NetnsSandbox,
    readonly server: NetnsSandbox,
  ) {}

  static async create(): Promise<NetLab> {
    const made: NetnsSandbox[] = [];
    try {
      for (let i = 0; i < 3; i++) made.push(await NetnsSandbox.create());
      const [client, router, server] = made as [NetnsSandbox, NetnsSandbox, NetnsSandbox];
      const lab = new NetLab(client, router, server);
      await lab.#wire();
      return lab;
    } catch (err) {
      await Promise.all(made.map((s) => s.destroy().catch(() => {})));
      throw err;
    }
  }

  async #wire(): Promise<void> {
    const ip = requireBinary('ip');
    const { client, router, server } = this;
    // Created in the router; each peer goes straight into its end's namespace (by the holder's pid).
    await router.run(ip, [
      'link',
      'add',
      'to-client',
      'type',
      'veth',
      'peer',
      'name',
      'uplink',
      'netns',
      String(client.holderPid),
    ]);
    await router.run(ip, [
      'link',
      'add',
      'to-server',
      'type',
      'veth',
      'peer',
      'name',
      'uplink',
      'netns',
      String(server.holderPid),
    ]);
    await router.run(ip, ['addr', 'add', `${ROUTER_CLIENT_SIDE}/24`, 'dev', 'to-client']);
    await router.run(ip, ['addr', 'add', `${ROUTER_SERVER_SIDE}/24`, 'dev', 'to-server']);
    await router.run(ip, ['link', 'set', 'to-client', 'up']);
    await router.run(ip, ['link', 'set', 'to-server', 'up']);
    // ip_forward is per network namespace; /proc/sys/net is the writer's namespace's.
    await router.run(requireBinary('bash'), ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']);
    for (const [end, addr, gw] of [
      [client, `${LAB_CLIENT}/24`, ROUTER_CLIENT_SIDE],
      [server, `${LAB_SERVER}/24`, ROUTER_SERVER_SIDE],
    ] as const) {
      await end.run(ip, ['addr', 'add', addr, 'dev', 'uplink']);
      await end.run(ip, ['link', 'set', 'uplink', 'up']);
      await end.run(ip, ['route', 'add', 'default', 'via', gw]);
    }
  }

  get isCut(): boolean {
    return this.#cut;
  }

  /** Starts a silent outage: the router discards everything between the two ends. */
  async cut(): Promise<void> {
    const ip = requireBinary('ip');
    for (const addr of [LAB_CLIENT, LAB_SERVER]) {
      await this.router.run(ip, ['route', 'add', 'blackhole', `${addr}/32`]);
    }
    this.#cut = true;
  }

  /** Ends the outage. */
  async restore(): Promise<void> {
    const ip = requireBinary('ip');
    for (const addr of [LAB_CLIENT, LAB_SERVER]) {
      await this.router.run(ip, ['route', 'del', 'blackhole', `${addr}/32`]);
    }
    this.#cut = false;
  }

  /** Builds the VXLAN overlay whose underlay goes through the router's relay (then `shape()` it). */
  async wan(shape: PathShape): Promise<void> {
    const ip = requireBinary('ip');
    if (!this.#wan) {
      for (const [end, remote, addr] of [
        [this.client, ROUTER_CLIENT_SIDE, WAN_CLIENT],
        [this.server, ROUTER_SERVER_SIDE, WAN_SERVER],
      ] as const) {
        await end.run(ip, [
          'link',
          'add',
          'wan',
          'type',
          'vxlan',
          'id',
          '42',
          'remote',
          remote,
          'dstport',
          String(VXLAN_PORT),
          'dev',
          'uplink',
        ]);
        await end.run(ip, ['addr', 'add', `${addr}/24`, 'dev', 'wan']);
        await end.run(ip, ['link', 'set', 'wan', 'up']);
      }
      this.#wan = true;
    }
    await this.shape(shape);
  }

  /** (Re)starts the relay with a new delay and loss. */
  async shape(shape: PathShape): Promise<void> {
    await this.#stopRelay();
    const child = this.router.spawn(
      process.execPath,
      [
        '-e',
        RELAY,
        LAB_CLIENT,
        LAB_SERVER,
        String(VXLAN_PORT),
        String(shape.rttMs / 2),
        String(shape.loss ?? 0),
        String(shape.seed ?? 1),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
    });
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      err += s;
    });
    this.#relay = { child, out: () => out };
    await pollUntil(
      () => {
        if (child.exitCode !== null) throw new Error(`relay exited: ${err}`);
        return out.includes('ready');
      },
      { timeoutMs: 15_000, what: 'the WAN relay' },
    );
  }

  /** The relay's counters since it started. */
  async relayStats(): Promise<RelayStats> {
    const relay = this.#relay;
    if (!relay) throw new Error('no relay');
    const before = relay.out().length;
    relay.child.kill('SIGUSR2');
    const line = await pollUntil(
      () => {
        const tail = relay.out().slice(before);
        return tail.includes('\n') ? tail.slice(0, tail.indexOf('\n')) : undefined;
      },
      { timeoutMs: 5_000, what: 'the relay’s counters' },
    );
    return JSON.parse(line) as RelayStats;
  }

  async #stopRelay(): Promise<void> {
    const relay = this.#relay;
    this.#relay = null;
    if (relay) await terminate(relay.child, 'SIGTERM', 5_000);
  }

  /**
   * Round trips of a 16-byte message over TCP between the ends on the overlay (after a warm-up one): the
   * path's RTT as the programs see it. Returns the samples in ms, sorted.
   */
  async measureRtt(samples = 10, port = 7): Promise<number[]> {
    const echo = this.server.spawn(
      process.execPath,
      [
        '-e',
        `require('node:net').createServer((c) => { c.setNoDelay(true); c.on('error', () => {}); c.pipe(c); }).listen(${port}, '${WAN_SERVER}', () => console.log('ready'));`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    try {
      let ready = '';
      echo.stdout!.setEncoding('utf8').on('data', (s: string) => {
        ready += s;
      });
      await pollUntil(() => ready.includes('ready'), { timeoutMs: 15_000, what: 'the echo server' });
      const out = await this.client.run(
        process.execPath,
        [
          '-e',
          `const net = require('node:net');
         const s = net.connect({ host: '${WAN_SERVER}', port: ${port}, noDelay: true });
         const out = []; let t = 0; let n = -1;
         const ping = () => { t = performance.now(); s.write(Buffer.alloc(16)); };
         let got = 0;
         s.on('connect', ping);
         s.on('data', (d) => { got += d.length; if (got < 16) return; got -= 16;
           if (n >= 0) out.push(performance.now() - t);
           if (++n >= ${samples}) { console.log(JSON.stringify(out)); s.end(); } else ping(); });`,
        ],
        { timeoutMs: 60_000 },
      );
      return (JSON.parse(out) as number[]).sort((a, b) => a - b);
    } finally {
      await terminate(echo, 'SIGTERM', 5_000);
    }
  }

  async destroy(): Promise<void> {
    await this.#stopRelay().catch(() => {});
    const results = await Promise.allSettled([this.client, this.router, this.server].map((s) => s.destroy()));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) throw new Error(`net lab: ${failed.map((f) => String(f.reason)).join('; ')}`);
  }
}
