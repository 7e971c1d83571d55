/**
 * The http backend against a minimal old-style images server (no OPTIONS features, spec
 * §6.4): sizes from a plain GET, zeroing by PUTs of zeros, one data extent, and errors.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HttpBackend } from "./http.js";
import { openBackend } from "./open.js";

let server: http.Server;
let base: string;
const image = Buffer.alloc(100_000);
const requests: string[] = [];

beforeAll(async () => {
  for (let i = 0; i < image.length; i++) image[i] = (i * 7) % 251;
  server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url} ${req.headers.range ?? req.headers["content-range"] ?? ""}`.trim());
    if (req.url?.startsWith("/images/gone")) {
      res
        .writeHead(403, { "content-type": "text/plain" })
        .end("You are not allowed to access this resource: No such ticket gone\n");
      return;
    }
    if (req.method === "OPTIONS") {
      res.writeHead(405).end();
    } else if (req.method === "GET") {
      const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
      if (range) {
        const [first, last] = [Number(range[1]), Number(range[2])];
        res.writeHead(206, { "content-length": last - first + 1 }).end(image.subarray(first, last + 1));
      } else {
        res.writeHead(200, { "content-length": image.length }).end(image);
      }
    } else if (req.method === "PUT") {
      const offset = Number(/^bytes (\d+)-/.exec(String(req.headers["content-range"]))?.[1]);
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("end", () => {
        Buffer.concat(chunks).copy(image, offset);
        res.writeHead(200, { "content-length": 0 }).end();
      });
    } else {
      res.writeHead(405).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

describe("http backend, old remote without features", () => {
  it("learns no features from a 405 OPTIONS and takes the size from a plain GET", async () => {
    const backend = await openBackend(`${base}/images/old`);
    try {
      expect(backend.caps).toMatchObject({ zero: false, flush: false, extents: false, maxReaders: 1, maxWriters: 1 });
      expect(await backend.size()).toBe(image.length);
      const extents = [];
      for await (const extent of backend.extents("zero")) extents.push(extent);
      expect(extents).toEqual([{ start: 0, length: image.length, zero: false, hole: false }]);
    } finally {
      await backend.close();
    }
  });

  it("reads ranges, writes with Content-Range, and zeroes by writing zeros", async () => {
    const backend = await openBackend(`${base}/images/old`);
    try {
      const buf = Buffer.alloc(1000);
      expect(await backend.read(buf, 5000)).toBe(1000);
      expect(buf.equals(image.subarray(5000, 6000))).toBe(true);
      requests.length = 0;
      await backend.write(Buffer.from("hello"), 10);
      expect(requests).toEqual(["PUT /images/old bytes 10-14/*"]);
      expect(image.subarray(10, 15).toString()).toBe("hello");
      await backend.zero(20_000, 3000);
      expect(image.subarray(20_000, 23_000).every((b) => b === 0)).toBe(true);
      expect(requests.some((line) => line.startsWith("PATCH"))).toBe(false);
      // Without the flush feature, flush sends nothing.
      requests.length = 0;
      await backend.flush();
      expect(requests).toEqual([]);
      expect(await backend.read(buf, image.length)).toBe(0);
    } finally {
      await backend.close();
    }
  });

  it("raises the remote's status and message", async () => {
    await expect(HttpBackend.open(new URL(`${base}/images/gone`))).rejects.toMatchObject({
      code: "IMAGEIO_ERR_REMOTE",
      status: 403,
      message: "You are not allowed to access this resource: No such ticket gone",
    });
  });

  it("refuses URLs that do not name an image", async () => {
    await expect(openBackend(`${base}/tickets/x`)).rejects.toMatchObject({ code: "IMAGEIO_ERR_UNSUPPORTED_URL" });
    await expect(openBackend(`${base}/images/a/b`)).rejects.toMatchObject({ code: "IMAGEIO_ERR_UNSUPPORTED_URL" });
  });

  it("gives up connecting after the connect timeout when a TLS handshake never completes", async () => {
    const { createServer } = await import("node:net");
    const accepted = new Set<import("node:net").Socket>();
    const silent = createServer((socket) => accepted.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const port = (silent.address() as AddressInfo).port;
      const started = Date.now();
      await expect(
        HttpBackend.open(new URL(`https://127.0.0.1:${port}/images/x`), {
          connectTimeoutMs: 300,
          readTimeoutMs: 60_000,
        }),
      ).rejects.toMatchObject({ code: "IMAGEIO_ERR_REMOTE_TIMEOUT", message: expect.stringContaining("connect") });
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      for (const socket of accepted) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("times out on a remote that never answers, as 504 material", async () => {
    const silent = http.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const port = (silent.address() as AddressInfo).port;
      await expect(
        HttpBackend.open(new URL(`http://127.0.0.1:${port}/images/x`), { readTimeoutMs: 200 }),
      ).rejects.toMatchObject({
        code: "IMAGEIO_ERR_REMOTE_TIMEOUT",
      });
    } finally {
      silent.closeAllConnections();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
