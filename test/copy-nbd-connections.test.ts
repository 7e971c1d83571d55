/**
 * NBD servers admit a fixed number of clients (qemu-nbd `--shared=N`) and leave the next one
 * waiting, unanswered, until its handshake times out. `imageio copy --workers N` must fit in
 * N connections: to a user's `nbd:` URL (the copy lends its first handle to a worker), and to
 * the qemu-nbd it starts itself for a qcow2 (`--shared` chosen to fit the workers).
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { imageio } from "./helpers/cli.js";
import { type NbdServer, run, skipUnless, startQemuNbd } from "./helpers/nbd.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;
const skip = skipUnless("qemu-nbd", "qemu-img");
if (skip !== undefined) console.log(`skipped: copy within an NBD server's connection limit: ${skip}`);
const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

let tmp: TempDir;
let raw: string;
let qcow2: string;
const servers: NbdServer[] = [];

beforeAll(async () => {
  if (skip !== undefined) return;
  tmp = await makeTempDir("imageio-copy-nbd-connections-");
  raw = tmp.file("disk.raw");
  await writeFile(raw, randomBytes(16 * MiB));
  qcow2 = tmp.file("disk.qcow2");
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
});
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});
afterAll(async () => {
  await tmp?.remove();
});

/** The final JSON progress record of a copy. */
const doneRecord = (stdout: string) => JSON.parse(stdout.trim().split("\n").pop() ?? "{}") as Record<string, unknown>;

describe.skipIf(skip !== undefined)("imageio copy within an NBD server's connection limit", () => {
  for (const workers of [2, 8]) {
    it(`11.9: --workers ${workers} reads an export started with --shared=${workers}: no connection waits for a slot`, async () => {
      const server = await startQemuNbd(tmp.path, qcow2, { readOnly: true, allocationDepth: true, shared: workers });
      servers.push(server);
      const out = tmp.file(`from-shared-${workers}.raw`);
      // Without the fix the connection past the limit hangs 10 s, then the copy fails (exit 1).
      const result = await imageio("copy", server.url, out, "--workers", String(workers), "--progress", "json");
      expect(result.code, result.stderr).toBe(0);
      expect(doneRecord(result.stdout)).toMatchObject({ phase: "done", workers });
      expect(sha(await readFile(out))).toBe(sha(await readFile(raw)));
    });
  }

  it("11.9: --workers 2 writes to and streams from an export started with --shared=2, --verify included", async () => {
    const target = tmp.file("target.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", target, String(16 * MiB)]);
    const server = await startQemuNbd(tmp.path, target, { shared: 2 });
    servers.push(server);
    const up = await imageio("copy", raw, server.url, "--workers", "2", "--verify");
    expect(up.code, up.stderr).toBe(0);
    expect(up.stderr).toContain("Verified");
    // Standard output: every worker reads through its own handle, the first one lent.
    const streamed = tmp.file("streamed.raw");
    const down = await run("sh", [
      "-c",
      `node '${root}/bin/imageio' copy '${server.url}' - --workers 2 > '${streamed}'`,
    ]).then(
      () => 0,
      () => 1,
    );
    expect(down).toBe(0);
    expect(sha(await readFile(streamed))).toBe(sha(await readFile(raw)));
  });

  it("11.9: a malformed nbd: URL is a usage error; checksum of an export is its data's", async () => {
    const relative = await imageio("copy", "nbd:unix:run/x.sock", tmp.file("never.raw"));
    expect(relative.code).toBe(2);
    expect(relative.stderr).toContain("the socket must be an absolute path");
    const same = await imageio("copy", "nbd:unix:/run//a.sock:exportname=x", "nbd:unix:/run/a.sock:exportname=x");
    expect(same.code).toBe(2);
    expect(same.stderr).toContain("are the same image");
    const server = await startQemuNbd(tmp.path, qcow2, { readOnly: true, allocationDepth: true, shared: 1 });
    servers.push(server);
    const ofExport = await imageio("checksum", server.url);
    expect(ofExport.code, ofExport.stderr).toBe(0);
    expect(ofExport.stdout).toBe((await imageio("checksum", raw)).stdout);
  });

  it("12: --workers 8 from a qcow2 through copy's own qemu-nbd uses 8 workers, byte for byte", async () => {
    const out = tmp.file("from-own-server.raw");
    const result = await imageio("copy", qcow2, out, "--workers", "8", "--progress", "json", "--verify");
    expect(result.code, result.stderr).toBe(0);
    expect(doneRecord(result.stdout)).toMatchObject({ phase: "done", workers: 8 });
    expect(sha(await readFile(out))).toBe(sha(await readFile(raw)));
  });
});
