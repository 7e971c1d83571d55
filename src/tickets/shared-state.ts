/**
 * The live state of one ticket that every thread serving it reads and changes ([daemon]
 * workers): cancellation, last access and timeout (so expiry is the same on every thread), per
 * thread the connections holding a backend and the operations running, and the ranges of running
 * operations (for `transferred`). It lives in a SharedArrayBuffer changed only with Atomics, so a
 * status read on the main thread sees a worker's progress without a message round trip.
 *
 * Each ticket has a buffer of its own, never reused: a ticket replaced or removed while a thread
 * still finishes with it keeps writing into a buffer nobody reads any more, so counts can never
 * leak into a new ticket (what a generation number per slot would guard against in one shared
 * table). With a single thread it is the same object, with one row.
 */

/** Running operations whose ranges `transferred` sees while they run; more count once they end. */
export const OPERATION_SLOTS = 32;

// Int32 cells.
const CANCELED = 0;
const ACTIVE_TOTAL = 1;
const ROWS_START = 2;
// BigInt64 cells (after the Int32 ones, 8-byte aligned).
const LAST_ACCESS_US = 0;
const TIMEOUT_S = 1;
const SLOTS_START = 2;
/**
 * Per slot: owner (0 free, row+1 running, -(row+1) ended and waiting to be recorded), offset,
 * done, and a generation that is odd while an operation takes the slot: a reader that saw it
 * change knows its offset and done may belong to two operations.
 */
const SLOT_CELLS = 4;

/** A running operation's place in the shared table, or NO_SLOT when all were taken. */
export const NO_SLOT = -1;

export class SharedTicketState {
  private readonly ints: Int32Array;
  private readonly bigs: BigInt64Array;

  /**
   * @param rows threads that may serve the ticket: row 0 is the main thread, worker i is row i+1.
   * @param buffer an existing state (a replica in a worker), or a new one when omitted.
   */
  constructor(
    readonly rows: number,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(SharedTicketState.byteLength(rows)),
  ) {
    const intBytes = intCellsByteLength(rows);
    this.ints = new Int32Array(buffer, 0, intBytes / 4);
    this.bigs = new BigInt64Array(buffer, intBytes, SLOTS_START + OPERATION_SLOTS * SLOT_CELLS);
  }

  static byteLength(rows: number): number {
    return intCellsByteLength(rows) + 8 * (SLOTS_START + OPERATION_SLOTS * SLOT_CELLS);
  }

  get canceled(): boolean {
    return Atomics.load(this.ints, CANCELED) === 1;
  }

  cancel(): void {
    Atomics.store(this.ints, CANCELED, 1);
  }

  /** Seconds on the ticket's clock of the last access. */
  get lastAccess(): number {
    return Number(Atomics.load(this.bigs, LAST_ACCESS_US)) / 1e6;
  }

  /**
   * Records an access at `now` (seconds); an access another thread recorded later stays:
   * the last access only moves forward.
   */
  touch(now: number): void {
    const next = BigInt(Math.round(now * 1e6));
    for (;;) {
      const seen = Atomics.load(this.bigs, LAST_ACCESS_US);
      if (seen >= next) return;
      if (Atomics.compareExchange(this.bigs, LAST_ACCESS_US, seen, next) === seen) return;
    }
  }

  /** Sets the first access, when the ticket is created (a touch could not move it back). */
  start(now: number, timeoutSeconds: number): void {
    Atomics.store(this.bigs, LAST_ACCESS_US, BigInt(Math.round(now * 1e6)));
    this.timeout = timeoutSeconds;
  }

  get timeout(): number {
    return Number(Atomics.load(this.bigs, TIMEOUT_S));
  }

  set timeout(seconds: number) {
    Atomics.store(this.bigs, TIMEOUT_S, BigInt(seconds));
  }

  get activeOperations(): number {
    return Atomics.load(this.ints, ACTIVE_TOTAL);
  }

  get connections(): number {
    let total = 0;
    for (let row = 0; row < this.rows; row++) total += Atomics.load(this.ints, this.connectionCell(row));
    return total;
  }

  addConnection(row: number, delta: 1 | -1): void {
    Atomics.add(this.ints, this.connectionCell(row), delta);
  }

