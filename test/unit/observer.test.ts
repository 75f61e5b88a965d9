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
});
