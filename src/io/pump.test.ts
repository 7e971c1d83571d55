import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { PassThrough, Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { type Filler, pump, relayByFilling } from "./pump.js";

/**
 * A sink that takes one chunk per event-loop turn, with a 16 KiB highWaterMark as sockets
 * have; it records the bytes and the most it ever held.
 */
function slowSink() {
  const received: Buffer[] = [];
  let most = 0;
  const sink = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      most = Math.max(most, sink.writableLength);
      received.push(Buffer.from(chunk));
      setImmediate(callback);
    },
  });
  return { sink, bytes: () => Buffer.concat(received), most: () => most };
}

/** A source holding `body` in 64 KiB chunks (as a unix socket delivers), counting its pauses. */
function countingSource(body: Buffer) {
  const source = new PassThrough({ highWaterMark: body.length });
  let pauses = 0;
  const pause = source.pause.bind(source);
  source.pause = () => {
    pauses++;
    return pause();
  };
  for (let at = 0; at < body.length; at += 65_536) source.write(body.subarray(at, at + 65_536));
  source.end();
  return { source, pauses: () => pauses };
}

async function relay(body: Buffer, highWaterMark: number | undefined) {
  const { sink, bytes, most } = slowSink();
  const { source, pauses } = countingSource(body);
  const result = await pump(source, sink, highWaterMark === undefined ? {} : { highWaterMark });
  sink.end();
  await once(sink, "finish");
  return { result, bytes: bytes(), most: most(), pauses: pauses() };
}

describe("pump", () => {
  it("14: with a 1 MiB highWaterMark the relay pauses about once per MiB instead of per 64 KiB chunk, every byte moved", async () => {
    const body = randomBytes(4 * 1024 * 1024);
    const plain = await relay(body, undefined);
    const roomy = await relay(body, 1024 * 1024);
    for (const run of [plain, roomy]) {
      expect(run.result).toEqual({ bytes: body.length, overflow: false });
      expect(run.bytes.equals(body)).toBe(true);
    }
    // 64 chunks, each more than the sink's 16 KiB: the plain relay pauses after every one.
    expect(plain.pauses).toBeGreaterThanOrEqual(60);
    expect(roomy.pauses).toBeLessThanOrEqual(8);
  });

  it("14: the sink never holds more than the highWaterMark and one chunk", async () => {
    const run = await relay(randomBytes(4 * 1024 * 1024), 1024 * 1024);
    expect(run.most).toBeGreaterThan(512 * 1024);
    expect(run.most).toBeLessThanOrEqual(1024 * 1024 + 65_536);
  });

  it("14: with coalesce, the 16 KiB chunks of one event-loop turn reach the sink in one write, every byte in order", async () => {
    const body = randomBytes(2 * 1024 * 1024);
    const relayed = async (coalesce: boolean) => {
      // 16 KiB chunks, as a TLS source emits one per record, many in one turn.
      const source = new PassThrough({ highWaterMark: body.length });
      for (let at = 0; at < body.length; at += 16_384) source.write(body.subarray(at, at + 16_384));
      source.end();
      const received: Buffer[] = [];
      let writes = 0;
      const sink = new Writable({
        highWaterMark: 16 * 1024,
        writev(chunks, callback) {
          writes++;
          for (const { chunk } of chunks) received.push(Buffer.from(chunk as Buffer));
          // Done at once, as a socket whose kernel buffer has room: each write is a system call.
          callback();
        },
      });
      const result = await pump(source, sink, { highWaterMark: 1024 * 1024, coalesce });
      sink.end();
      await once(sink, "finish");
      return { result, writes, bytes: Buffer.concat(received) };
    };
    const plain = await relayed(false);
    const coalesced = await relayed(true);
    for (const run of [plain, coalesced]) {
      expect(run.result).toEqual({ bytes: body.length, overflow: false });
      expect(run.bytes.equals(body)).toBe(true);
    }
    // 128 chunks: written one by one, against one batch per turn.
    expect(plain.writes).toBe(128);
    expect(coalesced.writes).toBeLessThanOrEqual(4);
  });
});

/**
 * A source that fills the caller's buffers from `body` in random pieces, one per event-loop
 * turn, as the images services' request bodies do; it fails with `failure` after `failAt` bytes.
 */
function fillingSource(body: Buffer, options: { failAt?: number; failure?: Error } = {}): Filler {
  let at = 0;
  return {
    async fill(dest: Buffer, signal?: AbortSignal): Promise<number> {
      let filled = 0;
      while (filled < dest.length && at < body.length) {
        await new Promise((resolve) => setImmediate(resolve));
        if (options.failAt !== undefined && at >= options.failAt) {
          if (filled > 0) return filled;
          throw options.failure ?? new Error("the sending side closed before the end of the data");
        }
        const count = Math.min(dest.length - filled, body.length - at, 1 + Math.floor(Math.random() * 40_000));
        body.copy(dest, filled, at, at + count);
        at += count;
        filled += count;
        if (signal?.aborted) break;
      }
      return filled;
    },
  };
}

describe("14: relayByFilling (proxied uploads from the images services' bodies)", () => {
  it("14: moves every byte in order through two pieces, reusing a piece only after the sink took it", async () => {
    for (const size of [1, 1000, 256 * 1024, 1024 * 1024 + 7]) {
      const body = randomBytes(size);
      const { sink, bytes } = slowSink();
      const progress: number[] = [];
      const result = await relayByFilling(fillingSource(body), sink, size, {
        pieceSize: 64 * 1024,
        onProgress: (done) => progress.push(done),
      });
      expect(result).toEqual({ bytes: size, overflow: false });
      expect(bytes().equals(body)).toBe(true);
      expect(progress.at(-1)).toBe(size);
    }
  });

  it("14: a source that ends early gives the bytes that came; one that fails rejects after writing them", async () => {
    const body = randomBytes(300_000);
    const short = slowSink();
    expect(await relayByFilling(fillingSource(body), short.sink, 400_000, { pieceSize: 64 * 1024 })).toEqual({
      bytes: 300_000,
      overflow: false,
    });
    const failing = slowSink();
    await expect(
      relayByFilling(fillingSource(body, { failAt: 100_000 }), failing.sink, 300_000, { pieceSize: 64 * 1024 }),
    ).rejects.toThrow(/closed before the end/);
  });

  it("14: a sink that closes, a cancel and a throwing onProgress each stop the relay", async () => {
    const body = randomBytes(2 * 1024 * 1024);
    // A sink that goes away with its first piece still unwritten (a remote that hung up).
    const closing = new Writable({
      write(_chunk: Buffer, _encoding, _callback) {
        setImmediate(() => closing.destroy());
      },
    });
    await expect(relayByFilling(fillingSource(body), closing, body.length, { pieceSize: 64 * 1024 })).rejects.toThrow(
      /receiving side closed|destroyed/,
    );

    const cancel = new AbortController();
    const cancelled = slowSink();
    const moved = await relayByFilling(fillingSource(body), cancelled.sink, body.length, {
      pieceSize: 64 * 1024,
      signal: cancel.signal,
      onProgress: (done) => {
        if (done > 100_000) cancel.abort();
      },
    });
    expect(moved.bytes).toBeLessThan(body.length);

    await expect(
      relayByFilling(fillingSource(body), slowSink().sink, body.length, {
        pieceSize: 64 * 1024,
        onProgress: () => {
          throw new Error("cancelled");
        },
      }),
    ).rejects.toThrow("cancelled");
  });
});
