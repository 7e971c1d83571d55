/**
 * The private qemu-nbd, checked with libnbd's tools (nbdinfo, nbdcopy) and qemu-img as the
 * oracle: what it serves, that it is private, that it stops (also when its process dies).
 */
import { execFile, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, stat, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { BackendOpenError } from "../errors.js";
import { createQcow2, startQemuNbd } from "./qemu-nbd.js";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;

async function missingTools(): Promise<string | null> {
  for (const tool of ["qemu-nbd", "qemu-img", "nbdinfo", "nbdcopy"]) {
    try {
      await run("sh", ["-c", `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed`;
    }
  }
  return null;
}
const missing = await missingTools();
if (missing !== null) console.log(`skipped: qemu-nbd tests: ${missing}`);

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir("imageio-qemu-nbd-");
});
afterAll(async () => {
  await tmp?.remove();
});

const uri = (socket: string) => `nbd+unix:///?socket=${socket}`;
const sha256 = async (path: string) =>
  createHash("sha256")
    .update(await readFile(path))
    .digest("hex");

/** A process with this pid exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A raw image with random data at 0–1 MiB and 5–6 MiB of 8 MiB, and its qcow2 conversion. */
async function makeImages(label: string): Promise<{ raw: string; qcow2: string }> {
  const raw = tmp.file(`${label}.raw`);
  const image = Buffer.alloc(8 * 1024 * 1024);
  randomBytes(1024 * 1024).copy(image, 0);
  randomBytes(1024 * 1024).copy(image, 5 * 1024 * 1024);
  await writeFile(raw, image);
  const qcow2 = tmp.file(`${label}.qcow2`);
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  return { raw, qcow2 };
}

describe.skipIf(missing !== null)("qemu-nbd for one image", () => {
  it("12: serves a qcow2 image's guest data, read-only, on a socket in a private 0700 directory", async () => {
    const { raw, qcow2 } = await makeImages("read");
    const server = await startQemuNbd({ path: qcow2, format: "qcow2", readonly: true });
    try {
      expect(server.url).toBe(`nbd:unix:${server.socketPath}`);
      expect((await stat(dirname(server.socketPath))).mode & 0o777).toBe(0o700);
      const { stdout } = await run("nbdinfo", ["--json", uri(server.socketPath)]);
      const info = JSON.parse(stdout) as { exports: { "export-size": number; is_read_only: boolean }[] };
      expect(info.exports[0]?.["export-size"]).toBe(8 * 1024 * 1024);
      expect(info.exports[0]?.is_read_only).toBe(true);
      const out = tmp.file("read-out.raw");
      await run("nbdcopy", [uri(server.socketPath), out]);
      expect(await sha256(out)).toBe(await sha256(raw));
      // Holes of the qcow2 show as unallocated through qemu:allocation-depth.
      const map = await run("nbdinfo", ["--map=qemu:allocation-depth", uri(server.socketPath)]);
      expect(map.stdout).toMatch(/^\s*1048576\s+4194304\s+0\s+absent$/m);
      await expect(run("nbdcopy", [raw, uri(server.socketPath)])).rejects.toThrow();
    } finally {
      await server.stop();
    }
    expect(alive(server.pid)).toBe(false);
    expect(existsSync(dirname(server.socketPath))).toBe(false);
    await server.stop(); // idempotent
  });

  it("12: writes through a new qcow2 made by createQcow2; qemu-img compare finds it identical", async () => {
    const { raw } = await makeImages("write");
    const qcow2 = tmp.file("write-new.qcow2");
    await createQcow2(qcow2, 8 * 1024 * 1024);
    const info = JSON.parse((await run("qemu-img", ["info", "--output=json", qcow2])).stdout) as {
      format: string;
      "virtual-size": number;
    };
    expect(info).toMatchObject({ format: "qcow2", "virtual-size": 8 * 1024 * 1024 });
    const server = await startQemuNbd({ path: qcow2, format: "qcow2", readonly: false, connections: 4 });
    try {
      await run("nbdcopy", ["--connections=4", raw, uri(server.socketPath)]);
    } finally {
      await server.stop();
    }
    await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, qcow2]);
    await run("qemu-img", ["check", qcow2]);
  });

  it("12: createQcow2 never overwrites an existing file", async () => {
    const existing = tmp.file("existing.raw");
    await writeFile(existing, "precious");
    await expect(createQcow2(existing, 1024 * 1024)).rejects.toThrow(/already exists/);
    expect(await readFile(existing, "utf8")).toBe("precious");
  });

  it("12: a qemu-nbd that cannot open the image fails with its message and leaves nothing behind", async () => {
    const error = await startQemuNbd({ path: tmp.file("missing.qcow2"), format: "qcow2", readonly: true }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BackendOpenError);
    expect((error as Error).message).toMatch(/missing\.qcow2.*qemu-nbd failed: .*No such file/s);
    // The wrong format is qemu's error too, never a silent raw export.
    const { raw } = await makeImages("wrong");
    await expect(startQemuNbd({ path: raw, format: "qcow2", readonly: true })).rejects.toThrow(/qemu-nbd failed/);
  });

  it("12: a missing qemu-nbd executable is named", async () => {
    const { raw } = await makeImages("noexe");
    await expect(
      startQemuNbd({ path: raw, format: "raw", readonly: true, command: "/nonexistent/qemu-nbd" }),
    ).rejects.toThrow(/qemu-nbd is not installed/);
  });

  it("12: a process that dies of Ctrl-C (SIGINT) or exits takes its qemu-nbd with it", async () => {
    if (!existsSync(`${root}/dist/io/qemu-nbd.js`))
      await run("npx", ["tsc", "-p", "tsconfig.build.json"], { cwd: root });
    const { qcow2 } = await makeImages("orphan");
    for (const ending of ["SIGINT", "exit"] as const) {
      const script = [
        `const { startQemuNbd } = await import(${JSON.stringify(`${root}/dist/io/qemu-nbd.js`)});`,
        `const server = await startQemuNbd({ path: ${JSON.stringify(qcow2)}, format: "qcow2", readonly: true });`,
        "console.log(JSON.stringify({ pid: server.pid, socket: server.socketPath }));",
        ending === "exit" ? "process.exit(3);" : "setInterval(() => {}, 1000);",
      ].join("\n");
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      let output = "";
      child.stdout.on("data", (data: Buffer) => {
        output += data.toString();
      });
      const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
        child.once("exit", (code, signal) => resolve(signal ?? code)),
      );
      await waitUntil(() => output.includes("\n") || child.exitCode !== null, "the server's pid");
      const { pid } = JSON.parse(output) as { pid: number; socket: string };
      expect(alive(pid)).toBe(true);
      if (ending === "SIGINT") child.kill("SIGINT");
      expect(await exited).toBe(ending === "SIGINT" ? "SIGINT" : 3);
      await waitUntil(() => !alive(pid), `qemu-nbd ${pid} to stop after ${ending}`);
    }
  });
});
