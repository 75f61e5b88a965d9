/**
 * `auditrelay sink --config FILE`: the sink (sink.ts) as a daemon. FILE has the collector's syntax (auditd.conf):
 * jetstream_servers, jetstream_stream, sink_consumer, log_file and the log management keys (max_log_file,
 * num_logs, max_log_file_action, space_left, ... , evidence); or, with `sink_log_layout = per_host`, one file per
 * host in sink_log_dir (at most sink_max_open_logs open; host-files.ts). Signals: SIGTERM/SIGINT finish the batch being
 * written (acknowledged) and stop; SIGUSR1 rotates the log now; SIGHUP is logged (a restart applies a change).
 */
import { parseArgs } from 'node:util';
import { fromConfig, jetstreamSettings } from '../collector/settings.js';
import { loadCollectorConfig } from '../config/collector-config.js';
import { ExitCodes, UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { SdNotifier } from '../service/notify.js';
import { Sink } from './sink.js';

export async function runSink(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' } }, strict: true });
  if (values.config === undefined) throw new UsageError('sink needs --config FILE');
  const { config: cfg, warnings } = loadCollectorConfig(values.config);
  const log = createLogger({ level: cfg.logLevel, name: 'auditrelay-sink' });
  for (const w of warnings) log.warn(w.text);
  const base = fromConfig({ ...cfg, output: 'file' });
  const sink = new Sink(
    {
      jetstream: jetstreamSettings(cfg),
      consumer: cfg.sinkConsumer,
      layout:
        cfg.sinkLogLayout === 'per_host'
          ? { kind: 'per_host', dir: cfg.sinkLogDir, maxOpen: cfg.sinkMaxOpenLogs }
          : { kind: 'single', logFile: cfg.logFile },
      management: base.logManagement!,
      evidence: cfg.sinkLogLayout === 'single' ? (base.evidence ?? null) : null,
    },
    log,
  );
  const notifier = new SdNotifier({ log, unsetEnvironment: true });
  let stop: () => void = () => {};
  const stopped = new Promise<string>((resolve) => {
    stop = () => resolve('signal');
  });
  let rotating: Promise<unknown> = Promise.resolve();
  const handlers: [NodeJS.Signals, () => void][] = [
    ['SIGTERM', () => stop()],
    ['SIGINT', () => stop()],
    ['SIGUSR1', () => (rotating = rotating.then(() => sink.rotate('SIGUSR1')).catch(() => {}))],
    [
      'SIGHUP',
      () => log.warn('SIGHUP: the sink reads its configuration at start only; restart it to apply a change'),
    ],
  ];
  for (const [sig, fn] of handlers) process.on(sig, fn);
  try {
    const started = sink.start();
    const first = await Promise.race([started.then(() => 'started'), stopped]).catch(async (err: unknown) => {
      // It could not start (AR_JETSTREAM, an unusable log): close what is open, then report it.
      await sink.stop().catch(() => {});
      throw err;
    });
    if (first === 'started') {
      const into =
        cfg.sinkLogLayout === 'per_host'
          ? `one file per host in ${cfg.sinkLogDir} (at most ${cfg.sinkMaxOpenLogs} open)`
          : cfg.logFile;
      void notifier.ready(`consuming ${cfg.jetstreamStream} into ${into}`);
      log.info(
        { stream: cfg.jetstreamStream, consumer: cfg.sinkConsumer, log: into },
        `sink: consuming stream ${cfg.jetstreamStream} (consumer ${cfg.sinkConsumer}) into ${into}`,
      );
      await stopped;
    }
    void notifier.stopping('finishing the batch being written');
    await sink.stop();
    await started.catch((err: unknown) => {
      if (first === 'started') throw err;
    });
    await notifier.close();
  } finally {
    for (const [sig, fn] of handlers) process.off(sig, fn);
  }
  return ExitCodes.OK;
}
