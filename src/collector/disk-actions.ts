/**
 * The programs auditd's failure actions start, for the collector: `exec /path` runs an administrator's script,
 * `email` hands a message to sendmail. Neither is waited for (auditd does not wait either); each start and exit is
 * logged. The script gets no arguments (as with auditd) and a small fixed environment that tells it whom to signal:
 * AUDITRELAY_COLLECTOR_PID (e.g. `kill -USR2 "$AUDITRELAY_COLLECTOR_PID"` to resume logging, as `service auditd
 * resume` does for auditd), AUDITRELAY_LOG_FILE and AUDITRELAY_ACTION (the key that fired).
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { checkActionScript } from '../fs/safe-files.js';
import type { Logger } from '../log.js';

/** Where auditd looks for sendmail (auditd-sendmail.c), then the usual place. */
export const SENDMAIL_CANDIDATES = ['/usr/lib/sendmail', '/usr/sbin/sendmail'];

/** Starts `script` for `action` (the key); returns false (logged) when it cannot be started. */
export function runActionScript(script: string, action: string, logFile: string, log: Logger): boolean {
  try {
    // Checked again now: the file may have changed since the configuration was read.
    checkActionScript(script, action);
  } catch (err) {
    log.error({ action, script, error: (err as Error).message }, `${action}: ${(err as Error).message}`);
    return false;
  }
  try {
    const child = spawn(script, [], {
      stdio: 'ignore',
      env: {
        PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        AUDITRELAY_COLLECTOR_PID: String(process.pid),
        AUDITRELAY_LOG_FILE: logFile,
        AUDITRELAY_ACTION: action,
      },
    });
    child.on('error', (err) =>
      log.error({ action, script, error: err.message }, `${action}: cannot run ${script}: ${err.message}`),
    );
    child.on('exit', (code, signal) => {
      const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
      (code === 0 ? log.info.bind(log) : log.error.bind(log))(
        { action, script, code, signal },
        `${action}: ${script} ${how}`,
      );
    });
    log.warn({ action, script, pid: child.pid }, `${action}: started ${script}`);
    return true;
  } catch (err) {
    log.error({ action, script, error: (err as Error).message }, `${action}: cannot run ${script}`);
    return false;
  }
}

/** auditd's `sendmail()`: `sendmail -t` with To/From/Subject headers. Returns false (logged) without sendmail. */
export function sendMail(
  account: string,
  subject: string,
  body: string,
  log: Logger,
  candidates: readonly string[] = SENDMAIL_CANDIDATES,
): boolean {
  const program = candidates.find((p) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!program) {
    log.error(
      { account, subject },
      `cannot send the e-mail "${subject}" to ${account}: no sendmail (${candidates.join(', ')}); install a mail transfer agent or choose another action`,
    );
    return false;
  }
  const child = spawn(program, ['-t'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
  child.on('error', (err) =>
    log.error({ account, error: err.message }, `cannot send the e-mail to ${account}: ${err.message}`),
  );
  child.on('exit', (code) => {
    if (code !== 0)
      log.error({ account, code }, `sendmail exited with status ${code} for the e-mail to ${account}`);
  });
  child.stdin!.on('error', () => {});
  child.stdin!.end(`To: ${account}\nFrom: root\nSubject: ${subject}\n\n${body}\n.\n`);
  return true;
}
