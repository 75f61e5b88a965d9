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

log: syslog (facility daemon, auditrelay[PID]) when stderr is /dev/null, as under auditd; journald with
priorities under systemd; readable on a terminal; JSON lines otherwise. log_target or AUDITRELAY_LOG_TARGET
choose (docs/logging.md).

exit status: 0 done, nothing left undelivered; 1 records left undelivered or a failure; 2 usage error;
3 supervisor escalation; 6 configuration error (docs/errors.md)
`,
  },
  collector: {
    synopsis:
      '(--listen HOST:PORT --log FILE | --config FILE) [--status-listen HOST:PORT] [--evidence-key-file FILE]',
    summary: 'receive records from audisp-remote-compatible clients and write them to a log',
    details: `Accepts audisp-remote and auditrelay agents (the managed wire format, tcp or krb5) and writes
every record to the log before acknowledging it, as auditd does; rotates and watches the log as auditd
(max_log_file, space_left, ...) and keeps tamper evidence beside it (evidence = yes, docs/evidence.md).

options:
  --config FILE               auditd.conf-style file (tcp_listen_port, log_file, flush, ...)
  --listen HOST:PORT          address to listen on (overrides the file), e.g. 127.0.0.1:60 or [::1]:60
  --log FILE                  file the records are appended to (overrides log_file)
  --status-listen HOST:PORT   serve the status page, /status and /metrics there (loopback)
  --evidence-key-file FILE    the evidence signing key, created at the first start (overrides
                              evidence_key_file; default /var/lib/auditrelay/evidence/signing.key)
  -h, --help                  this text

signals (as auditd):
  SIGTERM, SIGINT      send ENDING to every client, flush the log, exit
  SIGHUP               re-read the configuration file, keep every client connected (keys that need a
                       restart are kept and logged; a bad file keeps the running configuration)
  SIGUSR1              rotate the log now (or, after logrotate renamed it, open a new one)
  SIGUSR2              resume logging suspended by a disk action (suspend, exec, ...)

its own log: journald with priorities under systemd, readable on a terminal, syslog when stderr is
/dev/null, JSON lines otherwise; AUDITRELAY_LOG_TARGET chooses (docs/logging.md).

${EXIT_STATUSES}
`,
  },
  sink: {
    synopsis: '--config FILE',
    summary: 'write a NATS JetStream stream of records (output = jetstream) into an audit log',
    details: `Reads the stream the collectors publish to (output = jetstream) and writes every record into
log_file, in each host's order, exactly once across its own crashes: each batch is written and fsync'd before
the next is read, and at start the log's last line says where to go on (docs/scale-out.md). Each line is the
record, then rid=AGENT:SEQ (when it has one) and js_seq=N. With sink_log_layout = per_host, each host's records
go to their own file, sink_log_dir/HOST.log (the name escaped into a safe file name), at most
sink_max_open_logs open, with a cursor file (.sink-cursor) in that directory.

options:
  --config FILE        auditd.conf-style file: jetstream_servers, jetstream_stream, sink_consumer,
                       log_file, and the log management keys (max_log_file, num_logs, space_left, ...);
                       sink_log_layout, sink_log_dir, sink_max_open_logs
  -h, --help           this text

signals:
  SIGTERM, SIGINT      finish the batch being written, exit
  SIGUSR1              rotate the log now (single layout; per-host files rotate by max_log_file)
  SIGHUP               logged; a restart applies a configuration change

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
    summary: "show a running agent's or collector's state and health (needs status_listen)",
    details: `Asks a running agent or collector for its state over its status listener, prints it with its
health first (healthy, degraded or down, and why), and exits with what its /health says: a monitoring
check can run it as is (docs/status.md, "Health").

options:
  --url URL            the status listener, e.g. http://127.0.0.1:9101
  --config FILE        take status_listen from this file: an agent's (audisp-remote.conf syntax) or a
                       collector's (auditd.conf syntax); default ${UPSTREAM_AGENT_CONFIG_PATH}
  --json               print the raw JSON
  -h, --help           this text

exit status: 0 healthy; 4 unhealthy (/health would answer 503); 1 the listener cannot be reached or
did not answer with a status; 2 usage error; 6 configuration error (docs/errors.md)
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
  events: {
    synopsis: '[--raw] [FILE...]',
    summary: 'audit logs (stdin without FILE) to one JSON object per event (JSON Lines)',
    details: `Reads audit logs (each FILE in order, '-' or none for stdin) and writes one JSON object per event to stdout