  /** Counts a running operation of `row`; returns its slot for progress, or NO_SLOT. */
  beginOperation(row: number, offset: number): number {
    Atomics.add(this.ints, this.activeCell(row), 1);
    Atomics.add(this.ints, ACTIVE_TOTAL, 1);
    for (let slot = 0; slot < OPERATION_SLOTS; slot++) {
      const owner = SLOTS_START + slot * SLOT_CELLS;
      if (Atomics.compareExchange(this.bigs, owner, 0n, BigInt(row + 1)) === 0n) {
        // The slot shows from the moment it is taken, still holding the previous operation's
        // offset and done: the generation tells readers not to mix them with the new ones.
        Atomics.add(this.bigs, owner + 3, 1n);
        Atomics.store(this.bigs, owner + 2, 0n);
        Atomics.store(this.bigs, owner + 1, BigInt(offset));
        Atomics.add(this.bigs, owner + 3, 1n);
        return slot;
      }
    }
    return NO_SLOT;
  }

  /** Bytes an operation in `slot` has completed from its offset. */
  progress(slot: number, done: number): void {
    if (slot !== NO_SLOT) Atomics.store(this.bigs, SLOTS_START + slot * SLOT_CELLS + 2, BigInt(done));
  }

  /**
   * Ends an operation of `row`: it no longer counts as running, but its slot keeps its range
   * until the main thread recorded it (`release`), so `transferred` never dips in between.
   */
  endOperation(row: number, slot: number): void {
    if (slot !== NO_SLOT) Atomics.store(this.bigs, SLOTS_START + slot * SLOT_CELLS, BigInt(-(row + 1)));
    Atomics.sub(this.ints, this.activeCell(row), 1);
    Atomics.sub(this.ints, ACTIVE_TOTAL, 1);
  }

  /** Frees a slot whose range the main thread has recorded. */
  release(slot: number): void {
    if (slot !== NO_SLOT) Atomics.store(this.bigs, SLOTS_START + slot * SLOT_CELLS, 0n);
  }

  /**
   * The ranges `[offset, offset + done)` of the operations holding slots (running or not yet
   * recorded). A slot being taken by a new operation while it is read is left out: the range
   * it held before was recorded already (only then is a slot freed), and the new one has
   * barely begun.
   */
  slotRanges(): [number, number][] {
    const ranges: [number, number][] = [];
    for (let slot = 0; slot < OPERATION_SLOTS; slot++) {
      const cell = SLOTS_START + slot * SLOT_CELLS;
      if (Atomics.load(this.bigs, cell) === 0n) continue;
      const generation = Atomics.load(this.bigs, cell + 3);
      if (generation % 2n === 1n) continue;
      const offset = Number(Atomics.load(this.bigs, cell + 1));
      const done = Number(Atomics.load(this.bigs, cell + 2));
      if (Atomics.load(this.bigs, cell + 3) !== generation) continue;
      ranges.push([offset, offset + done]);
    }
    return ranges;
  }

  /**
   * Forgets what a thread that died held: its connections and running operations no longer
   * count, and the ranges its operations had done are returned (they were written or sent,
   * as those of a connection that broke off) with their slots freed.
   */
  forgetRow(row: number): [number, number][] {
    const ranges: [number, number][] = [];
    Atomics.store(this.ints, this.connectionCell(row), 0);
    const active = Atomics.exchange(this.ints, this.activeCell(row), 0);
    Atomics.sub(this.ints, ACTIVE_TOTAL, active);
    for (let slot = 0; slot < OPERATION_SLOTS; slot++) {
      const cell = SLOTS_START + slot * SLOT_CELLS;
      const owner = Atomics.load(this.bigs, cell);
      if (owner !== BigInt(row + 1) && owner !== BigInt(-(row + 1))) continue;
      const offset = Number(Atomics.load(this.bigs, cell + 1));
      ranges.push([offset, offset + Number(Atomics.load(this.bigs, cell + 2))]);
      Atomics.store(this.bigs, cell, 0n);
    }
    return ranges;
  }

  private connectionCell(row: number): number {
    return ROWS_START + row;
  }

  private activeCell(row: number): number {
    return ROWS_START + this.rows + row;
  }
}

function intCellsByteLength(rows: number): number {
  const bytes = 4 * (ROWS_START + 2 * rows);
  return Math.ceil(bytes / 8) * 8;
}
