import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MiB } from "../units.js";
import { AlignedBackend } from "./aligned.js";
import type { Backend, ByteRange, Capabilities, DirtyExtent, ZeroExtent, ZeroOptions } from "./backend.js";
import { blkhash } from "./blkhash.js";
import { type CopyOptions, type CopyProgress, copy, verifyCopy } from "./copy.js";
import { MemoryBackend } from "./memory.js";

interface Call {
  op: "read" | "write" | "zero" | "flush" | "resize" | "clone" | "close";
  offset: number;
  length: number;
  punchHole?: boolean;
}

interface Hooks {
  /** Runs before each read, write or zero; may delay it or throw. */
  before?: (call: Call) => Promise<void> | void;
  /** Changes the bytes a write stores (to inject corruption). */
  mangle?: (buf: Buffer, offset: number) => Buffer;
}

interface SpySettings {
  caps?: Partial<Capabilities>;
  growable?: boolean;
  readonly?: boolean;
  /** Zero extents to report instead of the memory backend's. */
  extents?: ZeroExtent[];
}

/**
 * A memory backend that records what is done to it: one log and one set of hooks shared by
 * all its clones, so tests see the workers' calls.
 */
class SpyBackend implements Backend {
  readonly name = "spy";
  readonly blockSize = 1;
  readonly directIo = false;
  readonly readonly: boolean;
  readonly caps: Capabilities;
  readonly growable: boolean;

  constructor(
    readonly inner: MemoryBackend,
    readonly log: Call[],
    readonly hooks: Hooks,
    settings: SpySettings = {},
  ) {
    this.caps = { ...inner.caps, ...settings.caps };
    this.growable = settings.growable ?? true;
    this.readonly = settings.readonly ?? false;
    this.settings = settings;
  }

  private readonly settings: SpySettings;

  static create(data: Buffer, settings?: SpySettings, hooks: Hooks = {}): SpyBackend {
    return new SpyBackend(MemoryBackend.create({ data }), [], hooks, settings);
  }

  calls(op: Call["op"]): Call[] {
    return this.log.filter((call) => call.op === op);
  }

  contents(): Buffer {
    return this.inner.contents();
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    await this.record({ op: "read", offset, length: buf.length });
    return this.inner.read(buf, offset);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    await this.record({ op: "write", offset, length: buf.length });
    await this.inner.write(this.hooks.mangle?.(Buffer.from(buf), offset) ?? buf, offset);
  }

  async zero(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    await this.record({ op: "zero", offset, length, punchHole: options.punchHole ?? false });
    await this.inner.zero(offset, length);
  }

  async flush(): Promise<void> {
    this.log.push({ op: "flush", offset: 0, length: 0 });
  }

  async resize(size: number): Promise<void> {
    this.log.push({ op: "resize", offset: size, length: 0 });
    await this.inner.resize(size);
  }

  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    if (context === "dirty") return this.inner.extents("dirty", range);
    return this.settings.extents === undefined ? this.inner.extents("zero", range) : toAsync(this.settings.extents);
  }

  async clone(): Promise<SpyBackend> {
    this.log.push({ op: "clone", offset: 0, length: 0 });
    return new SpyBackend(await this.inner.clone(), this.log, this.hooks, this.settings);
  }

  async close(): Promise<void> {
    this.log.push({ op: "close", offset: 0, length: 0 });
  }

  private async record(call: Call): Promise<void> {
    this.log.push(call);
    await this.hooks.before?.(call);
  }
}

async function* toAsync<T>(items: T[]): AsyncGenerator<T> {
  yield* items;
}

/** An image of `size` bytes: random data in `data` ranges, zeros elsewhere. */
function image(size: number, data: [number, number][]): Buffer {
  const buf = Buffer.alloc(size);
  for (const [start, end] of data) randomBytes(end - start).copy(buf, start);
  return buf;
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 1));
const overlaps = (call: Call, start: number, end: number) => call.offset < end && call.offset + call.length > start;

