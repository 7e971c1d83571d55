/**
 * The in-memory ticket store shared by the remote and local services; only the control
 * service changes it. Tickets are not persisted: a restart loses them (spec §2).
 */
import { CancelTimeoutError, ForbiddenError, TicketNotFoundError } from "../errors.js";
import { type Clock, monotonicClock } from "./clock.js";
import { SharedTicketState } from "./shared-state.js";
import { shortId, Ticket, type TicketFields, type TicketOp, type TicketPlacement } from "./ticket.js";

/**
 * How the main thread's store keeps the threads of the data plane ([daemon] workers) in step:
 * each ticket change is passed on, in order, before the control request that made it answers.
 */
export interface TicketReplication {
  /** Threads that may serve a ticket: the rows of its shared state. */
  readonly rows: number;
  added(ticket: Ticket): void;
  removed(ticket: Ticket): void;
  cleared(): void;
  /** Cancels the ticket's operations on every worker and closes their backends; true when none runs. */
  cancel(ticket: Ticket, timeoutSeconds: number): Promise<boolean>;
  /** Resolves once every worker applied the changes passed on so far. */
  settled(): Promise<void>;
}

export class Authorizer {
  private readonly tickets = new Map<string, Ticket>();

  constructor(
    readonly clock: Clock = monotonicClock,
    private readonly replication?: TicketReplication,
  ) {}

  /** Adds a ticket, silently replacing one with the same uuid (no cancellation, like upstream). */
  add(fields: TicketFields): Ticket {
    const replication = this.replication;
    let placement: TicketPlacement | undefined;
    if (replication !== undefined) {
      placement = {
        state: new SharedTicketState(replication.rows),
        row: 0,
        cancelOnWorkers: (timeoutSeconds) => replication.cancel(ticket, timeoutSeconds),
      };
    }
    const ticket: Ticket = new Ticket(fields, this.clock, placement);
    const replaced = this.tickets.get(fields.uuid);
    this.tickets.set(fields.uuid, ticket);
    // The threads forget the replaced ticket too; connections still holding it finish on it.
    if (replaced !== undefined) replication?.removed(replaced);
    replication?.added(ticket);
    return ticket;
  }

  /**
   * A worker's copy of a ticket the main thread added: it shares that ticket's state, and
   * replaces any copy with the same uuid as the main thread's store did.
   */
  adopt(fields: TicketFields, placement: TicketPlacement): Ticket {
    const ticket = new Ticket(fields, this.clock, placement);
    this.tickets.set(fields.uuid, ticket);
    return ticket;
  }

  /** Drops a worker's copy once the main thread removed the ticket (unless a new one replaced it). */
  drop(ticket: Ticket): void {
    if (this.tickets.get(ticket.uuid) === ticket) this.tickets.delete(ticket.uuid);
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
    this.replication?.removed(ticket);
    return ticket;
  }

  /**
   * Resolves once every thread serving tickets knows of the changes made so far: the control
   * service answers after it, so a client told its ticket was added (or removed) finds it so
   * on any connection, already open or new.
   */
  async settled(): Promise<void> {
    await this.replication?.settled();
  }

  /** Removes every ticket at once, without cancellation (DELETE /tickets/). */
  clear(): void {
    this.tickets.clear();
    this.replication?.cleared();
  }

  get size(): number {
    return this.tickets.size;
  }
}
