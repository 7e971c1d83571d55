/**
 * Issue 14: an empty image's copy starts fast because its source is mapped by one lseek (no
 * native thread) and its workers open nothing. What the user gets must not change: the same
 * image, exit status, summary and final JSON record as through the general path, the lseek
 * walk on a native thread. The general path is taken here by a source with the same (empty)
 * contents whose blocks lie past its end: st_blocks > 0, so it is walked.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { open, stat } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MiB, TiB } from "../src/units.js";
import { imageio } from "./helpers/cli.js";
import { emptySparseFile } from "./helpers/images.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

/** SHA-256 of `length` bytes at `offset`. */
async function hashOf(path: string, offset: number, length: number): Promise<string> {
  const handle = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buf, 0, length, offset);
    return createHash("sha256").update(buf.subarray(0, bytesRead)).digest("hex");
  } finally {
    await handle.close();
  }
}

const zerosHash = (length: number) => createHash("sha256").update(Buffer.alloc(length)).digest("hex");

/** An existing destination: `size` bytes with 4 MiB of random data at the start and the end. */
async function destinationWithData(path: string, size: number): Promise<void> {
  await emptySparseFile(path, size);
  const handle = await open(path, "r+");
  await handle.write(Buffer.alloc(4 * MiB, 0x5a), 0, 4 * MiB, 0);
  await handle.write(Buffer.alloc(4 * MiB, 0xa5), 0, 4 * MiB, size - 4 * MiB);
  await handle.close();
}

/** The final JSON record without its timings, and the summary without its time and rate. */
function outcomeOf(result: { code: number; stdout: string; stderr: string }) {
  const lines = result.stdout.trim().split("\n");
  const { elapsed, copy_seconds, rate, ...record } = JSON.parse(lines[lines.length - 1] as string);
  expect([elapsed, copy_seconds, rate].every((value) => typeof value === "number")).toBe(true);
  return {
    code: result.code,
    record,
    summary: result.stderr.replace(/ in [\d.]+ s \([^)]*\)/, " in T s (R)"),
  };
}

describe("copy of an empty image", () => {
  it("14: gives the same image, status, summary and JSON record as the general path, into a new file, over a smaller file with data and over a larger one", async (context) => {
    const size = TiB;
    const fast = tmp.file("empty.raw");
    const general = tmp.file("empty-walked.raw");
    await emptySparseFile(fast, size);
    await emptySparseFile(general, size);
    try {
      await run("fallocate", ["--keep-size", "--offset", String(size), "--length", String(MiB), general]);
    } catch (error) {
      console.log(`skipped: fallocate --keep-size is not available here: ${(error as Error).message}`);
      return context.skip();
    }
    expect((await stat(fast)).blocks).toBe(0);
    expect((await stat(general)).blocks).toBeGreaterThan(0);

    const destinations: { name: string; prepare(path: string): Promise<void> }[] = [
      { name: "a new file", prepare: async () => undefined },
      { name: "a smaller file with data", prepare: (path) => destinationWithData(path, 64 * MiB) },
      { name: "a larger file with data", prepare: (path) => destinationWithData(path, size + 64 * MiB) },
    ];
    for (const [i, destination] of destinations.entries()) {
      const outcomes = [];
      for (const [label, src] of [
        ["fast", fast],
        ["general", general],
      ] as const) {
        const dst = tmp.file(`dst-${i}-${label}.raw`);
        await destination.prepare(dst);
        const result = await imageio("copy", "--progress", "json", src, dst);
        expect(result.code, result.stderr).toBe(0);
        // Zeros of the source's size, wherever the old data was.
        expect((await stat(dst)).size, destination.name).toBe(size);
        expect(await hashOf(dst, 0, 8 * MiB), destination.name).toBe(zerosHash(8 * MiB));
        expect(await hashOf(dst, 60 * MiB, 8 * MiB), destination.name).toBe(zerosHash(8 * MiB));
        expect(await hashOf(dst, size - 8 * MiB, 8 * MiB), destination.name).toBe(zerosHash(8 * MiB));
        const outcome = outcomeOf(result);
        outcomes.push({ ...outcome, summary: outcome.summary.replaceAll(src, "SRC").replaceAll(dst, "DST") });
      }
      expect(outcomes[0], destination.name).toEqual(outcomes[1]);
      expect(outcomes[0]?.record.size, destination.name).toBe(size);
      expect(outcomes[0]?.record.copied, destination.name).toBe(0);
    }
  }, 120_000);
});
