/**
 * `imageio copy` as an admin runs it: the built CLI on real files, loop devices (512- and
 * 4096-byte sectors) and a small full filesystem, checked with cmp, allocated block counts,
 * exit statuses and messages. Device and mount tests need root and skip, with the reason
 * printed, only where the kernel refuses.
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { link, mkdir, open, readFile, rm, stat, symlink, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyCopy } from "../src/io/copy.js";
import { openBackend } from "../src/io/open.js";
import { MiB } from "../src/units.js";
import { writeSparseImage } from "./helpers/images.js";
import { attach, type LoopDevice, loopDeviceSupport } from "./helpers/loop.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

async function imageio(...args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run("node", ["bin/imageio", ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

/** Runs `imageio copy ARGS` and expects it to succeed, showing what it printed if not. */
async function copyOk(...args: string[]): Promise<Outcome> {
  const result = await imageio("copy", ...args);
  expect(result.code, `imageio copy ${args.join(" ")}\n${result.stderr}`).toBe(0);
  return result;
}

/** True when the first `bytes` bytes (all of them when omitted) of both are identical, by cmp. */
async function cmp(a: string, b: string, bytes?: number): Promise<boolean> {
  try {
    await run("cmp", bytes === undefined ? [a, b] : ["-n", String(bytes), a, b]);
    return true;
  } catch {
    return false;
  }
}

/** Bytes allocated on disk. */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

let tmp: TempDir;
let counter = 0;
const name = (label: string) => tmp.file(`${label}-${counter++}.raw`);
const tmpReady = makeTempDir("imageio-copy-").then((dir) => {
  tmp = dir;
  return dir;
});
const loopUnsupported = await loopDeviceSupport((await tmpReady).file("probe.raw"));
if (loopUnsupported !== null) console.log(`skipped: copy to and from loop devices: ${loopUnsupported}`);

beforeAll(async () => {
  // `npm test` builds first; a single test run may not have.
  if (!existsSync(`${root}/dist/cli.js`)) await run("npx", ["tsc", "-p", "tsconfig.build.json"], { cwd: root });
});
afterAll(async () => {
  await tmp.remove();
});

