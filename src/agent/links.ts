/**
 * The open links, by id. The connection machine passes a link between its actors as an id (its events and
 * context stay serialisable): the dial registers the link it opened and hands the id over as its output,
 * the handshake takes that id and hands over the same id for the secured link, the session takes it and
 * its cleanup closes it. A failed handshake closes the link it was given.
 *
 * Two sweeps cover what XState cannot guarantee: a dial's hand-over can be overtaken by a state change
 * (the link registered, its `done` event no longer handled), and a machine actor that throws does not stop
 * its children (XState 5.33), so a session's cleanup may never run. The next dial closes whatever is
 * still registered (one link at a time), and the runtime closes everything at exit.
 */
import { LinkError } from '../errors.js';
import type { Transport } from './transport.js';

export class LinkRegistry {
  #next = 1;
  readonly #links = new Map<number, Transport>();

  get size(): number {
    return this.#links.size;
  }

  add(link: Transport): number {
    const id = this.#next++;
    this.#links.set(id, link);
    return id;
  }

  /** The link with this id; LinkError if it was closed. */
  get(id: number): Transport {
    const link = this.#links.get(id);
    if (!link) throw new LinkError(`link ${id} is closed`);
    return link;
  }

  find(id: number): Transport | undefined {
    return this.#links.get(id);
  }

  /** The handshake secured the link: the id now stands for the secured transport. */
  replace(id: number, link: Transport): void {
    if (!this.#links.has(id)) {
      link.close();
      throw new LinkError(`link ${id} was closed during its handshake`);
    }
    this.#links.set(id, link);
  }

  close(id: number): void {
    const link = this.#links.get(id);
    this.#links.delete(id);
    link?.close();
  }

  closeAll(): void {
    for (const id of [...this.#links.keys()]) this.close(id);
  }
}
