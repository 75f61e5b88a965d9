/**
 * The usage texts of `auditrelay` and of each command (`auditrelay <command> --help`). One table, so that the
 * overview and the per-command texts cannot disagree about which commands and options exist.
 */
import { UPSTREAM_AGENT_CONFIG_PATH } from './config/agent-config.js';

export interface CommandUsage {
  /** The arguments after the command name. */
  synopsis: string;
  /** One line for the overview. */
  summary: string;
  /** The rest of `auditrelay <command> --help`: what it does, options, signals, exit statuses. */
  details: string;
}

const EXIT_STATUSES = 'exit status: 0 done; 1 failure; 2 usage error; 6 configuration error (docs/errors.md)';

export const COMMAND_USAGE: Readonly<Record<string, CommandUsage>> = {
  agent: {
    synopsis: '[--config FILE] [--inspect ws://127.0.0.1:PORT [--inspect-remote]]',
    summary: 'forward audit records from stdin (auditd plugin) or a file to the server',
    details: `Reads auditd's plugin output (string format) and forwards it to remote_server, acknowledged, queued
on disk with mode = forward. Runs until its input ends or it is told to stop.

options:
  --config FILE        audisp-remote.conf-style file (default ${UPSTREAM_AGENT_CONFIG_PATH})
  --inspect URL        stream the statecharts to the Stately inspector at URL (ws:// or wss://;
                       record payloads are redacted); loopback only unless --inspect-remote
  --inspect-remote     allow a non-loopback --inspect URL
  -h, --help           this text

signals:
  SIGTERM, SIGINT      stop reading, deliver what is queued (up to drain_timeout), exit
  SIGHUP               re-read the configuration file (a bad file keeps the running one)
  SIGUSR1              write the state report to state_file
  SIGUSR2              leave a suspend (a failure action set to suspend)

exit status: 0 done, nothing left undelivered; 1 records left undelivered or a failure; 2 usage error;
3 supervisor escalation; 6 configuration error (docs/errors.md)
`,
  },
  collector: {
    synopsis: '(--listen HOST:PORT --log FILE | --config FILE) [--status-listen HOST:PORT]',
    summary: 'receive records from audisp-remote-compatible clients and write them to a log',
    details: `Accepts audisp-remote and auditrelay agents (the managed wire format, tcp or krb5) and writes
every record to the log before acknowledging it, as auditd does.

options:
  --config FILE               auditd.conf-style file (tcp_listen_port, log_file, flush, ...)
  --listen HOST:PORT          address to listen on (overrides the file), e.g. 127.0.0.1:60 or [::1]:60
  --log FILE                  file the records are appended to (overrides log_file)
  --status-listen HOST:PORT   serve the status page, /status and /metrics there (loopback)
  -h, --help                  this text

signals:
  SIGTERM, SIGINT      send ENDING to every client, flush the log, exit
  SIGUSR1              log the counters (clients, records, errors) at info level

${EXIT_STATUSES}
`,
  },
  'check-config': {
    synopsis: '[--collector] FILE',
    summary: 'validate a configuration file and print the effective configuration',
    details: `Prints every setting in effect (defaults included) on stdout and "FILE: configuration is valid"
on stderr, or one line naming file, line, key, bad value and allowed values.

options:
  --collector          FILE is a collector configuration (auditd.conf syntax); default: an agent's
  -h, --help           this text

exit status: 0 valid; 2 usage error; 6 configuration error (docs/errors.md)
`,
  },
  status: {
    synopsis: '[--url URL | --config FILE] [--json]',
    summary: "show a running agent's or collector's state (needs status_listen)",
    details: `Asks a running agent or collector for its state over its status listener.

options:
  --url URL            the status listener, e.g. http://127.0.0.1:9101
  --config FILE        take status_listen from this file: an agent's (audisp-remote.conf syntax) or a
                       collector's (auditd.conf syntax); default ${UPSTREAM_AGENT_CONFIG_PATH}
  --json               print the raw JSON
  -h, --help           this text

exit status: 0 shown; 1 the listener cannot be reached or did not answer with a status; 2 usage error;
6 configuration error (docs/errors.md)
`,
  },
  'import-queue': {
    synopsis: '[--config FILE] [--queue-file FILE] [--skip N] [--dry-run]',
    summary: "move audisp-remote's forward-mode queue file into auditrelay's durable queue",
    details: `Copies the records of audisp-remote's queue file (queue_file) into the agent's durable queue
(queue_dir), so that a host switching over keeps its backlog (docs/migrating.md). Refused while an agent
holds the queue.

options:
  --config FILE        the agent's configuration (default ${UPSTREAM_AGENT_CONFIG_PATH})
  --queue-file FILE    audisp-remote's queue file (default: queue_file of the configuration)
  --skip N             leave out the first N records (already delivered)
  --dry-run            read and check the file, import nothing
  -h, --help           this text

${EXIT_STATUSES}
`,
  },
  demo: {
    synopsis: '[--rounds N] [--rate N]',
    summary: 'forward the bundled real audit records through an agent and a collector on loopback',
    details: `Starts a collector and an agent on 127.0.0.1, sends the bundled audit records, restarts the
collector midway, and counts what arrived (nothing lost, nothing duplicated). Needs no root.

options:
  --rounds N           how many times the records are sent (default 40)
  --rate N             records per second (default 5000)
  -h, --help           this text

signals:
  SIGUSR1              print how many records have arrived so far
  SIGTERM, SIGINT      stop the agent and the collector, remove the temporary directory, exit

exit status: 0 every record arrived; 1 records lost, or a failure; 2 usage error (docs/errors.md)
`,
  },
};

export function commandUsage(command: string): string {
  const u = COMMAND_USAGE[command];
  if (!u) throw new Error(`no usage for ${command}`);
  return `usage: auditrelay ${command} ${u.synopsis}\n\n${u.summary}.\n${u.details}`;
}

export function overallUsage(): string {
  const lines = Object.entries(COMMAND_USAGE).map(
    ([name, u]) => `  ${name.padEnd(14)}${u.summary}\n  ${' '.repeat(14)}${name} ${u.synopsis}`,
  );
  return `usage: auditrelay <command> [options]

commands:
${lines.join('\n')}

  auditrelay <command> --help    that command's options, signals and exit statuses
  auditrelay --version, --help
`;
}
