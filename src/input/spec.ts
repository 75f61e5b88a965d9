/**
 * Where the agent's records come from (the proposed `input` key):
 *   stdin                  auditd plugin mode (default): plugin string format on stdin
 *   af_unix                auditd's af_unix plugin socket, /var/run/audispd_events
 *   af_unix:/path          … at another path
 *   tail                   tail /var/log/audit/audit.log with a persisted position
 *   tail:/path             … another log file
 * `openInput` builds the stream for the agent (`io.input`) and returns what the caller needs around it.
 */
import { isAbsolute } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '../log.js';
import { AfUnixInput, DEFAULT_AF_UNIX_PATH } from './af-unix.js';
import { DEFAULT_AUDIT_LOG, TailInput } from './tail.js';

export type InputSpec =
  | { kind: 'stdin' }
  | { kind: 'af_unix'; path: string }
  | { kind: 'tail'; path: string };

export const INPUT_ALLOWED = 'stdin, af_unix, af_unix:/absolute/path, tail, tail:/absolute/path';
export const DEFAULT_TAIL_STATE_FILE = '/var/lib/auditrelay/tail.state';

/** Parses an `input` value; a string result is the error message. Keywords are case-insensitive, paths are not. */
export function parseInputSpec(text: string): InputSpec | string {
  const colon = text.indexOf(':');
  const kind = (colon < 0 ? text : text.slice(0, colon)).toLowerCase();
  const path = colon < 0 ? null : text.slice(colon + 1);
  if (kind === 'stdin') return path === null ? { kind: 'stdin' } : `stdin takes no path ("${text}")`;
  if (kind !== 'af_unix' && kind !== 'tail') return `unknown input "${text}"`;
  if (path === null)
    return kind === 'af_unix' ? { kind, path: DEFAULT_AF_UNIX_PATH } : { kind, path: DEFAULT_AUDIT_LOG };
  if (!isAbsolute(path)) return `the path in "${text}" must be absolute`;
  return { kind, path };
}

export function formatInputSpec(spec: InputSpec): string {
  return spec.kind === 'stdin' ? 'stdin' : `${spec.kind}:${spec.path}`;
}

export interface OpenInputOptions {
  log: Logger;
  /** tail: the state file (`tail_state_file`). Default /var/lib/auditrelay/tail.state. */
  tailStateFile?: string;
  /** tail: where to start without a state file (`tail_start`). Default 'end'. */
  tailStart?: 'end' | 'beginning';
  /** tail: poll period (`tail_poll_ms`). Default 1000. */
  tailPollMs?: number;
  /** tail: fsync the state file (use true with `fsync = always`). Default false. */
  tailStateFsync?: boolean;
  /** Whether the agent's queue is the durable one (mode = forward); the tail input warns otherwise. */
  durableQueue: boolean;
  /** Default process.stdin. */
  stdin?: Readable;
}

export interface OpenedInput {
  stream: Readable;
  /** For `AgentSettings.inputName` and log lines. */
  name: string;
  /** Call after the agent's run() resolved: stops reconnecting/polling, saves the tail position. */
  close(): void;
}

export function openInput(spec: InputSpec, o: OpenInputOptions): OpenedInput {
  const name = formatInputSpec(spec);
  switch (spec.kind) {
    case 'stdin': {
      const stream = o.stdin ?? process.stdin;
      // Released when the agent is done: a pipe auditd keeps open would otherwise keep the process alive.
      return { stream, name, close: () => stream.destroy() };
    }
    case 'af_unix': {
      const stream = new AfUnixInput({ path: spec.path, log: o.log });
      return { stream, name, close: () => stream.close() };
    }
    case 'tail': {
      if (!o.durableQueue) {
        o.log.warn(
          { input: name },
          'input = tail with mode = immediate: the tail position moves on as soon as records are in the memory queue, so records read but not yet delivered are lost if auditrelay is killed (a clean stop writes them to queue_dir); use mode = forward',
        );
      }
      const stream = new TailInput({
        path: spec.path,
        stateFile: o.tailStateFile ?? DEFAULT_TAIL_STATE_FILE,
        startAt: o.tailStart ?? 'end',
        pollIntervalMs: o.tailPollMs ?? 1000,
        stateFsync: o.tailStateFsync ?? false,
        log: o.log,
      });
      return { stream, name, close: () => stream.close() };
    }
  }
}
