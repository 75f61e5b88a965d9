#!/usr/bin/env -S node --inspect-port=[fe80::1]:9229
// Entry point of every command; all logic lives in the compiled TypeScript under dist/.
//
// First, before anything is loaded: a SIGUSR1 listener, which replaces Node's default handler (that one opens a
// debugger on 127.0.0.1:9229) for the life of the process. The shebang's --inspect-port covers Node's own
// start-up, before this line runs. See src/debug-guard.ts.
process.on('SIGUSR1', () => {});

const { main } = await import('../dist/src/cli.js');
const { closeUnrequestedInspector } = await import('../dist/src/debug-guard.js');
if (closeUnrequestedInspector()) {
  process.stderr.write(
    "auditrelay: warning: a SIGUSR1 during start-up opened Node's inspector; it is closed again\n",
  );
}

const internalError = (what) => {
  process.stderr.write(`auditrelay: internal error (a bug: please report it with this text): ${what}\n`);
};
let settled = false;
// A command whose work was left pending with nothing to wake it up would otherwise end silently with status 0.
process.on('exit', () => {
  if (!settled) {
    internalError('the command ended before it finished (a promise nothing could settle)');
    process.exitCode = 70;
  }
});
main(process.argv.slice(2)).then(
  (code) => {
    settled = true;
    if (typeof code === 'number') process.exitCode = code;
    // The command is done and its output written (synchronously, on Linux). A handle left open must not keep
    // the process alive: e.g. @statelyai/inspect retries an unreachable --inspect URL every 5 s even after
    // stop(). unref(): when nothing is left open, the process ends at once, as usual.
    setTimeout(() => process.exit(), 2000).unref();
  },
  (err) => {
    settled = true;
    internalError(err?.stack ?? String(err));
    process.exit(70);
  },
);
