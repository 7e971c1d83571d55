import { randomBytes } from "node:crypto";
import { PassThrough, Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import type { Backend } from "./backend.js";
import { BackendFilter } from "./filter.js";
import { MemoryBackend } from "./memory.js";
import { allocAligned } from "./native.js";
import { readTo, writeFrom } from "./streaming.js";

const buffers = async () => [allocAligned(8192), allocAligned(8192)] as const;

/** Collects what a download sends. */
function collector() {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => chunks.push(Buffer.from(chunk)));
  let started = 0;
  return { sink: { start: () => started++, stream }, bytes: () => Buffer.concat(chunks), started: () => started };
}

/** A filter that overrides nothing: it must behave exactly as the backend below. */
class Passthrough extends BackendFilter {
  async clone(): Promise<Backend> {
    return new Passthrough(await this.inner.clone());
  }
}

describe("one data path", () => {
  it("9 data path: a backend with only the core members streams a range out through the buffers, byte-exact", async () => {
    const data = randomBytes(100_000);
    for (const backend of [MemoryBackend.create({ data }), new Passthrough(MemoryBackend.create({ data }))]) {
      const out = collector();
      const progress: number[] = [];
      await readTo(backend, 1234, 77_777, out.sink, { buffers, onProgress: (bytes) => progress.push(bytes) });
      await new Promise((resolve) => setImmediate(resolve));
      expect(out.bytes().equals(data.subarray(1234, 1234 + 77_777))).toBe(true);
      expect(out.started()).toBe(1);
      expect(progress.at(-1)).toBe(77_777);
    }
  });

  it("9 data path: an upload through the buffers writes the body at its offset and stops at the limit", async () => {
    const backend = MemoryBackend.create({ data: Buffer.alloc(50_000) });
    const body = randomBytes(30_000);
    const result = await writeFrom(backend, Readable.from([body.subarray(0, 7000), body.subarray(7000)]), 5, 30_000, {
      buffers,
      flush: true,
      limit: 40_000,
    });
    expect(result).toEqual({ bytes: 30_000, overflow: false, flushed: false });
    const back = Buffer.alloc(30_000);
    await backend.read(back, 5);
    expect(back.equals(body)).toBe(true);
    const over = await writeFrom(backend, Readable.from([randomBytes(20_000)]), 0, undefined, {
      buffers,
      flush: false,
      limit: 1000,
    });
    expect(over.overflow).toBe(true);
  });

  it("9.4: a source that fails mid-body has what arrived written before the error", async () => {
    const backend = MemoryBackend.create({ data: Buffer.alloc(20_000, 0x2e) });
    const source = new PassThrough();
    const upload = writeFrom(backend, source, 100, 10_000, { buffers, flush: false, limit: 10_000 });
    source.write(Buffer.alloc(3000, 0x61));
    await new Promise((resolve) => setImmediate(resolve));
    source.destroy(new Error("client went away"));
    await expect(upload).rejects.toThrow("client went away");
    const back = Buffer.alloc(3100);
    await backend.read(back, 0);
    expect(back.subarray(100).every((b) => b === 0x61)).toBe(true);
    expect(back.subarray(0, 100).every((b) => b === 0x2e)).toBe(true);
  });
});
