/**
 * Tickets (spec §5.12): the validated fields a manager sent, and the live state of the
 * transfer — expiry, ongoing operations, transferred ranges, connections, cancellation.
 */
import { CancelledError, ForbiddenError, InvalidArgumentError } from "../errors.js";
import { shortId } from "../log.js";
import { pythonRepr } from "../pyformat.js";
import type { Clock } from "./clock.js";
import { RangeList } from "./ranges.js";
import { NO_SLOT, SharedTicketState } from "./shared-state.js";

export type TicketOp = "read" | "write";

/** URL schemes a ticket may name (the backends that exist or will). */
export const TICKET_URL_SCHEMES = ["file", "nbd", "http", "https"] as const;

export interface TicketFields {
  uuid: string;
  size: number;
  ops: TicketOp[];
  timeout: number;
  url: string;
  inactivity_timeout: number;
  transfer_id: string;
  /** True when the manager sent transfer_id; logs then name the ticket by it ([D11]). */
  transferIdGiven: boolean;
  filename: string | undefined;
  sparse: boolean;
  dirty: boolean;
}

const invalid = (reason: string) => new InvalidArgumentError(`Invalid ticket: ${reason}`);

function invalidValue(name: string, value: unknown, expecting: string) {
  return invalid(`Invalid value for '${name}': ${pythonRepr(value)}: expecting ${expecting}`);
}

/**
 * Validates a ticket from the control API (types checked strictly; unknown keys ignored).
 * @throws InvalidArgumentError `Invalid ticket: <reason>` with upstream's reasons.
 */
export function parseTicket(body: unknown, defaultInactivityTimeout: number): TicketFields {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw invalid(`Expecting a JSON object, got ${pythonRepr(body)}`);
  }
  const ticket = body as Record<string, unknown>;
  for (const name of ["uuid", "size", "ops", "timeout", "url"]) {
    if (!(name in ticket)) throw invalid(`Required ticket parameter is missing: ${name}`);
  }
  const integer = (name: string, fallback?: number): number => {
    const value = name in ticket ? ticket[name] : fallback;
    if (typeof value !== "number" || !Number.isInteger(value)) throw invalidValue(name, value, "a <class 'int'> value");
    if (!Number.isSafeInteger(value) || value < 0) throw invalidValue(name, value, "an integer from 0 to 2^53-1");
    return value;
  };
  const string = (name: string): string | undefined => {
    const value = ticket[name];
    if (value === undefined) return undefined;
    if (typeof value !== "string") throw invalidValue(name, value, "a <class 'str'> value");
    return value;
  };
  const boolean = (name: string): boolean => {
    const value = name in ticket ? ticket[name] : false;
    if (typeof value !== "boolean") throw invalidValue(name, value, "a <class 'bool'> value");
    return value;
  };

  const uuid = string("uuid") as string;
  if (uuid === "") throw invalid("Invalid value for 'uuid': '': expecting a non-empty string");
  if (uuid.includes("/")) throw invalid(`Invalid value for 'uuid': ${pythonRepr(uuid)}: must not contain '/'`);
  const size = integer("size");
  const timeout = integer("timeout");
  const inactivityTimeout = integer("inactivity_timeout", defaultInactivityTimeout);
  // 0 would mean "never time out" to a socket: refused, so a forgotten client cannot hold a
  // connection and its image open for ever.
  if (inactivityTimeout === 0) {
    throw invalidValue("inactivity_timeout", 0, "an integer from 1 to 2^53-1 (seconds)");
  }

  const ops = ticket.ops;
  if (!Array.isArray(ops) || !ops.every((op) => op === "read" || op === "write")) {
    throw invalidValue("ops", ops, "a list of 'read' and 'write'");
  }
  const url = string("url") as string;
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined) throw invalid(`Invalid value for 'url': ${pythonRepr(url)}: Invalid url`);
  if (!(TICKET_URL_SCHEMES as readonly string[]).includes(scheme)) {
    throw invalid(`Invalid value for 'url': ${pythonRepr(url)}: Unsupported url scheme: ${scheme}`);
  }
  const transferId = string("transfer_id");
  const filename = string("filename");
  // The filename goes into a content-disposition header: control characters could split it.
  if (filename !== undefined && [...filename].some((char) => char < " " || char === "\u007f")) {
    throw invalidValue("filename", filename, "a file name without control characters");
  }
  return {
    uuid,
    size,
    ops: [...new Set(ops as TicketOp[])],
    timeout,
    url,
    inactivity_timeout: inactivityTimeout,
    // Upstream slices the id in characters (code points), not UTF-16 units.
    transfer_id: transferId ?? `(ticket/${[...uuid].slice(0, 18).join("")})`,
    transferIdGiven: transferId !== undefined,
    filename,
    sparse: boolean("sparse"),
    dirty: boolean("dirty"),
  };
}

