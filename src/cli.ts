/**
 * Command line: `auditrelay agent | collector | sink | check-config | status | import-queue | demo`.
 * `auditrelay <command> --help` prints that command's usage (src/usage.ts). An expected failure is one line
 * saying what, where and what to do, with the exit status of docs/errors.md: 0 ok, 1 records left undelivered or
 * a failure (e.g. an address in use), 2 usage, 3 supervisor escalation, 6 configuration error (as
 * audisp-remote). Only a bug prints a stack trace (exit 70, bin/auditrelay.js).
 */
import { lstatSync, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Agent, STOP_MARGIN_MS } from './agent/agent.js';
import { Krb5Client } from './agent/krb5-transport.js';
import { type AgentRecordIds, openRecordIds } from './agent/record-ids.js';
import { keepRestartKeys, reloadPlan } from './agent/reload-policy.js';
import { settingsFromConfig } from './agent/settings.js';
import { TlsClient } from './agent/tls-transport.js';
import { Collector } from './collector/collector.js';
import type { HostLossView } from './collector/hosts.js';
import { collectorReloadPlan, keepCollectorRestartKeys } from './collector/reload-policy.js';
import { collectorSettings, fromConfig } from './collector/settings.js';
import {
  AGENT_KEYS,
  type AgentConfig,
  formatEffectiveConfig,
  type HostPort,
  loadAgentConfig,
  UPSTREAM_AGENT_CONFIG_PATH,
} from './config/agent-config.js';
import {
  COLLECTOR_IGNORED_KEYS,
  COLLECTOR_KEYS,
  formatCollectorConfig,
  loadCollectorConfig,
} from './config/collector-config.js';
import { describeErrno } from './config/file.js';
import {
  AuditRelayError,
  ConfigError,
  EscalationError,
  ExitCodes,
  UnavailableError,
  UsageError,
} from './errors.js';
import { checkParentDirectory, writeFileAtomic } from './fs/safe-files.js';
import { openInput } from './input/spec.js';
import { createLogger, type Logger, reportFailure } from './log.js';
import { checkUpstreamQueueFile, importQueue } from './migrate/import-queue.js';
import { packageVersion } from './paths.js';
import { DurableQueue } from './queue/durable-queue.js';
import { SpillOnStopQueue } from './queue/spill-on-stop-queue.js';
import type { RecordQueue } from './queue/types.js';
import { SdNotifier } from './service/notify.js';
import { checkInspectUrl, createInspector } from './status/inspect.js';
import { agentMetrics, collectorMetrics } from './status/metrics.js';
import { StatusServer } from './status/server.js';
import { agentView, collectorView } from './status/views.js';
import { explainSystemError } from './system-errors.js';
import { COMMAND_USAGE, commandUsage, overallUsage } from './usage.js';

const COMMANDS: Readonly<Record<string, (args: string[]) => Promise<number> | number>> = {
  agent: (args) => runAgent(args),
  collector: (args) => runCollector(args),
  'check-config': (args) => checkConfig(args),
  status: (args) => showStatus(args),
  'import-queue': (args) => runImportQueue(args),
  events: (args) => runEvents(args),
  verify: (args) => runVerifyCommand(args),
  pubkey: (args) => runPubkeyCommand(args),
  report: (args) => runReportCommand(args),
  sink: async (args) => {
    const { runSink } = await import('./sink/command.js');
    return runSink(args);
  },
  demo: async (args) => {
    const { runDemo } = await import('./demo.js');
    return runDemo(args);
  },
};

/** `--help` or `-h` among a command's arguments (before a `--`). */
function wantsHelp(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const known = command !== undefined && Object.hasOwn(COMMANDS, command) ? command : undefined;
  try {
    switch (command) {
      case undefined:
        process.stdout.write(overallUsage());
        return ExitCodes.USAGE;
      case '--version':
      case '-V':
        process.stdout.write(`${version()}\n`);
        return ExitCodes.OK;
      case '--help':
      case '-h':
      case 'help': {
        const topic = rest[0];
        if (topic === undefined) process.stdout.write(overallUsage());
        else if (Object.hasOwn(COMMAND_USAGE, topic)) process.stdout.write(commandUsage(topic));
        else throw new UsageError(`help: unknown command '${topic}'`);
        return ExitCodes.OK;
      }
    }
    if (known === undefined) throw new UsageError(`unknown command '${command}'`);
    if (wantsHelp(rest)) {
      process.stdout.write(commandUsage(known));
      return ExitCodes.OK;
    }
    return await COMMANDS[known]!(rest);
  } catch (err) {
    return reportError(err, known);
  }
}

