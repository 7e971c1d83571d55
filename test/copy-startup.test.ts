/**
 * `imageio copy` starts its native thread before it parses its arguments (issue 14: start-up
 * is most of an empty image's copy). A copy that ends while that thread still loads koffi
 * must end as it would without it: Node aborts (status 134) when a process exits during an
 * addon's load in a worker, so the thread holds the exit until it has loaded.
 */
import { describe, expect, it } from "vitest";
import { imageio } from "./helpers/cli.js";

describe("imageio copy start-up", () => {
  it("14: usage errors right after start exit with status 2, never an abort, in many rounds", async () => {
    // Failed 3 times in 150 before the thread held the exit; 4 at a time for the load that
    // makes the race likelier, 100 in all.
    for (let round = 0; round < 25; round++) {
      const results = await Promise.all(
        Array.from({ length: 4 }, () => imageio("copy", "--buffer-size", "8X", "/nonexistent/a", "/nonexistent/b")),
      );
      for (const result of results) {
        expect(result.code, result.stderr).toBe(2);
        expect(result.stderr).toContain("argument '8X' is invalid");
      }
    }
  }, 120_000);
});
