/**
 * The file backend on real block devices: loop devices with 512- and 4096-byte logical
 * sectors, made and removed here (root). Skipped, with the reason printed, only where the
 * kernel refuses loop devices.
 */
import { constants as fsConstants } from "node:fs";
import { open, readFile, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runBackendSuite } from "../src/io/backend.case.js";
import type { Backend, ZeroExtent } from "../src/io/backend.js";
import { FileBackend } from "../src/io/file.js";
import { allocAligned, blockDeviceDiscard, blockDeviceZeroOut } from "../src/io/native.js";
import { openBackend } from "../src/io/open.js";
import { MiB } from "../src/units.js";
import { attach, type LoopDevice, loopDeviceSupport } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

let tmp: TempDir;
let counter = 0;
const tmpReady = makeTempDir("imageio-loop-").then((dir) => {
  tmp = dir;
  return dir;
});
const unsupported = await loopDeviceSupport((await tmpReady).file("probe.raw"));
if (unsupported !== null) console.log(`skipped: loop device tests: ${unsupported}`);

afterAll(async () => {
  await tmp.remove();
});

/** Makes a loop device over a new backing file holding `initial`. */
async function makeDevice(initial: Buffer, sectorSize: 512 | 4096): Promise<LoopDevice> {
  const backing = tmp.file(`backing-${counter++}.raw`);
  await writeFile(backing, initial);
  return attach(backing, sectorSize);
}

for (const sectorSize of [512, 4096] as const) {
  describe.skipIf(unsupported !== null)(`loop device, ${sectorSize}-byte sectors`, () => {
    const devices: LoopDevice[] = [];
    runBackendSuite(`file on a loop device with ${sectorSize}-byte sectors`, {
      open: async (initial, options) => {
        const device = await makeDevice(initial, sectorSize);
        devices.push(device);
        const backend = await openBackend(`file://${device.path}`, { direct: "always", ...options });
        expect(backend.directIo).toBe(true);
        return backend;
      },
      cleanup: async () => {
        for (const device of devices.splice(0)) await device.detach();
      },
    });

    let device: LoopDevice;
    let file: FileBackend;
    const initial = Buffer.alloc(4 * MiB);
    beforeAll(async () => {
      for (let i = 0; i < initial.length; i++) initial[i] = (i * 13) % 256;
      device = await makeDevice(initial, sectorSize);
      file = await FileBackend.open(device.path, { direct: "always" });
    });
    afterAll(async () => {
      await file?.close();
      await device?.detach();
    });

    it("takes the size from BLKGETSIZE64 and the block size from BLKSSZGET", async () => {
      expect(file.isBlockDevice).toBe(true);
      expect(await file.size()).toBe(4 * MiB);
      expect(file.blockSize).toBe(sectorSize);
      expect(file.caps.maxWriters).toBe(file.caps.maxReaders);
    });

    it("reports one data extent, also for a partial request", async () => {
      const extents: ZeroExtent[] = [];
      for await (const extent of file.extents("zero")) extents.push(extent);
      expect(extents).toEqual([{ start: 0, length: 4 * MiB, zero: false, hole: false }]);
      const partial: ZeroExtent[] = [];
      for await (const extent of file.extents("zero", { start: 1000, length: 5000 })) partial.push(extent);
      expect(partial).toEqual([{ start: 1000, length: 5000, zero: false, hole: false }]);
    });

    it("rejects unaligned requests on the raw device and serves them through the aligned wrapper", async () => {
      const misaligned = sectorSize === 512 ? 256 : 512;
      await expect(file.read(allocAligned(sectorSize), misaligned)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_INVALID_ARGUMENT",
      });
      // The kernel agrees: an O_DIRECT read off the sector boundary fails with EINVAL.
      const raw = await open(device.path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
      try {
        await expect(raw.read(allocAligned(4096), 0, 4096, misaligned)).rejects.toMatchObject({ code: "EINVAL" });
      } finally {
        await raw.close();
      }
      const backend = await openBackend(`file://${device.path}`, { direct: "always" });
      try {
        const out = Buffer.alloc(1000);
        expect(await backend.read(out, misaligned + 3)).toBe(1000);
        expect(out.equals(initial.subarray(misaligned + 3, misaligned + 1003))).toBe(true);
      } finally {
        await backend.close();
      }
    });

    it("zeroes aligned and unaligned ranges on the device", async () => {
      const backend: Backend = await openBackend(`file://${device.path}`, { direct: "always" });
      try {
        await backend.zero(sectorSize * 3 + 5, 100_000);
        await backend.zero(MiB, MiB, { punchHole: true });
        await backend.flush();
        const expected = Buffer.from(initial);
        expected.fill(0, sectorSize * 3 + 5, sectorSize * 3 + 100_005);
        expected.fill(0, MiB, 2 * MiB);
        const all = Buffer.alloc(4 * MiB);
        expect(await backend.read(all, 0)).toBe(4 * MiB);
        expect(all.equals(expected)).toBe(true);
        // What the device holds is what reached the backing file.
        expect((await readFile(device.backingFile)).equals(expected)).toBe(true);
        initial.set(expected);
      } finally {
        await backend.close();
      }
    });

    it("refuses reads and writes past the end of the device, naming the device and the numbers", async () => {
      const buf = allocAligned(2 * sectorSize);
      await expect(file.read(buf, 4 * MiB - sectorSize)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_OUT_OF_RANGE",
        message: `Cannot read ${2 * sectorSize} bytes at offset ${4 * MiB - sectorSize} on '${device.path}': range ends at ${4 * MiB + sectorSize}, past the device size ${4 * MiB}`,
      });
      await expect(file.write(buf, 4 * MiB)).rejects.toMatchObject({ code: "IMAGEIO_ERR_OUT_OF_RANGE" });
      await expect(file.zero(4 * MiB - sectorSize, 2 * sectorSize)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_OUT_OF_RANGE",
      });
      expect((await readFile(device.backingFile)).equals(initial)).toBe(true);
    });
  });
}

describe.skipIf(unsupported !== null)("block-device ioctls", () => {
  it("BLKZEROOUT and BLKDISCARD make a range of a loop device read as zeros", async () => {
    const initial = Buffer.alloc(2 * MiB, 0x77);
    const device = await makeDevice(initial, 512);
    const handle = await open(device.path, fsConstants.O_RDWR | fsConstants.O_DIRECT);
    try {
      await blockDeviceZeroOut(handle.fd, 0, 512 * 1024);
      await blockDeviceDiscard(handle.fd, MiB, 512 * 1024);
      await expect(blockDeviceZeroOut(handle.fd, 3, 512)).rejects.toMatchObject({
        code: "EINVAL",
        syscall: "ioctl(BLKZEROOUT)",
      });
      const buf = allocAligned(2 * MiB);
      expect((await handle.read(buf, 0, 2 * MiB, 0)).bytesRead).toBe(2 * MiB);
      expect(buf.subarray(0, 512 * 1024).every((b) => b === 0)).toBe(true);
      expect(buf.subarray(512 * 1024, MiB).every((b) => b === 0x77)).toBe(true);
      expect(buf.subarray(MiB, MiB + 512 * 1024).every((b) => b === 0)).toBe(true);
      expect(buf.subarray(MiB + 512 * 1024).every((b) => b === 0x77)).toBe(true);
    } finally {
      await handle.close();
      await device.detach();
    }
  });
});