/** A running data request on a ticket: its range grows as chunks complete. */
export class Operation {
  private completed = 0;
  private readonly controller = new AbortController();

  constructor(
    readonly offset: number,
    private readonly transferId: string,
    /** Its place in the ticket's shared state (NO_SLOT when all are taken). */
    readonly slot: number,
    private readonly state: SharedTicketState,
  ) {}

  /** Bytes completed from `offset`; every thread's status sees it at once. */
  get done(): number {
    return this.completed;
  }

  set done(bytes: number) {
    this.completed = bytes;
    this.state.progress(this.slot, bytes);
  }

  /** Aborted when the ticket is cancelled: stop at the next chunk. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Called between chunks. @throws CancelledError once the ticket was cancelled. */
  checkCancelled(): void {
    if (this.signal.aborted) throw new CancelledError(`Transfer=${this.transferId} was canceled`);
  }

  cancel(): void {
    this.controller.abort();
  }
}

/** Something a connection holds open for a ticket (a backend context); closed on cancel. */
export interface TicketContext {
  close(): Promise<void>;
}

/**
 * Where a ticket lives when several threads serve it ([daemon] workers): which row of the
 * shared state this thread owns, and, in a worker, how an ended operation's range reaches the
 * main thread, which alone keeps the completed ranges.
 */
export interface TicketPlacement {
  state: SharedTicketState;
  row: number;
  /** A worker's replica: hands the ended operation's slot and range to the main thread. */
  reportEnded?: (slot: number, start: number, end: number) => void;
  /** The main thread's ticket: asks the workers to cancel their operations and close their backends. */
  cancelOnWorkers?: (timeoutSeconds: number) => Promise<boolean>;
}

export class Ticket {
  readonly fields: TicketFields;
  private readonly state: SharedTicketState;
  private readonly row: number;
  private readonly placement: TicketPlacement | undefined;
  private readonly ongoing = new Set<Operation>();
  /** Ranges of ended operations (the main thread's ticket only). */
  private readonly completed = new RangeList();
  private readonly contexts = new Set<TicketContext>();
  private idleWaiters: (() => void)[] = [];

  constructor(
    fields: TicketFields,
    private readonly clock: Clock,
    placement?: TicketPlacement,
  ) {
    this.fields = { ...fields };
    this.placement = placement;
    this.state = placement?.state ?? new SharedTicketState(1);
    this.row = placement?.row ?? 0;
    // A replica joins a ticket that exists already: its access time and timeout stand.
    if (placement?.reportEnded === undefined) this.state.start(clock.now(), fields.timeout);
  }

  get uuid(): string {
    return this.fields.uuid;
  }

  /** The memory of its live state, for the threads that serve it too. */
  get sharedState(): SharedArrayBuffer {
    return this.state.buffer;
  }

  /** How logs name this ticket: the manager's transfer_id, else 8 characters of the id ([D11]). */
  get label(): string {
    return this.fields.transferIdGiven ? this.fields.transfer_id : shortId(this.fields.uuid);
  }

  /** Set by DELETE; seen by every thread at once. */
  get canceled(): boolean {
    return this.state.canceled;
  }

  /** Integer seconds on the clock; the ticket authorizes nothing once `expires <= now`. */
  get expires(): number {
    return Math.floor(this.state.lastAccess) + this.state.timeout;
  }

  /** True while an operation runs on any thread. */
  get active(): boolean {
    return this.state.activeOperations > 0;
  }

  mayRead(): boolean {
    return this.fields.ops.includes("read") || this.fields.ops.includes("write");
  }

  mayWrite(): boolean {
    return this.fields.ops.includes("write");
  }

  /**
   * Checks that the ticket allows `op` now (write implies read).
   * @throws ForbiddenError with upstream's reasons, in upstream's order.
   */
  authorize(op: TicketOp): void {
    if (this.canceled) throw this.forbidden("was canceled");
    if (this.expires <= this.clock.now()) throw this.forbidden("expired");
    if (op === "write" ? !this.mayWrite() : !this.mayRead()) throw this.forbidden(`forbids ${op}`);
  }

  /** `Transfer=<tid> <reason>` for the client; the log names the ticket by its label ([D11]). */
  private forbidden(reason: string): ForbiddenError {
    return new ForbiddenError(`Transfer=${this.fields.transfer_id} ${reason}`, `Transfer=${this.label} ${reason}`);
  }

