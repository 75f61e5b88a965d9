/**
 * `auditrelay verify` and `auditrelay pubkey` (docs/evidence.md). Problems go to stdout, one line each
 * (`FILE:LINE: what`), so that other tools can read them; warnings and the summary go to stderr.
 */
import { readFileSync } from 'node:fs';
import { EvidenceError, ExitCodes, UsageError } from '../errors.js';
import { DEFAULT_KEY_FILE, loadSigningKey } from './keys.js';
import { parseVerifierKey, type VerifierKey } from './note.js';
import { formatProblem, verifyInclusionProof, verifyPath } from './verify.js';

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

/** A --key value: the verifier key itself, or @FILE holding it (as `auditrelay pubkey` prints it). */
export function readKeyArg(value: string): VerifierKey {
  let text = value;
  if (value.startsWith('@')) {
    try {
      text = readFileSync(value.slice(1), 'utf8');
    } catch (err) {
      throw new EvidenceError(
        `cannot read key file ${value.slice(1)}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
  }
  const k = parseVerifierKey(
    text
      .trim()
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'))[0] ?? '',
  );
  if (typeof k === 'string') throw new UsageError(`--key: ${k}`);
  return k;
}

export interface VerifyArgs {
  path?: string;
  keys: string[];
  checkpoints: string[];
  prove?: string;
  proof?: string;
}

export function runVerify(a: VerifyArgs, io: Io): number {
  const keys = a.keys.map(readKeyArg);
  if (a.proof !== undefined) {
    if (a.path !== undefined) throw new UsageError('--proof FILE checks a proof on its own: give no PATH');
    let proof: unknown;
    try {
      proof = JSON.parse(readFileSync(a.proof, 'utf8'));
    } catch (err) {
      throw new EvidenceError(`cannot read proof ${a.proof}: ${(err as Error).message}`);
    }
    const bad = verifyInclusionProof(proof, keys);
    for (const b of bad) io.out(`${a.proof}: ${b}\n`);
    if (bad.length === 0) {
      const p = proof as { log_file: string; line: number; index: number; tree_size: number };
      io.err(
        `${a.proof}: the record (${p.log_file}:${p.line}, index ${p.index}) is in the signed tree of ${p.tree_size} records\n`,
      );
    }
    return bad.length === 0 ? ExitCodes.OK : ExitCodes.FAILURE;
  }
  if (a.path === undefined) throw new UsageError('verify needs a PATH (a log file or a directory)');
  let prove: number | undefined;
  if (a.prove !== undefined) {
    prove = Number(a.prove);
    if (!Number.isSafeInteger(prove) || prove < 1)
      throw new UsageError(`--prove takes a line number, not '${a.prove}'`);
  }
  const checkpoints = a.checkpoints.map((f) => {
    try {
      return { name: f, text: readFileSync(f, 'utf8') };
    } catch (err) {
      throw new EvidenceError(`cannot read checkpoint ${f}: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
  });
  const report = verifyPath(a.path, {
    ...(keys.length > 0 ? { keys } : {}),
    trustedCheckpoints: checkpoints,
    ...(prove !== undefined ? { prove } : {}),
  });
  for (const p of report.problems) io.out(`${formatProblem(p)}\n`);
  for (const w of report.warnings) io.err(`auditrelay: warning: ${w}\n`);
  if (report.proof && report.problems.length === 0) io.out(`${JSON.stringify(report.proof, null, 2)}\n`);
  const last = report.lastCheckpoint
    ? `; last checkpoint over ${report.lastCheckpoint.size} records${report.lastCheckpoint.time ? ` at ${report.lastCheckpoint.time}` : ''}`
    : '';
  if (report.problems.length === 0) {
    io.err(
      `auditrelay: ${a.path}: intact: ${report.logs} log file(s), ${report.records} record(s), ${report.checkpoints} checkpoint(s) verified${last}\n`,
    );
    return ExitCodes.OK;
  }
  const first = report.problems[0]!;
  io.err(
    `auditrelay: ${a.path}: NOT intact: ${report.problems.length} problem(s); the first: ${formatProblem(first)}\n`,
  );
  return ExitCodes.FAILURE;
}

export interface PubkeyArgs {
  keyFile?: string;
  name?: string;
  generate: boolean;
}

export function runPubkey(a: PubkeyArgs, io: Io): number {
  const file = a.keyFile ?? DEFAULT_KEY_FILE;
  let key: ReturnType<typeof loadSigningKey>;
  try {
    key = loadSigningKey({ file, create: a.generate, ...(a.name ? { name: a.name } : {}) });
  } catch (err) {
    const enoent = (err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT';
    if (enoent && !a.generate) {
      throw new EvidenceError(
        `no evidence signing key at ${file} yet: the collector creates it when it first starts with evidence on; or run \`auditrelay pubkey --generate${a.keyFile ? ` --key-file ${file}` : ''}\``,
      );
    }
    throw err;
  }
  if (key.created) io.err(`auditrelay: created evidence signing key ${file} (mode 0400)\n`);
  io.out(`${key.verifier.text}\n`);
  return ExitCodes.OK;
}
