/**
 * Deterministic waiting primitives for integration tests: wait for an event, or poll a condition with a deadline.
 * Never "sleep and hope".
 */
import type { ChildProcess } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface PollOptions {
  /** Give up after this many milliseconds (measured from the call). */
  timeoutMs: number;
  /** Pause between probes. Default 20 ms. */
  intervalMs?: number;
  /** Human-readable description of what is awaited, used in the timeout error. */
  what: string;
  /** Extra diagnostics appended to the timeout error (e.g. the last log lines, syslog). */
  diagnostics?: () => string | Promise<string>;
}

/**
 * Calls `probe` until it returns something other than `undefined` (or `false`), and resolves with that value.
 * A probe that throws aborts the wait with that error. Throws a descriptive error when the deadline passes.
 */
export async function pollUntil<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  opts: PollOptions,
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  const interval = opts.intervalMs ?? 20;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) {
      const extra = opts.diagnostics ? await opts.diagnostics() : '';
      throw new Error(
        `timed out after ${opts.timeoutMs} ms waiting for ${opts.what}${extra ? `\n${extra}` : ''}`,
      );
    }
    await delay(Math.min(interval, Math.max(1, deadline - Date.now())));
  }
}

/** True once Node has observed the child's exit (it has been reaped). */
export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/**
 * Resolves when the child has exited (immediately if it already has). Rejects after `timeoutMs`
 * (the child is left alone in that case; the caller decides whether to escalate).
 */
export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<ExitInfo> {
  if (hasExited(child)) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise<ExitInfo>((resolve, reject) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      resolve({ code, signal });
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      reject(new Error(`process ${child.pid} (${child.spawnfile}) did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('exit', onExit);
  });
}

/** Sends `signal` to the child by pid (if it is still running) and waits for it to exit. */
export async function signalAndWait(
  child: ChildProcess,
  signal: NodeJS.Signals,
  timeoutMs: number,
): Promise<ExitInfo> {
  if (!hasExited(child) && child.pid !== undefined) {
    try {
      process.kill(child.pid, signal);
    } catch (err) {
      // ESRCH: it exited between the check and the kill; 'exit' will still be (or has been) emitted.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
  return waitForExit(child, timeoutMs);
}

/**
 * Sends `signal`, waits up to `graceMs`, then escalates to SIGKILL and waits again. Never leaves the process running
 * unless even SIGKILL did not reap it within `graceMs` (then it throws).
 */
export async function terminate(
  child: ChildProcess,
  signal: NodeJS.Signals,
  graceMs: number,
): Promise<ExitInfo> {
  try {
    return await signalAndWait(child, signal, graceMs);
  } catch {
    return signalAndWait(child, 'SIGKILL', graceMs);
  }
}
