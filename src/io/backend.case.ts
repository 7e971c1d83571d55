/**
 * The conformance suite every backend runs (imported by each backend's test file). It checks
 * behaviour a user of the images API would notice: bytes, sizes, extents and errors. Parts a
 * backend declares unsupported in `caps` (or `growable`) are checked as clear refusals.
 */
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { MiB } from "../units.js";
import type { Backend, ZeroExtent } from "./backend.js";
import { allocAligned } from "./native.js";

export interface SuiteImage {
  backend: Backend;
}

export interface BackendFactory {
  /** Opens a new image holding exactly `initial` (its length is a multiple of 4096). */
  open(initial: Buffer, options?: { readonly?: boolean }): Promise<Backend>;
  /** Removes what open() created; called after each test. */
  cleanup?(): Promise<void>;
}

/** Image size used by the suite: not a power of two, a multiple of 4096. */
const SIZE = MiB + 3 * 4096;

async function readAll(backend: Backend): Promise<Buffer> {
  const size = await backend.size();
  const buf = Buffer.alloc(size);
  const got = await backend.read(buf, 0);
  expect(got).toBe(size);
  return buf;
}

async function collect(iterable: AsyncIterable<ZeroExtent>): Promise<ZeroExtent[]> {
  const list: ZeroExtent[] = [];
  for await (const extent of iterable) list.push(extent);
  return list;
}

