/**
 * Issue 14: the extents of a file without allocated blocks come from one lseek on the main
 * thread, with no native thread started; a file with blocks is walked on a native thread as
 * before. Both must give the extents the walk gives. A file of its own: the native threads
 * of this process are counted.
 */
import { execFile } from "node:child_process";
import { open, stat } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { emptySparseFile } from "../../test/helpers/images.js";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { MiB, TiB } from "../units.js";
import type { ByteRange, ZeroExtent } from "./backend.js";
import { FileBackend } from "./file.js";
import { sparseMap } from "./native.js";
import { nativeThreads } from "./native-threads.js";

const run = promisify(execFile);
let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

async function sparseFile(name: string, size: number): Promise<string> {
  const path = tmp.file(name);
  await emptySparseFile(path, size);
  return path;
}

async function extentsOf(path: string, range?: ByteRange): Promise<ZeroExtent[]> {
  const backend = await FileBackend.open(path, { readonly: true });
  try {
    const extents: ZeroExtent[] = [];
    for await (const extent of backend.extents("zero", range)) extents.push(extent);
    return extents;
  } finally {
    await backend.close();
  }
}

/** The extents the lseek walk finds on a native thread, as FileBackend reports them. */
async function walked(path: string, start: number, end: number): Promise<ZeroExtent[]> {
  const handle = await open(path, "r");
  try {
    const map = await sparseMap(handle.fd, start, end, 1_000_000);
    expect(map.next).toBe(end);
    return map.extents.map((extent) => ({
      start: extent.start,
      length: extent.length,
      zero: !extent.data,
      hole: false,
    }));
  } finally {
    await handle.close();
  }
}

const cases: { name: string; size: number; range?: ByteRange }[] = [
  { name: "an empty 1 TiB image", size: TiB },
  { name: "an odd size", size: MiB + 5 },
  { name: "a range from the middle", size: 64 * MiB, range: { start: 4096 + 7, length: 32 * MiB } },
];

describe("extents of files without allocated blocks", () => {
  it("14: are one zero extent, found without a native thread, equal to what the lseek walk finds", async () => {
    const found: ZeroExtent[][] = [];
    for (const [i, { size, range }] of cases.entries()) {
      const path = await sparseFile(`empty-${i}.raw`, size);
      expect((await stat(path)).blocks).toBe(0);
      found.push(await extentsOf(path, range));
    }
    // Not one thread was started for any of them.
    expect(nativeThreads.threads).toBe(0);
    for (const [i, { name, size, range }] of cases.entries()) {
      const start = range?.start ?? 0;
      const end = range === undefined ? size : start + range.length;
      expect(found[i], name).toEqual([{ start, length: end - start, zero: true, hole: false }]);
      expect(found[i], name).toEqual(await walked(tmp.file(`empty-${i}.raw`), start, end));
    }
  });

  it("14: a file with allocated blocks but no data before its end is walked on a native thread, to the same extent", async (context) => {
    const size = 64 * MiB;
    const path = await sparseFile("allocated-past-end.raw", size);
    // Blocks allocated past the end (fallocate --keep-size): st_blocks > 0, yet no data inside.
    const skip = (reason: string) => {
      console.log(`skipped: ${reason}`);
      context.skip();
    };
    try {
      await run("fallocate", ["--keep-size", "--offset", String(size), "--length", String(MiB), path]);
    } catch (error) {
      return skip(`fallocate --keep-size is not available here: ${(error as Error).message}`);
    }
    if ((await stat(path)).blocks === 0) return skip("this filesystem allocates no blocks past the end");
    const extents = await extentsOf(path);
    expect(nativeThreads.threads).toBeGreaterThan(0);
    expect(extents).toEqual([{ start: 0, length: size, zero: true, hole: false }]);
    expect(extents).toEqual(await walked(path, 0, size));
  });

  it("14: data in a file is still found, and zero extents around it", async () => {
    const path = await sparseFile("data.raw", 16 * MiB);
    const handle = await open(path, "r+");
    await handle.write(Buffer.alloc(4096, 0xab), 0, 4096, 8 * MiB);
    await handle.close();
    expect(await extentsOf(path)).toEqual(await walked(path, 0, 16 * MiB));
    expect((await extentsOf(path)).some((extent) => !extent.zero)).toBe(true);
  });
});
