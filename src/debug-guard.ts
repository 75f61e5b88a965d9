/**
 * Node's default SIGUSR1 handler starts the inspector, a debugger that runs any code it is sent, on
 * 127.0.0.1:9229: in a daemon running as root, root for every local user. It must never be reachable, whatever the
 * command. Node 20 has no --disable-sigusr1, so three layers (docs/errors.md, "SIGUSR1"):
 *
 * 1. bin/auditrelay.js installs a SIGUSR1 listener before it loads anything else: a listener replaces Node's
 *    handler for the life of the process (commands add their own: the agent's state report, ...).
 * 2. Before that line runs (Node's own start-up, some tens of ms), the handler is still Node's. The installed
 *    entry points (the `auditrelay` command's shebang, packaging/auditrelay-plugin, the systemd units) start Node
 *    with INSPECT_PORT_GUARD: the inspector's address is then a link-local IPv6 address without an interface,
 *    which no socket can bind (EINVAL), so a start-up SIGUSR1 only makes Node print that it could not start it.
 * 3. closeUnrequestedInspector() closes an inspector that a start-up SIGUSR1 opened anyway (`node
 *    bin/auditrelay.js` typed by hand, without the flag), unless it was asked for with --inspect.
 */
import inspector from 'node:inspector';

/** The Node option that makes a SIGUSR1 during Node's start-up unable to open the inspector. */
export const INSPECT_PORT_GUARD = '--inspect-port=[fe80::1]:9229';

/** True when the inspector was asked for on the command line or in NODE_OPTIONS (a developer debugging). */
function requested(): boolean {
  const args = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return args.some((a) => /^--inspect(-brk|-wait)?(=|$)/.test(a));
}

/** Closes an inspector nobody asked for; true when it was open. */
export function closeUnrequestedInspector(): boolean {
  if (inspector.url() === undefined || requested()) return false;
  inspector.close();
  return true;
}
