import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MemoryBackend } from "./memory.js";
import type { ByteSink, ByteSource } from "./stdio.js";
import { copyFromSource, copyToSink } from "./stream-copy.js";

/** An image of runs: data (random) or zeros, lengths in bytes. */
function imageOf(runs: [boolean, number][]): Buffer {
  return Buffer.concat(runs.map(([data, length]) => (data ? randomBytes(length) : Buffer.alloc(length))));
}

/** A source that hands out `data` in pieces of the given sizes, like a pipe. */
function pieces(data: Buffer, sizes: number[]): ByteSource {
  let at = 0;
  let turn = 0;
  return {
    read: async (buf) => {
      let done = 0;
      while (done < buf.length && at < data.length) {
        const size = Math.min(sizes[turn++ % sizes.length] ?? 1, buf.length - done, data.length - at);
        data.copy(buf, done, at, at + size);
        at += size;
        done += size;
      }
      return done;
    },
    close: async () => undefined,
  };
}

function collector(): ByteSink & { data(): Buffer } {
  const chunks: Buffer[] = [];
  return {
    // Copied: the writer may reuse its buffer once write() resolves.
    write: async (buf) => {
      chunks.push(Buffer.from(buf));
    },
    close: async () => undefined,
    data: () => Buffer.concat(chunks),
  };
}

const layouts = fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 40_000 })), { minLength: 0, maxLength: 12 });

describe("copies to and from byte streams", () => {
  it("12: an image written to a stream is its bytes in order, whatever its layout and workers", async () => {
    await fc.assert(
      fc.asyncProperty(layouts, fc.integer({ min: 1, max: 4 }), async (runs, workers) => {
        const image = imageOf(runs);
        const src = await MemoryBackend.create({ data: image, readonly: true });
        const sink = collector();
        const result = await copyToSink(src, sink, { workers, bufferSize: 8192 });
        expect(sink.data().equals(image)).toBe(true);
        expect(result.size).toBe(image.length);
        expect(result.dataBytes + result.zeroedBytes).toBe(image.length);
      }),
      { numRuns: 60 },
    );
  });

  it("12: a stream written to an image gives exactly its bytes and size, zeroing runs of zero blocks", async () => {
    await fc.assert(
      fc.asyncProperty(
        layouts,
        fc.array(fc.integer({ min: 1, max: 20_000 }), { minLength: 1, maxLength: 5 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 50_000 }),
        async (runs, sizes, targetIsZero, oldSize) => {
          const image = imageOf(runs);
          // An existing destination with other bytes, larger or smaller: it ends as the input.
          const dst = await MemoryBackend.create({ data: targetIsZero ? Buffer.alloc(0) : randomBytes(oldSize) });
          const result = await copyFromSource(pieces(image, sizes), dst, {
            bufferSize: 8192,
            targetIsZero,
            workers: 3,
          });
          expect(result.size).toBe(image.length);
          expect(await dst.size()).toBe(image.length);
          const out = Buffer.alloc(image.length);
          await dst.read(out, 0);
          expect(out.equals(image)).toBe(true);
          expect(result.dataBytes + result.zeroedBytes + result.skippedBytes).toBe(image.length);
        },
      ),
      { numRuns: 80 },
    );
  });

  it("12: an aborted stream copy writes what it read, flushes, and says how far it got", async () => {
    const image = randomBytes(64 * 1024);
    const dst = await MemoryBackend.create({});
    const controller = new AbortController();
    const source = pieces(image, [4096]);
    const slow: ByteSource = {
      read: async (buf) => {
        const got = await source.read(buf);
        controller.abort();
        return got;
      },
      close: async () => undefined,
    };
    const error = await copyFromSource(slow, dst, { bufferSize: 8192, signal: controller.signal }).catch((e) => e);
    expect((error as Error).name).toBe("CopyCancelledError");
    expect((error as { copiedUpTo: number }).copiedUpTo).toBe(8192);
    const out = Buffer.alloc(8192);
    await dst.read(out, 0);
    expect(out.equals(image.subarray(0, 8192))).toBe(true);
  });
});
