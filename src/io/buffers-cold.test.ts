/**
 * A pool in a process whose native threads are not up yet (each test file runs in a process of
 * its own): the first leases must not wait for one to boot.
 */
import { describe, expect, it } from "vitest";
import { nativeThreadReady, residentPageCount } from "../../test/helpers/memory.js";
import { BufferPool } from "./buffers.js";
import { nativeThreads } from "./native-threads.js";

describe("BufferPool with no native thread up", () => {
  it("14: lends a new buffer at once, its pages left to fault in on first use, and starts a thread for the next ones", async () => {
    expect(nativeThreads.readyThreads).toBe(0);
    const pool = new BufferPool(2);
    const size = 8 * 1024 * 1024;
    const first = await pool.lease(size);
    // Lent before any thread finished booting (about 40 ms): nothing faulted its pages in.
    expect(nativeThreads.readyThreads).toBe(0);
    expect(await residentPageCount(first.buffer)).toBe(0);
    first.buffer.fill(7);
    expect(first.buffer.every((byte) => byte === 7)).toBe(true);
    await nativeThreadReady();
    const second = await pool.lease(size);
    expect(await residentPageCount(second.buffer)).toBe(size / 4096);
    first.release();
    second.release();
  });
});
