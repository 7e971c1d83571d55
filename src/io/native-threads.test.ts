import { open, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { MiB } from "../units.js";
import { sparseMap } from "./native.js";
import { nativeThreads, warmNativeThreads } from "./native-threads.js";

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

/** Polls `condition` until it holds or the deadline passes. */
async function until(condition: () => boolean, deadlineMs = 10_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("native threads", () => {
  it("14: warmNativeThreads starts one thread ahead of the first call, which then runs on it", async () => {
    expect(nativeThreads.threads).toBe(0);
    warmNativeThreads();
    warmNativeThreads(); // a second call while the first thread boots starts no other
    await until(() => nativeThreads.threads === 1);
    warmNativeThreads(); // nor once it runs
    expect(nativeThreads.threads).toBe(1);

    // An empty 1 TiB file, as in the copy start-up benchmark: one hole, found on that thread.
    const path = tmp.file("empty.raw");
    await writeFile(path, "");
    await truncate(path, 1024 * 1024 * MiB);
    const handle = await open(path, "r");
    try {
      expect(await sparseMap(handle.fd, 0, 1024 * 1024 * MiB, 100)).toEqual({
        extents: [{ start: 0, length: 1024 * 1024 * MiB, data: false }],
        next: 1024 * 1024 * MiB,
      });
    } finally {
      await handle.close();
    }
    expect(nativeThreads.threads).toBe(1);
  });
});
