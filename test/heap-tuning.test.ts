/**
 * Issue 14 (CPU per GiB): the daemon keeps freed heap memory for the next socket reads, and
 * an administrator's own glibc MALLOC_* settings win over it.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { addTicket, curl, startDaemon } from "./helpers/daemon.js";

describe("14: heap tuning at daemon start", () => {
  it("14: the daemon keeps freed heap memory for reuse and still stores an upload's bytes", async () => {
    const daemon = await startDaemon();
    try {
      await daemon.waitForLog("HEAP tuning");
      expect(daemon.logs()).toMatch(/DEBUG .*HEAP tuning source=imageio/);
      // The data path under the tuned allocator: an upload over the unix socket, hashed back.
      const image = daemon.tmp.file("image.raw");
      const data = randomBytes(3 * 1024 * 1024 + 512);
      await writeFile(image, Buffer.alloc(data.length));
      const id = "heap-tuning-upload";
      await addTicket(daemon, { uuid: id, size: data.length, url: `file://${image}`, timeout: 300, ops: ["write"] });
      const source = daemon.tmp.file("source.raw");
      await writeFile(source, data);
      const put = await curl([
        "--silent",
        "--fail",
        "--unix-socket",
        daemon.localSocket as string,
        "-T",
        source,
        `http://localhost/images/${id}`,
      ]);
      expect(put.code).toBe(0);
      const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
      expect(sha(await readFile(image))).toBe(sha(data));
    } finally {
      await daemon.stop();
    }
  });

  it("14: MALLOC_TRIM_THRESHOLD_ in the environment leaves the heap settings to glibc", async () => {
    const daemon = await startDaemon({ env: { MALLOC_TRIM_THRESHOLD_: "131072" } });
    try {
      await daemon.waitForLog("HEAP tuning");
      expect(daemon.logs()).toMatch(/DEBUG .*HEAP tuning source="MALLOC_\* environment"/);
      expect(daemon.logs()).not.toContain("HEAP tuning source=imageio");
    } finally {
      await daemon.stop();
    }
  });
});
