/**
 * Command line: `auditrelay agent | collector | check-config | demo`.
 * Exit statuses: 0 ok, 1 records left undelivered or runtime failure, 2 usage, 3 supervisor
 * escalation, 6 configuration error (as audisp-remote).
 */
import { readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Agent, STOP_MARGIN_MS } from './agent/agent.js';
import { Krb5Client } from './agent/krb5-transport.js';
import { keepRestartKeys, reloadPlan } from './agent/reload-policy.js';
import { settingsFromConfig } from './agent/settings.js';
import { Collector } from './collector/collector.js';
import { collectorSettings } from './collector/settings.js';
import {
  type AgentConfig,
  formatEffectiveConfig,
  loadAgentConfig,
  UPSTREAM_AGENT_CONFIG_PATH,
} from './config/agent-config.js';
import { formatCollectorConfig, loadCollectorConfig } from './config/collector-config.js';
import { AuditRelayError, ConfigError, ExitCodes, UsageError } from './errors.js';
import { openInput } from './input/spec.js';
import { createLogger, type Logger } from './log.js';
import { importQueue } from './migrate/import-queue.js';
import { PACKAGE_ROOT } from './paths.js';
import { DurableQueue } from './queue/durable-queue.js';
import { SdNotifier } from './service/notify.js';
import { checkInspectUrl, createInspector } from './status/inspect.js';
import { agentMetrics, collectorMetrics } from './status/metrics.js';
import { StatusServer } from './status/server.js';

