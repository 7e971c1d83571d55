/**
 * Issue 14 review: I/O buffers on transparent huge pages. Faulting a buffer's pages in
 * (populatePages) is best effort on the native threads, which also run the calls that can block
 * for long (fallocate, BLKZEROOUT): a lease must never wait behind those. The slow calls here
 * are fallocate on a frozen ext4 filesystem (fsfreeze), which blocks until it is thawed, as a
 * zeroing on a stalled LUN does.
 */
import { execFile } from "node:child_process";
import { open, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BufferPool } from "../src/io/buffers.js";
import { FALLOC_FL_ZERO_RANGE, fallocate } from "../src/io/native.js";
import { nativeThreads } from "../src/io/native-threads.js";
import { attach, ext2LoopSupport, type LoopDevice } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

let skipReason: string | null = null;
let tmp: TempDir;
let fsDevice: LoopDevice | undefined;
let fsMount: string | undefined;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-huge-pages-");
  skipReason = await ext2LoopSupport(tmp.file("probe.raw"));
  if (skipReason === null) {
    try {
      await run("fsfreeze", ["--version"]);
    } catch {
      skipReason = "fsfreeze (util-linux) is not installed";
    }
  }
  if (skipReason !== null) {
    console.log(`skipping huge-page buffer tests: ${skipReason}`);
    return;
  }
  const fsImage = tmp.file("ext4.img");
  await writeFile(fsImage, "");
  await truncate(fsImage, 64 * MiB);
  await run("mkfs.ext4", ["-q", "-F", fsImage]);
  fsDevice = await attach(fsImage, 512);
  fsMount = tmp.file("ext4");
  await run("mkdir", [fsMount]);
  await run("mount", [fsDevice.path, fsMount]);
}, 60_000);

afterAll(async () => {
  if (fsMount !== undefined) {
    await run("fsfreeze", ["--unfreeze", fsMount]).catch(() => undefined);
    await run("umount", [fsMount]);
  }
  await fsDevice?.detach();
  await tmp?.remove();
});

describe("14.huge: populating buffers", () => {
  it("14.huge: a new buffer is lent at once while every native thread is stuck in a zeroing call", async (test) => {
    if (skipReason !== null || fsMount === undefined) return test.skip();
    const mount = fsMount;
    const files = await Promise.all(
      Array.from({ length: nativeThreads.maxWorkers }, async (_, index) => {
        const path = `${mount}/disk${index}.raw`;
        await writeFile(path, Buffer.alloc(MiB, 1));
        return open(path, "r+");
      }),
    );
    await run("fsfreeze", ["--freeze", mount]);
    let zeroing: Promise<unknown> | undefined;
    try {
      zeroing = Promise.allSettled(files.map((file) => fallocate(file.fd, FALLOC_FL_ZERO_RANGE, 0, MiB)));
      // Every native thread has taken its zeroing call and is blocked in the frozen filesystem.
      const deadline = Date.now() + 10_000;
      while (nativeThreads.busyThreads < nativeThreads.maxWorkers && Date.now() < deadline)
        await new Promise((resolve) => setTimeout(resolve, 10));
      expect(nativeThreads.busyThreads).toBe(nativeThreads.maxWorkers);

      const pool = new BufferPool(4);
      const started = Date.now();
      const lent = await Promise.race([
        pool.lease(8 * MiB),
        new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 3_000).unref()),
      ]);
      expect(lent, "a lease waited behind the zeroing calls").toBeDefined();
      expect(Date.now() - started).toBeLessThan(3_000);
      lent?.buffer.fill(0x3c);
      expect(lent?.buffer.every((byte) => byte === 0x3c)).toBe(true);
      lent?.release();
    } finally {
      await run("fsfreeze", ["--unfreeze", mount]);
      await zeroing;
      await Promise.all(files.map((file) => file.close()));
    }
  });
});
