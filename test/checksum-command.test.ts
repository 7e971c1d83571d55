/**
 * Issue 12: `imageio checksum IMAGE|URL` prints what the daemon's /checksum answers, so a local
 * image and its upload compare as text; a qcow2 image is hashed as its guest data.
 */
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { imageio } from "./helpers/cli.js";
import { addTicket, type InProcessDaemon, request, startInProcess } from "./helpers/daemon.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

let tmp: TempDir;
let daemon: InProcessDaemon;
let caFile: string;
let image: string;
let ticketUrl: string;
let ticketId: string;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-checksum-");
  daemon = await startInProcess();
  caFile = (await testCerts()).caFile;
  image = tmp.file("disk.raw");
  await writeFile(image, "");
  await truncate(image, 9 * MiB + 4096);
  await writeFile(image, randomBytes(MiB), { flag: "r+" });
  ticketId = randomUUID();
  await addTicket(daemon, {
    uuid: ticketId,
    size: 9 * MiB + 4096,
    url: `file://${image}`,
    timeout: 300,
    ops: ["read"],
  });
  ticketUrl = `https://localhost:${daemon.remotePort}/images/${ticketId}`;
});
afterAll(async () => {
  await daemon?.stop();
  await tmp?.remove();
});

describe("imageio checksum", () => {
  it("12: prints a local image's checksum exactly as the daemon answers for the same image", async () => {
    for (const [algorithm, blockSize] of [
      ["blake2b", 4 * MiB],
      ["sha256", MiB],
    ] as const) {
      const local = await imageio("checksum", image, "--algorithm", algorithm, "--block-size", String(blockSize));
      expect(local.code, local.stderr).toBe(0);
      const daemonAnswer = await request(daemon, {
        path: `/images/${ticketId}/checksum?algorithm=${algorithm}&block_size=${blockSize}`,
      });
      expect(daemonAnswer.status).toBe(200);
      expect(local.stdout).toBe(daemonAnswer.text);
      const remote = await imageio(
        "checksum",
        ticketUrl,
        "--ca-file",
        caFile,
        "--algorithm",
        algorithm,
        "--block-size",
        String(blockSize),
      );
      expect(remote.code, remote.stderr).toBe(0);
      expect(remote.stdout).toBe(daemonAnswer.text);
    }
  });

  it("12: the spec's test vector: 4 MiB of zeros then 1 MiB of 0xff", async () => {
    const vector = tmp.file("vector.raw");
    await writeFile(vector, Buffer.concat([Buffer.alloc(4 * MiB), Buffer.alloc(MiB, 0xff)]));
    const result = await imageio("checksum", vector);
    expect(JSON.parse(result.stdout)).toEqual({
      algorithm: "blake2b",
      block_size: 4 * MiB,
      checksum: "c399ccc0123e72534d3ae086cbdd3c2298099f8e3beb0b06995b669b0d48e338",
    });
  });

  it("12: hashes a qcow2 image's guest data (as the raw disk's), or its container bytes with --format raw", async () => {
    const qcow2 = tmp.file("disk.qcow2");
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", image, qcow2]);
    const guest = await imageio("checksum", qcow2);
    expect(guest.code, guest.stderr).toBe(0);
    // The daemon's ticket serves the raw disk the qcow2 was made from.
    const daemonAnswer = await request(daemon, { path: `/images/${ticketId}/checksum` });
    expect(daemonAnswer.status).toBe(200);
    expect(guest.stdout).toBe(daemonAnswer.text);
    const container = await imageio("checksum", qcow2, "--format", "raw");
    expect(container.code).toBe(0);
    expect(container.stdout).not.toBe(daemonAnswer.text);
  });

  it("12: bad algorithm or block size is exit 2 with the daemon's wording; a missing ticket is exit 1", async () => {
    const algorithm = await imageio("checksum", image, "--algorithm", "md4");
    expect(algorithm.code).toBe(2);
    expect(algorithm.stderr).toMatch(/Unsupported value 'md4' for 'algorithm'/);
    const blockSize = await imageio("checksum", image, "--block-size", "5000");
    expect(blockSize.code).toBe(2);
    expect(blockSize.stderr).toMatch(/Block size out of allowed range/);
    const id = randomUUID();
    const missing = await imageio(
      "checksum",
      `https://localhost:${daemon.remotePort}/images/${id}`,
      "--ca-file",
      caFile,
    );
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/403 Forbidden/);
    expect(missing.stderr).not.toContain(id);
  });
});
