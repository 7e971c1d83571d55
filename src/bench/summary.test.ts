import { describe, expect, it } from "vitest";
import { summaryTable } from "./summary.js";

describe("benchmark summary", () => {
  it("14: shows each target with ✓, ✗ or - and counts the targets met", () => {
    const text = summaryTable([
      { measure: "HTTPS PUT: daemon CPU-s/GiB", runtime: "Node 20", value: "0.95", target: "≤ 1.00", met: true },
      { measure: "proxy PUT: MiB/s ÷ direct HTTPS", runtime: "Node 20", value: "0.70×", target: "≥ 0.85×", met: false },
      { measure: "workers suite", runtime: "Node 20", value: "its table above", target: "-", met: undefined },
    ]);
    const lines = text.split("\n");
    expect(lines[0]).toMatch(/^\| measure +\| runtime +\| value +\| target +\| +\|$/);
    expect(lines[2]).toMatch(/HTTPS PUT: daemon CPU-s\/GiB .*\| 0\.95 .*\| ≤ 1\.00 +\| ✓ \|$/);
    expect(lines[3]).toMatch(/\| ≥ 0\.85× +\| ✗ \|$/);
    expect(lines[4]).toMatch(/\| its table above +\| - +\| - \|$/);
    expect(lines.at(-1)).toBe("1 of 2 targets met.");
  });
});