  /** Records activity: the ticket expires `timeout` seconds from now and is not idle. */
  touch(): void {
    this.state.touch(this.clock.now());
  }

  /** Sets a new timeout that sticks: later touches use it too ([D5]). */
  extend(timeout: number): void {
    this.fields.timeout = timeout;
    this.state.timeout = timeout;
    this.touch();
  }

  /** Starts an operation at `offset`. @throws ForbiddenError when the ticket was cancelled. */
  begin(offset: number): Operation {
    if (this.canceled) throw this.forbidden("was canceled");
    const slot = this.state.beginOperation(this.row, offset);
    const operation = new Operation(offset, this.fields.transfer_id, slot, this.state);
    this.ongoing.add(operation);
    return operation;
  }

  /** Ends an operation (completed or failed): its range counts, and the ticket is touched. */
  end(operation: Operation): void {
    if (!this.ongoing.delete(operation)) return;
    this.touch();
    this.state.endOperation(this.row, operation.slot);
    const end = operation.offset + operation.done;
    if (this.placement?.reportEnded !== undefined) this.placement.reportEnded(operation.slot, operation.offset, end);
    else this.recordEnded(operation.slot, operation.offset, end);
    if (this.ongoing.size === 0) {
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** The main thread's ticket: adds an ended operation's range and frees its slot. */
  recordEnded(slot: number, start: number, end: number): void {
    this.completed.add(start, end);
    this.state.release(slot);
  }

  /**
   * A worker serving this ticket died: what it held no longer counts, and the ranges its
   * operations had done are kept.
   */
  forgetWorker(row: number): void {
    for (const [start, end] of this.state.forgetRow(row)) this.completed.add(start, end);
  }

  /** Registers a connection's open backend for this ticket; `connections` counts them. */
  addContext(context: TicketContext): void {
    if (this.contexts.has(context)) return;
    this.contexts.add(context);
    this.state.addConnection(this.row, 1);
  }

  removeContext(context: TicketContext): void {
    if (this.contexts.delete(context)) this.state.addConnection(this.row, -1);
  }

  /**
   * Cancels the ticket: refuses new work, asks running operations to stop at their next
   * chunk, and waits up to `timeoutSeconds` for them — on every thread serving it.
   * @returns true when no operation is left running.
   */
  async cancel(timeoutSeconds: number): Promise<boolean> {
    this.state.cancel();
    const [here, workers] = await Promise.all([
      this.cancelHere(timeoutSeconds),
      this.placement?.cancelOnWorkers?.(timeoutSeconds) ?? true,
    ]);
    return here && workers;
  }

  /** Cancels the operations of this thread and, once they stopped, closes its backends. */
  private async cancelHere(timeoutSeconds: number): Promise<boolean> {
    for (const operation of this.ongoing) operation.cancel();
    if (this.ongoing.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, Math.min(timeoutSeconds * 1000, MAX_TIMER_MS));
        }),
      ]);
      clearTimeout(timer);
    }
    if (this.ongoing.size > 0) return false;
    await Promise.all([...this.contexts].map((context) => context.close()));
    for (const context of this.contexts) this.removeContext(context);
    return true;
  }

  /** The status object of `GET /tickets/{id}`, keys in upstream's order. */
  status(): Record<string, unknown> {
    const now = this.clock.now();
    const f = this.fields;
    const active = this.active;
    const status: Record<string, unknown> = {
      active,
      canceled: this.canceled,
      connections: this.state.connections,
      expires: this.expires,
      idle_time: active ? 0 : Math.max(0, Math.floor(now - this.state.lastAccess)),
      inactivity_timeout: f.inactivity_timeout,
      ops: f.ops,
      size: f.size,
      sparse: f.sparse,
      dirty: f.dirty,
      timeout: this.state.timeout,
      url: f.url,
      uuid: f.uuid,
      transfer_id: f.transfer_id,
    };
    if (f.filename !== undefined) status.filename = f.filename;
    if (f.ops.length <= 1) {
      // Running operations without a slot (more than OPERATION_SLOTS at once) are still known here.
      const unslotted = [...this.ongoing]
        .filter((op) => op.slot === NO_SLOT)
        .map((op): [number, number] => [op.offset, op.offset + op.done]);
      status.transferred = this.completed.totalWith([...this.state.slotRanges(), ...unslotted]);
    }
    return status;
  }
}

/** The longest delay a Node timer holds (2^31-1 ms, 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export { shortId };
