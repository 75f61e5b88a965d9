/**
 * Runs the real Agent in-process against a server on loopback, with a writable input stream and a
 * log captured in memory.
 */
import { PassThrough } from 'node:stream';
import { pino } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import { type AgentSettings, settingsFromConfig } from '../../src/agent/settings.js';
import { type AgentConfig, defaultAgentConfig } from '../../src/config/agent-config.js';
import type { RecordQueue } from '../../src/queue/types.js';
import { pollUntil } from './wait.js';

export interface LogEntry {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export interface RunningAgent {
  agent: Agent;
  input: PassThrough;
  done: Promise<number>;
  logs: LogEntry[];
  write(lines: string[]): void;
  /** Ends the input and waits for the exit status. */
  finish(): Promise<number>;
  waitForState(state: string, ms?: number): Promise<void>;
  waitForLog(match: RegExp, ms?: number): Promise<LogEntry>;
}

export function startAgent(
  port: number,
  config: Partial<AgentConfig> = {},
  tweak: (s: AgentSettings) => void = () => {},
  /** The queue to use (fault injection); by default the agent makes its memory queue. */
  queue?: RecordQueue,
): RunningAgent {
  const cfg: AgentConfig = {
    ...defaultAgentConfig(),
    remoteServer: [{ host: '127.0.0.1', port: null }],
    port,
    reconnectInitialMs: 20,
    reconnectMaxMs: 200,
    ...config,
  };
  const settings = settingsFromConfig(cfg);
  tweak(settings);
  const logs: LogEntry[] = [];
  const log = pino(
    { level: 'debug' },
    {
      write: (line: string) => {
        logs.push(JSON.parse(line) as LogEntry);
      },
    },
  );
  const input = new PassThrough();
  const agent = new Agent(settings, { input, log, ...(queue ? { queue } : {}) });
  const done = agent.run();
  return {
    agent,
    input,
    done,
    logs,
    write: (lines) => input.write(lines.map((l) => `${l}\n`).join('')),
    finish: () => {
      input.end();
      return done;
    },
    waitForState: (state, ms = 10_000) =>
      pollUntil(() => agent.connectionState() === state, {
        timeoutMs: ms,
        what: `connection state ${state}`,
        diagnostics: () => `state is ${agent.connectionState()}`,
      }).then(() => {}),
    waitForLog: (match, ms = 10_000) =>
      pollUntil(() => logs.find((l) => match.test(l.msg)), {
        timeoutMs: ms,
        what: `a log line matching ${match}`,
        diagnostics: () => logs.map((l) => l.msg).join('\n'),
      }),
  };
}

/** `n` distinct records starting at `from`, as plugin lines (no newline). */
export function records(from: number, n: number, tag = 'T'): string[] {
  return Array.from(
    { length: n },
    (_, i) =>
      `type=USER_CMD msg=audit(1700000000.${String(from + i).padStart(3, '0')}:${from + i}): tag=${tag} seq=${from + i}`,
  );
}

/** Sequence numbers found in received lines (by the `seq=N` field). */
export function seqs(lines: string[]): number[] {
  return lines.map((l) => Number(/ seq=(\d+)/.exec(l)?.[1] ?? Number.NaN));
}

/** Checks a received sequence for gaps and duplicates against 1..total. */
export function gapsAndDuplicates(received: number[], total: number): { lost: number[]; duplicates: number } {
  const seen = new Set<number>();
  let duplicates = 0;
  for (const n of received) {
    if (seen.has(n)) duplicates++;
    seen.add(n);
  }
  const lost: number[] = [];
  for (let i = 1; i <= total; i++) if (!seen.has(i)) lost.push(i);
  return { lost, duplicates };
}
