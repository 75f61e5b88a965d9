import { describe, expect, it } from 'vitest';
import { escapeControls, parseConfigText } from '../../src/config/parser.js';
import { ConfigError } from '../../src/errors.js';

const F = '/etc/x.conf';

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfigText', () => {
  it('returns key, value, option and line for each entry, in file order', () => {
    const text = '# comment\n\nport = 60\n  ##local_port =\nnetwork_failure_action = exec /bin/x\n';
    expect(parseConfigText(text, F)).toEqual([
      { key: 'port', rawKey: 'port', value: '60', line: 3 },
      {
        key: 'network_failure_action',
        rawKey: 'network_failure_action',
        value: 'exec',
        option: '/bin/x',
        line: 5,
      },
    ]);
  });

  it('lower-cases keys but keeps values as written', () => {
    expect(parseConfigText('Remote_SERVER = Host.Example\n', F)).toEqual([
      { key: 'remote_server', rawKey: 'Remote_SERVER', value: 'Host.Example', line: 1 },
    ]);
  });

  it('treats runs of spaces and leading/trailing spaces as upstream strtok does', () => {
    expect(parseConfigText('   port   =   60   \n', F)).toEqual([
      { key: 'port', rawKey: 'port', value: '60', line: 1 },
    ]);
  });

  it('returns an empty value for "key =" (the consumer decides)', () => {
    expect(parseConfigText('remote_server = \n', F)).toEqual([
      { key: 'remote_server', rawKey: 'remote_server', value: '', line: 1 },
    ]);
  });

  it('handles a last line without newline and blank lines made of spaces or tabs', () => {
    expect(parseConfigText('  \n\t\nport = 1', F)).toEqual([
      { key: 'port', rawKey: 'port', value: '1', line: 3 },
    ]);
  });

  it('keeps duplicate keys in order, so the consumer applies the last one (as upstream)', () => {
    const entries = parseConfigText('port = 1\nport = 2\n', F);
    expect(entries.map((e) => e.value)).toEqual(['1', '2']);
  });

  it('rejects key=value and says what to write', () => {
    const e = errorOf(() => parseConfigText('# c\nport=60\n', F));
    expect(e.message).toBe(
      '/etc/x.conf:2: port: "=" must have a space on each side (upstream rejects "key=value"): write "port = 60"',
    );
    expect(e.location).toMatchObject({ file: F, line: 2, key: 'port', value: '60' });
  });

  it('rejects "key =value" and "key= value"', () => {
    expect(errorOf(() => parseConfigText('port =60\n', F)).message).toContain('write "port = 60"');
    expect(errorOf(() => parseConfigText('port= 60\n', F)).message).toContain('write "port = 60"');
  });

  it('rejects tabs and says to use spaces', () => {
    const e = errorOf(() => parseConfigText('\n\nport\t=\t60\n', F));
    expect(e.message).toBe(
      '/etc/x.conf:3: port: tab character in line; upstream separates tokens with spaces only: write "port = value"',
    );
  });

  it('rejects control characters and never echoes them raw (terminal escapes are shown as \\xHH)', () => {
    for (const [text, shown] of [
      ['port = 60\x1b[2J\n', '\\x1b'],
      ['\x1b]0;owned\x07port = 60\n', '\\x1b'],
      ['po\x9brt = 60\n', '\\x9b'],
      ['port = 6\x000\n', '\\x00'],
    ] as const) {
      let err: unknown;
      try {
        parseConfigText(text, 'f.conf', { keys: ['port'] });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      const msg = (err as Error).message;
      expect(msg).toContain(`control character ${shown}`);
      expect(msg).toMatch(/^f\.conf:1: /);
      expect(msg).not.toMatch(/[\x00-\x08\x0a-\x1f\x7f-\x9f]/);
    }
    // A comment may hold anything: it is never echoed.
    expect(parseConfigText('# \x1b[31m red\nport = 60\n', 'f.conf')).toHaveLength(1);
    expect(escapeControls('a\x1bb\tc\rd')).toBe('a\\x1bb\tc\\x0dd');
  });

  it('rejects a line without "="', () => {
    expect(errorOf(() => parseConfigText('port 60\n', F)).message).toBe(
      '/etc/x.conf:1: port: missing "=" after the key: write "port = 60"',
    );
    expect(errorOf(() => parseConfigText('port\n', F)).message).toBe(
      '/etc/x.conf:1: port: missing "=" after the key: write "port = value"',
    );
  });

  it('rejects "= value" without a key', () => {
    expect(errorOf(() => parseConfigText('= 60\n', F)).message).toBe(
      '/etc/x.conf:1: no key before "="; expected "key = value"',
    );
  });

  it('rejects more than four tokens and explains trailing comments', () => {
    expect(errorOf(() => parseConfigText('port = 60 # the port\n', F)).message).toBe(
      '/etc/x.conf:1: port: too many words in line; expected "key = value [option]"; ' +
        'comments must be on a line of their own (a "#" after a value is not a comment)',
    );
  });

  it('rejects unknown keys, suggesting a close one and listing the allowed keys', () => {
    const e = errorOf(() => parseConfigText('port = 1\nprot = 60\n', F, { keys: ['port', 'mode'] }));
    expect(e.message).toBe(
      '/etc/x.conf:2: prot: unknown key "prot"; did you mean "port"? (allowed: port, mode)',
    );
  });

  it('reports keys marked unsupported with their reason', () => {
    const e = errorOf(() =>
      parseConfigText('tls_auth = psk\n', F, { keys: ['port'], unsupported: { tls_auth: 'no TLS' } }),
    );
    expect(e.message).toBe('/etc/x.conf:1: tls_auth: no TLS');
  });

  it('does not treat Object.prototype names as known or unsupported keys', () => {
    expect(() => parseConfigText('constructor = 1\n', F, { keys: ['port'], unsupported: {} })).toThrow(
      'unknown key "constructor"',
    );
  });

  it('accepts a line of exactly 127 characters and rejects 128', () => {
    const ok = `queue_file = /${'a'.repeat(127 - 'queue_file = /'.length)}`;
    expect(ok.length).toBe(127);
    expect(parseConfigText(ok, F)).toHaveLength(1);
    const long = `${ok}b`;
    const e = errorOf(() => parseConfigText(`\n${long}\n`, F));
    expect(e.message).toBe(
      '/etc/x.conf:2: line is 128 characters long; upstream reads at most 127 per line and would misread it ' +
        '(allowed: at most 127 characters per line)',
    );
  });

  it('rejects an over-long comment line by default, skips it with allowLongComments', () => {
    const comment = `# ${'x'.repeat(200)}`;
    expect(() => parseConfigText(comment, F)).toThrow(ConfigError);
    expect(
      parseConfigText(`${comment}\nport = 1\n`, F, { maxLineLength: 158, allowLongComments: true }),
    ).toEqual([{ key: 'port', rawKey: 'port', value: '1', line: 2 }]);
  });

  it('honours maxLineLength', () => {
    const line = `log_file = /${'a'.repeat(146)}`;
    expect(line.length).toBe(158);
    expect(parseConfigText(line, F, { maxLineLength: 158 })).toHaveLength(1);
    expect(() => parseConfigText(`${line}a`, F, { maxLineLength: 158 })).toThrow('159 characters long');
  });

  it('rejects DOS line endings with a clear message', () => {
    expect(errorOf(() => parseConfigText('port = 60\r\n', F)).message).toBe(
      '/etc/x.conf:1: carriage return in line (DOS line endings); upstream would treat it as part of the value; ' +
        'convert the file to Unix line endings',
    );
  });
});
