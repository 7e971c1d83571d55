import { describe, expect, it } from "vitest";
import { AlignedBackend } from "./aligned.js";
import { runBackendSuite } from "./backend.case.js";
import { MemoryBackend } from "./memory.js";

for (const alignment of [512, 4096]) {
  runBackendSuite(`aligned(memory, ${alignment})`, {
    open: async (initial, options) =>
      new AlignedBackend(MemoryBackend.create({ data: initial, readonly: options?.readonly ?? false }), alignment),
  });
}

describe("aligned wrapper", () => {
  it("sends only aligned reads, writes and zeroes to the backend below it", async () => {
    const inner = MemoryBackend.create({ data: Buffer.alloc(64 * 1024) });
    const requests: [string, number, number][] = [];
    const spy = new Proxy(inner, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver);
        if (property === "read" || property === "write") {
          return (buf: Buffer, offset: number) => {
            requests.push([property, offset, buf.length]);
            return value.call(target, buf, offset);
          };
        }
        if (property === "zero") {
          return (offset: number, length: number) => {
            requests.push(["zero", offset, length]);
            return value.call(target, offset, length);
          };
        }
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const aligned = new AlignedBackend(spy, 512, 4096);
    await aligned.write(Buffer.alloc(10_000, 7), 3);
    await aligned.zero(1000, 20_000);
    await aligned.read(Buffer.alloc(777), 99);
    expect(requests.length).toBeGreaterThan(3);
    for (const [, offset, length] of requests) {
      expect(offset % 512).toBe(0);
      expect(length % 512).toBe(0);
    }
    const check = Buffer.alloc(64 * 1024);
    await aligned.read(check, 0);
    const expected = Buffer.alloc(64 * 1024);
    expected.fill(7, 3, 10_003);
    expected.fill(0, 1000, 21_000);
    expect(check.equals(expected)).toBe(true);
  });

  it("rejects alignments that are not a power of two up to 4096", () => {
    const inner = MemoryBackend.create();
    expect(() => new AlignedBackend(inner, 1000)).toThrow(/Invalid alignment 1000/);
    expect(() => new AlignedBackend(inner, 8192)).toThrow(/Invalid alignment 8192/);
  });

  it("keeps a growing image at the size the caller wrote, not the block end", async () => {
    const aligned = new AlignedBackend(MemoryBackend.create(), 4096);
    await aligned.write(Buffer.from("hello"), 0);
    expect(await aligned.size()).toBe(5);
    await aligned.write(Buffer.from("world"), 4094);
    expect(await aligned.size()).toBe(4099);
    const check = Buffer.alloc(4099);
    await aligned.read(check, 0);
    expect(check.subarray(0, 5).toString()).toBe("hello");
    expect(check.subarray(4094).toString()).toBe("world");
    expect(check.subarray(5, 4094).every((b) => b === 0)).toBe(true);
  });

  it("keeps the size of an image whose last partial block is rewritten", async () => {
    const inner = MemoryBackend.create({ data: Buffer.alloc(5000, 1) });
    const aligned = new AlignedBackend(inner, 4096);
    await aligned.write(Buffer.alloc(100, 2), 4900);
    await aligned.zero(4097, 10);
    expect(await aligned.size()).toBe(5000);
    const expected = Buffer.alloc(5000, 1).fill(2, 4900).fill(0, 4097, 4107);
    expect(inner.contents().equals(expected)).toBe(true);
  });
});
