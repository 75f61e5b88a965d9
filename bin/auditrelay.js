#!/usr/bin/env node
// Thin entry point: all logic lives in the compiled TypeScript under dist/.
import { main } from '../dist/src/cli.js';

main(process.argv.slice(2)).then(
  (code) => {
    if (typeof code === 'number') process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`auditrelay: fatal: ${err?.stack ?? err}\n`);
    process.exit(70);
  },
);