/**
 * One line on stderr for every failure a user can meet, and its exit status (docs/errors.md). A usage error is
 * followed by the usage of the command. Anything else is a bug: rethrown for bin/auditrelay.js (exit 70).
 */
function reportError(err: unknown, command: string | undefined): number {
  const usage = () => (command ? commandUsage(command) : overallUsage());
  if (err instanceof ConfigError) {
    reportFailure(`auditrelay: config error: ${err.message}`);
    return ExitCodes.CONFIG;
  }
  if (err instanceof UsageError) {
    reportFailure(`auditrelay: ${err.message}`, `\n${usage()}`);
    return ExitCodes.USAGE;
  }
  if (err instanceof EscalationError) {
    reportFailure(`auditrelay: ${err.message}`);
    return ExitCodes.ESCALATED;
  }
  if (err instanceof AuditRelayError) {
    reportFailure(`auditrelay: ${err.message}`);
    return ExitCodes.FAILURE;
  }
  // A parseArgs error: reworded as one line naming the option.
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS')) {
    reportFailure(`auditrelay: ${parseArgsMessage(e.code, e.message ?? '', command)}`, `\n${usage()}`);
    return ExitCodes.USAGE;
  }
  // A system error (a port in use, a missing directory, ...): what, where and what to do.
  const unavailable = explainSystemError(err, command);
  if (unavailable) {
    reportFailure(`auditrelay: ${unavailable.message}`);
    return ExitCodes.FAILURE;
  }
  throw err;
}

/** node:util parseArgs messages are several sentences long; one line that names the option instead. */
function parseArgsMessage(code: string, message: string, command: string | undefined): string {
  const prefix = command ? `${command}: ` : '';
  const quoted = /'([^']+)'/.exec(message)?.[1] ?? '';
  const option = quoted.split(' ')[0] ?? quoted;
  switch (code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `${prefix}unknown option '${option}'`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /ambiguous/.test(message)
        ? `${prefix}${option} needs a value; to give one that starts with '-', write ${option}=VALUE`
        : /does not take an argument/.test(message)
          ? `${prefix}${option} takes no value`
          : `${prefix}${option} needs a value`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `${prefix}unexpected argument '${option}'`;
    default:
      return `${prefix}${message.split('\n')[0]}`;
  }
}

