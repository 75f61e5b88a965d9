/**
 * A real 3-node nats-server (>= 2.10, `.cache/peers/nats-server`, never Debian 12's 2.9.10) JetStream cluster on
 * 127.0.0.1 for tests: each node has its own client, cluster and monitoring port and its own store_dir in the
 * test's temporary directory; nodes are started, killed (-9) and restarted by pid. Ready means /healthz ok on every
 * running node, a JetStream meta leader, and a stream with a replica on each running node placeable.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NATS_SERVER } from './peers.js';
import { pollUntil } from './wait.js';

export interface NatsNode {
  name: string;
  clientPort: number;
  clusterPort: number;
  httpPort: number;
  url: string;
  dir: string;
  config: string;
  proc: ChildProcess | null;
  log: string[];
}

/** Ports the kernel says are free now (bound to port 0, then released). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    ports.push((s.address() as net.AddressInfo).port);
    servers.push(s);
  }
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

export class NatsCluster {
  readonly nodes: NatsNode[];

  private constructor(nodes: NatsNode[]) {
    this.nodes = nodes;
  }

  /** Writes the configurations of `size` nodes under `dir` and starts them all. */
  static async start(dir: string, size = 3): Promise<NatsCluster> {
    const cluster = await NatsCluster.create(dir, size);
    await cluster.startAll();
    return cluster;
  }

  /** Starts every node and waits until the cluster is ready. */
  async startAll(): Promise<void> {
    for (const n of this.nodes) this.startNode(n);
    await this.waitReady();
  }

  /** SIGSTOP (true) or SIGCONT (false) to every running node, by pid: the servers stop answering (unreachable). */
  freeze(stopped: boolean): void {
    for (const n of this.running()) process.kill(n.proc!.pid!, stopped ? 'SIGSTOP' : 'SIGCONT');
  }

  /** Writes the configurations of `size` nodes under `dir` (nothing started). */
  static async create(dir: string, size = 3): Promise<NatsCluster> {
    const ports = await freePorts(3 * size);
    const nodes: NatsNode[] = [];
    for (let i = 0; i < size; i++) {
      const name = `n${i + 1}`;
      const nodeDir = path.join(dir, name);
      mkdirSync(nodeDir, { recursive: true });
      const [clientPort, clusterPort, httpPort] = [ports[3 * i]!, ports[3 * i + 1]!, ports[3 * i + 2]!];
      nodes.push({
        name,
        clientPort,
        clusterPort,
        httpPort,
        url: `nats://127.0.0.1:${clientPort}`,
        dir: nodeDir,
        config: path.join(nodeDir, 'nats.conf'),
        proc: null,
        log: [],
      });
    }
    const routes = nodes.map((n) => `nats-route://127.0.0.1:${n.clusterPort}`).join(', ');
    for (const n of nodes) {
      writeFileSync(
        n.config,
        [
          `server_name: ${n.name}`,
          `listen: 127.0.0.1:${n.clientPort}`,
          `http: 127.0.0.1:${n.httpPort}`,
          `jetstream { store_dir: "${path.join(n.dir, 'store')}" }`,
          size > 1 ? `cluster { name: audit, listen: 127.0.0.1:${n.clusterPort}, routes: [${routes}] }` : '',
          '',
        ].join('\n'),
      );
    }
    return new NatsCluster(nodes);
  }

  get urls(): string[] {
    return this.nodes.map((n) => n.url);
  }

  node(name: string): NatsNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name}`);
    return n;
  }

  startNode(n: NatsNode): void {
    if (n.proc && n.proc.exitCode === null && n.proc.signalCode === null) return;
    const proc = spawn(NATS_SERVER, ['-c', n.config], { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer) => {
      n.log.push(...b.toString('utf8').split('\n').filter(Boolean));
      if (n.log.length > 400) n.log.splice(0, n.log.length - 400);
    };
    proc.stdout!.on('data', keep);
    proc.stderr!.on('data', keep);
    n.proc = proc;
  }

  /** kill -9 by pid; resolves once it has exited. */
  async kill(n: NatsNode): Promise<void> {
    const proc = n.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    process.kill(proc.pid!, 'SIGKILL');
    await exited;
  }

  running(): NatsNode[] {
    return this.nodes.filter((n) => n.proc && n.proc.exitCode === null && n.proc.signalCode === null);
  }

  async #json(n: NatsNode, what: string): Promise<Record<string, unknown> | null> {
    try {
      const res = await fetch(`http://127.0.0.1:${n.httpPort}/${what}`, {
        signal: AbortSignal.timeout(2000),
      });
      return (await res.json()) as Record<string, unknown>;
    } catch {
      return null;
    }
  }

  /**
   * Every running node healthy, a JetStream meta leader elected, and a stream with one replica per running node
   * placeable (a probe stream created and deleted): what the collectors and the sink need first. Seen once in about
   * fifteen starts on the 2-core machine under load: nats-server 2.15.1 had formed the cluster (route connections
   * churning at start, "Duplicate Route") and elected a meta leader, but one node never joined the meta group
   * (`/jsz` meta_cluster: cluster_size 2), and every stream creation was answered "no suitable peers for placement"
   * for over a minute. That is the servers' start-up, not what the tests are about: the nodes are then restarted
   * once (nothing is stored yet), loudly.
   */
  async waitReady(timeoutMs = 20_000): Promise<void> {
    await this.#waitHealthy(timeoutMs);
    if (this.running().length < 2) return;
    const first = await this.#placeable(15_000);
    if (first === true) return;
    const meta = (await this.#json(this.running()[0]!, 'jsz'))?.meta_cluster;
    console.warn(
      `NATS cluster: a stream cannot be placed 15 s after start (${first}; meta ${JSON.stringify(meta)}): restarting the nodes once`,
    );
    const nodes = this.running();
    for (const n of nodes) await this.kill(n);
    for (const n of nodes) this.startNode(n);
    await this.#waitHealthy(timeoutMs);
    const second = await this.#placeable(30_000);
    if (second !== true) {
      const again = (await this.#json(this.running()[0]!, 'jsz'))?.meta_cluster;
      throw new Error(
        `NATS cluster: a stream still cannot be placed after a restart (${second}; meta ${JSON.stringify(again)})\n${this.logs()}`,
      );
    }
  }

  /** True once a probe stream with one replica per running node is created (and deleted); else the last error. */
  async #placeable(timeoutMs: number): Promise<true | string> {
    const deadline = Date.now() + timeoutMs;
    const running = this.running();
    let nc: NatsConnection | null = null;
    let last = 'not tried';
    try {
      nc = await connect({ servers: running.map((n) => n.url), timeout: 5000 });
      const jsm = await jetstreamManager(nc, { timeout: 5000 });
      for (;;) {
        try {
          await jsm.streams.add({
            name: 'CLUSTER_READY_PROBE',
            subjects: ['_cluster_ready_probe'],
            storage: StorageType.Memory,
            num_replicas: running.length,
          });
          await jsm.streams.delete('CLUSTER_READY_PROBE');
          return true;
        } catch (err) {
          last = (err as Error).message;
        }
        if (Date.now() >= deadline) return last;
        await delay(250);
      }
    } catch (err) {
      return (err as Error).message;
    } finally {
      await nc?.close();
    }
  }

  /** Every running node healthy and a JetStream meta leader elected. */
  async #waitHealthy(timeoutMs: number): Promise<void> {
    await pollUntil(
      async () => {
        for (const n of this.running()) {
          const h = await this.#json(n, 'healthz');
          if (h?.status !== 'ok') return false;
        }
        const first = this.running()[0];
        if (!first) return false;
        const jsz = await this.#json(first, 'jsz');
        const meta = jsz?.meta_cluster as { leader?: string } | undefined;
        return this.nodes.length === 1 || Boolean(meta?.leader);
      },
      { timeoutMs, intervalMs: 50, what: 'the NATS cluster to be ready', diagnostics: () => this.logs() },
    );
  }

  logs(): string {
    return this.nodes.map((n) => `--- ${n.name}\n${n.log.slice(-30).join('\n')}`).join('\n');
  }

  /** Kills every node by pid. */
  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => this.kill(n)));
  }
}