const USAGE = `usage: auditrelay <command> [options]

commands:
  agent [--config FILE] [--inspect ws://127.0.0.1:PORT [--inspect-remote]]
                              forward plugin string-format records from stdin to the server
                              (FILE defaults to ${UPSTREAM_AGENT_CONFIG_PATH}); --inspect streams
                              the statecharts to the Stately inspector (payloads redacted)
  collector --listen HOST:PORT --log FILE [--config FILE] [--status-listen HOST:PORT]
                              receive records from audisp-remote-compatible clients
  check-config [--collector] FILE
                              validate a config file and print the effective configuration
  status [--url URL | --config FILE] [--json]
                              show a running agent's or collector's state (needs status_listen)
  import-queue [--config FILE] [--queue-file FILE] [--skip N] [--dry-run]
                              move audisp-remote's forward-mode queue file into auditrelay's
                              durable queue (queue_dir), so a host switching over keeps its backlog
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
      case 'status':
        return await showStatus(rest);
      case 'import-queue':
        return await runImportQueue(rest);
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
  const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as {
    version: string;
  };
  return `auditrelay ${pkg.version}`;
}

async function runAgent(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      inspect: { type: 'string' },
      'inspect-remote': { type: 'boolean' },
    },
    strict: true,
  });
  const configPath = values.config ?? UPSTREAM_AGENT_CONFIG_PATH;
  const inspectUrl = values.inspect
    ? checkInspectUrl(values.inspect, values['inspect-remote'] ?? false)
    : null;
  const cfg = loadAgentConfig(configPath);
  const log = createLogger({ level: cfg.logLevel, name: 'auditrelay-agent' });
  const settings = settingsFromConfig(cfg);
  const inspector = inspectUrl ? await createInspector(inspectUrl) : null;
  if (inspector) {
    settings.inspect = inspector.inspect;
    log.info(
      { url: inspectUrl?.toString() },
      'streaming statechart events to the inspector (payloads redacted)',
    );
  }
  // krb5 problems (addon missing, unsafe keytab) are reported before the queue is locked.
  if (settings.transport === 'krb5') Krb5Client.preflight(settings.krb5, log);
  const queue = await openQueue(cfg, log);
  const input = openInput(cfg.input, {
    log,
    durableQueue: queue !== null,
    tailStateFile: cfg.tailStateFile,
    tailStart: cfg.tailStart,
    tailPollMs: cfg.tailPollMs,
    tailStateFsync: cfg.fsync === 'always',
  });
  settings.inputName = input.name;
  const agent = new Agent(settings, { input: input.stream, log, ...(queue ? { queue } : {}) });
  const server = `${cfg.remoteServer ?? '127.0.0.1'}:${cfg.port}`;
  log.info({ config: configPath, input: input.name, server, transport: cfg.transport }, 'agent starting');
  // systemd (service mode): READY once the queue and the input are open, never waiting for the network.
  const notifier = new SdNotifier({ log, unsetEnvironment: true });
  let failsafe: NodeJS.Timeout | undefined;
  const onStop = (signal: string) => () => {
    void notifier.stopping(`draining ${agent.queue.depth} record(s)`);
    agent.stop(signal);
    // The agent's machines stop at drain_timeout; the process goes at most STOP_MARGIN_MS later, whatever
    // closing the queue or the listeners takes (a held queue lock would keep the replacement out).
    failsafe ??= setTimeout(
      () => {
        log.fatal(`did not exit within drain_timeout + ${STOP_MARGIN_MS} ms of ${signal}; exiting now`);
        log.flush?.();
        process.exit(ExitCodes.FAILURE);
      },
      current.drainTimeout * 1000 + STOP_MARGIN_MS,
    ).unref();
  };
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGTERM', onStop('SIGTERM')],
    ['SIGINT', onStop('SIGINT')],
    ['SIGUSR2', () => agent.resume()],
    ['SIGUSR1', () => void writeStateReport(agent, cfg.stateFile, log)],
    ['SIGHUP', () => reload()],
  ];
  let current = cfg;
  /** SIGHUP: re-read the file; a bad file keeps the running configuration (and says why). */
  const reload = () => {
    let next: AgentConfig;
    try {
      next = loadAgentConfig(configPath);
    } catch (err) {
      log.error(
        { error: (err as Error).message },
        'SIGHUP: configuration not reloaded; keeping the running one',
      );
      return;
    }
    const plan = reloadPlan(current, next);
    if (plan.restart.length > 0) {
      log.warn(
        { keys: plan.restart },
        `SIGHUP: ${plan.restart.join(', ')} can only change with a restart; kept as they were`,
      );
      next = keepRestartKeys(current, next);
    }
    void notifier.reloading();
    log.level = next.logLevel;
    const nextSettings = settingsFromConfig(next);
    nextSettings.inputName = input.name;
    const changed = agent.reconfigure(nextSettings, plan);
    current = next;
    log.info({ changed }, 'SIGHUP: configuration reloaded');
    void notifier.ready();
  };
  for (const [sig, fn] of handlers) process.on(sig, fn);
  const status = cfg.statusListen
    ? new StatusServer({
        host: cfg.statusListen.host,
        port: cfg.statusListen.port,
        role: 'agent',
        status: () => ({ ...agent.status() }),
        registry: agentMetrics({ status: () => agent.status(), states: () => agent.observer.states }),
        observer: agent.observer,
        log,
      })
    : null;
  const running = agent.run();
  if (status) await startStatus(status, log);
  void notifier.ready(`forwarding ${input.name} to ${server}`);
  // The watchdog is fed while the supervisor runs and the connection actor is alive (not mid-restart).
  notifier.startWatchdog(() => agent.healthy());
  const onTransition = () => void notifier.status(`${agent.connectionState()}, ${agent.queue.depth} queued`);
  agent.observer.on('transition', onTransition);
  const code = await running;
  agent.observer.off('transition', onTransition);
  input.close();
  await status?.stop();
  inspector?.stop();
  await queue?.close();
  await notifier.close();
  for (const [sig, fn] of handlers) process.off(sig, fn);
  log.info({ code, ...agent.status() }, 'agent exiting');
  log.flush?.();
  clearTimeout(failsafe);
  return code;
}

async function runCollector(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      listen: { type: 'string' },
      log: { type: 'string' },
      config: { type: 'string' },
      'status-listen': { type: 'string' },
    },
    strict: true,
  });
  const settings = collectorSettings({
    config: values.config,
    listen: values.listen,
    log: values.log,
    statusListen: values['status-listen'],
  });
  const log = createLogger({ level: settings.logLevel, name: 'auditrelay-collector' });
  for (const warning of settings.warnings) log.warn(warning);
  const collector = new Collector(settings, log);
  await collector.start();
  const status = settings.statusListen
    ? new StatusServer({
        host: settings.statusListen.host,
        port: settings.statusListen.port,
        role: 'collector',
        status: () => ({ ...collector.stats }),
        registry: collectorMetrics(collector),
        log,
      })
    : null;
  if (status) await startStatus(status, log);
  const notifier = new SdNotifier({ log, unsetEnvironment: true });
  void notifier.ready(`listening on ${settings.host}:${settings.port}`);
  notifier.startWatchdog();
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
  void notifier.stopping('sending ENDING to every client');
  await collector.stop();
  await status?.stop();
  await notifier.close();
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
    const { config, warnings } = loadCollectorConfig(file);
    for (const w of warnings) process.stderr.write(`auditrelay: warning: ${w.text}\n`);
    process.stdout.write(formatCollectorConfig(config));
  } else {
    process.stdout.write(formatEffectiveConfig(loadAgentConfig(file)));
  }
  process.stderr.write(`${file}: configuration is valid\n`);
  return ExitCodes.OK;
}

/** A status listener that cannot bind is reported, not fatal: forwarding matters more. */
async function startStatus(server: StatusServer, log: Logger): Promise<void> {
  try {
    await server.start();
  } catch (err) {
    log.error({ error: (err as Error).message }, 'status listener could not start; continuing without it');
  }
}

async function showStatus(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { url: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } },
    strict: true,
  });
  let url = values.url;
  if (!url) {
    const cfg = loadAgentConfig(values.config ?? UPSTREAM_AGENT_CONFIG_PATH);
    if (!cfg.statusListen) {
      throw new UsageError('status_listen is not set in the agent config; pass --url http://HOST:PORT');
    }
    const h = cfg.statusListen.host;
    url = `http://${h.includes(':') ? `[${h}]` : h}:${cfg.statusListen.port}`;
  }
  const target = new URL('/status', url);
  let res: Response;
  try {
    res = await fetch(target, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    process.stderr.write(
      `auditrelay: cannot reach ${target}: ${(err as Error).cause ?? (err as Error).message}\n`,
    );
    return ExitCodes.FAILURE;
  }
  const s = (await res.json()) as Record<string, unknown>;
  if (values.json) {
    process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
    return ExitCodes.OK;
  }
  process.stdout.write(formatStatus(s));
  return ExitCodes.OK;
}

