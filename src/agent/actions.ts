/**
 * Failure actions with upstream's names (audisp-remote.conf(5)), and one rule upstream breaks and
 * we keep: no action ever leaves the agent in a state from which it does not retry by itself.
 *
 * | action             | here                                                                    |
 * |--------------------|-------------------------------------------------------------------------|
 * | ignore             | nothing                                                                 |
 * | syslog             | a warning in the log                                                    |
 * | exec /path         | runs the program with the message as argv[1], empty environment         |
 * | warn_once(_continue)| one warning until the next successful connection                       |
 * | suspend            | for disk/ending replies: the connection waits in `suspended` until      |
 * |                    | SIGUSR2 or the suspend retry timer; elsewhere: a warning                |
 * | reconnect          | (remote_ending_action) a log line; reconnection always happens          |
 * | single / halt      | logs, then runs `/sbin/init 1` / `/sbin/init 0`, as upstream            |
 * | stop               | an error in the log; records stay queued and reconnection continues:    |
 * |                    | exiting would strand the backlog (upstream loses its memory queue)      |
 */
import { spawn } from 'node:child_process';
import type { Logger } from '../log.js';

export type ActionKind =
  | 'ignore'
  | 'syslog'
  | 'exec'
  | 'warn_once'
  | 'warn_once_continue'
  | 'suspend'
  | 'reconnect'
  | 'single'
  | 'halt'
  | 'stop';

export interface FailureAction {
  kind: ActionKind;
  /** For exec. */
  path?: string;
}

export class ActionRunner {
  readonly #log: Logger;
  readonly #warned = new Set<string>();
  /** Replaceable for tests: runs a program detached with an empty environment. */
  execProgram: (path: string, args: string[]) => void = (path, args) => {
    const child = spawn(path, args, { env: {}, stdio: 'ignore', detached: true });
    child.on('error', (err) =>
      this.#log.error({ path, err: err.message }, 'failure action program could not run'),
    );
    child.unref();
  };

  constructor(log: Logger) {
    this.#log = log;
  }

  /** A successful connection re-arms the warn_once actions. */
  reset(): void {
    this.#warned.clear();
  }

  run(key: string, action: FailureAction, message: string, detail: Record<string, unknown>): void {
    const fields = { ...detail, action: key, value: action.kind };
    switch (action.kind) {
      case 'ignore':
        return;
      case 'syslog':
      case 'reconnect':
      case 'suspend':
        this.#log.warn(fields, message);
        return;
      case 'warn_once':
      case 'warn_once_continue':
        if (this.#warned.has(key)) return;
        this.#warned.add(key);
        this.#log.warn(fields, message);
        return;
      case 'exec':
        this.#log.warn({ ...fields, path: action.path }, message);
        if (action.path) this.execProgram(action.path, [message]);
        return;
      case 'single':
      case 'halt':
        this.#log.fatal(
          fields,
          `${message}; ${key} = ${action.kind}: running /sbin/init ${action.kind === 'halt' ? 0 : 1}`,
        );
        this.execProgram('/sbin/init', [action.kind === 'halt' ? '0' : '1']);
        return;
      case 'stop':
        if (this.#warned.has(key)) return;
        this.#warned.add(key);
        this.#log.error(
          fields,
          `${message}; ${key} = stop: auditrelay keeps every queued record and keeps retrying instead of exiting`,
        );
        return;
    }
  }
}