export function runBackendSuite(name: string, factory: BackendFactory): void {
  describe(`backend suite: ${name}`, () => {
    const opened: Backend[] = [];
    const open = async (initial: Buffer, options?: { readonly?: boolean }) => {
      const backend = await factory.open(initial, options);
      opened.push(backend);
      return backend;
    };

    afterEach(async () => {
      for (const backend of opened.splice(0)) await backend.close();
      await factory.cleanup?.();
    });

    it("reports the image size and reads back its bytes", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial);
      expect(await backend.size()).toBe(SIZE);
      expect((await readAll(backend)).equals(initial)).toBe(true);
    });

    it("reads any offset and length, into plain and aligned buffers", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial);
      for (const [offset, length] of [
        [0, 1],
        [1, 511],
        [511, 2],
        [4095, 4098],
        [7, 300_001],
        [SIZE - 10, 10],
      ] as const) {
        const plain = Buffer.alloc(length);
        expect(await backend.read(plain, offset)).toBe(length);
        expect(plain.equals(initial.subarray(offset, offset + length))).toBe(true);
        // Memory aligned like the offset, so the aligned middle can go straight to the device.
        const aligned = allocAligned(length + 4096).subarray(offset % 4096, (offset % 4096) + length);
        expect(await backend.read(aligned, offset)).toBe(length);
        expect(aligned.equals(initial.subarray(offset, offset + length))).toBe(true);
      }
    });

    it("writes at unaligned offsets and changes nothing outside the written range", async () => {
      const model = randomBytes(SIZE);
      const backend = await open(model);
      for (const [offset, length] of [
        [1, 1],
        [513, 1000],
        [4096, 4096],
        [4095, 8194],
        [SIZE - 700, 700],
      ] as const) {
        const data = randomBytes(length);
        await backend.write(data, offset);
        data.copy(model, offset);
      }
      expect((await readAll(backend)).equals(model)).toBe(true);
    });

    it("zeroes unaligned ranges, with and without punching holes", async () => {
      const model = randomBytes(SIZE);
      const backend = await open(model);
      await backend.zero(100, 5000);
      model.fill(0, 100, 5100);
      await backend.zero(65536, 262144 + 3, { punchHole: true });
      model.fill(0, 65536, 65536 + 262144 + 3);
      await backend.zero(SIZE - 4096, 4096);
      model.fill(0, SIZE - 4096);
      expect((await readAll(backend)).equals(model)).toBe(true);
    });

    it("reports extents that cover the image in order, merged, with zero ranges reading as zeros", async () => {
      const model = randomBytes(SIZE);
      const backend = await open(model);
      await backend.zero(0, 256 * 1024, { punchHole: true });
      await backend.flush();
      model.fill(0, 0, 256 * 1024);
      const extents = await collect(backend.extents("zero"));
      let position = 0;
      for (const [i, extent] of extents.entries()) {
        expect(extent.start).toBe(position);
        expect(extent.length).toBeGreaterThan(0);
        const previous = extents[i - 1];
        if (previous) expect(previous.zero !== extent.zero || previous.hole !== extent.hole).toBe(true);
        if (extent.zero)
          expect(model.subarray(extent.start, extent.start + extent.length).every((b) => b === 0)).toBe(true);
        position += extent.length;
      }
      expect(position).toBe(SIZE);
      if (backend.caps.extents) {
        expect(extents[0]).toMatchObject({ start: 0, zero: true, hole: false });
        expect(extents[0]?.length).toBeGreaterThanOrEqual(256 * 1024);
      } else {
        expect(extents).toEqual([{ start: 0, length: SIZE, zero: false, hole: false }]);
      }
    });

    it("clips extents to a requested range", async () => {
      const backend = await open(randomBytes(SIZE));
      const extents = await collect(backend.extents("zero", { start: 5000, length: 10_000 }));
      expect(extents[0]?.start).toBe(5000);
      const last = extents[extents.length - 1];
      expect(last && last.start + last.length).toBe(15_000);
      const tail = await collect(backend.extents("zero", { start: SIZE - 1, length: 10 }));
      expect(tail.reduce((sum, e) => sum + e.length, 0)).toBe(1);
    });

    it("reports dirty extents covering the image when it supports them, and refuses them otherwise", async () => {
      const backend = await open(randomBytes(SIZE));
      if (!backend.caps.dirty) {
        expect(() => backend.extents("dirty")).toThrow(expect.objectContaining({ code: "IMAGEIO_ERR_NOT_SUPPORTED" }));
        return;
      }
      let position = 0;
      for await (const extent of backend.extents("dirty")) {
        expect(extent.start).toBe(position);
        expect(extent.length).toBeGreaterThan(0);
        expect(typeof extent.dirty).toBe("boolean");
        expect(typeof extent.zero).toBe("boolean");
        position += extent.length;
      }
      expect(position).toBe(SIZE);
    });

    it("rejects negative, fractional and huge offsets without writing", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial);
      const data = Buffer.alloc(10, 1);
      for (const offset of [-1, 1.5, Number.NaN, 2 ** 53]) {
        await expect(backend.write(data, offset)).rejects.toMatchObject({ code: "IMAGEIO_ERR_INVALID_ARGUMENT" });
        await expect(backend.read(data, offset)).rejects.toMatchObject({ code: "IMAGEIO_ERR_INVALID_ARGUMENT" });
        await expect(backend.zero(offset, 10)).rejects.toMatchObject({ code: "IMAGEIO_ERR_INVALID_ARGUMENT" });
      }
      await expect(backend.zero(0, -5)).rejects.toMatchObject({ code: "IMAGEIO_ERR_INVALID_ARGUMENT" });
      expect((await readAll(backend)).equals(initial)).toBe(true);
    });

    it("handles the end of the image: short reads or clear errors, growth only where it can grow", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial);
      const buf = Buffer.alloc(8192);
      if (backend.growable) {
        expect(await backend.read(buf, SIZE - 100)).toBe(100);
        expect(buf.subarray(0, 100).equals(initial.subarray(SIZE - 100))).toBe(true);
        expect(await backend.read(buf, SIZE + 5000)).toBe(0);
        const data = randomBytes(1001);
        await backend.write(data, SIZE + 10);
        expect(await backend.size()).toBe(SIZE + 1011);
        const all = await readAll(backend);
        expect(all.subarray(0, SIZE).equals(initial)).toBe(true);
        expect(all.subarray(SIZE, SIZE + 10).every((b) => b === 0)).toBe(true);
        expect(all.subarray(SIZE + 10).equals(data)).toBe(true);
        await backend.zero(SIZE + 1011, 3000);
        expect(await backend.size()).toBe(SIZE + 4011);
      } else {
        await expect(backend.read(buf, SIZE - 100)).rejects.toMatchObject({ code: "IMAGEIO_ERR_OUT_OF_RANGE" });
        const error = await backend.write(randomBytes(3 * MiB), 4096 + 1).catch((e: unknown) => e);
        expect(error).toMatchObject({ code: "IMAGEIO_ERR_OUT_OF_RANGE" });
        expect(String(error)).toContain(String(SIZE));
        await expect(backend.zero(SIZE - 4096, 8192)).rejects.toMatchObject({ code: "IMAGEIO_ERR_OUT_OF_RANGE" });
        expect(await backend.size()).toBe(SIZE);
        expect((await readAll(backend)).equals(initial)).toBe(true);
      }
    });

    it("resizes where it can grow, keeping the bytes below the new size", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial);
      if (!backend.growable) {
        await expect(backend.resize(SIZE + 4096)).rejects.toMatchObject({ code: "IMAGEIO_ERR_NOT_SUPPORTED" });
        await backend.resize(SIZE);
        return;
      }
      await backend.resize(5000);
      expect(await backend.size()).toBe(5000);
      await backend.resize(9000);
      const all = await readAll(backend);
      expect(all.subarray(0, 5000).equals(initial.subarray(0, 5000))).toBe(true);
      expect(all.subarray(5000).every((b) => b === 0)).toBe(true);
    });

    it("flushes, clones handles that see the same bytes, and closes idempotently", async () => {
      const backend = await open(randomBytes(SIZE));
      const clone = await backend.clone();
      opened.push(clone);
      const data = randomBytes(12_345);
      await clone.write(data, 777);
      await clone.flush();
      const check = Buffer.alloc(data.length);
      await backend.read(check, 777);
      expect(check.equals(data)).toBe(true);
      await clone.close();
      await clone.close();
      await expect(clone.read(check, 0)).rejects.toMatchObject({ code: "IMAGEIO_ERR_CLOSED" });
      expect(await backend.size()).toBe(SIZE);
    });

    it("opened read-only, refuses writes and zeroes and keeps the bytes", async () => {
      const initial = randomBytes(SIZE);
      const backend = await open(initial, { readonly: true });
      expect(backend.readonly).toBe(true);
      await expect(backend.write(Buffer.alloc(4096), 0)).rejects.toMatchObject({ code: "IMAGEIO_ERR_NOT_SUPPORTED" });
      await expect(backend.zero(0, 4096)).rejects.toMatchObject({ code: "IMAGEIO_ERR_NOT_SUPPORTED" });
      expect((await readAll(backend)).equals(initial)).toBe(true);
    });
  });
}
