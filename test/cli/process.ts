/**
 * Runs the built CLI (`node bin/auditrelay.js ...`) as a child process for the tests in this directory: output
 * collected, every process killed by pid in `killAll()` (call it in afterEach).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../helpers/corpus.js';
import { type ExitInfo, pollUntil, waitForExit } from '../helpers/wait.js';

export const BIN = path.join(REPO_ROOT, 'bin', 'auditrelay.js');

export function requireBuild(): void {
  if (!existsSync(path.join(REPO_ROOT, 'dist', 'src', 'cli.js')))
    throw new Error('dist/src/cli.js is missing: run `npm run build` before the CLI tests');
}

export interface CliProcess {
  child: ChildProcess;
  readonly pid: number;
  stdout(): string;
  stderr(): string;
  /** Waits until stdout + stderr match `re`. */
  waitForOutput(re: RegExp, what: string, timeoutMs?: number): Promise<void>;
  /** Waits for the exit and the end of its output. */
  finished(timeoutMs?: number): Promise<ExitInfo & { stdout: string; stderr: string }>;
}

const started = new Set<ChildProcess>();

export interface StartOptions {
  /** Written to stdin, then stdin is closed; `'keep-open'` leaves stdin open (written to by the test). */
  stdin?: Buffer | 'keep-open';
  env?: NodeJS.ProcessEnv;
  /** The command to run instead of `node bin/auditrelay.js` (e.g. packaging/auditrelay-plugin). */
  command?: string[];
}

export function startCli(args: string[], opts: StartOptions = {}): CliProcess {
  const [cmd, ...pre] = opts.command ?? [process.execPath, BIN];
  const child = spawn(cmd!, [...pre, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, AUDITRELAY_LOG_FORMAT: 'json', ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  started.add(child);
  child.once('exit', () => started.delete(child));
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err += s;
  });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.stdin!.on('error', () => {}); // EPIPE when it exits without reading everything
  if (opts.stdin === undefined) child.stdin!.end();
  else if (opts.stdin !== 'keep-open') child.stdin!.end(opts.stdin);
  const p: CliProcess = {
    child,
    get pid() {
      return child.pid!;
    },
    stdout: () => out,
    stderr: () => err,
    waitForOutput: (re, what, timeoutMs = 20_000) =>
      pollUntil(() => re.test(out + err), {
        timeoutMs,
        what,
        diagnostics: () => `stdout:\n${out}\nstderr:\n${err}\nexit: ${child.exitCode ?? child.signalCode}`,
      }).then(() => {}),
    async finished(timeoutMs = 30_000) {
      let exit: ExitInfo;
      try {
        exit = await waitForExit(child, timeoutMs);
      } catch (e) {
        throw new Error(`${(e as Error).message}\nstdout:\n${out}\nstderr:\n${err}`);
      }
      await closed;
      return { ...exit, stdout: out, stderr: err };
    },
  };
  return p;
}

/** Runs to completion. */
export function runCli(args: string[], opts: StartOptions = {}) {
  return startCli(args, opts).finished();
}

/** SIGKILLs every process started here that is still running, by pid. */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...started].map(async (child) => {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      await waitForExit(child, 10_000).catch(() => {});
    }),
  );
}
