/**
 * The in-memory ticket store shared by the remote and local services; only the control
 * service changes it. Tickets are not persisted: a restart loses them (spec §2).
 */
import { CancelTimeoutError, ForbiddenError, TicketNotFoundError } from "../errors.js";
import { type Clock, monotonicClock } from "./clock.js";
import { shortId, Ticket, type TicketFields, type TicketOp } from "./ticket.js";

export class Authorizer {
  private readonly tickets = new Map<string, Ticket>();

  constructor(readonly clock: Clock = monotonicClock) {}

  /** Adds a ticket, silently replacing one with the same uuid (no cancellation, like upstream). */
  add(fields: TicketFields): Ticket {
    const ticket = new Ticket(fields, this.clock);
    this.tickets.set(fields.uuid, ticket);
    return ticket;
  }

  /** @throws TicketNotFoundError `No such ticket '<id>'`. */
  get(id: string): Ticket {
    const ticket = this.tickets.get(id);
    if (ticket === undefined)
      throw new TicketNotFoundError(`No such ticket '${id}'`, `No such ticket '${shortId(id)}'`);
    return ticket;
  }

  /** The ticket if it exists, else undefined. */
  find(id: string): Ticket | undefined {
    return this.tickets.get(id);
  }

  /**
   * The ticket for `id` if it allows `op` now.
   * @throws ForbiddenError (unknown, canceled, expired, op not allowed).
   */
  authorize(id: string, op: TicketOp): Ticket {
    const ticket = this.tickets.get(id);
    if (ticket === undefined) throw new ForbiddenError(`No such ticket ${id}`, `No such ticket ${shortId(id)}`);
    ticket.authorize(op);
    return ticket;
  }

  /**
   * Cancels and removes a ticket; unknown ids are fine (idempotent DELETE).
   * @throws CancelTimeoutError when its operations did not stop within `timeoutSeconds`;
   *   the ticket then stays, marked canceled, for a retry.
   */
  async remove(id: string, timeoutSeconds: number): Promise<Ticket | undefined> {
    const ticket = this.tickets.get(id);
    if (ticket === undefined) return undefined;
    if (!(await ticket.cancel(timeoutSeconds))) {
      throw new CancelTimeoutError(`Timeout cancelling transfer ${ticket.fields.transfer_id}`);
    }
    // A new ticket with the same uuid may have replaced this one while we waited.
    if (this.tickets.get(id) === ticket) this.tickets.delete(id);
    return ticket;
  }

  /** Removes every ticket at once, without cancellation (DELETE /tickets/). */
  clear(): void {
    this.tickets.clear();
  }

  get size(): number {
    return this.tickets.size;
  }
}
