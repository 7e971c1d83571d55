import { readFile, rename } from "node:fs/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../test/helpers/tmp.js";
import { createLogger, FileSink } from "./log.js";

let tmp: TempDir;
beforeEach(async () => {
  tmp = await makeTempDir("imageio-log-");
});
afterEach(async () => {
  await tmp.remove();
});

describe("log file", () => {
  it("13: lines before a reopen stay in the renamed file, lines after it go to the new one", async () => {
    const path = tmp.file("daemon.log");
    const sink = new FileSink(path);
    const log = createLogger("INFO", sink, "daemon");
    for (let i = 0; i < 100; i++) log.info("BEFORE", { i });
    await rename(path, `${path}.1`);
    await sink.reopen();
    for (let i = 0; i < 100; i++) log.info("AFTER", { i });
    await sink.close();
    const rotated = (await readFile(`${path}.1`, "utf8")).trim().split("\n");
    const current = (await readFile(path, "utf8")).trim().split("\n");
    expect(rotated).toHaveLength(100);
    expect(rotated.every((line) => / BEFORE i=\d+$/.test(line))).toBe(true);
    expect(current).toHaveLength(100);
    expect(current.at(-1)).toMatch(/INFO {4}\[daemon\] AFTER i=99$/);
  });

  it("13: a file that cannot be opened fails at once; a failed reopen keeps the old file", async () => {
    expect(() => new FileSink(tmp.file("missing/daemon.log"))).toThrow(/ENOENT/);
    const path = tmp.file("daemon.log");
    const sink = new FileSink(path);
    await rename(tmp.path, `${tmp.path}-moved`);
    try {
      await expect(sink.reopen()).rejects.toThrow(/ENOENT/);
      sink.write("still here\n");
      await sink.close();
      expect(await readFile(`${tmp.path}-moved/daemon.log`, "utf8")).toBe("still here\n");
    } finally {
      await rename(`${tmp.path}-moved`, tmp.path);
    }
  });
});
