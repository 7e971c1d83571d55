import { describe, expect, it } from "vitest";
import { withBlockLocks } from "./block-locks.js";

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("block locks", () => {
  it("never lets two holders of one block overlap, while holders of other blocks run together", async () => {
    const events: string[] = [];
    const hold = (name: string, blocks: number[]) =>
      withBlockLocks("image-a", blocks, async () => {
        events.push(`${name} in`);
        await tick();
        await tick();
        events.push(`${name} out`);
      });
    const holders: Record<string, number[]> = { A: [0], B: [4096, 0], C: [8192], D: [4096], E: [0, 8192] };
    await Promise.all(Object.entries(holders).map(([name, blocks]) => hold(name, blocks)));
    const at = (event: string) => events.indexOf(event);
    for (const [x, xBlocks] of Object.entries(holders)) {
      for (const [y, yBlocks] of Object.entries(holders)) {
        if (x >= y || !xBlocks.some((block) => yBlocks.includes(block))) continue;
        const apart = at(`${x} out`) < at(`${y} in`) || at(`${y} out`) < at(`${x} in`);
        expect(apart, `${x} and ${y} share a block: ${events.join(", ")}`).toBe(true);
      }
    }
    // A and C share nothing: C does not wait for A.
    expect(at("C in")).toBeLessThan(at("A out"));
  });

  it("does not mix images and releases on errors", async () => {
    await expect(withBlockLocks("image-b", [0], () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    const order: string[] = [];
    await Promise.all([
      withBlockLocks("image-b", [0], async () => {
        order.push("b");
      }),
      withBlockLocks("image-c", [0], async () => {
        order.push("c");
      }),
    ]);
    expect(order.sort()).toEqual(["b", "c"]);
  });
});
