/** Configuration: upstream's file syntax, the agent's audisp-remote.conf keys and the collector's auditd.conf keys. */
export * from './agent-config.js';
export * from './collector-config.js';
export { type ReadConfigOptions, readConfigFile, runningAsRoot } from './file.js';
export {
  AGENT_MAX_LINE_LENGTH,
  AUDITD_MAX_LINE_LENGTH,
  type ConfigEntry,
  type ParseOptions,
  parseConfigText,
} from './parser.js';
export { formatHostPort, type HostPort, LOG_LEVELS, type LogLevel, parseHostPort } from './values.js';
