/**
 * Model-based tests of the connection machine (docs/model-based-tests.md): paths generated from the
 * machine with `xstate/graph` (simple paths and shortest paths, both failure-action policies), a set of
 * them chosen to cover every transition (then every edge of the explored graph), and each one executed
 * against the real agent and a server on loopback, checking the agent's transitions step by step and the
 * real effect of each. The paths whose handshake must fail run with transport = krb5 against a
 * throwaway MIT realm (test/helpers/kdc.ts).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectionMachine } from '../../machines/connection.js';
import { repoRoot } from '../../scripts/diagrams.js';
import { KDC_BINARIES, type Kdc, startKdc } from '../helpers/kdc.js';
import { requireOrSkip } from '../helpers/prereq.js';
import { installKeytab, tempDir } from '../krb5/support.js';
import { type Krb5Env, PathRun } from './executor.js';
import { buildModel, chooseCovering, edgesOf, insertLoops, joinedCandidates } from './model.js';
import { allowEvent, type PathPlan, planPath } from './plan.js';
import { NOT_EXECUTABLE, renderCoverage, replaceGenerated } from './report.js';

const model = buildModel(connectionMachine, {
  allow: allowEvent,
  notOnSimplePaths: ['RELINK', 'FAULT'],
  // What src/agent/children.ts gives the connection machine at its first start (the policy's timings do
  // not matter to the model).
  input: (policy) => ({ policy: { suspendOn: policy.suspendOn }, stopping: false }),
});
const cost = (plan: PathPlan) => plan.estimateMs;
// First every transition, then every edge of the explored graph (source state × transition) that some
// executable path takes, so that each transition is also tried from the states it can be taken in.
const greedy = chooseCovering(model.candidates, planPath, cost);
const loops = insertLoops(
  model,
  greedy.chosen,
  model.transitions.map((t) => t.key).filter((k) => !greedy.covered.has(k)),
  planPath,
);
const inserted = loops.inserted;
const onCandidates = chooseCovering(model.candidates, planPath, cost, edgesOf);
const joined = joinedCandidates(model, onCandidates.reachable, planPath);
const byEdges = chooseCovering([...model.candidates, ...joined], planPath, cost, edgesOf, loops.chosen);
const chosen = byEdges.chosen;
const forTransitions = loops.chosen.length;
const allKeys = model.transitions.map((t) => t.key);
const planned = new Set(chosen.flatMap((c) => c.path.steps.flatMap((s) => s.transitions)));

const needsKrb5 = chosen.some((c) => c.plan.profile.transport === 'krb5');
const krb5Available =
  !needsKrb5 ||
  requireOrSkip({
    suite: 'model-based paths with transport = krb5 (real KDC)',
    binaries: KDC_BINARIES,
    gssapiBinding: true,
  });
/** Transitions only the krb5 paths take: not run when the realm cannot be set up here (never in CI). */
const krb5Only = new Set(
  allKeys.filter(
    (k) =>
      chosen.some(
        (c) => c.plan.profile.transport === 'krb5' && c.path.steps.some((s) => s.transitions.includes(k)),
      ) &&
      !chosen.some(
        (c) => c.plan.profile.transport === 'tcp' && c.path.steps.some((s) => s.transitions.includes(k)),
      ),
  ),
);

/** Transitions the agent took as planned, per path that passed. */
const executed = new Map<number, Set<string>>();

describe('connection machine: model-based paths against the real agent', () => {
  let kdc: Kdc | undefined;
  let restoreEnv: (() => void) | undefined;
  let tmp: { dir: string; remove: () => void } | undefined;
  let krb5: Krb5Env | undefined;

  beforeAll(async () => {
    if (!needsKrb5 || !krb5Available) return;
    kdc = await startKdc();
    restoreEnv = kdc.applyToProcess();
    tmp = tempDir('auditrelay-model-');
    // The server the agent targets exists in the realm (so the agent gets a ticket and sends its token),
    // but the model server holds no key for it and never answers with one.
    const target = `auditd/${os.hostname()}`;
    await kdc.addPrincipal(target);
    const clientPrincipal = 'auditd/model-agent.example';
    const keyFile = installKeytab(await kdc.addPrincipal(clientPrincipal), join(tmp.dir, 'agent.key'));
    krb5 = { target, keyFile, clientPrincipal };
  });

  afterAll(async () => {
    restoreEnv?.();
    await kdc?.stop();
    tmp?.remove();
  });

  it('the chosen paths cover every transition except the ones listed as not executable', () => {
    const notPlanned = allKeys.filter((k) => !planned.has(k));
    expect(notPlanned.sort()).toEqual(Object.keys(NOT_EXECUTABLE).sort());
    // Targetless transitions reached by insertion only.
    expect(inserted.every((k) => planned.has(k))).toBe(true);
  });

  it('docs/model-based-tests.md shows the current paths and coverage', () => {
    const file = join(repoRoot(), 'docs/model-based-tests.md');
    const doc = readFileSync(file, 'utf8');
    const generated = renderCoverage(model, chosen, forTransitions, inserted, planPath);
    const fresh = replaceGenerated(doc, generated);
    if (fresh !== doc && process.env.UPDATE_MODEL_DOC === '1') writeFileSync(file, fresh);
    else
      expect(fresh, 'stale: run `UPDATE_MODEL_DOC=1 npx vitest run test/model` and commit the result').toBe(
        doc,
      );
  });

  chosen.forEach(({ path, plan }, i) => {
    const why = i < forTransitions ? 'transitions' : 'edges';
    const skip = plan.profile.transport === 'krb5' && !krb5Available;
    it.skipIf(skip)(
      `path ${i + 1} (${why}; ${plan.profile.transport}; ${path.policy.name}; ${path.steps.length - 1} steps)`,
      async () => {
        const result = await new PathRun(plan, { krb5 }).run();
        expect(result.exitCode).toBe(plan.exitCode);
        executed.set(i, result.transitions);
      },
    );
  });

  it('every transition of the chosen paths was taken by the real agent', () => {
    const runnable = chosen.filter((c) => c.plan.profile.transport === 'tcp' || krb5Available).length;
    expect(executed.size, 'paths that passed').toBe(runnable);
    const union = new Set([...executed.values()].flatMap((s) => [...s]));
    const expected = allKeys.filter((k) => !(k in NOT_EXECUTABLE) && (krb5Available || !krb5Only.has(k)));
    expect([...union].sort()).toEqual(expected.sort());
  });
});
