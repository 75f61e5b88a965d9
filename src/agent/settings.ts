/**
 * What the agent runtime needs, derived from the configuration file (src/config) by
 * `settingsFromConfig`. Keeping this apart lets tests and the demo build an agent directly.
 */
import type { InspectionEvent } from 'xstate';
import type { ConnectionPolicy } from '../../machines/connection.js';
import type { SupervisorOptions } from '../../supervisors/supervisor.js';
import type { FailureAction } from './actions.js';

export interface AgentSettings {
  server: { host: string; port: number; localPort: number };
  transport: 'tcp' | 'krb5';
  format: 'managed' | 'ascii';
  maxInFlight: number;
  replyTimeoutMs: number;
  heartbeatMs: number;
  queueDepth: number;
  /** Largest record payload (bytes, with its newline); longer lines are split. */
  maxRecord: number;
  forwardEoe: boolean;
  drainTimeoutMs: number;
  maxTriesPerRecord: number;
  policy: Partial<ConnectionPolicy>;
  supervisor: SupervisorOptions;
  actions: {
    networkFailure: FailureAction;
    diskLow: FailureAction;
    diskFull: FailureAction;
    diskError: FailureAction;
    remoteEnding: FailureAction;
    genericError: FailureAction;
    genericWarning: FailureAction;
    startupFailure: FailureAction;
  };
  inputName: string;
  /** Inspection observer for the actor system (--inspect). */
  inspect?: (event: InspectionEvent) => void;
}
