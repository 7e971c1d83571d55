import { describe, expect, it } from "vitest";
import { FakeClock } from "./clock.js";
import { OPERATION_SLOTS, SharedTicketState } from "./shared-state.js";
import { Ticket, type TicketFields } from "./ticket.js";

const fields: TicketFields = {
  uuid: "t1",
  size: 1 << 20,
  ops: ["read"],
  timeout: 300,
  url: "file:///tmp/x",
  inactivity_timeout: 60,
  transfer_id: "tx",
  transferIdGiven: true,
  filename: undefined,
  sparse: false,
  dirty: false,
};

/** The main thread's ticket and a worker's copy over the same memory (rows: main + 2 workers). */
function pair(clock = new FakeClock()) {
  const ended: [number, number, number][] = [];
  const state = new SharedTicketState(3);
  const main = new Ticket(fields, clock, { state, row: 0 });
  const copy = new Ticket(fields, clock, {
    state: new SharedTicketState(3, main.sharedState),
    row: 2,
    reportEnded: (slot, start, end) => ended.push([slot, start, end]),
  });
  return { main, copy, ended, clock };
}

describe("14.workers: ticket state shared between threads", () => {
  it("14.workers: a worker's running operation shows in the main thread's status; its range counts once the main thread records it", () => {
    const { main, copy, ended } = pair();
    const operation = copy.begin(4096);
    operation.done = 8192;
    expect(main.status()).toMatchObject({ active: true, idle_time: 0, transferred: 8192 });
    copy.end(operation);
    // Ended but not yet recorded: the slot still holds the range, so transferred never dips.
    expect(main.status()).toMatchObject({ active: false, transferred: 8192 });
    for (const [slot, start, end] of ended) main.recordEnded(slot, start, end);
    expect(main.status()).toMatchObject({ active: false, transferred: 8192 });
  });

  it("14.workers: connections count across threads, and a dead worker's connections and operations are released", () => {
    const { main, copy } = pair();
    const context = { close: async () => undefined };
    main.addContext(context);
    copy.addContext({ close: async () => undefined });
    const operation = copy.begin(0);
    operation.done = 4096;
    expect(main.status()).toMatchObject({ connections: 2, active: true });
    main.forgetWorker(2);
    // What the dead worker had done still counts; what it held does not.
    expect(main.status()).toMatchObject({ connections: 1, active: false, transferred: 4096 });
  });

  it("14.workers: a touch or a cancel on one thread is seen by every thread", () => {
    const { main, copy, clock } = pair();
    clock.advance(100);
    copy.end(copy.begin(0));
    expect(main.expires).toBe(Math.floor(clock.now()) + 300);
    main.extend(10);
    expect(copy.expires).toBe(Math.floor(clock.now()) + 10);
    clock.advance(11);
    expect(() => copy.authorize("read")).toThrow(/expired/);
    main.extend(300);
    void main.cancel(0);
    expect(() => copy.authorize("read")).toThrow(/was canceled/);
  });

  it("14.workers: a new ticket gets new memory: counts of the ticket it replaced never leak into it", () => {
    const { main, copy } = pair();
    copy.begin(0).done = 4096;
    copy.addContext({ close: async () => undefined });
    const replacement = new Ticket(fields, new FakeClock(), { state: new SharedTicketState(3), row: 0 });
    expect(replacement.sharedState).not.toBe(main.sharedState);
    expect(replacement.status()).toMatchObject({ active: false, connections: 0, transferred: 0 });
  });

  it("14.workers: operations beyond the shared slots still count when they end", () => {
    const { main } = pair();
    const operations = Array.from({ length: OPERATION_SLOTS + 2 }, (_, k) => main.begin(k * 100));
    for (const operation of operations) operation.done = 100;
    expect(main.status().transferred).toBe((OPERATION_SLOTS + 2) * 100);
    for (const operation of operations) main.end(operation);
    expect(main.status()).toMatchObject({ active: false, transferred: (OPERATION_SLOTS + 2) * 100 });
  });
});