function version(): string {
  return `auditrelay ${packageVersion()}`;
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
  const log = createLogger({ level: cfg.logLevel, name: 'auditrelay-agent', target: cfg.logTarget });
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
  if (settings.transport === 'tls') TlsClient.preflight(settings.tls);
  checkStateFileDirectory(cfg.stateFile);
  const queue = await openQueue(cfg, log);
  let recordIds: AgentRecordIds | null = null;
  if (cfg.recordIds && cfg.format === 'managed') {
    // Delivery comes first: without an identity the agent still sends every record (plain MESSAGEs, as before).
    try {
      recordIds = openRecordIds({
        queueDir: cfg.queueDir,
        agentId: cfg.agentId,
        persistence: queue.persistence,
      });
      log.info({ agent: recordIds.agent, boot: recordIds.boot }, 'record identities on (record_ids = yes)');
    } catch (err) {
      log.error(
        { error: (err as Error).message },
        `record identities off: ${(err as Error).message}; records are sent without them (a collector cannot drop resends); fix queue_dir or set agent_id, or record_ids = no`,
      );
    }
  }
  let input: ReturnType<typeof openInput>;
  try {
    input = openInput(cfg.input, {
      log,
      durableQueue: queue.persistence === 'crash-safe',
      tailStateFile: cfg.tailStateFile,
      tailStart: cfg.tailStart,
      tailPollMs: cfg.tailPollMs,
      tailStateFsync: cfg.fsync === 'always',
    });
  } catch (err) {
    await queue.close();
    throw err;
  }
  settings.inputName = input.name;
  const agent = new Agent(settings, { input: input.stream, log, queue, recordIds });
  const server = settings.servers
    .map((s) => `${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}`)
    .join(', ');
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
    ['SIGUSR1', () => writeStateReport(agent, cfg.stateFile, log)],
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
  const view = cfg.statusListen
    ? agentView(agent, () => ({
        linkDownMs: current.healthLinkDownTimeout * 1000,
        queueFill: current.healthQueueThreshold / 100,
      }))
    : null;
  const status =
    cfg.statusListen && view
      ? new StatusServer({
          host: cfg.statusListen.host,
          port: cfg.statusListen.port,
          role: 'agent',
          status: view.status,
          health: view.health,
          registry: agentMetrics({
            status: () => agent.status(),
            states: () => agent.observer.states,
            meter: agent.meter,
            health: view.health,
          }),
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
  view?.close();
  inspector?.stop();
  // A clean stop: what is not delivered stays on disk (mode = forward) or is written there now (immediate).
  const { lost } = await queue.close(agent.heldRecords);
  if (lost > 0 && queue.persistence === 'crash-safe') {
    log.error(
      { records: lost },
      `${lost} record(s) read while the queue was full could not be queued: they are lost`,
    );
  }
  await notifier.close();
  for (const [sig, fn] of handlers) process.off(sig, fn);
  log.info({ code, ...agent.status() }, 'agent exiting');
  log.flush?.();
  clearTimeout(failsafe);
  return code;
}

/**
 * `collector`: the signal table is auditd's — SIGTERM/SIGINT stop (ENDING to every client), SIGHUP reloads the
 * configuration (src/collector/reload-policy.ts: what applies at once, what re-listens, what needs a restart),
 * SIGUSR1 rotates the log now, SIGUSR2 resumes logging suspended by a disk action.
 */
async function runCollector(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      listen: { type: 'string' },
      log: { type: 'string' },
      config: { type: 'string' },
      'status-listen': { type: 'string' },
      'evidence-key-file': { type: 'string' },
    },
    strict: true,
  });
  const commandLine = {
    config: values.config,
    listen: values.listen,
    log: values.log,
    statusListen: values['status-listen'],
    evidenceKeyFile: values['evidence-key-file'],
  };
  let settings = collectorSettings(commandLine);
  const log = createLogger({ level: settings.logLevel, name: 'auditrelay-collector' });
  const collector = new Collector(settings, log);
  // Every signal is taken before anything listens: a SIGTERM right after "collector listening" (from a service
  // manager, a test) stops it cleanly instead of killing it with Node's default action.
  let stopSignal: string | null = null;
  let started = false;
  let wake = () => {};
  const onStop = (signal: string) => () => {
    if (stopSignal !== null) return;
    stopSignal = signal;
    wake();
  };
  /** Signals other than a stop are serialised: one reload, rotation or resume after the other. */
  let work: Promise<unknown> = Promise.resolve();
  const serially = (signal: string, fn: () => Promise<unknown>) => () => {
    if (!started || stopSignal !== null) {
      log.warn({ signal }, `${signal} ignored: the collector is ${stopSignal ? 'stopping' : 'starting'}`);
      return;
    }
    work = work
      .then(fn)
      .catch((err: unknown) =>
        log.error({ signal, error: (err as Error).message }, `${signal}: ${(err as Error).message}`),
      );
  };
  let status: StatusServer | null = null;
  const notifier = new SdNotifier({ log, unsetEnvironment: true });
  const view = collectorView(collector);
  const newStatusServer = (listen: HostPort) =>
    new StatusServer({
      host: listen.host,
      port: listen.port,
      role: 'collector',
      status: view.status,
      eventStatus: view.eventStatus,
      health: view.health,
      // output = jetstream has no log: no log metrics.
      registry: collectorMetrics(
        collector.output === 'file'
          ? collector
          : { stats: collector.stats, evidenceStatus: () => null, hosts: collector.hosts },
        view.health,
      ),
      log,
    });
  /** SIGHUP: re-read the file; a bad file keeps the running configuration (and says why). */
  const reload = async () => {
    let next: typeof settings;
    try {
      next = collectorSettings(commandLine);
    } catch (err) {
      log.error(
        { error: (err as Error).message },
        `SIGHUP: configuration not reloaded (${(err as Error).message}); keeping the running one`,
      );
      return;
    }
    const plan = collectorReloadPlan(settings.config, next.config);
    if (plan.restart.length > 0) {
      log.warn(
        { keys: plan.restart },
        `SIGHUP: ${plan.restart.join(', ')} can only change with a restart; kept as they were`,
      );
      const config = keepCollectorRestartKeys(settings.config, next.config);
      next = {
        ...fromConfig(config),
        logLevel: config.logLevel,
        statusListen: config.statusListen,
        warnings: next.warnings,
        config,
      };
    }
    for (const warning of next.warnings) log.warn(warning);
    void notifier.reloading();
    log.level = next.logLevel;
    const changed = await collector.reload(next);
    if (JSON.stringify(next.statusListen) !== JSON.stringify(settings.statusListen)) {
      await status?.stop();
      status = next.statusListen ? newStatusServer(next.statusListen) : null;
      if (status) await startStatus(status, log);
      changed.push('status_listen');
    }
    settings = next;
    log.info(
      { changed, live: plan.live, listener: plan.listener, restart: plan.restart },
      plan.live.length + plan.listener.length === 0
        ? 'SIGHUP: configuration reloaded; nothing that can change at run time changed'
        : `SIGHUP: configuration reloaded: ${[...plan.live, ...plan.listener].join(', ')}`,
    );
    void notifier.ready();
  };
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGTERM', onStop('SIGTERM')],
    ['SIGINT', onStop('SIGINT')],
    ['SIGHUP', serially('SIGHUP', reload)],
    // bin/auditrelay.js keeps Node's debugger off SIGUSR1; as auditd, it rotates the log.
    ['SIGUSR1', serially('SIGUSR1', () => collector.rotate('SIGUSR1'))],
    ['SIGUSR2', serially('SIGUSR2', () => collector.resume('SIGUSR2'))],
  ];
  for (const [sig, fn] of handlers) process.on(sig, fn);
  try {
    for (const warning of settings.warnings) log.warn(warning);
    await collector.start();
    status = settings.statusListen ? newStatusServer(settings.statusListen) : null;
    if (status) await startStatus(status, log);
    started = true;
    void notifier.ready(`listening on ${settings.host}:${settings.port}`);
    notifier.startWatchdog();
    if (stopSignal === null)
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    log.info({ signal: stopSignal }, 'stopping: sending ENDING to every client');
    void notifier.stopping('sending ENDING to every client');
    await work;
    await collector.stop();
    await status?.stop();
    await notifier.close();
  } finally {
    view.close();
    for (const [sig, fn] of handlers) process.off(sig, fn);
  }
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
  if (values.url !== undefined && values.config !== undefined)
    throw new UsageError('status takes --url or --config, not both');
  const base =
    values.url !== undefined
      ? checkStatusUrl(values.url)
      : statusUrlFromConfig(values.config ?? UPSTREAM_AGENT_CONFIG_PATH);
  const target = new URL('/status', base);
  const s = (await fetchStatus(target, 'status')) as Record<string, unknown>;
  process.stdout.write(values.json ? `${JSON.stringify(s, null, 2)}\n` : formatStatus(s));
  // The exit status is what /health answers: 0 for 200, UNHEALTHY (4) for 503; unreachable is 1 (fetchStatus).
  const healthy = (await fetchStatus(new URL('/health', base), 'health')) as boolean;
  return healthy ? ExitCodes.OK : ExitCodes.UNHEALTHY;
}

