import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { HttpError } from "../errors.js";
import { BodyReader, type Staged } from "./body.js";
import type { BodyFraming } from "./head.js";

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** Staged bytes fed by the test, in pieces, as a socket would deliver them. */
class Feed implements Staged {
  private data = Buffer.alloc(0);
  ended = false;
  bytes(): Buffer {
    return this.data;
  }
  stagedLength(): number {
    return this.data.length;
  }
  consume(count: number): void {
    this.data = this.data.subarray(count);
  }
  exhausted(): boolean {
    return this.ended && this.data.length === 0;
  }
  push(piece: Buffer): void {
    this.data = Buffer.concat([this.data, piece]);
  }
}

function chunked(body: Buffer, random: () => number): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0; at < body.length; ) {
    const size = Math.min(body.length - at, 1 + Math.floor(random() * 70_000));
    const extension = random() < 0.3 ? ";name=value" : "";
    parts.push(Buffer.from(`${size.toString(16)}${extension}\r\n`), body.subarray(at, at + size), Buffer.from("\r\n"));
    at += size;
  }
  parts.push(Buffer.from("0\r\nx-trailer: 1\r\n\r\n"));
  return Buffer.concat(parts);
}

/**
 * Reads a body framed by `framing` from `wire` (delivered in random pieces, sometimes straight
 * into the fill's buffer as a user-buffer socket does) with fills of random sizes.
 */
async function readAll(framing: BodyFraming, wire: Buffer, seed: number): Promise<{ body: Buffer; rest: Buffer }> {
  let state = seed;
  const random = () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
  const feed = new Feed();
  const reader = new BodyReader(
    framing,
    feed,
    () => undefined,
    () => undefined,
  );
  let sent = 0;
  const deliver = () => {
    if (sent >= wire.length) return;
    const size = Math.min(wire.length - sent, 1 + Math.floor(random() * 100_000));
    const region = reader.directRegion(size);
    if (region !== undefined && random() < 0.7) {
      wire.copy(region, 0, sent, sent + region.length);
      sent += region.length;
      reader.directRead(region.length);
    } else {
      feed.push(wire.subarray(sent, sent + size));
      sent += size;
      reader.wake();
    }
  };
  const received: Buffer[] = [];
  for (;;) {
    const dest = Buffer.alloc(1 + Math.floor(random() * 200_000));
    const filling = reader.fill(dest);
    let count: number | undefined;
    void filling.then((n) => {
      count = n;
    });
    while (count === undefined) {
      deliver();
      await Promise.resolve();
    }
    if (count === 0) break;
    received.push(dest.subarray(0, count));
  }
  return { body: Buffer.concat(received), rest: Buffer.from(feed.bytes()) };
}

describe("14: request bodies read by imageio's own framing", () => {
  it("14: Content-Length bodies arrive whole in any pieces and fills; the next request's bytes stay staged", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const body = randomBytes(300_000 + seed * 1000);
      const next = Buffer.from("GET /next HTTP/1.1\r\n\r\n");
      const { body: got, rest } = await readAll(
        { kind: "length", length: body.length },
        Buffer.concat([body, next]),
        seed,
      );
      expect(sha256(got)).toBe(sha256(body));
      expect(next.subarray(0, rest.length).equals(rest)).toBe(true);
    }
  });

  it("14: chunked bodies (extensions, trailers) decode to the same bytes in any pieces and fills", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const body = randomBytes(250_000 + seed * 777);
      let state = seed;
      const wire = chunked(body, () => {
        state = (state * 69069 + 1) % 2 ** 32;
        return state / 2 ** 32;
      });
      const { body: got, rest } = await readAll({ kind: "chunked" }, wire, seed);
      expect(sha256(got)).toBe(sha256(body));
      expect(rest.length).toBe(0);
    }
  });

  it("14: a bad chunk size is a 400 that closes; a body cut short resolves what arrived, then fails", async () => {
    const feed = new Feed();
    const reader = new BodyReader(
      { kind: "chunked" },
      feed,
      () => undefined,
      () => undefined,
    );
    feed.push(Buffer.from("zz\r\nabc"));
    const error = await reader.fill(Buffer.alloc(10)).catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(HttpError);
    expect((error as HttpError).status).toBe(400);
    expect((error as HttpError).close).toBe(true);

    const short = new Feed();
    let truncated = false;
    const cut = new BodyReader(
      { kind: "length", length: 10 },
      short,
      () => {
        truncated = true;
      },
      () => undefined,
    );
    short.push(Buffer.from("abcd"));
    short.ended = true;
    const dest = Buffer.alloc(10);
    expect(await cut.fill(dest)).toBe(4);
    expect(dest.subarray(0, 4).toString()).toBe("abcd");
    expect(truncated).toBe(true);
    await expect(cut.fill(dest)).rejects.toThrow("the sending side closed before the end of the data");
  });
});

describe("14.wire: the body as a stream", () => {
  it("14.wire: a body stream its relay abandoned fails quietly when the client leaves, never crashing the process", async () => {
    const feed = new Feed();
    const reader = new BodyReader(
      { kind: "length", length: 4 * 1024 * 1024 },
      feed,
      () => undefined,
      () => undefined,
    );
    const stream = reader.stream();
    // A relay starts reading, then gives up on the body (its remote answered first).
    const relay = (error: Error) => expect.unreachable(`the relay stopped listening: ${error.message}`);
    stream.on("error", relay);
    stream.resume();
    feed.push(Buffer.alloc(1000, 1));
    reader.wake();
    await new Promise((resolve) => setImmediate(resolve));
    stream.off("error", relay);
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    try {
      reader.fail(new Error("the sending side closed before the end of the data"));
      await new Promise((resolve) => stream.once("close", resolve));
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off("uncaughtException", onUncaught);
    }
    expect(uncaught).toEqual([]);
    expect(stream.destroyed).toBe(true);
    expect(stream.errored?.message).toMatch(/closed before the end/);
  });
});
