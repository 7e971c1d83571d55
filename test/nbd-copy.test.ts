/**
 * Issue 11: `imageio copy` (the built CLI) reads and writes NBD exports: qcow2 through
 * qemu-nbd to a file and back, checked with qemu-img compare, and nbd: URL usage errors.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type NbdServer, run, skipUnless, startQemuNbd } from "./helpers/nbd.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const exec = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;
const skip = skipUnless("qemu-nbd", "qemu-img");
let tmp: TempDir;
const servers: NbdServer[] = [];

beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});

async function imageio(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await exec("node", ["bin/imageio", ...args], { cwd: root });
    return { code: 0, stderr };
  } catch (error) {
    const failed = error as { code: number; stderr: string };
    return { code: failed.code, stderr: failed.stderr };
  }
}

describe.skipIf(skip !== undefined)("imageio copy with nbd: URLs", () => {
  it("11.9: copies a qcow2 export to a file and a file to a new qcow2 export, byte for byte", async () => {
    // A sparse raw source: data at 0, 5 MiB and the last 4 KiB, holes elsewhere.
    const source = tmp.file("source.raw");
    await writeFile(source, "");
    await truncate(source, 24 * MiB);
    const handle = await open(source, "r+");
    for (const offset of [0, 5 * MiB + 3, 24 * MiB - 4096]) await handle.write(randomBytes(4096), 0, 4096, offset);
    await handle.close();
    const qcow2 = tmp.file("disk.qcow2");
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", source, qcow2]);

    const from = await startQemuNbd(tmp.path, qcow2, { readOnly: true, allocationDepth: true });
    servers.push(from);
    const downloaded = tmp.file("downloaded.raw");
    const down = await imageio("copy", "--progress", "none", from.url, downloaded);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toContain("skipped");
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, downloaded]);

    const target = tmp.file("target.qcow2");
    await run("qemu-img", ["create", "-f", "qcow2", target, String(24 * MiB)]);
    const to = await startQemuNbd(tmp.path, target, { exportName: "sda" });
    servers.push(to);
    const up = await imageio("copy", "--progress", "none", "--verify", source, `${to.url}`);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stderr).toContain("Verified");
    await to.stop();
    servers.pop();
    await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", source, target]);
  });

  it("11.9: nbd usage errors: nbds is refused, a missing socket is a clear failure, one export twice is refused", async () => {
    const out = tmp.file("out.raw");
    const tls = await imageio("copy", "nbds:unix:/run/x.sock", out);
    expect(tls.code).toBe(2);
    expect(tls.stderr).toContain("NBD over TLS (nbds) is not supported");
    const missing = await imageio("copy", `nbd:unix:${tmp.file("nosuch.sock")}`, out);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/Cannot connect to NBD server at unix:\S+nosuch\.sock: ENOENT/);
    const same = await imageio("copy", "nbd:unix:/run/a.sock", "nbd:unix:/run/a.sock");
    expect(same.code).toBe(2);
    expect(same.stderr).toContain("are the same image");
  });
});
