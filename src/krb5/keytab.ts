/**
 * upstream's rule for Kerberos key files (audisp-remote.c `negotiate_credentials`, auditd-listen.c
 * `auditd_tcp_listen_init`): if the keytab exists it must be mode 0400 and owned by root, otherwise the key is
 * treated as compromised and not used. auditrelay enforces it when it runs as root (a non-root test or
 * development run cannot own a file as root) and explains the fix.
 */
import { statSync } from 'node:fs';
import { ConfigError } from '../errors.js';

export interface KeytabCheck {
  /** The file exists (a missing keytab is not an error here: acquiring credentials from it fails later). */
  exists: boolean;
}

function mode(m: number): string {
  return `0${(m & 0o7777).toString(8).padStart(3, '0')}`;
}

/**
 * Checks `file` (the value of `key`, e.g. krb5_key_file). Throws ConfigError naming the file, its owner and
 * mode, and the commands that fix it, when `enforce` is set and the rule is broken; a path that exists but is
 * not a regular file is always refused.
 */
export function checkKeytabFile(file: string, key: string, enforce: boolean): KeytabCheck {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { exists: false };
    throw new ConfigError(`cannot examine the keytab ${file}: ${code ?? (err as Error).message}`, {
      key,
      value: file,
    });
  }
  if (!st.isFile()) {
    throw new ConfigError(`the keytab ${file} is not a regular file`, { key, value: file });
  }
  if (enforce && (st.uid !== 0 || (st.mode & 0o7777) !== 0o400)) {
    throw new ConfigError(
      `the keytab ${file} is owned by uid ${st.uid} with mode ${mode(st.mode)}; it must be owned by root ` +
        'with mode 0400 (anyone who can read it can impersonate this host; auditd refuses it too)',
      { key, value: file, allowed: `fix with: chown root:root ${file} && chmod 0400 ${file}` },
    );
  }
  return { exists: true };
}

/** Whether the ownership/mode rule applies: the process runs as root. */
export function enforceKeytabRule(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}
