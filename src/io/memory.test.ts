import { describe, expect, it } from "vitest";
import { runBackendSuite } from "./backend.case.js";
import { MemoryBackend } from "./memory.js";

runBackendSuite("memory", {
  open: async (initial, options) => MemoryBackend.create({ data: initial, readonly: options?.readonly ?? false }),
});

describe("memory backend", () => {
  it("reports zero extents from its contents at 4 KiB granularity", async () => {
    const data = Buffer.alloc(5 * 4096);
    data[2 * 4096 + 7] = 1;
    const backend = MemoryBackend.create({ data });
    const extents = [];
    for await (const extent of backend.extents("zero")) extents.push(extent);
    expect(extents).toEqual([
      { start: 0, length: 8192, zero: true, hole: false },
      { start: 8192, length: 4096, zero: false, hole: false },
      { start: 12288, length: 8192, zero: true, hole: false },
    ]);
  });
});
