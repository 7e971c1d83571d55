/**
 * Issue 9 item 1: writers growing one regular file at once (each through its own handle, as
 * connections do) must all keep their bytes, and the file must end exactly where the furthest
 * write ended: the size only ever grows by writes.
 */
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import type { Backend } from "./backend.js";
import { openBackend } from "./open.js";

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir("imageio-grow-");
});
afterAll(async () => {
  await tmp.remove();
});

/** A deterministic pseudo-random stream, so failures can be replayed from the round number. */
function rng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

describe("growing writers", () => {
  it("9.1: two to eight writers growing one file at once all keep their bytes, and the size is the furthest end", async () => {
    for (let round = 0; round < 40; round++) {
      const random = rng(round + 1);
      const writers = 2 + (round % 7);
      const path = tmp.file(`grow-${round}.raw`);
      const initial = Math.floor(random() * 10_000);
      await writeFile(path, Buffer.alloc(initial, 0x2e));
      const model = Buffer.alloc(initial + writers * 20_000);
      model.fill(0x2e, 0, initial);
      let modelSize = initial;
      // Distinct ranges past the current end, each with unaligned head and tail.
      const writes: { offset: number; data: Buffer }[] = [];
      let cursor = initial + Math.floor(random() * 300);
      for (let k = 0; k < writers; k++) {
        const length = 1 + Math.floor(random() * 9000);
        const data = randomBytes(length);
        writes.push({ offset: cursor, data });
        data.copy(model, cursor);
        modelSize = Math.max(modelSize, cursor + length);
        cursor += length + Math.floor(random() * 200);
      }
      const handles: Backend[] = await Promise.all(writes.map(() => openBackend(`file://${path}`)));
      try {
        // Writers start in a shuffled order, like connections arriving.
        const order = writes.map((_, k) => k).sort(() => random() - 0.5);
        await Promise.all(
          order.map((k) => (handles[k] as Backend).write((writes[k] as { data: Buffer }).data, writes[k]?.offset ?? 0)),
        );
      } finally {
        await Promise.all(handles.map((handle) => handle.close()));
      }
      const contents = await readFile(path);
      expect(contents.length, `round ${round}: size`).toBe(modelSize);
      expect(contents.equals(model.subarray(0, modelSize)), `round ${round}: bytes`).toBe(true);
    }
  });
});
