import { describe, expect, it } from "vitest";
import { nativeThreadReady, residentPageCount } from "../../test/helpers/memory.js";
import { type BufferLease, BufferPool, isZero, zeroBuffer } from "./buffers.js";
import { isAligned } from "./native.js";

describe("isZero", () => {
  it("finds a single non-zero byte anywhere", () => {
    const buf = Buffer.alloc(200_000);
    expect(isZero(buf)).toBe(true);
    for (const at of [0, 65_535, 65_536, 199_999]) {
      buf[at] = 1;
      expect(isZero(buf)).toBe(false);
      buf[at] = 0;
    }
    expect(isZero(Buffer.alloc(0))).toBe(true);
    expect(isZero(zeroBuffer())).toBe(true);
  });
});

describe("BufferPool", () => {
  it("9.10: lends at most maxBuffers at once; the next lease waits for a release and reuses its memory", async () => {
    const pool = new BufferPool(2, 2);
    const a = await pool.lease(8192);
    const b = await pool.lease(8192);
    expect(pool.inUse).toBe(2);
    let third: BufferLease | undefined;
    const waiting = pool.lease(8192).then((lease) => {
      third = lease;
      return lease;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(third).toBeUndefined();
    a.release();
    a.release();
    const c = await waiting;
    expect(c.buffer).toBe(a.buffer);
    expect(pool.inUse).toBe(2);
    b.release();
    c.release();
    expect(pool.inUse).toBe(0);
  });

  it("9.10: a waiting lease gives up when its signal aborts", async () => {
    const pool = new BufferPool(1);
    const held = await pool.lease(4096);
    const controller = new AbortController();
    const waiting = pool.lease(4096, controller.signal);
    controller.abort(new Error("client went away"));
    await expect(waiting).rejects.toThrow("client went away");
    held.release();
    const next = await pool.lease(4096);
    expect(isAligned(next.buffer, 4096)).toBe(true);
    next.release();
  });

  it("9.10: gives the pages of buffers idle for a while back to the kernel, never those of leased ones", async () => {
    const pool = new BufferPool(4, 4, 20);
    const idle = await pool.lease(64 * 1024);
    idle.buffer.fill(0x5a);
    const idleBuffer = idle.buffer;
    idle.release();
    const busy = await pool.lease(128 * 1024);
    busy.buffer.fill(0x6b);
    busy.release();
    // Leased again at once: in use, so its memory must stay.
    const again = await pool.lease(128 * 1024);
    expect(again.buffer).toBe(busy.buffer);
    const deadline = Date.now() + 5_000;
    while (pool.residentIdle > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(pool.residentIdle).toBe(0);
    // MADV_DONTNEED: the idle buffer's pages are gone and read as zeros; it is still usable.
    expect(isZero(idleBuffer)).toBe(true);
    expect(again.buffer.every((byte) => byte === 0x6b)).toBe(true);
    const reused = await pool.lease(64 * 1024);
    expect(reused.buffer).toBe(idleBuffer);
    reused.buffer.fill(1);
    expect(reused.buffer.every((byte) => byte === 1)).toBe(true);
    reused.release();
    again.release();
  });

  it("14.huge: in a burst of 8 new leases, every buffer is resident before it is lent", async () => {
    await nativeThreadReady();
    const pool = new BufferPool(8);
    const size = 4 * 1024 * 1024;
    const leases = await Promise.all(Array.from({ length: 8 }, () => pool.lease(size)));
    const resident = await Promise.all(leases.map((lease) => residentPageCount(lease.buffer)));
    expect(resident).toEqual(Array(8).fill(size / 4096));
    for (const lease of leases) lease.release();
  });

  it("14: a new buffer, and one whose pages were given back, is resident before it is lent", async () => {
    await nativeThreadReady();
    const pool = new BufferPool(2, 2, 20);
    const size = 8 * 1024 * 1024;
    const pages = size / 4096;
    const first = await pool.lease(size);
    // Faulted in on a native thread: the first writer (a socket read on the event loop) never
    // waits for the kernel to find and clear memory.
    expect(await residentPageCount(first.buffer)).toBe(pages);
    const buffer = first.buffer;
    first.release();
    const deadline = Date.now() + 5_000;
    while (pool.residentIdle > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await residentPageCount(buffer)).toBe(0);
    const again = await pool.lease(size);
    expect(again.buffer).toBe(buffer);
    expect(await residentPageCount(again.buffer)).toBe(pages);
    again.release();
  });
});
