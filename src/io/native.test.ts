import { spawn } from "node:child_process";
import { closeSync } from "node:fs";
import { open, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  hugePageEligible,
  nativeThreadReady,
  residentPageCount,
  transparentHugePageMode,
} from "../../test/helpers/memory.js";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { MiB } from "../units.js";
import { isZero } from "./buffers.js";
import {
  allocAligned,
  blockDeviceSize,
  bufferAddress,
  connectUnixStream,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocate,
  HUGE_PAGE_SIZE,
  isAligned,
  keepFreedHeapMemory,
  populatePages,
  sparseMap,
} from "./native.js";

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

describe("native", () => {
  it("14: keeps freed heap memory for reuse unless glibc's MALLOC_* variables say otherwise", () => {
    expect(keepFreedHeapMemory({})).toBe("applied");
    // The administrator's own setting wins: imageio changes nothing.
    expect(keepFreedHeapMemory({ MALLOC_TRIM_THRESHOLD_: "131072" })).toBe("environment");
    expect(keepFreedHeapMemory({ MALLOC_TOP_PAD_: "0" })).toBe("environment");
  });

  it("9.10: allocates page-aligned memory that V8 owns and accounts for", () => {
    const before = process.memoryUsage().arrayBuffers;
    const held = allocAligned(8 * MiB);
    // V8 sees the memory (posix_memalign behind koffi.view was invisible to it).
    expect(process.memoryUsage().arrayBuffers - before).toBeGreaterThanOrEqual(8 * MiB);
    // A huge page of alignment at most: address space, never resident memory (see below).
    expect(held.buffer.byteLength).toBeLessThanOrEqual(8 * MiB + HUGE_PAGE_SIZE);
  });

  it("14: a buffer of a huge page or more starts on a huge-page boundary, may use huge pages, and is faulted in off the event loop", async (test) => {
    const buf = allocAligned(8 * MiB);
    expect(bufferAddress(buf) % BigInt(HUGE_PAGE_SIZE)).toBe(0n);
    // Nothing wrote it yet: the wider alignment costs no memory.
    expect(await residentPageCount(buf)).toBe(0);
    await nativeThreadReady();
    expect(await populatePages(buf)).toBe(true);
    expect(await residentPageCount(buf)).toBe((8 * MiB) / 4096);
    expect(isZero(buf)).toBe(true);
    const mode = transparentHugePageMode();
    // Smaller buffers keep ordinary pages where huge ones are given only on request.
    if (mode === "madvise") expect(hugePageEligible(allocAligned(MiB))).toBe(false);
    if (mode === undefined || mode === "never") {
      test.skip(
        `transparent huge pages are ${mode === undefined ? "not built into this kernel" : "disabled on this host"}`,
      );
    }
    expect(hugePageEligible(buf)).toBe(true);
  });

  it("allocates page-aligned memory shared zero-copy with a Buffer", () => {
    const buf = allocAligned(MiB);
    expect(buf.length).toBe(MiB);
    expect(bufferAddress(buf) % 4096n).toBe(0n);
    buf.fill(0x5a);
    expect(buf.subarray(MiB - 1)[0]).toBe(0x5a);
    expect(isAligned(buf, 4096)).toBe(true);
    expect(isAligned(buf.subarray(512), 512)).toBe(true);
    expect(isAligned(buf.subarray(512), 4096)).toBe(false);
    // Alignment is a property of the address: any buffer is aligned to 1.
    expect(isAligned(Buffer.alloc(4096), 1)).toBe(true);
    expect(isAligned(buf.subarray(1), 2)).toBe(false);
    expect(() => allocAligned(0)).toThrow(RangeError);
  });

  it("turns a failed call into a Node-style error with code, errno and syscall", async () => {
    let error: unknown;
    try {
      await fallocate(-1, 0, 0, 4096);
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: "EBADF", errno: -9, syscall: "fallocate" });
    expect(String(error)).toContain("EBADF: bad file descriptor, fallocate");
  });

  it("9.8: finds data and holes with SEEK_DATA and SEEK_HOLE on a worker thread, in bounded runs", async () => {
    const path = tmp.file("sparse.raw");
    await writeFile(path, "");
    await truncate(path, 4 * MiB);
    const handle = await open(path, "r+");
    try {
      await handle.write(Buffer.alloc(MiB, 1), 0, MiB, 2 * MiB);
      await handle.sync();
      expect(await sparseMap(handle.fd, 0, 4 * MiB, 100)).toEqual({
        extents: [
          { start: 0, length: 2 * MiB, data: false },
          { start: 2 * MiB, length: MiB, data: true },
          { start: 3 * MiB, length: MiB, data: false },
        ],
        next: 4 * MiB,
      });
      // One run of two calls stops after the first data extent, where the next run starts.
      expect(await sparseMap(handle.fd, 0, 4 * MiB, 2)).toMatchObject({ next: 3 * MiB });
      await fallocate(handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB, MiB);
      expect(await sparseMap(handle.fd, 0, 4 * MiB, 100)).toEqual({
        extents: [{ start: 0, length: 4 * MiB, data: false }],
        next: 4 * MiB,
      });
      await expect(sparseMap(-1, 0, MiB, 100)).rejects.toMatchObject({ code: "EBADF", syscall: "lseek(SEEK_DATA)" });
      expect((await handle.stat()).size).toBe(4 * MiB);
    } finally {
      await handle.close();
    }
  });

  it("9.8: connectUnixStream never blocks: a listener whose backlog is full answers EAGAIN at once", async (test) => {
    const name = `imageio-test-${process.pid}-${Date.now()}`;
    // A listener that never accepts, with the smallest backlog: Node's servers always accept.
    const listener = spawn(
      "python3",
      [
        "-c",
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0'+sys.argv[1])\ns.listen(0)\nprint('ready',flush=True)\nsys.stdin.read()",
        name,
      ],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    const started = await new Promise<boolean>((resolve) => {
      listener.once("error", () => resolve(false));
      listener.stdout.once("data", () => resolve(true));
      listener.once("exit", () => resolve(false));
    });
    if (!started) {
      console.log("skipping: python3 is needed for a listener that never accepts");
      return test.skip();
    }
    const connected: number[] = [];
    try {
      let refusal: unknown;
      for (let attempt = 0; attempt < 16 && refusal === undefined; attempt++) {
        try {
          connected.push(connectUnixStream(`@${name}`));
        } catch (error) {
          refusal = error;
        }
      }
      expect(refusal).toMatchObject({ code: "EAGAIN", syscall: "connect" });
      expect(String(refusal)).toContain(`@${name}`);
      expect(connected.length).toBeGreaterThanOrEqual(1);
    } finally {
      for (const fd of connected) closeSync(fd);
      listener.stdin.end();
    }
  });

  it("fails block-device ioctls on a regular file with ENOTTY", async () => {
    const path = tmp.file("plain.raw");
    await writeFile(path, "x");
    const handle = await open(path, "r");
    try {
      expect(() => blockDeviceSize(handle.fd)).toThrow(
        expect.objectContaining({ code: "ENOTTY", syscall: "ioctl(BLKGETSIZE64)" }),
      );
    } finally {
      await handle.close();
    }
  });
});