function formatStatus(s: Record<string, unknown>): string {
  const lines: string[] = [];
  const skip = new Set(['states', 'transitions', 'errors', 'role']);
  lines.push(`auditrelay ${s.role}`);
  const states = (s.states ?? {}) as Record<string, string>;
  for (const [m, v] of Object.entries(states)) lines.push(`  ${m.padEnd(14)} ${v}`);
  for (const [k, v] of Object.entries(s)) if (!skip.has(k)) lines.push(`  ${k.padEnd(14)} ${v}`);
  const errors = (s.errors ?? []) as { time: string; source: string; message: string }[];
  if (errors.length > 0) {
    lines.push('recent errors:');
    for (const e of errors.slice(-5)) lines.push(`  ${e.time} ${e.source}: ${e.message}`);
  }
  const transitions = (s.transitions ?? []) as { time: string; actor: string; from: string; to: string }[];
  if (transitions.length > 0) {
    lines.push('recent transitions:');
    for (const t of transitions.slice(-8)) lines.push(`  ${t.time} ${t.actor}: ${t.from ?? ''} -> ${t.to}`);
  }
  return `${lines.join('\n')}\n`;
}

/** `import-queue`: audisp-remote's queue file (reference §6.5) into our durable queue (docs/migrating.md). */
async function runImportQueue(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      'queue-file': { type: 'string' },
      skip: { type: 'string' },
      'dry-run': { type: 'boolean' },
    },
    strict: true,
  });
  const skip = values.skip === undefined ? 0 : Number(values.skip);
  if (!Number.isInteger(skip) || skip < 0)
    throw new UsageError(`--skip must be a whole number, not '${values.skip}'`);
  const cfg = loadAgentConfig(values.config ?? UPSTREAM_AGENT_CONFIG_PATH);
  const log = createLogger({ level: cfg.logLevel, name: 'auditrelay-import' });
  const file = values['queue-file'] ?? cfg.queueFile;
  // The queue's lock refuses a running agent.
  const queue = await openDurableQueue(cfg, log);
  try {
    const r = importQueue(file, queue, log, { skip, dryRun: values['dry-run'] ?? false });
    for (const f of r.findings) process.stderr.write(`auditrelay: ${f.message}\n`);
    process.stdout.write(
      `${values['dry-run'] ? 'would import' : 'imported'} ${values['dry-run'] ? r.records - r.skippedByOption : r.imported} record(s) from ${file} into ${cfg.queueDir}` +
        ` (skipped ${r.skipped} unusable slot(s)${r.skippedByOption ? `, ${r.skippedByOption} on request` : ''})\n`,
    );
    if (!values['dry-run'] && cfg.mode !== 'forward') {
      process.stderr.write(
        'auditrelay: note: set mode = forward so that the agent sends the imported records\n',
      );
    }
  } finally {
    await queue.close();
  }
  return ExitCodes.OK;
}

