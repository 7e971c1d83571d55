/**
 * Who is using a block device: mounted filesystems (of the device or its partitions), swap,
 * and kernel holders (device-mapper, md, bcache) from sysfs. `imageio copy` never writes a
 * device in use: doing so destroys a live filesystem under its users.
 *
 * The exclusive claim (open with O_EXCL, which the kernel refuses with EBUSY while a
 * filesystem, swap or another exclusive opener holds the device) is kept for the whole copy,
 * so the device cannot be mounted while it is written.
 */
import { constants as fsConstants } from "node:fs";
import { type FileHandle, open, readdir, readFile, realpath, stat } from "node:fs/promises";
import { join } from "node:path";
import { BackendOpenError, systemErrorCode } from "../errors.js";

/** A device number as sysfs and mountinfo write it. */
function majorMinor(rdev: number): string {
  // glibc's gnu_dev_major/minor encoding of a 64-bit dev_t.
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return undefined;
  }
}

/** The device and its partitions: [name, "major:minor", sysfs directory]. */
async function deviceAndPartitions(devNumber: string): Promise<[string, string, string][]> {
  let sysDir: string;
  try {
    sysDir = await realpath(`/sys/dev/block/${devNumber}`);
  } catch {
    return [];
  }
  const name = sysDir.slice(sysDir.lastIndexOf("/") + 1);
  const found: [string, string, string][] = [[name, devNumber, sysDir]];
  for (const entry of await readdir(sysDir).catch(() => [] as string[])) {
    const dir = join(sysDir, entry);
    if ((await readText(join(dir, "partition"))) === undefined) continue;
    const dev = (await readText(join(dir, "dev")))?.trim();
    if (dev !== undefined) found.push([entry, dev, dir]);
  }
  return found;
}

/** Undoes mountinfo's octal escapes (`\040` for a space). */
function unescapeMountField(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * What is using the block device at `path`, as phrases for a message ("mounted on /mnt
 * (ext4)", "held by dm-0 (vg-lv)", "used as swap"); empty when nothing is found.
 */
export async function blockDeviceUsers(path: string): Promise<string[]> {
  const info = await stat(path);
  if (!info.isBlockDevice()) return [];
  const devices = await deviceAndPartitions(majorMinor(info.rdev));
  if (devices.length === 0) devices.push([path, majorMinor(info.rdev), ""]);
  const byNumber = new Map(devices.map(([name, dev]) => [dev, name]));
  const users: string[] = [];
  const own = devices[0]?.[0];
  const whose = (name: string) => (name === own ? "" : `partition ${name} `);

  for (const line of (await readText("/proc/self/mountinfo"))?.split("\n") ?? []) {
    const fields = line.split(" ");
    const name = byNumber.get(fields[2] ?? "");
    if (name === undefined) continue;
    const separator = fields.indexOf("-");
    const fsType = separator > 0 ? fields[separator + 1] : undefined;
    users.push(`${whose(name)}mounted on ${unescapeMountField(fields[4] ?? "?")}${fsType ? ` (${fsType})` : ""}`);
  }
  for (const line of (await readText("/proc/swaps"))?.split("\n").slice(1) ?? []) {
    const swapPath = unescapeMountField(line.split(/\s+/)[0] ?? "");
    if (swapPath === "") continue;
    const swap = await stat(swapPath).catch(() => undefined);
    const name = swap?.isBlockDevice() ? byNumber.get(majorMinor(swap.rdev)) : undefined;
    if (name !== undefined) users.push(`${whose(name)}used as swap`);
  }
  for (const [name, , sysDir] of devices) {
    if (sysDir === "") continue;
    for (const holder of await readdir(join(sysDir, "holders")).catch(() => [] as string[])) {
      const dmName = (await readText(`/sys/block/${holder}/dm/name`))?.trim();
      users.push(`${whose(name)}held by ${holder}${dmName ? ` (device-mapper ${dmName})` : ""}`);
    }
  }
  return users;
}

/** An exclusive claim on a block device; release() ends it (idempotent). */
export interface DeviceClaim {
  release(): Promise<void>;
}

/**
 * Claims the block device at `path` exclusively for writing, after checking that nothing
 * uses it or its partitions. Anything but a block device needs no claim.
 * @throws BackendOpenError naming the users ("mounted on /mnt (ext4)") when the device is in
 *   use; with EBUSY and no user found, says another program holds it open exclusively.
 */
export async function claimBlockDevice(path: string, label = `'${path}'`): Promise<DeviceClaim> {
  const info = await stat(path);
  if (!info.isBlockDevice()) return { release: async () => undefined };
  const refuse = (users: string[]) =>
    new BackendOpenError(
      `Refusing to write to ${label}: the device is in use: ${users.join("; ")}. ` +
        "Unmount it (or stop what holds it) first",
    );
  const users = await blockDeviceUsers(path);
  if (users.length > 0) throw refuse(users);
  let handle: FileHandle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_EXCL);
  } catch (error) {
    if (systemErrorCode(error) !== "EBUSY") throw error;
    const found = await blockDeviceUsers(path);
    throw refuse(found.length > 0 ? found : ["another program holds it open exclusively (O_EXCL open: EBUSY)"]);
  }
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await handle.close();
    },
  };
}
