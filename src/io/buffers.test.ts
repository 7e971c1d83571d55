import { describe, expect, it } from "vitest";
import { BufferPool, isZero, zeroBuffer } from "./buffers.js";
import { bufferAddress } from "./native.js";

describe("buffer pool", () => {
  it("hands out aligned buffers, never more than its capacity, and reuses released ones", async () => {
    const pool = new BufferPool(64 * 1024, 2);
    const a = await pool.acquire();
    const b = await pool.acquire();
    expect(bufferAddress(a) % 4096n).toBe(0n);
    expect(a.length).toBe(64 * 1024);
    expect(pool.memory).toBe(128 * 1024);
    let third: Buffer | undefined;
    const waiting = pool.acquire().then((buf) => {
      third = buf;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(third).toBeUndefined();
    pool.release(a);
    await waiting;
    expect(third).toBe(a);
    expect(pool.memory).toBe(128 * 1024);
    pool.release(b);
    expect(await pool.with(async (buf) => buf)).toBe(b);
  });

  it("rejects sizes that cannot be used for direct I/O", () => {
    expect(() => new BufferPool(1000)).toThrow(/Invalid buffer size: 1000/);
    expect(() => new BufferPool(4096, 0)).toThrow(/capacity/);
  });
});

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
