/**
 * `imageio copy` starts a native thread as soon as it knows an image holds data to map or
 * zero (issue 14: start-up is most of a small copy; an empty image's copy starts none). A copy
 * that ends while that thread still loads koffi must end as it would without it: Node aborts
 * (status 134) when a process exits during an addon's load in a worker, so the thread holds
 * the exit until it has loaded.
 */
import { writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { imageio } from "./helpers/cli.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

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

  it("14: a copy that fails right after starting its native thread exits 1, never an abort, in many rounds", async () => {
    // A source with data starts the thread; a destination in a missing directory then fails
    // at once, while the thread may still be loading.
    const src = tmp.file("data.raw");
    await writeFile(src, Buffer.alloc(64 * 1024, 0x5a));
    for (let round = 0; round < 15; round++) {
      const results = await Promise.all(
        Array.from({ length: 4 }, () => imageio("copy", src, "/nonexistent/dir/b.raw")),
      );
      for (const result of results) {
        expect(result.code, result.stderr).toBe(1);
        expect(result.stderr).toContain("/nonexistent/dir/b.raw");
      }
    }
  }, 120_000);
});
