/**
 * Issue 12: `imageio copy` never surprises: container formats are read and written as the
 * guest sees them (through qemu-nbd), never copied as bytes or overwritten with raw bytes
 * unless --src-format/--dst-format raw says so, relative file: URLs are refused, a truncated destination is named,
 * and a block device in use (mounted, held by device-mapper, opened exclusively) is never
 * written. Device tests need root and skip, with the reason printed, where the kernel refuses.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { mkdir, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { imageio } from "./helpers/cli.js";
import { attach, loopDeviceSupport } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;

const sha = async (path: string) =>
  createHash("sha256")
    .update(await readFile(path))
    .digest("hex");

let tmp: TempDir;
const tmpReady = makeTempDir("imageio-copy-safety-").then((dir) => {
  tmp = dir;
  return dir;
});
const loopUnsupported = await loopDeviceSupport((await tmpReady).file("probe.raw"));
if (loopUnsupported !== null) console.log(`skipped: copy onto devices in use: ${loopUnsupported}`);

let raw: string;
let qcow2: string;
beforeAll(async () => {
  raw = tmp.file("disk.raw");
  await writeFile(raw, randomBytes(4 * MiB));
  qcow2 = tmp.file("disk.qcow2");
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
});
afterAll(async () => {
  await tmp?.remove();
});

describe("imageio copy and image formats", () => {
  it("12: reads a qcow2 source's guest data, not its container bytes, unless --src-format raw", async () => {
    const out = tmp.file("from-qcow2.raw");
    const result = await imageio("copy", qcow2, out);
    expect(result.code, result.stderr).toBe(0);
    expect(await sha(out)).toBe(await sha(raw));
    // Asked for explicitly, the container's bytes are copied as they are.
    const bytes = tmp.file("container-bytes.qcow2.bin");
    expect((await imageio("copy", qcow2, bytes, "--src-format", "raw")).code).toBe(0);
    expect(await sha(bytes)).toBe(await sha(qcow2));
  });

  it("12: never writes raw bytes over an existing qcow2 (or VMDK) destination without --dst-format raw", async () => {
    for (const format of ["qcow2", "vmdk"]) {
      // auto: the image is written in its own format; its container survives.
      const dst = tmp.file(`existing.${format}`);
      await run("qemu-img", ["create", "-q", "-f", format, dst, "4M"]);
      const result = await imageio("copy", raw, dst);
      expect(result.code, result.stderr).toBe(0);
      const info = JSON.parse((await run("qemu-img", ["info", "--output=json", dst])).stdout) as { format: string };
      expect(info.format).toBe(format);
      await run("qemu-img", ["compare", "-f", "raw", "-F", format, raw, dst]);
    }
    // --dst-format qcow2 over something that is not qcow2 is refused, and the file is left alone.
    const plain = tmp.file("plain.raw");
    await writeFile(plain, randomBytes(4 * MiB));
    const before = await sha(plain);
    const refused = await imageio("copy", raw, plain, "--dst-format", "qcow2");
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/is a raw image, not qcow2: pass --dst-format raw/);
    expect(await sha(plain)).toBe(before);
    const vmdk = tmp.file("existing.vmdk");
    const vmdkBefore = await sha(vmdk);
    const notQcow2 = await imageio("copy", raw, vmdk, "--dst-format", "qcow2");
    expect(notQcow2.code).toBe(2);
    expect(notQcow2.stderr).toMatch(/is a VMDK image, not qcow2: .*--dst-format raw to overwrite it with raw bytes/);
    expect(await sha(vmdk)).toBe(vmdkBefore);
    // Only --dst-format raw overwrites the container with raw bytes.
    const dst = tmp.file("overwritten.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", dst, "4M"]);
    const result = await imageio("copy", raw, dst, "--dst-format", "raw");
    expect(result.code, result.stderr).toBe(0);
    expect(await sha(dst)).toBe(await sha(raw));
  });

  it("12: --dst-format qcow2 and a new .qcow2 name create a qcow2 of the source's size", async () => {
    for (const args of [[tmp.file("new.qcow2")], [tmp.file("new-image"), "--dst-format", "qcow2"]]) {
      const dst = args[0] as string;
      const result = await imageio("copy", raw, ...args);
      expect(result.code, result.stderr).toBe(0);
      const info = JSON.parse((await run("qemu-img", ["info", "--output=json", dst])).stdout) as {
        format: string;
        "virtual-size": number;
      };
      expect(info).toMatchObject({ format: "qcow2", "virtual-size": 4 * MiB });
      await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, dst]);
    }
    const rawNamed = tmp.file("raw-named.qcow2");
    expect((await imageio("copy", raw, rawNamed, "--dst-format", "raw")).code).toBe(0);
    expect(await sha(rawNamed)).toBe(await sha(raw));
  });

  it("12: refuses a relative file: URL instead of reading /src.raw", async () => {
    const result = await imageio("copy", "file:disk.raw", tmp.file("x.raw"));
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/Relative file: URL 'file:disk\.raw'.*file:\/\/\/path.*'disk\.raw'/);
    expect((await imageio("copy", `file://${raw}`, tmp.file("from-url.raw"))).code).toBe(0);
  });

  it("12: says in the summary and in --help that a larger existing file was truncated", async () => {
    const dst = tmp.file("larger.raw");
    await writeFile(dst, randomBytes(6 * MiB));
    const result = await imageio("copy", raw, dst);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain(`'${dst}' truncated from 6.00 MiB to 4.00 MiB`);
    expect((await stat(dst)).size).toBe(4 * MiB);
    const json = await imageio("copy", raw, tmp.file("larger-2.raw"), "--progress", "json");
    expect(JSON.parse(json.stdout.trim().split("\n").pop() ?? "")).toMatchObject({ phase: "done", size: 4 * MiB });
    expect((await imageio("copy", "--help")).stdout).toMatch(/larger existing file is truncated/);
  });

  it("12: --progress json onto the image on stdout, - to -, and --verify with - are usage errors", async () => {
    expect((await imageio("copy", raw, "-", "--progress", "json")).code).toBe(2);
    expect((await imageio("copy", "-", "-")).code).toBe(2);
    expect((await imageio("copy", "-", tmp.file("v.raw"), "--verify")).code).toBe(2);
  });

  it("12: refuses to write an image to a terminal or read one from it (exit 2)", async () => {
    // script(1) gives the command a pseudo-terminal for stdin and stdout, as an admin's shell would.
    for (const [args, message] of [
      [[raw, "-"], "Standard output is a terminal"],
      [["-", tmp.file("typed.raw")], "Standard input is a terminal"],
    ] as const) {
      const command = ["node", `${root}/bin/imageio`, "copy", ...args].map((arg) => `'${arg}'`).join(" ");
      const failed = await run("script", ["-qfec", command, "/dev/null"], { cwd: root }).then(
        () => undefined,
        (error: { code: number; stdout: string }) => error,
      );
      expect(failed?.code).toBe(2);
      expect(failed?.stdout).toContain(message);
    }
    await expect(stat(tmp.file("typed.raw"))).rejects.toThrow(/ENOENT/);
  });
});

describe.skipIf(loopUnsupported !== null)("imageio copy onto a block device in use", () => {
  it("12: refuses a mounted device, naming the mount point, and leaves the filesystem intact", async () => {
    const backing = tmp.file("mounted.img");
    await writeFile(backing, Buffer.alloc(16 * MiB));
    const device = await attach(backing, 512);
    const mountPoint = tmp.file("mnt point");
    try {
      await run("mkfs.ext4", ["-q", device.path]);
      await mkdir(mountPoint);
      await run("mount", [device.path, mountPoint]);
      try {
        await writeFile(`${mountPoint}/hello`, "still here");
        const result = await imageio("copy", raw, device.path);
        expect(result.code).toBe(1);
        expect(result.stderr).toContain(
          `Refusing to write to '${device.path}': the device is in use: mounted on ${mountPoint} (ext4)`,
        );
      } finally {
        await run("umount", [mountPoint]);
      }
      await run("e2fsck", ["-n", "-f", device.path]);
      // Unmounted, the same copy goes ahead.
      const result = await imageio("copy", raw, device.path);
      expect(result.code, result.stderr).toBe(0);
    } finally {
      await device.detach();
    }
  });

  it("12: refuses a device held by device-mapper or opened exclusively, naming the holder", async () => {
    const backing = tmp.file("held.img");
    await writeFile(backing, Buffer.alloc(16 * MiB));
    const device = await attach(backing, 512);
    const name = `imageio-test-${process.pid}`;
    try {
      let dm = true;
      try {
        await run("dmsetup", ["create", name, "--table", `0 ${(8 * MiB) / 512} linear ${device.path} 0`]);
      } catch (error) {
        dm = false;
        const reason = (error as { stderr?: string }).stderr?.trim() || (error as Error).message;
        console.log(`skipped: a device-mapper holder: dmsetup create failed: ${reason.split("\n")[0]}`);
      }
      if (dm) {
        try {
          const result = await imageio("copy", raw, device.path);
          expect(result.code).toBe(1);
          expect(result.stderr).toMatch(new RegExp(`held by dm-\\d+ \\(device-mapper ${name}\\)`));
        } finally {
          await run("dmsetup", ["remove", name]);
        }
      }
      // An exclusive opener the kernel knows only as EBUSY.
      const holder = await open(device.path, fsConstants.O_RDONLY | fsConstants.O_EXCL);
      try {
        const result = await imageio("copy", raw, device.path);
        expect(result.code).toBe(1);
        expect(result.stderr).toContain("another program holds it open exclusively");
      } finally {
        await holder.close();
      }
      expect(await sha(backing)).toBe(
        createHash("sha256")
          .update(Buffer.alloc(16 * MiB))
          .digest("hex"),
      );
    } finally {
      await device.detach();
      await rm(backing, { force: true });
    }
  });
});
