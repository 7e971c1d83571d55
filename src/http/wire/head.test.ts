import { afterEach, describe, expect, it, vi } from "vitest";
import { freshScan, parseHead } from "./head.js";

afterEach(() => {
  vi.restoreAllMocks();
});

/** A request head of about `size` bytes, with many header lines. */
function longHead(size: number): Buffer {
  let head = "\r\n\r\nPUT /images/x HTTP/1.1\r\n";
  while (head.length < size) head += `x-filler-${head.length}: ${"a".repeat(40)}\r\n`;
  return Buffer.from(`${head}Content-Length: 7\r\n\r\n`, "latin1");
}

/** Counts the bytes Buffer#indexOf examines while `run` runs (up to its match): the parser's scanning work. */
function scannedBytes(run: () => void): number {
  const original = Buffer.prototype.indexOf;
  let examined = 0;
  vi.spyOn(Buffer.prototype, "indexOf").mockImplementation(function (this: Buffer, value, offset, encoding) {
    const from = typeof offset === "number" ? (offset < 0 ? Math.max(0, this.length + offset) : offset) : 0;
    const found = original.call(this, value, offset as number, encoding as BufferEncoding);
    examined += Math.max(0, (found === -1 ? this.length : found + 1) - from);
    return found;
  });
  run();
  return examined;
}

describe("request heads", () => {
  it("14.wire: a head trickled a byte at a time is scanned about once in all, not once per byte", () => {
    const head = longHead(8 * 1024);
    let result: ReturnType<typeof parseHead> | undefined;
    const examined = scannedBytes(() => {
      const scan = freshScan();
      for (let length = 1; length <= head.length; length++) {
        result = parseHead(head.subarray(0, length), scan);
        if (length < head.length) expect(result.kind).toBe("incomplete");
      }
    });
    expect(result?.kind).toBe("head");
    if (result?.kind === "head") {
      expect(result.head.size).toBe(head.length);
      expect(result.head.framing).toEqual({ kind: "length", length: 7 });
    }
    // Once per byte, the scans would examine head.length² / 2 bytes (32 MiB here).
    expect(examined).toBeLessThan(8 * head.length);
  });

  it("14.wire: a bare LF is refused whichever read brings it, also split from its CR's absence", () => {
    const bad = Buffer.from("GET / HTTP/1.1\r\nx-a: b\nx-c: d\r\n\r\n", "latin1");
    for (let cut = 1; cut < bad.length; cut++) {
      const scan = freshScan();
      const first = parseHead(bad.subarray(0, cut), scan);
      const result = first.kind === "incomplete" ? parseHead(bad, scan) : first;
      expect(result.kind, `cut ${cut}`).toBe("refused");
      if (result.kind === "refused") expect(result.response).toContain("line not ended by CRLF");
    }
  });

  it("14.wire: a head's end split across reads at every byte is found", () => {
    const good = Buffer.from("\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\n", "latin1");
    for (let cut = 1; cut < good.length; cut++) {
      const scan = freshScan();
      const first = parseHead(good.subarray(0, cut), scan);
      const result = first.kind === "incomplete" ? parseHead(good, scan) : first;
      expect(result.kind, `cut ${cut}`).toBe("head");
      if (result.kind === "head") expect(result.head.size).toBe(good.indexOf("GET /next"));
    }
  });
});