/** `--url`: an http(s) URL of a status listener. */
function checkStatusUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(
      `--url: '${text}' is not a URL; expected http://HOST:PORT, e.g. http://127.0.0.1:9101`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UsageError(
      `--url: '${text}' is not an http:// URL; expected http://HOST:PORT, e.g. http://127.0.0.1:9101`,
    );
  return url;
}

const STATUS_TIMEOUT_MS = 5000;

/**
 * GET /status of a status listener, as a parsed status, or a one-line UnavailableError. node:http rather than
 * fetch(): fetch refuses the ports of the Fetch standard's block list (e.g. 6000), and a connection closed
 * without an answer leaves its promise pending forever.
 */
function fetchStatus(target: URL, what: 'status' | 'health'): Promise<Record<string, unknown> | boolean> {
  const get = target.protocol === 'https:' ? https.get : http.get;
  const unreachable = (why: string, cause?: unknown) =>
    new UnavailableError(
      `status: cannot reach ${target}: ${why}; is the agent or collector running, with status_listen = ${target.host}?`,
      { cause },
    );
  const notOurs = (what: string) =>
    new UnavailableError(
      `status: ${target} ${what}: it is not an auditrelay status listener; check the URL or status_listen`,
    );
  return new Promise((resolve, reject) => {
    const req = get(target, { timeout: STATUS_TIMEOUT_MS }, (res) => {
      if (what === 'health' && (res.statusCode === 200 || res.statusCode === 503)) {
        res.resume();
        resolve(res.statusCode === 200);
        return;
      }
      if (res.statusCode !== 200) {
        res.resume();
        reject(notOurs(`answered HTTP ${res.statusCode}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > 16 << 20) req.destroy(notOurs('answered more than 16 MiB'));
        else chunks.push(c);
      });
      res.on('error', (err) => reject(unreachable(describeErrno(err), err)));
      res.on('end', () => {
        let s: unknown;
        try {
          s = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          reject(notOurs('did not answer with JSON'));
          return;
        }
        const role = (s as { role?: unknown } | null)?.role;
        if (role !== 'agent' && role !== 'collector')
          reject(notOurs('answered JSON without an agent or collector role'));
        else resolve(s as Record<string, unknown>);
      });
    });
    req.on('timeout', () => req.destroy(unreachable(`no answer within ${STATUS_TIMEOUT_MS / 1000} s`)));
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        err instanceof UnavailableError
          ? err
          : unreachable(
              err.code === 'ECONNRESET' ? 'the connection was closed without an answer' : describeErrno(err),
              err,
            ),
      ),
    );
  });
}

/**
 * The status listener named by a configuration file of either kind: a collector's (auditd.conf syntax) when
 * its keys are a collector's, else an agent's (audisp-remote.conf syntax), whose loader then names any key
 * that fits neither.
 */
function statusUrlFromConfig(file: string): URL {
  const kind = configKind(file);
  const listen =
    kind === 'collector' ? loadCollectorConfig(file).config.statusListen : loadAgentConfig(file).statusListen;
  if (!listen) {
    throw new UsageError(
      `status_listen is not set in ${file} (the ${kind}'s configuration); set status_listen = 127.0.0.1:PORT ` +
        `there and restart the ${kind}, or pass --url http://HOST:PORT`,
    );
  }
  // A listener on every address is reached on loopback.
  const host = listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host === '::' ? '::1' : listen.host;
  return new URL(`http://${host.includes(':') ? `[${host}]` : host}:${listen.port}`);
}

/** 'collector' when the file sets a key only a collector's configuration has and none only an agent's has. */
function configKind(file: string): 'agent' | 'collector' {
  let text: string;
  try {
    text = readFileSync(file, 'latin1');
  } catch {
    return 'agent'; // the loader says what is wrong with the file
  }
  const keys = text
    .split('\n')
    .map((line) => /^\s*([A-Za-z0-9_]+)\s*=/.exec(line)?.[1])
    .filter((k): k is string => k !== undefined);
  const agent = new Set(AGENT_KEYS);
  const collector = new Set([...COLLECTOR_KEYS, ...Object.keys(COLLECTOR_IGNORED_KEYS)]);
  const collectorOnly = keys.some((k) => collector.has(k) && !agent.has(k));
  const agentOnly = keys.some((k) => agent.has(k) && !collector.has(k));
  return collectorOnly && !agentOnly ? 'collector' : 'agent';
}

function formatStatus(s: Record<string, unknown>): string {
  const lines: string[] = [];
  const skip = new Set(['states', 'transitions', 'errors', 'role', 'hostList', 'health', 'version']);
  const health = s.health as
    | { status: string; healthy: boolean; reasons: { code: string; message: string }[] }
    | undefined;
  lines.push(`auditrelay ${s.role}`);
  if (health) {
    lines.push(
      `  ${'health'.padEnd(14)} ${health.status.toUpperCase()}${health.healthy ? '' : ' (unhealthy)'}`,
    );
    for (const r of health.reasons) lines.push(`    ${r.code}: ${r.message}`);
  }
  if (s.version !== undefined) lines.push(`  ${'version'.padEnd(14)} ${s.version}`);
  const states = (s.states ?? {}) as Record<string, string>;
  for (const [m, v] of Object.entries(states)) lines.push(`  ${m.padEnd(14)} ${v}`);
  for (const [k, v] of Object.entries(s)) {
    if (skip.has(k)) continue;
    if (v !== null && typeof v === 'object') {
      const parts = Object.entries(v as Record<string, unknown>).map(([a, b]) => `${a}=${b}`);
      lines.push(`  ${k.padEnd(14)} ${parts.join(' ')}`);
    } else lines.push(`  ${k.padEnd(14)} ${v}`);
  }
  const hosts = (s.hostList ?? []) as {
    host: string;
    records: number;
    connected: boolean;
    lastSeen: string;
    silentSeconds: number | null;
    loss?: HostLossView | null;
  }[];
  const lossy = hosts.filter(
    (h) =>
      h.loss &&
      (h.loss.missing > 0 || h.loss.kernelLost > 0 || h.loss.auditdAborts > 0 || h.loss.auditdErrors > 0),
  );
  if (lossy.length > 0) {
    lines.push('hosts with loss (auditrelay report over the logs has the details):');
    for (const h of lossy.slice(0, 20)) {
      const l = h.loss!;
      const parts = [
        l.missing > 0 ? `${l.missing} record(s) missing in ${l.gaps} gap(s)` : '',
        l.kernelLost > 0 ? `kernel lost ${l.kernelLost} event(s)` : '',
        l.auditdAborts > 0 ? `${l.auditdAborts} auditd abort(s)` : '',
        l.auditdErrors > 0 ? `${l.auditdErrors} auditd error(s)` : '',
        l.restarts > 0 ? `${l.restarts} agent restart(s)` : '',
      ].filter((p) => p !== '');
      lines.push(`  ${h.host}: ${parts.join(', ')}`);
    }
    if (lossy.length > 20) lines.push(`  … and ${lossy.length - 20} more (auditrelay status --json)`);
  }
  const silent = hosts.filter((h) => h.silentSeconds !== null);
  if (silent.length > 0) {
    lines.push('silent hosts:');
    for (const h of silent.slice(0, 20))
      lines.push(
        `  ${h.host} silent for ${h.silentSeconds} s (last seen ${h.lastSeen}, ${h.connected ? 'connected' : 'not connected'}, ${h.records} records)`,
      );
    if (silent.length > 20) lines.push(`  … and ${silent.length - 20} more (auditrelay status --json)`);
  }
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

/** \`events\`: audit logs to JSON events (docs/events.md). */
async function runEvents(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { raw: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  const { openEventInputs, writeEvents } = await import('./evidence/events-cli.js');
  try {
    await writeEvents(openEventInputs(positionals, process.stdin), {
      out: process.stdout,
      raw: values.raw ?? false,
      warn: (m) => process.stderr.write(`auditrelay: ${m}\n`),
    });
  } catch (err) {
    // The reader of stdout went away (`| head`): stop quietly, as Unix filters do.
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') return ExitCodes.OK;
    throw err;
  }
  return ExitCodes.OK;
}

/** \`verify\`: logs against their evidence (docs/evidence.md). */
async function runVerifyCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      key: { type: 'string', multiple: true },
      checkpoint: { type: 'string', multiple: true },
      prove: { type: 'string' },
      proof: { type: 'string' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length > 1) throw new UsageError('verify takes one PATH');
  const { runVerify } = await import('./evidence/evidence-cli.js');
  return runVerify(
    {
      ...(positionals[0] !== undefined ? { path: positionals[0] } : {}),
      keys: values.key ?? [],
      checkpoints: values.checkpoint ?? [],
      ...(values.prove !== undefined ? { prove: values.prove } : {}),
      ...(values.proof !== undefined ? { proof: values.proof } : {}),
    },
    { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) },
  );
}

/** \`report\`: loss per host in collector logs (docs/loss.md). */
async function runReportCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      since: { type: 'string' },
      until: { type: 'string' },
      json: { type: 'boolean' },
      'serial-gaps': { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  });
  const { runReport } = await import('./evidence/report.js');
  try {
    return await runReport(
      {
        paths: positionals,
        ...(values.since !== undefined ? { since: values.since } : {}),
        ...(values.until !== undefined ? { until: values.until } : {}),
        json: values.json ?? false,
        serialGaps: values['serial-gaps'] ?? false,
      },
      { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) },
    );
  } catch (err) {
    // The reader of stdout went away (`| head`): stop quietly.
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') return ExitCodes.OK;
    throw err;
  }
}

/** \`pubkey\`: the verifier key of the evidence signing key. */
async function runPubkeyCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'key-file': { type: 'string' },
      generate: { type: 'boolean' },
      name: { type: 'string' },
    },
    allowPositionals: false,
    strict: true,
  });
  const { runPubkey } = await import('./evidence/evidence-cli.js');
  return runPubkey(
    {
      ...(values['key-file'] !== undefined ? { keyFile: values['key-file'] } : {}),
      ...(values.name !== undefined ? { name: values.name } : {}),
      generate: values.generate ?? false,
    },
    { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) },
  );
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
  // A wrong path is reported before the queue directory is created; the queue's lock refuses a running agent.
  checkUpstreamQueueFile(file);
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
 * `mode = forward`: the durable queue in `queue_dir` (docs/queue.md); `mode = immediate`: a memory queue bounded
 * by `queue_depth`, as upstream, whose records a clean stop writes to `queue_dir` (sent first at the next start).
 */
