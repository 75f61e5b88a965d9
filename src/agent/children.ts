/**
 * The agent's supervised children, in one place for the agent (src/agent/agent.ts) and the diagrams
 * (scripts/diagrams.ts): ids, order, which one ends the run, and what each gets at every (re)start.
 */
import type { AnyActorLogic } from 'xstate';
import { type ConnectionInput, type ConnectionPolicy, connectionMachine } from '../../machines/connection.js';
import { queueMachine } from '../../machines/queue.js';
import { readerMachine } from '../../machines/reader.js';
import type { ChildSpec } from '../../supervisors/supervisor.js';

export interface AgentLogics {
  reader: AnyActorLogic;
  queue: AnyActorLogic;
  connection: AnyActorLogic;
}

/** The machines as defined (inert actors): what the diagrams draw. */
export const INERT_LOGICS: AgentLogics = {
  reader: readerMachine,
  queue: queueMachine,
  connection: connectionMachine,
};

/**
 * The reader, the queue watcher and the connection. The connection is significant: when it is done
 * (everything delivered after a stop) the agent is done. Its input is evaluated at every (re)start, so a
 * restarted connection gets the policy and the number of servers in force now (after any SIGHUP) and knows whether the agent is
 * stopping.
 */
export function agentChildren(
  logics: AgentLogics = INERT_LOGICS,
  policy: () => Partial<ConnectionPolicy> = () => ({}),
  servers: () => number = () => 1,
): ChildSpec[] {
  return [
    { id: 'reader', logic: logics.reader },
    { id: 'queue', logic: logics.queue },
    {
      id: 'connection',
      logic: logics.connection,
      significant: true,
      input: ({ stopping }): ConnectionInput => ({ policy: policy(), stopping, servers: servers() }),
    },
  ];
}