describe("copy", () => {
  it("copies data and zero ranges of an unaligned image into an empty destination", async () => {
    const size = 3 * MiB + 513;
    const data = image(size, [
      [0, 100_000],
      [MiB + 4096, 2 * MiB],
      [3 * MiB + 1, size],
    ]);
    const src = SpyBackend.create(data);
    const dst = SpyBackend.create(Buffer.alloc(0));
    const result = await copy(src, dst, { bufferSize: 256 * 1024 });
    expect(dst.contents().equals(data)).toBe(true);
    expect(result.size).toBe(size);
    expect(result.dataBytes + result.zeroedBytes + result.skippedBytes).toBe(size);
    expect(dst.calls("flush")).toHaveLength(1);
  });

  it("never reads zero extents and never writes data that is all zeros", async () => {
    const size = 8 * MiB;
    const data = image(size, [
      [MiB, 2 * MiB],
      [5 * MiB, 5 * MiB + 8192],
    ]);
    const src = SpyBackend.create(data);
    const dst = SpyBackend.create(Buffer.alloc(size, 0xff));
    const result = await copy(src, dst, { bufferSize: MiB });
    expect(dst.contents().equals(data)).toBe(true);
    expect(result.dataBytes).toBe(MiB + 8192);
    expect(src.calls("read").reduce((sum, call) => sum + call.length, 0)).toBe(MiB + 8192);
    for (const call of dst.calls("write")) expect(overlaps(call, 2 * MiB, 5 * MiB)).toBe(false);
    // Zeroing deallocates by default (a sparse copy).
    expect(dst.calls("zero").every((call) => call.punchHole)).toBe(true);
  });

  it("zeroes allocated when sparse is off, and leaves zero ranges alone on a zero target", async () => {
    const size = 4 * MiB;
    const data = image(size, [[MiB, MiB + 4096]]);
    const preallocated = SpyBackend.create(Buffer.alloc(size, 1));
    await copy(SpyBackend.create(data), preallocated, { sparse: false });
    expect(preallocated.contents().equals(data)).toBe(true);
    expect(preallocated.calls("zero").length).toBeGreaterThan(0);
    expect(preallocated.calls("zero").every((call) => call.punchHole === false)).toBe(true);

    const zeroTarget = SpyBackend.create(Buffer.alloc(0));
    const result = await copy(SpyBackend.create(data), zeroTarget, { targetIsZero: true });
    expect(zeroTarget.contents().equals(data)).toBe(true);
    expect(zeroTarget.calls("zero")).toHaveLength(0);
    expect(zeroTarget.calls("write").map((call) => [call.offset, call.length])).toEqual([[MiB, 4096]]);
    expect(result).toMatchObject({ dataBytes: 4096, zeroedBytes: 0, skippedBytes: size - 4096 });
  });

  it("zeroes 4 KiB runs of zeros found in data extents, and writes them with detectZeroes off", async () => {
    const size = 2 * MiB;
    // Data everywhere but a zero run from 64 KiB to 128 KiB and one zero block at 1 MiB.
    const data = Buffer.alloc(size, 7);
    data.fill(0, 64 * 1024, 128 * 1024);
    data.fill(0, MiB, MiB + 4096);
    // A source without extents (like a block device) reports everything as data.
    const open = () => SpyBackend.create(data, { caps: { extents: false } });

    const detecting = SpyBackend.create(Buffer.alloc(0));
    const result = await copy(open(), detecting, { workers: 1 });
    expect(detecting.contents().equals(data)).toBe(true);
    expect(detecting.calls("zero").map((call) => [call.offset, call.length])).toEqual([
      [64 * 1024, 64 * 1024],
      [MiB, 4096],
    ]);
    expect(result.zeroedBytes).toBe(64 * 1024 + 4096);

    const plain = SpyBackend.create(Buffer.alloc(0));
    await copy(open(), plain, { workers: 1, detectZeroes: false });
    expect(plain.contents().equals(data)).toBe(true);
    expect(plain.calls("zero")).toHaveLength(0);
    expect(plain.calls("write").map((call) => [call.offset, call.length])).toEqual([[0, size]]);
  });

  it("writes zeros as data to a destination without efficient zeroing", async () => {
    const data = Buffer.alloc(MiB, 3);
    data.fill(0, 4096, 3 * 4096);
    const dst = SpyBackend.create(Buffer.alloc(0), { caps: { zero: false } });
    await copy(SpyBackend.create(data, { caps: { extents: false } }), dst, { workers: 1 });
    expect(dst.contents().equals(data)).toBe(true);
    expect(dst.calls("zero")).toHaveLength(0);
  });

  it("runs the requested number of workers at once, each on its own handles", async () => {
    const size = 16 * MiB + 1000;
    const data = image(size, [[0, size]]);
    let inFlight = 0;
    let most = 0;
    const hooks: Hooks = {
      before: async () => {
        inFlight++;
        most = Math.max(most, inFlight);
        await tick();
        inFlight--;
      },
    };
    const src = SpyBackend.create(data, {}, hooks);
    const dst = SpyBackend.create(Buffer.alloc(0), {}, hooks);
    const result = await copy(src, dst, { workers: 3, bufferSize: MiB, detectZeroes: false });
    expect(dst.contents().equals(data)).toBe(true);
    expect(result.workers).toBe(3);
    expect(most).toBe(3);
    expect(src.calls("clone")).toHaveLength(3);
    expect(dst.calls("clone")).toHaveLength(3);
    // Every clone is closed again.
    expect(src.calls("close")).toHaveLength(3);
    expect(dst.calls("close")).toHaveLength(3);
    // Reads are buffer-sized and aligned to multiples of the buffer size.
    for (const call of src.calls("read")) {
      expect(call.offset % MiB).toBe(0);
      expect(call.length).toBeLessThanOrEqual(MiB);
    }
  });

  it("never has two workers on one 4 KiB block, so unaligned extents survive read-modify-write", async () => {
    const size = 64 * 1024 + 100;
    const data = image(size, [
      [0, 1000],
      [5000, 9000],
      [9001, 12_000],
      [20_000, 20_001],
      [40_000, size],
    ]);
    // Extents that split blocks at odd offsets, as a remote server might report them.
    const cuts = [0, 1000, 5000, 9000, 9001, 12_000, 20_000, 20_001, 40_000, size];
    const src = SpyBackend.create(data, {
      extents: cuts.slice(1).map((end, i) => ({
        start: cuts[i] ?? 0,
        length: end - (cuts[i] ?? 0),
        zero: i % 2 === 1,
        hole: false,
      })),
    });
    // A destination with 4096-byte blocks whose I/O takes a while: two workers touching one
    // block would read-modify-write over each other.
    const slow = SpyBackend.create(Buffer.alloc(0), {}, { before: async () => void (await tick()) });
    for (let round = 0; round < 5; round++) {
      await copy(src, new AlignedBackend(slow, 4096), { workers: 4, bufferSize: 4096, detectZeroes: false });
      expect(slow.contents().equals(data)).toBe(true);
      await slow.resize(0);
    }
  });

  it("uses no more workers than a fixed-size destination allows", async () => {
    const size = 4 * MiB;
    const dst = SpyBackend.create(Buffer.alloc(size), { growable: false, caps: { maxWriters: 2 } });
    const result = await copy(SpyBackend.create(image(size, [[0, size]])), dst, { workers: 8 });
    expect(result.workers).toBe(2);
  });

  it("gives a growable destination the source's size", async () => {
    const data = image(MiB + 5, [[0, MiB + 5]]);
    const bigger = SpyBackend.create(Buffer.alloc(3 * MiB, 9));
    await copy(SpyBackend.create(data), bigger);
    expect(bigger.contents().equals(data)).toBe(true);
  });

  it("leaves the rest of a larger fixed-size destination alone", async () => {
    const data = image(MiB + 5, [[0, MiB + 5]]);
    const device = SpyBackend.create(Buffer.alloc(2 * MiB, 9), { growable: false });
    await copy(SpyBackend.create(data), device);
    const contents = device.contents();
    expect(contents.length).toBe(2 * MiB);
    expect(contents.subarray(0, MiB + 5).equals(data)).toBe(true);
    expect(contents.subarray(MiB + 5).every((byte) => byte === 9)).toBe(true);
  });

  it("refuses a fixed-size destination smaller than the source and writes nothing", async () => {
    const device = SpyBackend.create(Buffer.alloc(MiB, 9), { growable: false });
    await expect(
      copy(SpyBackend.create(Buffer.alloc(MiB + 512, 1)), device, { srcName: "'a.raw'", dstName: "'/dev/loop9'" }),
    ).rejects.toMatchObject({
      code: "IMAGEIO_ERR_OUT_OF_RANGE",
      message: "'/dev/loop9' is too small: it holds 1048576 bytes (1.00 MiB), 'a.raw' needs 1049088 bytes (1.00 MiB)",
    });
    expect(device.calls("write")).toHaveLength(0);
    expect(device.contents().every((byte) => byte === 9)).toBe(true);
  });

  it("refuses a read-only destination", async () => {
    const dst = SpyBackend.create(Buffer.alloc(0), { readonly: true });
    await expect(copy(SpyBackend.create(Buffer.alloc(4096, 1)), dst)).rejects.toMatchObject({
      code: "IMAGEIO_ERR_NOT_SUPPORTED",
    });
  });

  it("copies an empty image", async () => {
    const progress: CopyProgress[] = [];
    const dst = SpyBackend.create(Buffer.alloc(4096, 1));
    const result = await copy(SpyBackend.create(Buffer.alloc(0)), dst, { onProgress: (p) => progress.push(p) });
    expect(result).toMatchObject({ size: 0, dataBytes: 0, zeroedBytes: 0, skippedBytes: 0 });
    expect(dst.contents().length).toBe(0);
    expect(progress).toEqual([{ phase: "copy", done: 0, total: 0 }]);
  });

  it("reports progress that grows to the image size", async () => {
    const size = 5 * MiB + 7;
    const progress: CopyProgress[] = [];
    await copy(SpyBackend.create(image(size, [[0, 2 * MiB]])), SpyBackend.create(Buffer.alloc(0)), {
      bufferSize: MiB,
      onProgress: (p) => progress.push(p),
    });
    expect(progress[0]).toEqual({ phase: "copy", done: 0, total: size });
    for (let i = 1; i < progress.length; i++) {
      expect(progress[i]?.done).toBeGreaterThan(progress[i - 1]?.done ?? 0);
    }
    expect(progress.at(-1)).toEqual({ phase: "copy", done: size, total: size });
  });

  it("rejects invalid worker counts and buffer sizes before touching anything", async () => {
    const bad: CopyOptions[] = [
      { workers: 0 },
      { workers: 65 },
      { workers: 1.5 },
      { bufferSize: 1000 },
      { bufferSize: 0 },
    ];
    for (const options of bad) {
      const dst = SpyBackend.create(Buffer.alloc(0));
      await expect(copy(SpyBackend.create(Buffer.alloc(4096, 1)), dst, options)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_INVALID_ARGUMENT",
      });
      expect(dst.log).toHaveLength(0);
    }
  });

  it("stops all workers at the first error and rethrows it", async () => {
    const size = 32 * MiB;
    const failure = Object.assign(new Error("Cannot write at offset 4194304: EIO"), { code: "EIO" });
    const dst = SpyBackend.create(
      Buffer.alloc(0),
      {},
      {
        before: async (call) => {
          await tick();
          if (call.op === "write" && call.offset === 4 * MiB) throw failure;
        },
      },
    );
    await expect(copy(SpyBackend.create(image(size, [[0, size]])), dst, { bufferSize: MiB, workers: 2 })).rejects.toBe(
      failure,
    );
    // The other worker finished its chunk and took no new one; nothing was flushed.
    expect(dst.calls("write").length).toBeLessThan(8);
    expect(dst.calls("flush")).toHaveLength(0);
    expect(dst.calls("close")).toHaveLength(2);
  });

  it("fails when the source is shorter than its size", async () => {
    const src = SpyBackend.create(image(2 * MiB, [[0, 2 * MiB]]));
    // It claims 3 MiB; its handles find only 2.
    src.size = async () => 3 * MiB;
    await expect(copy(src, SpyBackend.create(Buffer.alloc(0)), { srcName: "'a.raw'" })).rejects.toMatchObject({
      code: "IMAGEIO_ERR_OUT_OF_RANGE",
      message: "'a.raw' ended early: read 2097152 of 3145728 bytes at offset 0 (did it shrink during the copy?)",
    });
  });

  it("on abort, finishes the chunks in flight, flushes, and says how far it got", async () => {
    const size = 16 * MiB;
    const data = image(size, [[0, size]]);
    const controller = new AbortController();
    const dst = SpyBackend.create(Buffer.alloc(0), {}, { before: async () => void (await tick()) });
    const copying = copy(SpyBackend.create(data), dst, {
      bufferSize: MiB,
      workers: 2,
      signal: controller.signal,
      onProgress: ({ done }) => {
        if (done >= 3 * MiB) controller.abort();
      },
    });
    const error = await copying.then(
      () => expect.unreachable("the copy was not interrupted"),
      (e: unknown) => e as { code: string; done: number; total: number; copiedUpTo: number; message: string },
    );
    expect(error.code).toBe("IMAGEIO_ERR_CANCELLED");
    expect(error.total).toBe(size);
    expect(error.done).toBeGreaterThanOrEqual(3 * MiB);
    expect(error.done).toBeLessThan(size);
    expect(error.copiedUpTo).toBeGreaterThanOrEqual(3 * MiB);
    expect(error.message).toMatch(/^Copy interrupted after \d+\.\d\d MiB of 16\.00 MiB \(\d+(\.\d)?%\)/);
    const copied = dst.contents().subarray(0, error.copiedUpTo);
    expect(copied.equals(data.subarray(0, error.copiedUpTo))).toBe(true);
    expect(dst.calls("flush")).toHaveLength(1);
  });

  it("does nothing but flush when aborted before it starts", async () => {
    const dst = SpyBackend.create(Buffer.alloc(0));
    await expect(
      copy(SpyBackend.create(Buffer.alloc(MiB, 1)), dst, { signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: "IMAGEIO_ERR_CANCELLED", done: 0, copiedUpTo: 0 });
    expect(dst.calls("write")).toHaveLength(0);
  });

  it("with verify, returns the shared checksum and reports the verify phase", async () => {
    const data = image(3 * MiB, [[0, MiB]]);
    const phases = new Set<string>();
    const result = await copy(SpyBackend.create(data), SpyBackend.create(Buffer.alloc(0)), {
      verify: true,
      onProgress: ({ phase }) => phases.add(phase),
    });
    expect(result.checksum).toEqual(await blkhash(MemoryBackend.create({ data })));
    expect([...phases]).toEqual(["copy", "verify"]);
  });

  it("says the copy is complete when interrupted while verifying", async () => {
    const controller = new AbortController();
    const dst = SpyBackend.create(Buffer.alloc(0));
    await expect(
      copy(SpyBackend.create(image(12 * MiB, [[0, 12 * MiB]])), dst, {
        verify: true,
        signal: controller.signal,
        onProgress: ({ phase }) => {
          if (phase === "verify") controller.abort();
        },
      }),
    ).rejects.toMatchObject({
      code: "IMAGEIO_ERR_CANCELLED",
      message: "Copy completed (12.00 MiB, flushed) but verification was interrupted",
      copiedUpTo: 12 * MiB,
    });
    expect(dst.calls("flush")).toHaveLength(1);
  });

  it("with verify, fails when one byte reached the destination corrupted", async () => {
    const data = image(3 * MiB, [[0, 3 * MiB]]);
    const corrupt = (buf: Buffer, offset: number) => {
      // Flip one byte at 2 MiB + 17 on its way to the destination.
      const at = 2 * MiB + 17 - offset;
      if (at >= 0 && at < buf.length) buf[at] = (buf[at] ?? 0) ^ 0x01;
      return buf;
    };
    const dst = SpyBackend.create(Buffer.alloc(0), {}, { mangle: corrupt });
    await expect(
      copy(SpyBackend.create(data), dst, { verify: true, srcName: "'a.raw'", dstName: "'b.raw'" }),
    ).rejects.toMatchObject({
      code: "IMAGEIO_ERR_VERIFY_FAILED",
      message: expect.stringMatching(/^Verification failed: 'b.raw' differs from 'a.raw' in the first 3145728 bytes/),
    });
    // Without verify the same corruption would have gone unnoticed.
    const unverified = SpyBackend.create(Buffer.alloc(0), {}, { mangle: corrupt });
    await copy(SpyBackend.create(data), unverified);
    expect(unverified.contents().equals(data)).toBe(false);
  });

  it("verifies only the copied part of a larger destination", async () => {
    const data = image(MiB, [[0, MiB]]);
    const larger = MemoryBackend.create({ data: Buffer.concat([data, Buffer.alloc(MiB, 5)]) });
    const src = MemoryBackend.create({ data });
    await expect(verifyCopy(src, larger, MiB)).resolves.toEqual(await blkhash(src));
    // Flip the first byte's low bit: always a different byte, whatever the random data holds.
    const different = MemoryBackend.create({ data: Buffer.concat([Buffer.of((data[0] ?? 0) ^ 1), data.subarray(1)]) });
    await expect(verifyCopy(src, different, MiB)).rejects.toMatchObject({ code: "IMAGEIO_ERR_VERIFY_FAILED" });
  });

  it("copies any layout of data and zeros exactly, with any options", async () => {
    const layout = fc.record({
      size: fc.integer({ min: 0, max: 300_000 }),
      runs: fc.array(fc.tuple(fc.nat(300_000), fc.integer({ min: 1, max: 40_000 })), { maxLength: 6 }),
      workers: fc.integer({ min: 1, max: 4 }),
      bufferKiB: fc.constantFrom(4, 8, 64),
      sparse: fc.boolean(),
      detectZeroes: fc.boolean(),
      extents: fc.boolean(),
      initialFill: fc.constantFrom(0, 0xaa),
      initialSize: fc.integer({ min: 0, max: 300_000 }),
    });
    await fc.assert(
      fc.asyncProperty(layout, async (t) => {
        const data = image(
          t.size,
          t.runs.map(([start, length]): [number, number] => [
            Math.min(start, t.size),
            Math.min(start + length, t.size),
          ]),
        );
        const src = SpyBackend.create(data, { caps: { extents: t.extents } });
        const dst = SpyBackend.create(Buffer.alloc(t.initialSize, t.initialFill));
        const result = await copy(src, dst, {
          workers: t.workers,
          bufferSize: t.bufferKiB * 1024,
          sparse: t.sparse,
          detectZeroes: t.detectZeroes,
        });
        expect(dst.contents().equals(data)).toBe(true);
        expect(result.dataBytes + result.zeroedBytes + result.skippedBytes).toBe(t.size);
      }),
      { numRuns: 60 },
    );
  });
});
