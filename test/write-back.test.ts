/**
 * Issue 9 item 5: a failed write-back is not forgotten. The image lives on an ext2 filesystem
 * whose loop device is backed by a file on a tmpfs too small for it, so buffered writes are
 * acknowledged and fail later, on their way to the disk, as on a thin-provisioned LUN.
 */
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, truncate } from "node:fs/promises";
import https from "node:https";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";
import { attach, ext2LoopSupport, type LoopDevice } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

let skipReason: string | null = null;
let tmp: TempDir;
let device: LoopDevice | undefined;
let smallMount: string | undefined;
let fsMount: string | undefined;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-writeback-");
  skipReason = await ext2LoopSupport(tmp.file("probe.raw"));
  if (skipReason !== null) {
    console.log(`skipping write-back tests: ${skipReason}`);
    return;
  }
  const small = tmp.file("small");
  const fs = tmp.file("fs");
  await mkdir(small);
  await mkdir(fs);
  await run("mount", ["-t", "tmpfs", "-o", "size=8M", "tmpfs", small]);
  smallMount = small;
  const backing = `${small}/backing`;
  await run("truncate", ["-s", "128M", backing]);
  await run("mkfs.ext2", ["-q", "-F", backing]);
  device = await attach(backing, 512);
  await run("mount", [device.path, fs]);
  fsMount = fs;
});

afterAll(async () => {
  // The filesystem, then the loop device holding the backing file, then the tmpfs under it.
  if (fsMount !== undefined) await run("umount", [fsMount]);
  await device?.detach();
  if (smallMount !== undefined) await run("umount", [smallMount]);
  await tmp?.remove();
});

// Served by one thread and by two ([daemon] workers, issue 14): with two, the connections below
// are served by different threads, and a failure one of them saw must stick on the other too.
describe.each([1, 2])("write-back failures, [daemon] workers = %i", (workers) => {
  let daemon: DaemonProcess | undefined;
  beforeAll(async () => {
    if (skipReason === null) {
      daemon = await startDaemon({ config: { backend_file: { direct: "never" }, daemon: { workers } } });
    }
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  it("9.5: a flush after a failed write-back keeps failing, on the same and on a new connection", async (test) => {
    if (skipReason !== null || daemon === undefined) return test.skip();
    // A file of its own per run: the first run's blocks already failed on the full tmpfs.
    const path = tmp.file(`fs/image-${workers}.raw`);
    const size = 32 * MiB;
    await run("touch", [path]);
    await truncate(path, size);
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
    const put = await request(daemon, { method: "PUT", path: `/images/${id}?flush=n`, body: randomBytes(size) });
    expect(put.status).toBe(200);
    // Two connections held open: with two threads, each is served by another one.
    const ca = readFileSync(daemon.certs.caFile);
    const connections = [1, 2].map(() => new https.Agent({ keepAlive: true, maxSockets: 1, ca }));
    const flush = (agent: https.Agent | false) =>
      request(daemon as DaemonProcess, {
        method: "PATCH",
        path: `/images/${id}`,
        body: JSON.stringify({ op: "flush" }),
        agent,
      });
    try {
      const [first, second] = connections as [https.Agent, https.Agent];
      expect((await flush(first)).status).toBe(500);
      expect((await flush(second)).status).toBe(500);
      expect((await flush(first)).status).toBe(500);
      // A new connection each; the kernel would report the failure only once.
      expect((await flush(false)).status).toBe(500);
      expect((await flush(false)).status).toBe(500);
      const again = await request(daemon, { method: "PUT", path: `/images/${id}?flush=y`, body: Buffer.alloc(MiB) });
      expect(again.status).toBe(500);
      await daemon.waitForLog("an earlier write-back of this image failed");
      // The second connection was the other thread's.
      if (workers > 1) expect(daemon.logs()).toMatch(/OPEN connection=\d+ client=127\.0\.0\.1 worker=1/);
    } finally {
      for (const agent of connections) agent.destroy();
    }
  });
});
