import { describe, expect, it } from "vitest";
import { ChunkedFramingError } from "./chunked-framing.js";
import { ChunkedDecoder } from "./http-client/chunked.js";

/** Decodes `wire` fed in pieces of `piece` bytes; the body and how many bytes followed it. */
function decode(wire: string, piece: number): { body: string; after: number } {
  const decoder = new ChunkedDecoder();
  const bytes = Buffer.from(wire, "latin1");
  let body = "";
  let after = 0;
  for (let at = 0; at < bytes.length; at += piece) {
    const part = bytes.subarray(at, at + piece);
    if (decoder.done) {
      after += part.length;
      continue;
    }
    const used = decoder.feed(part, (data) => {
      body += data.toString("latin1");
    });
    after += part.length - used;
  }
  expect(decoder.done).toBe(true);
  return { body, after };
}

describe("14.left: one strict chunked decoder for both sides", () => {
  it("14.left: the relay client decodes extensions and trailers split at every byte, and tells where the body ends", () => {
    const wire = '7;ext=1\r\nYou are\r\n2;a=b\t;c="d e"\r\n n\r\n0\r\nX-T: 1\tz\r\nY:\r\n\r\nHTTP/1.1';
    for (let piece = 1; piece <= wire.length; piece++) {
      expect(decode(wire, piece), `pieces of ${piece}`).toEqual({ body: "You are n", after: 8 });
    }
  });

  it("14.left: the relay client refuses the framing the images services refuse", () => {
    for (const [wire, reason] of [
      ["5  \r\nhello\r\n0\r\n\r\n", "invalid chunk size line"],
      ["4;a\x00\r\nAAAA\r\n0\r\n\r\n", "control character"],
      ["4;a\nb\r\nAAAA\r\n0\r\n\r\n", "control character"],
      ["4\r\nAAAA\r\n0\r\nnot a field\r\n\r\n", "invalid trailer line"],
      ["4\r\nAAAAB\r\n0\r\n\r\n", "chunk data not followed by CRLF"],
      [`${"1".repeat(5000)}\r\n`, "too long"],
    ] as const) {
      const decoder = new ChunkedDecoder();
      expect(() => decoder.feed(Buffer.from(wire, "latin1"), () => undefined), JSON.stringify(wire)).toThrow(
        ChunkedFramingError,
      );
      expect(() => new ChunkedDecoder().feed(Buffer.from(wire, "latin1"), () => undefined)).toThrow(reason);
    }
  });
});
