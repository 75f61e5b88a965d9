/**
 * The connection machine owns the connection's facts (issue 10): a SIGHUP survives a restart of the
 * connection actor, a relink is not a failure, a server that accepts and resets at once is an outage, and
 * an invariant error inside the session is a supervised failure, not a crash. Real TCP on loopback.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { AnyActorRef, InspectionEvent } from 'xstate';
import type { AgentSettings } from '../../src/agent/settings.js';
import { QueueError } from '../../src/errors.js';
import { MemoryQueue } from '../../src/queue/memory-queue.js';
import { type RunningAgent, records, seqs, startAgent } from '../helpers/agent-harness.js';
import { ScriptServer } from '../helpers/script-server.js';
import { pollUntil } from '../helpers/wait.js';

let server: ScriptServer | undefined;
let agent: RunningAgent | undefined;
let extra: net.Server | undefined;

afterEach(async () => {
  if (agent) {
    agent.agent.stop('test end');
    agent.input.end();
    await agent.done.catch(() => {});
  }
  await server?.stop();
  if (extra) await new Promise<void>((resolve) => extra!.close(() => resolve()));
  agent = server = extra = undefined;
});

/** A memory queue with one-shot faults: `rewind()` or `ack()` throws once when armed. */
class FaultyQueue extends MemoryQueue {
  failRewind = false;
  failAck = false;
  override rewind(): void {
    if (this.failRewind) {
      this.failRewind = false;
      throw new Error('injected rewind failure');
    }
    super.rewind();
  }
  override ack(id: number): void {
    if (this.failAck) {
      this.failAck = false;
      throw new QueueError(`acknowledged record ${id} is not the oldest in flight (injected)`);
    }
    super.ack(id);
  }
}

/** The connection actor's latest snapshot, and how many times it was (re)started. */
function watchConnection() {
  const seen = { context: {} as Record<string, unknown>, sessions: new Set<string>() };
  const inspect = (ev: InspectionEvent) => {
    const ref = ev.actorRef as AnyActorRef;
    if (ref.id !== 'connection' || ev.type !== '@xstate.snapshot') return;
    seen.sessions.add(ref.sessionId);
    seen.context = (ev.snapshot as unknown as { context: Record<string, unknown> }).context;
  };
  return { seen, inspect };
}

const warnings = (a: RunningAgent) => a.logs.filter((l) => l.level >= 40);