async function openQueue(cfg: AgentConfig, log: Logger): Promise<RecordQueue> {
  if (cfg.mode !== 'forward') {
    return SpillOnStopQueue.open({
      capacity: cfg.queueDepth,
      dir: cfg.queueDir,
      maxBytes: cfg.queueMaxBytes,
      fsync: cfg.fsync,
      fsyncIntervalMs: cfg.fsyncIntervalMs,
      log: log.child({ component: 'queue' }),
    });
  }
  const queue = await openDurableQueue(cfg, log);
  log.info({ dir: cfg.queueDir, backlog: queue.depth, fsync: cfg.fsync }, 'durable queue open');
  return queue;
}

/**
 * `state_file` is written (SIGUSR1) only into a directory nobody else can write: an existing directory is checked
 * at start (the agent refuses to start otherwise); a missing one is created, and checked, when first needed.
 */
function checkStateFileDirectory(file: string): void {
  try {
    lstatSync(path.dirname(path.resolve(file)));
  } catch {
    return;
  }
  checkParentDirectory(file, 'state_file');
}

/** SIGUSR1: the state report, like upstream's /run/audit/remote.state (written atomically). */
function writeStateReport(agent: Agent, file: string, log: Logger): void {
  const s = agent.status();
  const lines = [
    `time = ${new Date().toISOString()}`,
    `pid = ${process.pid}`,
    ...Object.entries(s).map(([k, v]) => `${k} = ${v}`),
    ...[...agent.observer.states].map(([m, v]) => `state.${m} = ${v}`),
    ...agent.observer.foldedErrors
      .slice(-5)
      .map(
        (e) =>
          `error = ${e.time} ${e.source}: ${e.message}${e.count ? ` (x${e.count} since ${e.since})` : ''}`,
      ),
    ...agent.observer.foldedTransitions
      .slice(-10)
      .map(
        (t) =>
          `transition = ${t.time} ${t.actor}: ${t.from} -> ${t.to} (${t.event})${t.count ? ` (x${t.count} since ${t.since})` : ''}`,
      ),
  ];
  try {
    // Never through a link, the temporary file created exclusively, in a directory only we can write.
    checkParentDirectory(file, 'state_file', { create: true, mode: 0o750 });
    writeFileAtomic(file, `${lines.join('\n')}\n`, { mode: 0o640, fsync: false, what: 'state file' });
    log.info({ file }, 'state report written (SIGUSR1)');
  } catch (err) {
    log.error({ file, error: (err as Error).message }, 'state report could not be written');
  }
}
