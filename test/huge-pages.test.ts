/**
 * Issue 14 review: I/O buffers on transparent huge pages. Faulting a buffer's pages in
 * (populatePages) is best effort on the native threads, which also run the calls that can block
 * for long (fallocate, BLKZEROOUT): a lease must never wait behind those. The slow calls here
 * are fallocate on a frozen ext4 filesystem (fsfreeze), which blocks until it is thawed, as a
 * zeroing on a stalled LUN does.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { open, readFile, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BufferPool } from "../src/io/buffers.js";
import { FALLOC_FL_ZERO_RANGE, fallocate } from "../src/io/native.js";
import { nativeThreads } from "../src/io/native-threads.js";
import { addTicket, type InProcessDaemon, request, startInProcess } from "./helpers/daemon.js";
import { attach, ext2LoopSupport, type LoopDevice } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

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

describe("14.huge: bytes across pages given back and faulted in again", () => {
  it("14.huge: 64 concurrent leases over 4 buffers, in rounds whose buffers were given back between them, each keep their own bytes", async () => {
    const pool = new BufferPool(4, 4, 5);
    const size = 4 * MiB + 8192;
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        Array.from({ length: 64 }, async (_, task) => {
          const lease = await pool.lease(size);
          try {
            const pattern = (round * 64 + task) % 251;
            lease.buffer.fill(pattern);
            // Let the other leases run (and sweeps, and populates of given-back buffers).
            await new Promise((resolve) => setTimeout(resolve, task % 3));
            expect(lease.buffer.equals(Buffer.alloc(size, pattern))).toBe(true);
          } finally {
            lease.release();
          }
        }),
      );
      expect(pool.inUse).toBe(0);
      await waitFor(() => pool.residentIdle === 0, "the idle buffers' pages to be given back");
    }
  });

  let daemon: InProcessDaemon | undefined;
  afterAll(async () => {
    await daemon?.stop();
  });

  it("14.huge: rounds of 8 concurrent uploads then downloads (HTTPS and unix) keep every byte while the daemon's buffers are given back and faulted in between rounds", async () => {
    // One thread: the images services lend from the main thread's pool, which the test watches.
    daemon = await startInProcess({ config: { daemon: { max_buffers: 4, workers: 1 } } });
    const running = daemon;
    const part = 6 * MiB + 12 * 1024;
    const parts = 8;
    const path = running.tmp.file("huge-rounds.raw");
    await writeFile(path, Buffer.alloc(parts * part));
    const id = randomUUID();
    await addTicket(running, {
      uuid: id,
      size: parts * part,
      url: `file://${path}`,
      timeout: 300,
      ops: ["read", "write"],
    });
    for (let round = 0; round < 3; round++) {
      const data = Array.from({ length: parts }, () => randomBytes(part));
      const service = (i: number) => (i % 2 === 0 ? "remote" : "local") as "remote" | "local";
      const range = (i: number) => `bytes ${i * part}-${(i + 1) * part - 1}`;
      const puts = await Promise.all(
        data.map((body, i) =>
          request(running, {
            method: "PUT",
            path: `/images/${id}?flush=y`,
            service: service(i),
            headers: { "content-range": `${range(i)}/*` },
            body,
          }),
        ),
      );
      expect(puts.map((response) => response.status)).toEqual(Array(parts).fill(200));
      const gets = await Promise.all(
        data.map((_, i) =>
          request(running, {
            path: `/images/${id}`,
            service: service(parts - 1 - i),
            headers: { range: range(i).replace(" ", "=") },
          }),
        ),
      );
      expect(gets.map((response) => response.status)).toEqual(Array(parts).fill(206));
      expect(gets.map((response) => sha(response.body))).toEqual(data.map(sha));
      expect(sha(await readFile(path))).toBe(sha(Buffer.concat(data)));
      const buffers = running.services.app.buffers;
      await waitFor(() => buffers.inUse === 0 && buffers.residentIdle === 0, "the daemon's buffers to be given back");
    }
  });
});
