/**
 * Real loop devices for block-device tests: created and removed by the tests (root only).
 * Tests call loopDeviceSupport() and skip with its printed reason where the kernel refuses.
 */
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface LoopDevice {
  path: string;
  backingFile: string;
  detach(): Promise<void>;
}

let support: Promise<string | null> | undefined;

/** null when loop devices with 512 and 4096-byte sectors can be made here, else why not. */
export function loopDeviceSupport(tempFile: string): Promise<string | null> {
  support ??= (async () => {
    if (process.getuid?.() !== 0) return "loop devices need root";
    try {
      await writeFile(tempFile, Buffer.alloc(1024 * 1024));
      const device = await attach(tempFile, 4096);
      await device.detach();
      return null;
    } catch (error) {
      return `the kernel refused a loop device: ${error instanceof Error ? error.message : String(error)}`;
    }
  })();
  return support;
}

/** null when an ext2 filesystem can be made on a loop device here (root, mkfs.ext2), else why not. */
export async function ext2LoopSupport(tempFile: string): Promise<string | null> {
  const reason = await loopDeviceSupport(tempFile);
  if (reason !== null) return reason;
  try {
    await run("mkfs.ext2", ["-V"]);
    return null;
  } catch {
    return "mkfs.ext2 (e2fsprogs) is not installed";
  }
}

/** Attaches `backingFile` (size a multiple of sectorSize) as a loop device with that sector size. */
export async function attach(backingFile: string, sectorSize: 512 | 4096): Promise<LoopDevice> {
  const { stdout } = await run("losetup", ["--find", "--show", "--sector-size", String(sectorSize), backingFile]);
  const path = stdout.trim();
  let attached = true;
  return {
    path,
    backingFile,
    detach: async () => {
      if (!attached) return;
      attached = false;
      await run("losetup", ["--detach", path]);
    },
  };
}
