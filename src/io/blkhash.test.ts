import { createHash, randomBytes } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import fc from "fast-check";
import { createBLAKE2b } from "hash-wasm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { MiB, TiB } from "../units.js";
import type { Backend } from "./backend.js";
import { blkhash, checksumAlgorithms, validateChecksumParams } from "./blkhash.js";
import { MemoryBackend } from "./memory.js";
import { openBackend } from "./open.js";

let tmp: TempDir;
beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

const memory = (data: Buffer) => MemoryBackend.create({ data });

/** The algorithm written out plainly (read everything, no extents), to compare against. */
async function naiveBlkhash(data: Buffer, blockSize: number, hash: (data: Uint8Array) => Promise<Buffer>) {
  const digests: Buffer[] = [];
  for (let start = 0; start < data.length; start += blockSize) {
    digests.push(await hash(data.subarray(start, start + blockSize)));
  }
  return (await hash(Buffer.concat(digests))).toString("hex");
}

async function blake2b256(data: Uint8Array): Promise<Buffer> {
  const hasher = await createBLAKE2b(256);
  hasher.update(data);
  return Buffer.from(hasher.digest("binary"));
}

describe("blkhash", () => {
  it("matches the spec's test vectors (§5.8)", async () => {
    const ff = Buffer.concat([Buffer.alloc(4 * MiB), Buffer.alloc(MiB, 0xff)]);
    expect((await blkhash(memory(Buffer.alloc(0)))).checksum).toBe(
      "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8",
    );
    expect((await blkhash(memory(Buffer.alloc(MiB)))).checksum).toBe(
      "17836e1ad3e6b310afd84ca98acc7db488700832a2ba565d060ae2ef49b0e8f3",
    );
    expect(await blkhash(memory(ff))).toEqual({
      algorithm: "blake2b",
      block_size: 4 * MiB,
      checksum: "c399ccc0123e72534d3ae086cbdd3c2298099f8e3beb0b06995b669b0d48e338",
    });
    const a = Buffer.alloc(3 * MiB + 1, "a");
    expect((await blkhash(memory(a), { algorithm: "sha256", blockSize: MiB })).checksum).toBe(
      "9c8f5172f149daaf521bf7affba43e9eae95fa1887267336a7a5c5d9daea0c80",
    );
  });

  it("lists algorithms in hashlib spelling, never shake, and every listed one works", async () => {
    expect(checksumAlgorithms).toEqual([...checksumAlgorithms].sort());
    for (const required of ["blake2b", "blake2s", "md5", "sha1", "sha256", "sha512_256", "sha3_256"]) {
      expect(checksumAlgorithms).toContain(required);
    }
    expect(checksumAlgorithms.some((name) => name.startsWith("shake"))).toBe(false);
    const data = randomBytes(MiB + 17);
    const seen = new Set<string>();
    for (const algorithm of checksumAlgorithms) {
      const { checksum } = await blkhash(memory(data), { algorithm, blockSize: MiB });
      expect(checksum).toMatch(/^[0-9a-f]+$/);
      seen.add(checksum);
    }
    expect(seen.size).toBe(checksumAlgorithms.length);
  });

  it("uses a 32-byte digest for blake2b and blake2s, as the reference client does", async () => {
    expect((await blkhash(memory(Buffer.from("x")), { algorithm: "blake2b" })).checksum).toHaveLength(64);
    const sha256 = (d: Uint8Array) => Promise.resolve(createHash("blake2s256").update(d).digest());
    const data = randomBytes(2 * MiB + 5);
    expect((await blkhash(memory(data), { algorithm: "blake2s", blockSize: MiB })).checksum).toBe(
      await naiveBlkhash(data, MiB, sha256),
    );
  });

  it("equals the plain algorithm on images mixing data, zero blocks and a short last block", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ zero: fc.boolean(), length: fc.integer({ min: 1, max: 700_000 }) }), { maxLength: 8 }),
        async (runs) => {
          const data = Buffer.concat(
            runs.map((run) => (run.zero ? Buffer.alloc(run.length) : randomBytes(run.length))),
          );
          expect((await blkhash(memory(data), { blockSize: MiB })).checksum).toBe(
            await naiveBlkhash(data, MiB, blake2b256),
          );
        },
      ),
      { numRuns: 25 },
    );
  });

  it("hashes a sparse file from its extents: same result as memory, zero ranges not read", async () => {
    const path = tmp.file("sparse.raw");
    await writeFile(path, "");
    await truncate(path, 9 * MiB + 4097);
    const handle = await open(path, "r+");
    const data = randomBytes(MiB + 3);
    await handle.write(data, 0, data.length, 5 * MiB - 7);
    await handle.close();
    const file = await openBackend(`file://${path}`);
    const reads: number[] = [];
    const read = file.read.bind(file);
    file.read = (buf: Buffer, offset: number) => {
      reads.push(offset);
      return read(buf, offset);
    };
    try {
      const image = Buffer.alloc(9 * MiB + 4097);
      data.copy(image, 5 * MiB - 7);
      const expected = await naiveBlkhash(image, 4 * MiB, blake2b256);
      expect((await blkhash(file)).checksum).toBe(expected);
      // Only the blocks holding data were read: [4 MiB, 8 MiB).
      expect(reads).toEqual([4 * MiB]);
    } finally {
      await file.close();
    }
  });

  it("hashes an empty sparse 1 TiB file without reading it", async () => {
    const path = tmp.file("huge.raw");
    await writeFile(path, "");
    await truncate(path, TiB);
    const file: Backend = await openBackend(`file://${path}`);
    file.read = () => Promise.reject(new Error("a zero extent was read"));
    try {
      const zeroBlock = await blake2b256(Buffer.alloc(4 * MiB));
      const outer = await createBLAKE2b(256);
      const blocks = TiB / (4 * MiB);
      const batch = Buffer.concat(Array.from({ length: 1024 }, () => zeroBlock));
      for (let i = 0; i < blocks / 1024; i++) outer.update(batch);
      const progress: number[] = [];
      const result = await blkhash(file, { onProgress: (bytes) => progress.push(bytes) });
      expect(result.checksum).toBe(Buffer.from(outer.digest("binary")).toString("hex"));
      expect(progress[progress.length - 1]).toBe(TiB);
    } finally {
      await file.close();
    }
  });

  it("9.9: hashes on worker threads: every block read is moved to a hash thread, not copied, and the result is unchanged", async () => {
    const data = randomBytes(24 * MiB + 11);
    const backend = memory(data);
    const readInto: Buffer[] = [];
    const read = backend.read.bind(backend);
    backend.read = (buf: Buffer, offset: number) => {
      readInto.push(buf);
      return read(buf, offset);
    };
    expect((await blkhash(backend, { blockSize: MiB })).checksum).toBe(await naiveBlkhash(data, MiB, blake2b256));
    expect(readInto).toHaveLength(25);
    // A moved ArrayBuffer is detached on this side: its views here read as empty.
    for (const buf of readInto) expect(buf.length).toBe(0);
  });

  it("stops when its signal aborts", async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(blkhash(memory(randomBytes(MiB)), { signal: controller.signal })).rejects.toMatchObject({
      code: "IMAGEIO_ERR_CANCELLED",
    });
  });

  it("rejects bad algorithms and block sizes with the spec's messages", () => {
    expect(() => validateChecksumParams("shake_128", 4 * MiB)).toThrow(
      /^Unsupported value 'shake_128' for 'algorithm', expecting one of \['blake2b', 'blake2s', /,
    );
    expect(() => validateChecksumParams("sha1", 512 * 1024)).toThrow(
      "Block size out of allowed range: 1048576-16777216",
    );
    expect(() => validateChecksumParams("sha1", 17 * MiB)).toThrow("Block size out of allowed range: 1048576-16777216");
    expect(() => validateChecksumParams("sha1", MiB + 512)).toThrow("Block size is not aligned to 4096");
  });
});
