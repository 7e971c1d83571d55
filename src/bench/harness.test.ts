import { describe, expect, it } from "vitest";
import { interleave, markdownTable, measure, median } from "./harness.js";

describe("benchmark harness", () => {
  it("measures a child's wall time, CPU seconds and peak RSS", async () => {
    // Busy for 0.3 s of its own CPU time (not wall time: a loaded machine must not make it
    // spin less) while holding 64 MiB of touched memory.
    const script =
      "const b = Buffer.alloc(64 * 1024 * 1024, 1); const t = process.cpuUsage();" +
      " for (;;) { const u = process.cpuUsage(t); if (u.user + u.system >= 300000) break; }";
    const m = await measure(process.execPath, ["-e", script]);
    expect(m.wall).toBeGreaterThanOrEqual(0.3);
    expect(m.cpu).toBeGreaterThanOrEqual(0.25);
    expect(m.cpu).toBeLessThan(m.wall + 1);
    expect(m.peakRss).toBeGreaterThanOrEqual(64 * 1024 * 1024);
  });

  it("fails with the child's status and the end of what it printed", async () => {
    await expect(measure("sh", ["-c", "echo 'disk on fire' >&2; exit 3"])).rejects.toThrow(
      /exited with status 3:\ndisk on fire$/,
    );
  });

  it("rotates who goes first each round", async () => {
    const order: string[] = [];
    const contender = (name: string) => ({ name, run: async () => order.push(name) });
    const results = await interleave(3, [contender("a"), contender("b"), contender("c")]);
    expect(order).toEqual(["a", "b", "c", "b", "c", "a", "c", "a", "b"]);
    expect(results.get("a")).toHaveLength(3);
  });

  it("takes medians and prints aligned Markdown tables", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(
      markdownTable(
        ["tool", "MiB/s"],
        [
          ["dd", "427"],
          ["imageio", "473"],
        ],
      ),
    ).toBe(["| tool    | MiB/s |", "|---------|-------|", "| dd      | 427   |", "| imageio | 473   |"].join("\n"));
  });
});