async function openDurableQueue(cfg: AgentConfig, log: Logger): Promise<DurableQueue> {
  const { queue } = await DurableQueue.open({
    dir: cfg.queueDir,
    maxBytes: cfg.queueMaxBytes,
    fsync: cfg.fsync,
    fsyncIntervalMs: cfg.fsyncIntervalMs,
    log: log.child({ component: 'queue' }),
  });
  return queue;
}

/**
 * `mode = forward`: the durable queue in `queue_dir` (docs/queue.md); `mode = immediate`: memory only,
 * as upstream (null here: the agent makes its own memory queue bounded by `queue_depth`).
 */
async function openQueue(cfg: AgentConfig, log: Logger): Promise<DurableQueue | null> {
  if (cfg.mode !== 'forward') return null;
  const queue = await openDurableQueue(cfg, log);
  log.info({ dir: cfg.queueDir, backlog: queue.depth, fsync: cfg.fsync }, 'durable queue open');
  return queue;
}

/** SIGUSR1: the state report, like upstream's /run/audit/remote.state (written atomically). */
async function writeStateReport(agent: Agent, file: string, log: Logger): Promise<void> {
  const s = agent.status();
  const lines = [
    `time = ${new Date().toISOString()}`,
    `pid = ${process.pid}`,
    ...Object.entries(s).map(([k, v]) => `${k} = ${v}`),
    ...[...agent.observer.states].map(([m, v]) => `state.${m} = ${v}`),
    ...agent.observer.errors.slice(-5).map((e) => `error = ${e.time} ${e.source}: ${e.message}`),
    ...agent.observer.transitions
      .slice(-10)
      .map((t) => `transition = ${t.time} ${t.actor}: ${t.from} -> ${t.to} (${t.event})`),
  ];
  try {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o750 });
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, `${lines.join('\n')}\n`, { mode: 0o640 });
    await rename(tmp, file);
    log.info({ file }, 'state report written (SIGUSR1)');
  } catch (err) {
    log.error({ file, error: (err as Error).message }, 'state report could not be written');
  }
}
