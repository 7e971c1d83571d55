/**
 * Issue 9 item 8: the event loop never stops. A device without write-zeroes offload makes the
 * kernel write every zero itself, for seconds per GiB; the daemon must keep answering the
 * control API and other clients all the while. The device is a loop device over a file on an
 * ext2 filesystem (itself on a loop device): ext2 cannot zero a range of a file, so the kernel
 * falls back to writing zero pages, as on a LUN without WRITE SAME.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";
import { attach, ext2LoopSupport, type LoopDevice } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const ZERO_SIZE = 2 * GiB;

let skipReason: string | null = null;
let tmp: TempDir;
let fsDevice: LoopDevice | undefined;
let fsMount: string | undefined;
let device: LoopDevice | undefined;
let daemon: DaemonProcess | undefined;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-event-loop-");
  skipReason = await ext2LoopSupport(tmp.file("probe.raw"));
  if (skipReason !== null) {
    console.log(`skipping event-loop tests: ${skipReason}`);
    return;
  }
  const fsImage = tmp.file("ext2.img");
  await writeFile(fsImage, "");
  await truncate(fsImage, ZERO_SIZE + 512 * MiB);
  await run("mkfs.ext2", ["-q", "-F", fsImage]);
  fsDevice = await attach(fsImage, 512);
  fsMount = tmp.file("ext2");
  await run("mkdir", [fsMount]);
  await run("mount", [fsDevice.path, fsMount]);
  const backing = `${fsMount}/disk.raw`;
  await writeFile(backing, "");
  await truncate(backing, ZERO_SIZE);
  device = await attach(backing, 512);
  daemon = await startDaemon();
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  await device?.detach();
  if (fsMount !== undefined) await run("umount", [fsMount]);
  await fsDevice?.detach();
  await tmp?.remove();
});

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

describe("the event loop while a device is zeroed", () => {
  it("9.8: a control GET /tickets/ID and a 4 KiB GET on another ticket are answered promptly during a 2 GiB zero without offload", async (test) => {
    if (skipReason !== null || daemon === undefined || device === undefined) return test.skip();
    const running = daemon;
    // Bytes at both ends of the device, which the zero must clear.
    const pattern = randomBytes(MiB);
    const handle = await open(device.path, "r+");
    try {
      await handle.write(pattern, 0, MiB, 0);
      await handle.write(pattern, 0, MiB, ZERO_SIZE - MiB);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const zeroed = randomUUID();
    await addTicket(running, {
      uuid: zeroed,
      size: ZERO_SIZE,
      url: `file://${device.path}`,
      timeout: 300,
      ops: ["write"],
    });
    const otherImage = tmp.file("other.raw");
    const otherBytes = randomBytes(64 * 1024);
    await writeFile(otherImage, otherBytes);
    const other = randomUUID();
    await addTicket(running, {
      uuid: other,
      size: otherBytes.length,
      url: `file://${otherImage}`,
      timeout: 300,
      ops: ["read"],
    });

    const started = performance.now();
    let zeroEnded: number | undefined;
    const zero = request(running, {
      method: "PATCH",
      path: `/images/${zeroed}`,
      body: JSON.stringify({ op: "zero", offset: 0, size: ZERO_SIZE }),
    }).finally(() => {
      zeroEnded = performance.now();
    });

    const latencies: number[] = [];
    const timed = async <T>(call: () => Promise<T>): Promise<T> => {
      const sent = performance.now();
      const result = await call();
      latencies.push(performance.now() - sent);
      return result;
    };
    let probes = 0;
    while (zeroEnded === undefined) {
      const status = await timed(() => request(running, { service: "control", path: `/tickets/${zeroed}` }));
      expect(status.status, status.text).toBe(200);
      const read = await timed(() =>
        request(running, { path: `/images/${other}`, headers: { range: "bytes=4096-8191" } }),
      );
      expect(read.status).toBe(206);
      expect(sha256(read.body)).toBe(sha256(otherBytes.subarray(4096, 8192)));
      if (zeroEnded === undefined) probes++;
    }
    const answer = await zero;
    expect(answer.status, answer.text).toBe(200);
    const zeroMs = (zeroEnded as number) - started;
    const worst = Math.max(...latencies);
    console.log(
      `9.8: zero of 2 GiB took ${zeroMs.toFixed(0)} ms; ${probes} rounds of probes meanwhile, worst latency ${worst.toFixed(1)} ms`,
    );
    // A stalled event loop would answer the probes only after the zero, or once per long step.
    expect(probes).toBeGreaterThanOrEqual(10);
    expect(worst).toBeLessThan(zeroMs / 5);

    const after = await open(device.path, "r");
    try {
      const buf = Buffer.alloc(MiB);
      await after.read(buf, 0, MiB, 0);
      expect(buf.equals(Buffer.alloc(MiB)), "the device's first MiB reads as zeros").toBe(true);
      await after.read(buf, 0, MiB, ZERO_SIZE - MiB);
      expect(buf.equals(Buffer.alloc(MiB)), "the device's last MiB reads as zeros").toBe(true);
    } finally {
      await after.close();
    }
  }, 120_000);
});
