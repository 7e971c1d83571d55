import { Worker } from "node:worker_threads";
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

describe("14.workers: shared state read while another thread changes it", () => {
  it("14.workers: a slot taken by a new operation never shows the previous operation's progress from the new offset", async () => {
    // The real class in a real thread: bundled from this source, as worker-pool.ts does in development.
    const { build } = await import("esbuild");
    const bundle = await build({
      entryPoints: [new URL("./shared-state.ts", import.meta.url).pathname],
      bundle: true,
      format: "iife",
      globalName: "sharedState",
      platform: "node",
      write: false,
    });
    const GiB = 2 ** 30;
    const state = new SharedTicketState(2);
    const control = new Int32Array(new SharedArrayBuffer(12));
    // Row 1 runs a 1 GiB operation at 0, then one at 4 GiB that does 1 byte, over and over, in
    // slot 0 each time: it waits for this thread to free the slot, as the main thread does once
    // it recorded the ended operation.
    const script = `${bundle.outputFiles[0]?.text}
      const { workerData } = require("node:worker_threads");
      const state = new sharedState.SharedTicketState(2, workerData.buffer);
      const control = new Int32Array(workerData.control);
      Atomics.store(control, 0, 1);
      const run = (offset, done) => {
        const slot = state.beginOperation(1, offset);
        state.progress(slot, done);
        state.endOperation(1, slot);
        // "ended": the main thread records it and frees the slot.
        Atomics.store(control, 2, 1);
        while (Atomics.load(control, 2) === 1 && Atomics.load(control, 1) === 0);
      };
      while (Atomics.load(control, 1) === 0) {
        run(0, ${GiB});
        run(${4 * GiB}, 1);
      }`;
    const worker = new Worker(script, { eval: true, workerData: { buffer: state.buffer, control: control.buffer } });
    try {
      const deadline = Date.now() + 10_000;
      while (Atomics.load(control, 0) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      const bad: [number, number][] = [];
      const until = performance.now() + 1500;
      let reads = 0;
      while (performance.now() < until && bad.length === 0) {
        for (const range of state.slotRanges()) {
          const [start, end] = range;
          if ((start === 4 * GiB && end - start > 1) || (start !== 0 && start !== 4 * GiB)) bad.push(range);
        }
        // The ended operation is recorded: its slot is free for the next (ticket.recordEnded).
        if (Atomics.load(control, 2) === 1) {
          state.release(0);
          Atomics.store(control, 2, 0);
        }
        reads++;
      }
      expect(bad).toEqual([]);
      // Enough reads while the other thread ran for the check to mean something.
      expect(reads).toBeGreaterThan(1000);
    } finally {
      Atomics.store(control, 1, 1);
      await worker.terminate();
    }
  });
});