(JSON Lines, schema docs/schema/event-v1.schema.json, described in docs/events.md). Records of one event (same
node and msg=audit(SECONDS.MILLIS:SERIAL)) are grouped even when interleaved or without EOE; hex-encoded fields
and EXECVE arguments are decoded (process.args); every original field is kept. Lines that are not audit records
are named on stderr and skipped.

options:
  --raw                add each record's original line ("raw")
  -h, --help           this text

exit status: 0 done; 1 a file cannot be read; 2 usage error (docs/errors.md)
`,
  },
  verify: {
    synopsis:
      '[--key KEY|@FILE]... [--checkpoint FILE]... [--prove LINE] PATH | --proof FILE --key KEY|@FILE',
    summary: 'check logs against the evidence kept beside them; prove that one record is included',
    details: `Checks audit logs against the evidence kept beside them (LOG.evidence/: a hash chain per host, a Merkle tree,
signed checkpoints; docs/evidence.md). PATH is a log file (LOG or LOG.N) or a directory of logs. Exit status 0:
intact. Exit status 1: one line per problem on stdout (FILE:LINE: what), the first is the first bad position:
edited, deleted, inserted, reordered records, a truncation, a replaced or missing file, bad signatures.
Warnings (records not signed yet, records re-read after a crash) and a summary go to stderr.

  --key KEY         verifier key trusted to sign checkpoints (as printed by \`auditrelay pubkey\`), or @FILE
                    holding it; repeat for several. Without it the key recorded beside the log is used (warned).
  --checkpoint FILE a checkpoint kept elsewhere (copied off the host): the logs must still contain it, which
                    catches a log and its evidence truncated together
  --prove LINE      print (JSON, stdout) a proof that line LINE of the log file PATH is in a signed tree
  --proof FILE      check such a proof on its own, without the logs (needs --key)
  -h, --help        this text

exit status: 0 intact; 1 problems found (one line each) or a failure; 2 usage error (docs/errors.md)
`,
  },
  pubkey: {
    synopsis: '[--key-file FILE] [--generate [--name NAME]]',
    summary: 'print the verifier key of the evidence signing key',
    details: `Prints the verifier key (NAME+KEYID+BASE64, the C2SP signed-note form) of the Ed25519 key that signs the
evidence checkpoints. Keep it off the host (it is what \`auditrelay verify --key\` trusts). The collector creates
the key when it first starts with evidence on; --generate creates it now when missing (mode 0400, in a private
directory).

  --key-file FILE   default /var/lib/auditrelay/evidence/signing.key
  --name NAME       key name for a key created now (default auditrelay-<host name>)
  -h, --help        this text

exit status: 0 done; 1 a failure; 2 usage error (docs/errors.md)
`,
  },
  report: {
    synopsis: '[--since T] [--until T] [--serial-gaps] [--json] PATH...',
    summary: "loss per host in collector logs: gaps, agent restarts, the kernel's loss reports",
    details: `Reads collector logs (PATH: log files, rotated ones, .gz, or directories of them; give every collector's
logs together: an agent's records are one sequence across all of them, so what it sent to another collector
after a failover is not a gap) and reports per host: records, first and last audit time, gaps in each
agent's record numbers (rid=AGENT:SEQ, written by the collector), audit serials missing (a hint), auditd's
starts, stops, aborts and errors (DAEMON_*), events the kernel reported lost (CONFIG_CHANGE audit_lost), and a
summary line (docs/loss.md).

options:
  --since T            only records at or after audit time T
  --until T            only records before audit time T
                       T: 2026-12-01, 2026-12-01T10:00[:SS][Z|+HH:MM] (local time without a zone),
                       Unix seconds (1764583200), now, -30m, -2h, -7d
  --serial-gaps        count audit serial gaps as loss (exit 1), not only as a hint: for hosts
                       whose clients send no record numbers (audisp-remote), with node names set
  --json               the report as one JSON document (docs/loss.md, "JSON")
  -h, --help           this text

exit status: 0 no loss seen; 1 loss seen; 2 usage error; 5 no loss seen, but an input could not be read
(named on stderr; the report does not cover it) (docs/errors.md)
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
