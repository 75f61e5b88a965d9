import { describe, expect, it } from 'vitest';
import { createActor, setup } from 'xstate';
import { StateObserver } from '../../src/status/observer.js';

/** A child that a parent restarts over and over, as the supervisor does with a failing connection. */
const child = setup({}).createMachine({ id: 'connection', initial: 'a', states: { a: {} } });

describe('state observer', () => {
  it('keeps a bounded record of actors across any number of restarts', () => {
    const observer = new StateObserver();
    for (let i = 0; i < 2000; i++) {
      const actor = createActor(child, { inspect: observer.inspect, id: 'connection' });
      actor.start();
      actor.stop();
    }
    // One entry per watched actor, not one per session that ever existed.
    expect(observer.tracked).toBeLessThanOrEqual(3);
    expect(observer.states.get('connection')).toBe('a');
    // Every start is still seen as a transition (restarts are counted from them).
    expect(observer.transitions.filter((t) => t.event === 'xstate.init').length).toBe(50);
  });

  it('folds a state flipping back and forth (the queue at every record) and a repeated error into one entry', () => {
    const flip = setup({}).createMachine({
      id: 'queue',
      initial: 'empty',
      states: { empty: { on: { GO: 'holding' } }, holding: { on: { BACK: 'empty' } } },
    });
    const observer = new StateObserver();
    const folded: boolean[] = [];
    observer.on('transition', (_t, f) => folded.push(f));
    const actor = createActor(flip, { inspect: observer.inspect, id: 'queue' });
    actor.start();
    for (let i = 0; i < 1000; i++) {
      actor.send({ type: 'GO' });
      actor.send({ type: 'BACK' });
    }
    // Every transition is kept as it was; the folded list has the start, then one entry.
    expect(observer.transitions).toHaveLength(50);
    expect(observer.foldedTransitions).toHaveLength(2);
    expect(observer.foldedTransitions[1]).toMatchObject({
      actor: 'queue',
      from: 'holding',
      to: 'empty',
      count: 2000,
    });
    expect(observer.foldedTransitions[1]!.since).toBeDefined();
    expect(folded.filter((f) => !f)).toHaveLength(2);
    for (let i = 0; i < 30; i++) observer.recordError('connection', 'dial: connect ECONNREFUSED');
    observer.recordError('connection', 'something else');
    expect(observer.errors).toHaveLength(20);
    expect(observer.foldedErrors).toHaveLength(2);
    expect(observer.foldedErrors[0]).toMatchObject({ message: 'dial: connect ECONNREFUSED', count: 30 });
    actor.stop();
  });
});
