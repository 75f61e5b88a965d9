/**
 * The built collector (dist/src) as a process, with its evidence where the benchmark wants it: in its worker
 * thread (the default), inline on the event loop, or off. Used by bench/collector-ops.ts to measure what the
 * evidence costs; otherwise the same settings as `auditrelay collector --config FILE` (it calls the CLI's own
 * settings function). Prints `listening PORT` on stdout; SIGTERM stops it as the CLI does.
 *
 *   node dist/bench/collector-runner.js --config FILE --evidence worker|inline|off
 */
import { parseArgs } from 'node:util';
import { Collector } from '../src/collector/collector.js';
import { collectorSettings } from '../src/collector/settings.js';
import { createLogger } from '../src/log.js';

const { values } = parseArgs({
  options: { config: { type: 'string' }, evidence: { type: 'string', default: 'worker' } },
});
const settings = collectorSettings({ config: values.config });
if (values.evidence === 'off') settings.evidence = null;
else if (settings.evidence)
  settings.evidence = { ...settings.evidence, mode: values.evidence as 'worker' | 'inline' };
const log = createLogger({ level: 'warn', name: 'collector-runner' });
const collector = new Collector(settings, log);
const { port } = await collector.start();
process.stdout.write(`listening ${port}\n`);
process.once('SIGTERM', () => {
  void collector.stop().then(() => process.exit(0));
});