describe('connection facts', () => {
  it('keeps a SIGHUP reload when the connection actor is restarted', async () => {
    server = new ScriptServer();
    const queue = new FaultyQueue(2048);
    const { seen, inspect } = watchConnection();
    let settings!: AgentSettings;
    agent = startAgent(
      await server.start(),
      {},
      (s) => {
        s.supervisor = { maxRestarts: 5, windowMs: 60_000, restartDelayMs: 1 };
        s.inspect = inspect;
        settings = s;
      },
      queue,
    );
    const a = agent;
    a.write(records(1, 2));
    await server.waitForRecords(2);
    const reloaded: AgentSettings = { ...settings, policy: { ...settings.policy, backoffMaxMs: 4321 } };
    a.agent.reconfigure(reloaded, { live: ['reconnect_max_ms'], relink: [], restart: [] });
    const policy = () => seen.context.policy as { backoffMaxMs: number };
    await pollUntil(() => policy().backoffMaxMs === 4321, { timeoutMs: 5000, what: 'the new policy' });
    // The next link's session fails inside the connection actor: the supervisor restarts it.
    queue.failRewind = true;
    server.current!.socket.resetAndDestroy();
    await pollUntil(() => seen.sessions.size >= 2 && a.agent.status().restarts === 1, {
      timeoutMs: 10_000,
      what: 'the connection actor to be restarted',
      diagnostics: () => a.logs.map((l) => l.msg).join('\n'),
    });
    await pollUntil(() => a.agent.connectionState().startsWith('online'), {
      timeoutMs: 10_000,
      what: 'the restarted connection to be online',
    });
    expect(policy().backoffMaxMs).toBe(4321);
    a.write(records(3, 2));
    await server.waitForRecords(4);
    expect(await a.finish()).toBe(0);
  });

  it('re-opens the link for a SIGHUP that needs it without counting a failure or backing off', async () => {
    server = new ScriptServer();
    let settings!: AgentSettings;
    agent = startAgent(await server.start(), {}, (s) => {
      settings = s;
    });
    const a = agent;
    a.write(records(1, 2));
    await server.waitForRecords(2);
    await a.waitForState('online.connected');
    const changed = a.agent.reconfigure(
      { ...settings, maxInFlight: 7 },
      { live: [], relink: ['max_in_flight'], restart: [] },
    );
    await server.waitForConnections(2);
    a.write(records(3, 2));
    await server.waitForRecords(4);
    expect(seqs(server.lines())).toEqual([1, 2, 3, 4]);
    const s = a.agent.status();
    expect(s.failures).toBe(0);
    expect(s.lastFailure).toBeNull();
    const states = a.agent.observer.transitions.filter((t) => t.actor === 'connection').map((t) => t.to);
    expect(states).not.toContain('backoff');
    expect(warnings(a).map((l) => l.msg)).toEqual([]);
    expect(changed).toEqual(['max_in_flight']);
    expect(await a.finish()).toBe(0);
  });

  it('runs network_failure_action when a server accepts and resets every connection', async () => {
    server = new ScriptServer();
    agent = startAgent(await server.start(), {
      maxTriesPerRecord: 2,
      networkFailureAction: { kind: 'syslog' },
      drainTimeout: 1,
    });
    const a = agent;
    a.write(records(1, 2));
    await server.waitForRecords(2);
    // The link worked (the server's replies reached the agent): later failures are an outage, not a start-up failure.
    await pollUntil(() => a.agent.status().recordsAcked >= 2, {
      timeoutMs: 10_000,
      what: 'the agent to see its first two records acknowledged',
    });
    // The server now accepts every connection and resets it as soon as the agent sends something
    // (auditd refusing a session): TCP connects, but no session ever works.
    const port = server.port;
    await server.stop();
    server = undefined;
    extra = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () => socket.resetAndDestroy());
    });
    await new Promise<void>((resolve) => extra!.listen({ host: '127.0.0.1', port }, resolve));
    a.write(records(3, 2));
    const fired = await a.waitForLog(/unreachable|network_failure_action/);
    expect(fired.action).toBe('network_failure_action');
    expect(fired.value).toBe('syslog');
    // Once per outage: more failed attempts do not run it again.
    const failures = a.agent.status().failures;
    await pollUntil(() => a.agent.status().failures >= failures + 3, {
      timeoutMs: 10_000,
      what: 'three more failed attempts',
    });
    expect(a.logs.filter((l) => l.action === 'network_failure_action')).toHaveLength(1);
  });

  it('turns an invariant error inside the session (ack order) into a restart of the connection actor', async () => {
    server = new ScriptServer();
    const queue = new FaultyQueue(2048);
    agent = startAgent(
      await server.start(),
      {},
      (s) => {
        s.supervisor = { maxRestarts: 5, windowMs: 60_000, restartDelayMs: 1 };
      },
      queue,
    );
    const a = agent;
    a.write(records(1, 2));
    await server.waitForRecords(2);
    queue.failAck = true;
    a.write(records(3, 1)); // its ACK arrives in the socket's data handler, where ack() throws
    await pollUntil(() => a.agent.status().restarts === 1, {
      timeoutMs: 10_000,
      what: 'the connection actor to be restarted',
      diagnostics: () => a.logs.map((l) => l.msg).join('\n'),
    });
    a.write(records(4, 1));
    await pollUntil(() => new Set(seqs(server!.lines())).size === 4, {
      timeoutMs: 10_000,
      what: '4 records',
    });
    expect(a.logs.some((l) => /not the oldest in flight/.test(String(l.error ?? l.msg)))).toBe(true);
    expect(await a.finish()).toBe(0);
    expect(a.agent.queue.depth).toBe(0);
  });
});
