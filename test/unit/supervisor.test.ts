import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, setup, toPromise } from 'xstate';
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
    expect(output).toEqual({ escalatedBy: null, lastError: { worker: 'deliberate failure #3' } });
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
    expect(output).toEqual({ escalatedBy: 'worker', lastError: { worker: 'deliberate failure #4' } });
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
});
