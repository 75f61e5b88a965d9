import { describe, expect, it } from 'vitest';
import { createActor, fromCallback, fromPromise, setup, toPromise } from 'xstate';
import { createSupervisor } from '../../supervisors/supervisor.js';

/** A child that fails its first `failures` starts, then finishes; `onStart` runs at each start. */
function flaky(failures: number, onStart: () => void = () => {}) {
  let starts = 0;
  const logic = fromPromise(async () => {
    onStart();
    starts++;
    if (starts <= failures) throw new Error(`deliberate failure #${starts}`);
    return 'ok';
  });
  return { logic, starts: () => starts };
}

describe('supervisor', () => {
  it('restarts a failing child within the restart intensity', async () => {
    const child = flaky(3);
    const steady = setup({}).createMachine({ initial: 'a', states: { a: { type: 'final' } } });
    const sup = createActor(
      createSupervisor(
        [
          { id: 'worker', logic: child.logic },
          { id: 'other', logic: steady },
        ],
        { maxRestarts: 5, windowMs: 60_000, restartDelayMs: 1 },
      ),
    );
    sup.start();
    const output = await toPromise(sup);
    expect(child.starts()).toBe(4);
    expect(sup.getSnapshot().value).toBe('stopped');
    expect(output).toEqual({
      escalatedBy: null,
      lastError: { worker: 'deliberate failure #3' },
      timedOut: false,
    });
    expect(sup.getSnapshot().context.restarts.worker).toHaveLength(3);
  });

  it('escalates when a child fails more often than the intensity allows within the window', async () => {
    const child = flaky(100);
    const sup = createActor(
      createSupervisor([{ id: 'worker', logic: child.logic }], {
        maxRestarts: 3,
        windowMs: 60_000,
        restartDelayMs: 1,
      }),
    );
    sup.start();
    const output = await toPromise(sup);
    expect(sup.getSnapshot().value).toBe('escalated');
    expect(child.starts()).toBe(4); // the first start plus three restarts
    expect(output).toEqual({
      escalatedBy: 'worker',
      lastError: { worker: 'deliberate failure #4' },
      timedOut: false,
    });
  });

  it('forgets restarts older than the window', async () => {
    let t = 0;
    // Each start happens a second after the previous one.
    const child = flaky(6, () => {
      t += 1000;
    });
    const logic = child.logic;
    const sup = createActor(
      createSupervisor([{ id: 'worker', logic }], {
        maxRestarts: 2,
        windowMs: 1500,
        restartDelayMs: 1,
        now: () => t,
      }),
    );
    sup.start();
    await toPromise(sup);
    // Six failures in a row, but never more than two within any 1.5 s window: no escalation.
    expect(sup.getSnapshot().value).toBe('stopped');
    expect(child.starts()).toBe(7);
  });

  it('restarts a machine child that throws in an action', async () => {
    let runs = 0;
    const machine = setup({
      actions: {
        boom: () => {
          runs++;
          if (runs < 3) throw new Error('action failed');
        },
      },
    }).createMachine({
      initial: 'a',
      states: { a: { entry: 'boom', always: 'done' }, done: { type: 'final' } },
    });
    const sup = createActor(
      createSupervisor([{ id: 'm', logic: machine }], { maxRestarts: 5, restartDelayMs: 1 }),
    );
    sup.start();
    await toPromise(sup);
    expect(runs).toBe(3);
    expect(sup.getSnapshot().value).toBe('stopped');
  });

  it('gives a restarted child its input as of the restart (stopping), not as of the first start', async () => {
    const inputs: unknown[] = [];
    const logic = fromPromise<string, { stopping: boolean }>(async ({ input }) => {
      inputs.push(input);
      if (inputs.length < 3) throw new Error(`failure #${inputs.length}`);
      return 'ok';
    });
    let sup!: ReturnType<typeof createActor<ReturnType<typeof createSupervisor>>>;
    const machine = createSupervisor(
      [{ id: 'worker', logic, input: ({ stopping }) => ({ stopping }), significant: true }],
      {
        restartDelayMs: 1,
        onRestart: (_, __, n) => {
          if (n === 1) sup.send({ type: 'SHUTDOWN', timeoutMs: 60_000, reason: 'test' });
        },
      },
    );
    sup = createActor(machine);
    sup.start();
    await toPromise(sup);
    expect(inputs).toEqual([{ stopping: false }, { stopping: true }, { stopping: true }]);
    // A significant child finished: the supervisor stopped with it.
    expect(sup.getSnapshot().value).toBe('stopped');
  });

  it('stops everything when a shutdown outlasts its deadline, and tells the runtime once', async () => {
    let cleanedUp = 0;
    const forever = fromCallback(() => () => {
      cleanedUp++;
    });
    const shutdowns: string[] = [];
    const sup = createActor(
      createSupervisor(
        [
          { id: 'a', logic: forever },
          { id: 'b', logic: forever, significant: true },
        ],
        { onShutdown: (reason) => shutdowns.push(reason) },
      ),
    );
    sup.start();
    sup.send({ type: 'SHUTDOWN', timeoutMs: 20, reason: 'SIGTERM' });
    sup.send({ type: 'SHUTDOWN', timeoutMs: 20, reason: 'input ended' });
    const output = await toPromise(sup);
    expect(sup.getSnapshot().value).toBe('stopped');
    expect(output).toEqual({ escalatedBy: null, lastError: {}, timedOut: true });
    expect(shutdowns).toEqual(['SIGTERM']);
    expect(cleanedUp).toBe(2);
  });
});
