/**
 * Command line: `auditrelay agent | collector | check-config | demo`.
 * Exit statuses: 0 ok, 1 records left undelivered or runtime failure, 2 usage, 3 supervisor
 * escalation, 6 configuration error (as audisp-remote).
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent } from './agent/agent.js';
import { settingsFromConfig } from './agent/settings.js';
import { Collector } from './collector/collector.js';
import { collectorSettings } from './collector/settings.js';
import { formatEffectiveConfig, loadAgentConfig, UPSTREAM_AGENT_CONFIG_PATH } from './config/agent-config.js';
import { AuditRelayError, ConfigError, ExitCodes, UsageError } from './errors.js';
import { createLogger } from './log.js';

const USAGE = `usage: auditrelay <command> [options]

commands:
  agent [--config FILE]       forward plugin string-format records from stdin to the server
                              (FILE defaults to ${UPSTREAM_AGENT_CONFIG_PATH})
  collector --listen HOST:PORT --log FILE [--config FILE]
                              receive records from audisp-remote-compatible clients
  check-config [--collector] FILE
                              validate a config file and print the effective configuration
  demo                        forward the bundled real audit records through an agent and a
                              collector on loopback, restarting the collector midway
  --version, --help
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'agent':
        return await runAgent(rest);
      case 'collector':
        return await runCollector(rest);
      case 'check-config':
        return checkConfig(rest);
      case 'demo': {
        const { runDemo } = await import('./demo.js');
        return await runDemo(rest);
      }
      case '--version':
      case '-V':
        process.stdout.write(`${version()}\n`);
        return ExitCodes.OK;
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        process.stdout.write(USAGE);
        return command === undefined ? ExitCodes.USAGE : ExitCodes.OK;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    return reportError(err);
  }
}

function reportError(err: unknown): number {
  if (err instanceof ConfigError) {
    process.stderr.write(`auditrelay: config error: ${err.message}\n`);
    return ExitCodes.CONFIG;
  }
  if (err instanceof UsageError) {
    process.stderr.write(`auditrelay: ${err.message}\n\n${USAGE}`);
    return ExitCodes.USAGE;
  }
  if (err instanceof AuditRelayError) {
    process.stderr.write(`auditrelay: ${err.message}\n`);
    return ExitCodes.FAILURE;
  }
  // A parseArgs error has a code and a useful message.
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`auditrelay: ${e.message}\n\n${USAGE}`);
    return ExitCodes.USAGE;
  }
  throw err;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return `auditrelay ${pkg.version}`;
}

async function runAgent(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' } }, strict: true });
  const path = values.config ?? UPSTREAM_AGENT_CONFIG_PATH;
  const cfg = loadAgentConfig(path);
  const log = createLogger({ level: cfg.logLevel, name: 'auditrelay-agent' });
  const agent = new Agent(settingsFromConfig(cfg), { input: process.stdin, log });
  log.info(
    { config: path, server: `${cfg.remoteServer ?? '127.0.0.1'}:${cfg.port}`, transport: cfg.transport },
    'agent starting',
  );
  const onStop = (signal: string) => () => agent.stop(signal);
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGTERM', onStop('SIGTERM')],
    ['SIGINT', onStop('SIGINT')],
    ['SIGUSR2', () => agent.resume()],
    ['SIGUSR1', () => log.info(agent.status(), 'state report (SIGUSR1)')],
    // Until configuration reload lands, SIGHUP must at least not kill the agent (Node's default).
    [
      'SIGHUP',
      () =>
        log.warn('SIGHUP received: configuration reload is not implemented yet; restart to apply changes'),
    ],
  ];
  for (const [sig, fn] of handlers) process.on(sig, fn);
  const code = await agent.run();
  for (const [sig, fn] of handlers) process.off(sig, fn);
  log.info({ code, ...agent.status() }, 'agent exiting');
  log.flush?.();
  return code;
}

async function runCollector(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { listen: { type: 'string' }, log: { type: 'string' }, config: { type: 'string' } },
    strict: true,
  });
  const settings = collectorSettings({ config: values.config, listen: values.listen, log: values.log });
  const log = createLogger({ level: settings.logLevel, name: 'auditrelay-collector' });
  for (const warning of settings.warnings) log.warn(warning);
  const collector = new Collector(settings, log);
  await collector.start();
  const onHup = () =>
    log.warn('SIGHUP received: configuration reload is not implemented yet; restart to apply changes');
  process.on('SIGHUP', onHup);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping: sending ENDING to every client');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await collector.stop();
  process.off('SIGHUP', onHup);
  return ExitCodes.OK;
}

function checkConfig(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    options: { collector: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError('check-config takes exactly one FILE');
  const file = positionals[0]!;
  if (values.collector) {
    const settings = collectorSettings({ config: file });
    process.stdout.write(`${JSON.stringify(settings, null, 2)}\n`);
  } else {
    process.stdout.write(formatEffectiveConfig(loadAgentConfig(file)));
  }
  process.stderr.write(`${file}: configuration is valid\n`);
  return ExitCodes.OK;
}
