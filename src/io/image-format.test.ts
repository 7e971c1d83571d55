import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { detectFormatFromBytes, detectImageFormat, type ImageFormat } from "./image-format.js";

const run = promisify(execFile);

const qemuImg = await run("qemu-img", ["--version"]).then(
  () => true,
  () => false,
);
if (!qemuImg) console.log("skipped: image formats made by qemu-img: qemu-img is not installed");

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir("imageio-format-");
});
afterAll(async () => {
  await tmp?.remove();
});

/** The format qemu-img itself reports for `path`. */
async function qemuFormat(path: string): Promise<string> {
  const { stdout } = await run("qemu-img", ["info", "--output=json", path]);
  return (JSON.parse(stdout) as { format: string }).format;
}

describe("image format detection", () => {
  const created: [string, ImageFormat, string[]][] = [
    ["qcow2", "qcow2", ["-f", "qcow2"]],
    ["qcow2 v2 (compat 0.10)", "qcow2", ["-f", "qcow2", "-o", "compat=0.10"]],
    ["qcow", "qcow", ["-f", "qcow"]],
    ["qed", "qed", ["-f", "qed"]],
    ["vmdk", "vmdk", ["-f", "vmdk"]],
    ["vmdk stream-optimized", "vmdk", ["-f", "vmdk", "-o", "subformat=streamOptimized"]],
    ["vdi", "vdi", ["-f", "vdi"]],
    ["vhdx", "vhdx", ["-f", "vhdx"]],
    ["dynamic vhd", "vpc", ["-f", "vpc"]],
    ["fixed vhd", "vpc", ["-f", "vpc", "-o", "subformat=fixed"]],
    ["parallels", "parallels", ["-f", "parallels"]],
    ["luks", "luks", ["--object", "secret,id=sec0,data=test", "-f", "luks", "-o", "key-secret=sec0,iter-time=10"]],
    ["raw", "raw", ["-f", "raw"]],
  ];
  /**
   * qemu-img calibrates LUKS key derivation by timing it, and on a loaded machine it sometimes
   * fails with "Unable to get accurate CPU usage": that is qemu's measurement, not what this
   * test checks, so try again a few times.
   */
  async function createWithRetry(args: string[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await run("qemu-img", ["create", "-q", ...args]);
        return;
      } catch (error) {
        if (attempt >= 5 || !String(error).includes("Unable to get accurate CPU usage")) throw error;
      }
    }
  }

  for (const [label, format, args] of created) {
    it.skipIf(!qemuImg)(
      `12: finds ${label} in a file qemu-img created`,
      async () => {
        const path = tmp.file(`${label.replaceAll(" ", "-")}.img`);
        await createWithRetry([...args, path, "8M"]);
        expect(await detectImageFormat(path)).toBe(format);
        // qemu probes fixed VHDs as raw (they end in a footer): we are stricter, never looser.
        if (label !== "fixed vhd") expect(await qemuFormat(path)).toBe(format);
      },
      30_000,
    );
  }

  it("12: says raw for zeros, random data and an empty file, undefined for a missing one", async () => {
    const zeros = tmp.file("zeros");
    await writeFile(zeros, Buffer.alloc(1024 * 1024));
    expect(await detectImageFormat(zeros)).toBe("raw");
    const empty = tmp.file("empty");
    await writeFile(empty, "");
    expect(await detectImageFormat(empty)).toBe("raw");
    const data = tmp.file("data");
    await writeFile(data, Buffer.from("hello, this is a disk with a filesystem".repeat(200)));
    expect(await detectImageFormat(data)).toBe("raw");
    expect(await detectImageFormat(tmp.file("missing"))).toBeUndefined();
  });

  it("12: recognises formats qemu-img cannot create from their signatures", () => {
    const at = (offset: number, text: string) => {
      const buf = Buffer.alloc(4096);
      buf.write(text, offset, "latin1");
      return buf;
    };
    expect(detectFormatFromBytes(at(0, "Bochs Virtual HD Image"))).toBe("bochs");
    expect(
      detectFormatFromBytes(
        at(0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"),
      ),
    ).toBe("cloop");
    expect(detectFormatFromBytes(Buffer.alloc(4096), at(0, "koly").subarray(0, 512))).toBe("dmg");
    // A "QFI\xfb" with an unknown version 0 is not a qcow image qemu would open.
    expect(detectFormatFromBytes(at(0, "QFI\xfb"))).toBe("raw");
    // A header cut short matches nothing.
    expect(detectFormatFromBytes(Buffer.from("QF", "latin1"))).toBe("raw");
  });
});