describe("imageio copy between files", () => {
  const cases: [string, number, [number, number][]][] = [
    ["a fully allocated", 3 * MiB, [[0, 3 * MiB]]],
    [
      "a sparse",
      8 * MiB,
      [
        [0, 64 * 1024],
        [MiB + 4096, 2 * MiB],
        [5 * MiB, 5 * MiB + 12_288],
      ],
    ],
    ["an empty", 0, []],
    [
      "a 1 MiB + 513 bytes",
      MiB + 513,
      [
        [0, 1000],
        [MiB - 100, MiB + 513],
      ],
    ],
  ];
  for (const [label, size, runs] of cases) {
    it(`copies ${label} image to a new file: identical bytes, no more blocks allocated`, async () => {
      const src = name("src");
      const dst = name("dst");
      await writeSparseImage(src, size, runs);
      const result = await imageio("copy", src, dst);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain(`Copied '${src}' to '${dst}'`);
      expect((await stat(dst)).size).toBe(size);
      expect(await cmp(src, dst)).toBe(true);
      expect(await allocated(dst)).toBeLessThanOrEqual(await allocated(src));
    });
  }

  it("leaves blocks of zeros unallocated, unless --no-detect-zeroes", async () => {
    const data = randomBytes(4 * MiB);
    data.fill(0, MiB, 3 * MiB);
    const src = name("src");
    await writeFile(src, data);
    const detected = name("dst");
    await copyOk(src, detected);
    expect(await cmp(src, detected)).toBe(true);
    expect(await allocated(detected), "bytes allocated with zero detection").toBeLessThanOrEqual(2 * MiB + 64 * 1024);
    const written = name("dst");
    await copyOk("--no-detect-zeroes", src, written);
    expect(await cmp(src, written)).toBe(true);
    expect(await allocated(written), "bytes allocated without zero detection").toBeGreaterThanOrEqual(4 * MiB);
  });

  it("resizes an existing file to the source's size and clears what the source has not", async () => {
    const src = name("src");
    await writeSparseImage(src, 2 * MiB + 4096, [[MiB, MiB + 8192]]);
    const dst = name("dst");
    await writeFile(dst, randomBytes(5 * MiB));
    const result = await imageio("copy", src, dst);
    expect(result.code, result.stderr).toBe(0);
    expect((await stat(dst)).size).toBe(2 * MiB + 4096);
    expect(await cmp(src, dst)).toBe(true);
    // Sparse by default: the stale data became holes.
    expect(await allocated(dst)).toBeLessThanOrEqual(await allocated(src));
  });

  it("with --preallocate, gives new and existing files every block", async () => {
    const src = name("src");
    await writeSparseImage(src, 4 * MiB, [[MiB, MiB + 4096]]);
    const created = name("dst");
    const existing = name("dst");
    await writeSparseImage(existing, 4 * MiB, [[0, 4096]]);
    for (const dst of [created, existing]) {
      await copyOk("--preallocate", src, dst);
      expect(await cmp(src, dst)).toBe(true);
      expect(await allocated(dst)).toBeGreaterThanOrEqual(4 * MiB);
    }
  });

  it("takes file: URLs", async () => {
    const src = name("src");
    await writeSparseImage(src, MiB, [[0, 4096]]);
    const dst = name("dst");
    const result = await imageio("copy", `file://${src}`, `file://${dst}`);
    expect(result.code, result.stderr).toBe(0);
    expect(await cmp(src, dst)).toBe(true);
  });

  it("with --verify, says both images have the same checksum", async () => {
    const src = name("src");
    await writeSparseImage(src, 3 * MiB, [[0, 2 * MiB]]);
    const result = await imageio("copy", "--verify", src, name("dst"));
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/Verified: both have blake2b block checksum [0-9a-f]{64}/);
  });

  it("verification catches a byte corrupted after the copy", async () => {
    const src = name("src");
    const dst = name("dst");
    await writeSparseImage(src, 3 * MiB, [[0, 3 * MiB]]);
    await copyOk(src, dst);
    const handle = await open(dst, "r+");
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, 2 * MiB + 17);
    await handle.write(Buffer.from([(byte[0] ?? 0) ^ 0x40]), 0, 1, 2 * MiB + 17);
    await handle.close();
    const [a, b] = await Promise.all([
      openBackend(`file://${src}`, { readonly: true }),
      openBackend(`file://${dst}`, { readonly: true }),
    ]);
    try {
      await expect(verifyCopy(a, b, 3 * MiB)).rejects.toMatchObject({ code: "IMAGEIO_ERR_VERIFY_FAILED" });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("--progress=json prints one JSON object per line, ending at the total", async () => {
    const src = name("src");
    await writeSparseImage(src, 4 * MiB, [[0, 4 * MiB]]);
    const result = await imageio("copy", "--progress=json", "--verify", src, name("dst"));
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n");
    const records = lines.map(
      (line) => JSON.parse(line) as { phase: string; done: number; total: number; rate: number },
    );
    const copying = records.filter((r) => r.phase === "copy");
    expect(copying[0]).toMatchObject({ done: 0, total: 4 * MiB });
    expect(copying.at(-1)).toMatchObject({ done: 4 * MiB, total: 4 * MiB });
    for (const r of records) expect(Number.isInteger(r.rate) && r.rate >= 0).toBe(true);
    expect(records.at(-2)).toMatchObject({ phase: "verify", done: 8 * MiB, total: 8 * MiB });
    expect(records.at(-1)).toMatchObject({ phase: "done", size: 4 * MiB, copied: 4 * MiB });
  });

  it("on a terminal, shows a progress bar with bytes, rate and ETA", async () => {
    const src = name("src");
    await writeSparseImage(src, 8 * MiB, [[0, 4 * MiB]]);
    const dst = name("dst");
    // script(1) runs the command on a pseudo-terminal, as an admin's shell would.
    const command = ["node", `${root}/bin/imageio`, "copy", src, dst].map((arg) => `'${arg}'`).join(" ");
    const { stdout } = await run("script", ["-qfec", command, "/dev/null"], { cwd: root });
    expect(stdout).toMatch(/copying +\|=+\| 100% \| 8\.00 MiB \/ 8\.00 MiB \| [\d.]+ \w+\/s \| ETA \d+s/);
    expect(stdout).toContain(`Copied '${src}' to '${dst}'`);
    expect(await cmp(src, dst)).toBe(true);
  });

  it("--quiet prints nothing", async () => {
    const src = name("src");
    await writeSparseImage(src, MiB, [[0, MiB]]);
    const dst = name("dst");
    expect(await imageio("copy", "--quiet", "--verify", src, dst)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(await cmp(src, dst)).toBe(true);
  });

  it("a missing source fails with status 1, naming the path and errno, and creates nothing", async () => {
    const src = tmp.file("missing.raw");
    const dst = name("dst");
    const result = await imageio("copy", src, dst);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`imageio copy: Cannot open '${src}' for reading: no such file or directory (ENOENT)\n`);
    expect(existsSync(dst)).toBe(false);
  });

  it("a destination in a missing directory fails with status 1", async () => {
    const src = name("src");
    await writeSparseImage(src, MiB, [[0, MiB]]);
    const dst = tmp.file("no-such-dir/dst.raw");
    const result = await imageio("copy", src, dst);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`Cannot create '${dst}'`);
    expect(result.stderr).toContain("ENOENT");
  });

  it("refuses to copy an image onto itself, also through a link", async () => {
    const src = name("src");
    await writeSparseImage(src, MiB, [[0, MiB]]);
    const hard = name("hard");
    const soft = name("soft");
    await link(src, hard);
    await symlink(src, soft);
    const before = await readFile(src);
    for (const dst of [src, hard, soft, `file://${src}`]) {
      const result = await imageio("copy", src, dst);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain("are the same image");
    }
    expect((await readFile(src)).equals(before)).toBe(true);
  });

  it("bad arguments are usage errors with status 2 that touch nothing", async () => {
    const src = name("src");
    await writeSparseImage(src, MiB, [[0, MiB]]);
    const dst = name("dst");
    const attempts: [string[], string][] = [
      [["--workers", "0", src, dst], "argument '0' is invalid"],
      [["--workers", "many", src, dst], "argument 'many' is invalid"],
      [["--buffer-size", "1000", src, dst], "argument '1000' is invalid"],
      [["--buffer-size", "8X", src, dst], "argument '8X' is invalid"],
      [["--sparse", "--preallocate", src, dst], "cannot be used with option '--preallocate'"],
      [["--progress", "loud", src, dst], "argument 'loud' is invalid"],
      [["--bogus", src, dst], "unknown option '--bogus'"],
      [[src], "missing required argument 'dst'"],
      [[src, "ftp://example.com/images/1"], "Unsupported URL 'ftp://example.com/images/1'"],
      [[src, "https://example.com/tickets/1"], "Invalid image URL 'https://example.com/tickets/1'"],
      [[src, "file://remote-host/x.raw"], "Invalid file URL"],
    ];
    for (const [args, message] of attempts) {
      const result = await imageio("copy", ...args);
      expect(result.code, args.join(" ")).toBe(2);
      expect(result.stderr).toContain(message);
    }
    expect(existsSync(dst)).toBe(false);
  });

  it("Ctrl-C stops mid-copy with status 130, saying how far the copy got, and what it says is there", async () => {
    const size = 64 * MiB;
    const src = name("src");
    const dst = name("dst");
    await writeSparseImage(src, size, [[0, size]]);
    // Small chunks and one worker make the copy take seconds: long enough to interrupt.
    const child = spawn(
      "node",
      ["bin/imageio", "copy", "--workers", "1", "--buffer-size", "4K", "--progress", "json", src, dst],
      { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    await new Promise<void>((resolve) => {
      child.stdout.on("data", (data: Buffer) => {
        stdout += data.toString();
        const started = stdout
          .split("\n")
          .filter((line) => line.startsWith("{"))
          .some((line) => (JSON.parse(line) as { done: number }).done > 0);
        if (started && child.signalCode === null && !child.killed) {
          child.kill("SIGINT");
          resolve();
        }
      });
    });
    expect(await exited).toBe(130);
    expect(stderr).toContain("stopping after the chunks in flight");
    const match = /Copy interrupted after .+ of 64\.00 MiB .*; the first (\d+) bytes of '.+' are copied/.exec(stderr);
    expect(match, stderr).not.toBeNull();
    const upTo = Number(match?.[1]);
    expect(upTo).toBeGreaterThan(0);
    expect(upTo).toBeLessThan(size);
    expect(await cmp(src, dst, upTo)).toBe(true);
  });
});

describe("imageio copy error paths that need root", () => {
  const isRoot = process.getuid?.() === 0;
  if (!isRoot) console.log("skipped: unreadable device and full filesystem tests: they need root");

  it.skipIf(!isRoot)("an unreadable device fails with status 1, naming the path and errno", async () => {
    // A block device node whose major number has no driver: open() fails with ENXIO.
    const device = tmp.file("no-driver.dev");
    await run("mknod", [device, "b", "240", "0"]);
    const result = await imageio("copy", device, name("dst"));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`Cannot open '${device}' for reading`);
    expect(result.stderr).toContain("ENXIO");
  });

  it.skipIf(!isRoot || loopUnsupported !== null)(
    "a full destination filesystem fails with status 1, naming the path, offset and ENOSPC",
    async () => {
      const image = name("fs");
      const mountPoint = tmp.file(`mnt-${counter++}`);
      await writeFile(image, "");
      await truncate(image, 8 * MiB);
      await run("mkfs.ext4", ["-q", "-F", image]);
      await mkdir(mountPoint);
      try {
        await run("mount", ["-o", "loop", image, mountPoint]);
      } catch (error) {
        console.log(`skipped: full filesystem test: the kernel refused a loop mount: ${String(error)}`);
        return;
      }
      try {
        const src = name("src");
        await writeSparseImage(src, 16 * MiB, [[0, 16 * MiB]]);
        const dst = `${mountPoint}/dst.raw`;
        const result = await imageio("copy", src, dst);
        expect(result.code).toBe(1);
        expect(result.stderr).toMatch(
          new RegExp(
            `^imageio copy: Cannot write \\d+ bytes at offset \\d+ to '${dst}': ENOSPC: no space left on device`,
          ),
        );
        expect(result.stderr).toContain(`imageio copy: '${dst}' was created by this copy and is incomplete\n`);
      } finally {
        await run("umount", [mountPoint]);
        await rm(mountPoint, { recursive: true, force: true });
      }
    },
  );
});

for (const sectorSize of [512, 4096] as const) {
  describe.skipIf(loopUnsupported !== null)(`imageio copy with loop devices of ${sectorSize}-byte sectors`, () => {
    const devices: LoopDevice[] = [];
    const makeDevice = async (contents: Buffer) => {
      const backing = name("backing");
      await writeFile(backing, contents);
      const device = await attach(backing, sectorSize);
      devices.push(device);
      return device;
    };
    afterAll(async () => {
      for (const device of devices) await device.detach();
    });

    it("copies an unaligned sparse file onto a larger device, leaving the rest of the device alone", async () => {
      const size = MiB + 513;
      const src = name("src");
      await writeSparseImage(src, size, [
        [0, 3000],
        [MiB - 4096, size],
      ]);
      const device = await makeDevice(Buffer.alloc(2 * MiB, 0xee));
      const result = await imageio("copy", "--verify", src, device.path);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain("Verified:");
      expect(await cmp(src, device.path, size)).toBe(true);
      const backing = await readFile(device.backingFile);
      expect(backing.subarray(size).every((byte) => byte === 0xee)).toBe(true);
    });

    it("copies a device to a new file: identical, with its zeros left unallocated", async () => {
      const contents = Buffer.alloc(4 * MiB);
      randomBytes(MiB).copy(contents, 0);
      randomBytes(4096).copy(contents, 3 * MiB);
      const device = await makeDevice(contents);
      const dst = name("dst");
      const result = await imageio("copy", device.path, dst);
      expect(result.code, result.stderr).toBe(0);
      expect((await stat(dst)).size).toBe(4 * MiB);
      expect(await cmp(device.path, dst)).toBe(true);
      expect(await allocated(dst)).toBeLessThanOrEqual(MiB + 64 * 1024);
    });

    it("refuses a device smaller than the source, naming both sizes, and writes nothing", async () => {
      const src = name("src");
      await writeSparseImage(src, 2 * MiB, [[0, 2 * MiB]]);
      const device = await makeDevice(Buffer.alloc(MiB, 0xee));
      const result = await imageio("copy", src, device.path);
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `imageio copy: '${device.path}' is too small: it holds 1048576 bytes (1.00 MiB), '${src}' needs 2097152 bytes (2.00 MiB)\n`,
      );
      expect((await readFile(device.backingFile)).every((byte) => byte === 0xee)).toBe(true);
    });
  });
}
