import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { Backend } from "./backend.js";
import { copy } from "./copy.js";
import { MemoryBackend } from "./memory.js";
import { shareWriter } from "./shared-writer.js";

/**
 * A fixed-size, single-writer destination (like a daemon's regular-file ticket) that counts
 * how many of its writes overlap in time and how many handles were opened on it.
 */
async function singleWriter(size: number) {
  const memory = await MemoryBackend.create({ data: Buffer.alloc(size) });
  const stats = { active: 0, maxActive: 0, clones: 0, closed: 0 };
  const slow = async <T>(work: () => Promise<T>): Promise<T> => {
    stats.active++;
    stats.maxActive = Math.max(stats.maxActive, stats.active);
    await new Promise((resolve) => setTimeout(resolve, 1));
    try {
      return await work();
    } finally {
      stats.active--;
    }
  };
  const backend: Backend = {
    name: "single",
    blockSize: 1,
    directIo: false,
    readonly: false,
    growable: false,
    caps: { ...memory.caps, maxWriters: 1 },
    size: () => memory.size(),
    read: (buf, offset) => memory.read(buf, offset),
    write: (buf, offset) => slow(() => memory.write(buf, offset)),
    zero: (offset, length) => slow(() => memory.zero(offset, length)),
    flush: () => memory.flush(),
    resize: (newSize) => memory.resize(newSize),
    extents: ((context: "zero" | "dirty" = "zero", range?: { start: number; length: number }) =>
      context === "dirty" ? memory.extents("dirty", range) : memory.extents("zero", range)) as Backend["extents"],
    clone: async () => {
      stats.clones++;
      return backend;
    },
    close: async () => {
      stats.closed++;
    },
  };
  return { backend, memory, stats };
}

describe("one writer shared by workers", () => {
  it("12: lets a copy run four workers into a single-writer destination, writing one request at a time", async () => {
    const size = 64 * 4096 + 1000;
    const image = randomBytes(size);
    image.fill(0, 20 * 4096, 30 * 4096);
    const src = await MemoryBackend.create({ data: image, readonly: true });
    const { backend, memory, stats } = await singleWriter(size);
    const shared = shareWriter(backend, 4);
    expect(shared.caps.maxWriters).toBe(4);
    const result = await copy(src, shared, { workers: 4, bufferSize: 8192 });
    expect(result.workers).toBe(4);
    expect(stats.maxActive).toBe(1);
    // Every worker's handle is the one underneath: one connection to the remote.
    expect(stats.clones).toBe(0);
    const out = Buffer.alloc(size);
    await memory.read(out, 0);
    expect(out.equals(image)).toBe(true);
    // Workers closing their handles leave it open; closing the shared one closes it.
    expect(stats.closed).toBe(0);
    await shared.close();
    expect(stats.closed).toBe(1);
  });

  it("12: a failed write reaches its worker, and the next write still runs", async () => {
    const { backend, memory } = await singleWriter(8192);
    const failing: Backend = {
      ...backend,
      write: async (buf, offset) => {
        if (offset === 0) throw new Error("remote refused");
        await memory.write(buf, offset);
      },
    };
    const shared = shareWriter(failing, 2);
    await expect(shared.write(Buffer.alloc(10, 1), 0)).rejects.toThrow("remote refused");
    await shared.write(Buffer.alloc(10, 2), 4096);
    const out = Buffer.alloc(10);
    await memory.read(out, 4096);
    expect(out.equals(Buffer.alloc(10, 2))).toBe(true);
  });
});
