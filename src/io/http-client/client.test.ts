/**
 * Issue 14: the relay's own HTTP/1.1 client, against a fake daemon on raw sockets that
 * answers each data request with whatever bytes a test scripts (broken framing included),
 * through the http backend as the proxy uses it.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import net, { type AddressInfo, type Socket } from "node:net";
import { Writable } from "node:stream";
import tls from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "../../../test/helpers/certs.js";
import { HttpBackend } from "../http.js";

const image = Buffer.alloc(3 * 1024 * 1024 + 123);
for (let i = 0; i < image.length; i++) image[i] = (i * 31 + (i >> 12)) % 251;

interface DataRequest {
  method: string;
  path: string;
  headers: Map<string, string>;
  /** Which connection of the fake daemon carried it, counting from 1. */
  connection: number;
}

/** How the fake daemon answers a data request (GET or PUT); the default serves `image`. */
type Answer = (request: DataRequest, socket: Socket, body: Buffer) => void;

let answer: Answer;
let requests: DataRequest[];
const written = Buffer.alloc(image.length);

function serveImage(request: DataRequest, socket: Socket, body: Buffer): void {
  if (request.method === "PUT") {
    const offset = Number(/^bytes (\d+)-/.exec(request.headers.get("content-range") ?? "")?.[1]);
    body.copy(written, offset);
    socket.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    return;
  }
  const [first, last] = rangeOf(request);
  socket.write(`HTTP/1.1 206 Partial Content\r\ncontent-length: ${last - first + 1}\r\n\r\n`);
  socket.write(image.subarray(first, last + 1));
}

function rangeOf(request: DataRequest): [number, number] {
  const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.get("range") ?? "");
  return [Number(range?.[1]), Number(range?.[2])];
}

/** Reads requests off a socket one at a time (heads, then content-length bodies). */
function handleConnection(socket: Socket, number: number): void {
  let pending = Buffer.alloc(0);
  socket.on("error", () => undefined);
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      const end = pending.indexOf("\r\n\r\n");
      if (end === -1) return;
      const [line = "", ...lines] = pending.toString("latin1", 0, end).split("\r\n");
      const headers = new Map(
        lines.map((header) => {
          const colon = header.indexOf(":");
          return [header.slice(0, colon).toLowerCase(), header.slice(colon + 1).trim()] as [string, string];
        }),
      );
      const length = Number(headers.get("content-length") ?? 0);
      if (headers.get("expect") === "100-continue" && !socket.readableEnded) {
        socket.write("HTTP/1.1 100 Continue\r\n\r\n");
        headers.delete("expect");
        // The head is kept pending; the 100 is sent once.
        pending = Buffer.concat([
          Buffer.from(`${line}\r\n${[...headers].map(([n, v]) => `${n}: ${v}`).join("\r\n")}\r\n\r\n`, "latin1"),
          pending.subarray(end + 4),
        ]);
        continue;
      }
      if (pending.length < end + 4 + length) return;
      const body = pending.subarray(end + 4, end + 4 + length);
      pending = pending.subarray(end + 4 + length);
      const [method = "", path = ""] = line.split(" ");
      if (method === "OPTIONS") {
        const info = JSON.stringify({ features: [], size: image.length, max_readers: 1, max_writers: 1 });
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${info.length}\r\n\r\n${info}`);
        continue;
      }
      const request = { method, path, headers, connection: number };
      requests.push(request);
      answer(request, socket, body);
    }
  });
}

let plain: net.Server;
let secure: tls.Server;
let caFile: string;
let connections = 0;
const sockets = new Set<Socket>();
const resumed: boolean[] = [];

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

let plainPort: number;
let securePort: number;

beforeAll(async () => {
  const certs = await testCerts();
  caFile = certs.caFile;
  const accept = (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    handleConnection(socket, ++connections);
  };
  plain = net.createServer(accept);
  secure = tls.createServer({ key: readFileSync(certs.keyFile), cert: readFileSync(certs.certFile) }, (socket) => {
    resumed.push(socket.isSessionReused());
    accept(socket);
  });
  plainPort = await listen(plain);
  securePort = await listen(secure);
});

afterEach(() => {
  for (const socket of sockets) socket.destroy();
});

afterAll(async () => {
  await new Promise((resolve) => plain.close(resolve));
  await new Promise((resolve) => secure.close(resolve));
});

function reset(with_: Answer = serveImage): void {
  answer = with_;
  requests = [];
  connections = 0;
}

async function open(options: { secure?: boolean; readTimeoutMs?: number } = {}): Promise<HttpBackend> {
  const url = options.secure
    ? `https://localhost:${securePort}/images/fake`
    : `http://127.0.0.1:${plainPort}/images/fake`;
  return HttpBackend.open(new URL(url), {
    caFile,
    preferUnixSocket: false,
    readTimeoutMs: options.readTimeoutMs ?? 10_000,
  });
}

/** A sink like the proxy's response: collects what arrives, slowly when asked. */
function collectingSink(slowMs = 0): { sink: { start(): void; stream: Writable }; bytes: () => Promise<Buffer> } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _encoding, done) {
      chunks.push(Buffer.from(chunk));
      if (slowMs > 0) setTimeout(done, slowMs);
      else done();
    },
  });
  // The bytes once the stream wrote all it was given.
  const bytes = () =>
    new Promise<Buffer>((resolve) => {
      stream.end(() => resolve(Buffer.concat(chunks)));
    });
  return { sink: { start: () => undefined, stream }, bytes };
}

const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
const relayOptions = { buffers: () => Promise.reject(new Error("a relay needs no buffers")) };

/** Answers the next data request with `raw` and leaves the connection as it is. */
function rawAnswer(raw: string | Buffer, then?: (socket: Socket) => void): Answer {
  return (_request, socket) => {
    socket.write(raw);
    then?.(socket);
  };
}

describe("14: relay client framing", () => {
  it("14: relays ranges byte-exact over one kept connection, TLS and plain, through a slow sink", async () => {
    for (const secureRemote of [false, true]) {
      reset();
      const backend = await open({ secure: secureRemote });
      try {
        const slow = collectingSink(1);
        await backend.readTo(0, image.length, slow.sink, relayOptions);
        expect(sha(await slow.bytes())).toBe(sha(image));
        for (const [offset, length] of [
          [1, 1],
          [65_535, 200_001],
          [image.length - 7, 7],
        ] as const) {
          const { sink, bytes } = collectingSink();
          await backend.readTo(offset, length, sink, relayOptions);
          expect(sha(await bytes())).toBe(sha(image.subarray(offset, offset + length)));
          const buf = Buffer.alloc(length);
          expect(await backend.read(buf, offset)).toBe(length);
          expect(sha(buf)).toBe(sha(image.subarray(offset, offset + length)));
        }
        expect(requests).toHaveLength(7);
        expect(new Set(requests.map((request) => request.connection)).size).toBe(1);
      } finally {
        await backend.close();
      }
    }
  });

  it("14: uploads through 100 Continue and reads back the same bytes on the kept connection", async () => {
    reset();
    const backend = await open();
    try {
      const data = image.subarray(1000, 1000 + 1024 * 1024 + 5);
      const result = await backend.writeFrom(
        (await import("node:stream")).Readable.from([data.subarray(0, 7), data.subarray(7)]),
        1000,
        data.length,
        { ...relayOptions, flush: false, limit: data.length },
      );
      expect(result).toMatchObject({ bytes: data.length, overflow: false });
      expect(sha(written.subarray(1000, 1000 + data.length))).toBe(sha(data));
      await backend.write(Buffer.from("tail"), 5);
      expect(written.toString("latin1", 5, 9)).toBe("tail");
      expect(new Set(requests.map((request) => request.connection)).size).toBe(1);
    } finally {
      await backend.close();
    }
  });

  it("14: a response head split into single bytes, with the body in the head's last packet, is read whole", async () => {
    reset((request, socket) => {
      const [first, last] = rangeOf(request);
      const head = Buffer.from(`HTTP/1.1 206 Partial Content\r\nContent-Length:  ${last - first + 1} \r\n\r\n`);
      const bytes = Buffer.concat([head, image.subarray(first, last + 1)]);
      let at = 0;
      const next = () => {
        if (at >= head.length - 1) {
          socket.write(bytes.subarray(at));
          return;
        }
        socket.write(bytes.subarray(at, ++at));
        setImmediate(next);
      };
      next();
    });
    const backend = await open();
    try {
      const buf = Buffer.alloc(5000);
      expect(await backend.read(buf, 300)).toBe(5000);
      expect(sha(buf)).toBe(sha(image.subarray(300, 5300)));
    } finally {
      await backend.close();
    }
  });

  const broken: [string, string, RegExp][] = [
    ["malformed status line", "HTTP/1.1 2OO Fine\r\ncontent-length: 10\r\n\r\n", /malformed status line/],
    ["bare LF line ends", "HTTP/1.1 206 Partial\ncontent-length: 10\n\n", /response head|malformed/],
    [
      "a content-length that is not a number",
      "HTTP/1.1 206 P\r\ncontent-length: 10x\r\n\r\n",
      /invalid content-length/,
    ],
    [
      "two different content-lengths",
      "HTTP/1.1 206 P\r\ncontent-length: 10\r\ncontent-length: 11\r\n\r\n",
      /conflicting content-length/,
    ],
    [
      "a chunked data range",
      "HTTP/1.1 206 P\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
      /without content-length/,
    ],
    ["an unknown transfer-encoding", "HTTP/1.1 206 P\r\ntransfer-encoding: gzip\r\n\r\n", /transfer-encoding "gzip"/],
    [
      "content-length beside chunked",
      "HTTP/1.1 403 F\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
      /both transfer-encoding and content-length/,
    ],
    ["a header line without a colon", "HTTP/1.1 206 P\r\ncontent-length 10\r\n\r\n", /malformed header line/],
    ["a 206 without content-length", "HTTP/1.1 206 P\r\nconnection: close\r\n\r\n0123456789", /without content-length/],
    ["a 206 of the wrong length", "HTTP/1.1 206 P\r\ncontent-length: 9\r\n\r\n012345678", /sent 9 for a 10-byte range/],
    [
      "more bytes than content-length",
      "HTTP/1.1 206 P\r\ncontent-length: 10\r\n\r\n0123456789extra",
      /nobody asked for/,
    ],
  ];
  for (const [name, raw, message] of broken) {
    it(`14: ${name} is a 502 naming the fault, and the next request works on a new connection`, async () => {
      reset(rawAnswer(raw, (socket) => setTimeout(() => socket.end(), 3000).unref()));
      const backend = await open();
      try {
        const failure = (async () => {
          await backend.read(Buffer.alloc(10), 0);
          // Bytes past the body are only noticed once they arrive: the next request hears it.
          await backend.read(Buffer.alloc(10), 0);
        })();
        await expect(failure).rejects.toMatchObject({ code: "IMAGEIO_ERR_REMOTE", status: 502, message });
        answer = serveImage;
        const buf = Buffer.alloc(10);
        expect(await backend.read(buf, 20)).toBe(10);
        expect(buf.equals(image.subarray(20, 30))).toBe(true);
        expect(requests.at(-1)?.connection).toBeGreaterThan(requests[0]?.connection ?? 0);
      } finally {
        await backend.close();
      }
    });
  }

  it("14: a response head over 64 KiB is refused instead of buffered without end", async () => {
    reset(rawAnswer(`HTTP/1.1 206 P\r\nx-padding: ${"a".repeat(70 * 1024)}\r\ncontent-length: 10\r\n\r\n0123456789`));
    const backend = await open();
    try {
      await expect(backend.read(Buffer.alloc(10), 0)).rejects.toMatchObject({
        status: 502,
        message: expect.stringMatching(/response head exceeds 65536 bytes/),
      });
    } finally {
      await backend.close();
    }
  });

  it("14: the remote's error status, message and content-range are passed on, and the connection kept", async () => {
    const message = "Requested range is not satisfiable: 5-9 of 3";
    reset(
      rawAnswer(
        `HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */3\r\ncontent-length: ${message.length}\r\n\r\n${message}`,
      ),
    );
    const backend = await open();
    try {
      await expect(backend.readTo(5, 5, collectingSink().sink, relayOptions)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_REMOTE",
        status: 416,
        contentRange: "bytes */3",
        message,
      });
      answer = serveImage;
      const buf = Buffer.alloc(4);
      await backend.read(buf, 0);
      expect(buf.equals(image.subarray(0, 4))).toBe(true);
      expect(new Set(requests.map((request) => request.connection)).size).toBe(1);
    } finally {
      await backend.close();
    }
  });

  it("14: a remote that closes mid-body cuts the relay, saying how far it got", async () => {
    reset((request, socket) => {
      const [first, last] = rangeOf(request);
      socket.write(`HTTP/1.1 206 Partial Content\r\ncontent-length: ${last - first + 1}\r\n\r\n`);
      socket.end(image.subarray(first, first + 100_000));
    });
    const backend = await open();
    try {
      const { sink, bytes } = collectingSink();
      await expect(backend.readTo(0, 1_000_000, sink, relayOptions)).rejects.toMatchObject({
        status: 502,
        message: expect.stringMatching(/closed the connection after 100000 of 1000000 bytes/),
      });
      // What did arrive reached the client, unchanged.
      expect(sha(await bytes())).toBe(sha(image.subarray(0, 100_000)));
    } finally {
      await backend.close();
    }
  });

  it("14: a kept connection the remote closed while idle is replaced without the caller noticing", async () => {
    reset((request, socket) => {
      serveImage(request, socket, Buffer.alloc(0));
      socket.end();
    });
    const backend = await open();
    try {
      for (let round = 0; round < 5; round++) {
        const buf = Buffer.alloc(1000);
        await backend.read(buf, round * 1000);
        expect(buf.equals(image.subarray(round * 1000, round * 1000 + 1000))).toBe(true);
      }
      expect(new Set(requests.map((request) => request.connection)).size).toBe(5);
    } finally {
      await backend.close();
    }
  });

  it("14: a remote that stalls mid-body times out as 504 material", async () => {
    reset((request, socket) => {
      const [first, last] = rangeOf(request);
      socket.write(`HTTP/1.1 206 Partial Content\r\ncontent-length: ${last - first + 1}\r\n\r\n`);
      socket.write(image.subarray(first, first + 10));
    });
    const backend = await open({ readTimeoutMs: 300 });
    try {
      await expect(backend.readTo(0, 100, collectingSink().sink, relayOptions)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_REMOTE_TIMEOUT",
      });
    } finally {
      await backend.close();
    }
  });

  it("14.left: (7) a sink slower than the read timeout does not cut a download the remote sent at once", async () => {
    for (const secureRemote of [false, true]) {
      reset();
      const backend = await open({ secure: secureRemote, readTimeoutMs: 300 });
      try {
        // Each write takes longer than the read timeout: reading waits on us, not on the remote.
        const slow = collectingSink(500);
        await backend.readTo(0, image.length, slow.sink, relayOptions);
        expect(sha(await slow.bytes())).toBe(sha(image));
      } finally {
        await backend.close();
      }
    }
  });

  it("14.left: (8) a remote that sends interim (1xx) answers without end fails the request with a stable code", async () => {
    reset((_request, socket) => {
      // Each interim answer is fresh activity for a read timeout: only a bound on them ends this.
      const endless = setInterval(() => socket.write("HTTP/1.1 102 Processing\r\n\r\n"), 20);
      socket.once("close", () => clearInterval(endless));
    });
    const backend = await open({ readTimeoutMs: 300 });
    try {
      const read = backend.readTo(0, 100, collectingSink().sink, relayOptions);
      const stuck = new Promise((resolve) => setTimeout(() => resolve("still waiting"), 5000).unref());
      const outcome = await Promise.race([
        read.then(
          () => "answered",
          (error: unknown) => error,
        ),
        stuck,
      ]);
      expect(outcome).toMatchObject({ code: "IMAGEIO_ERR_REMOTE", status: 502 });
      expect((outcome as Error).message).toMatch(/sent more than \d+ interim \(1xx\) answers/);
      // The next request works on a new connection.
      answer = serveImage;
      const { sink, bytes } = collectingSink();
      await backend.readTo(5, 10, sink, relayOptions);
      expect((await bytes()).equals(image.subarray(5, 15))).toBe(true);
    } finally {
      await backend.close();
    }
  });

  it("14: new TLS connections to a remote resume its session instead of a full handshake", async () => {
    reset();
    resumed.length = 0;
    const backend = await open({ secure: true });
    const other = await backend.clone();
    try {
      await backend.read(Buffer.alloc(10), 0);
      await other.read(Buffer.alloc(10), 0);
      // The second handle's data connection resumes the session the first one got.
      expect(resumed.at(-1)).toBe(true);
    } finally {
      await backend.close();
      await other.close();
    }
  });

  it("14: requests started together on one handle take turns on its one connection, each getting its bytes", async () => {
    reset();
    const backend = await open({ secure: true });
    try {
      for (let round = 0; round < 5; round++) {
        const ranges = Array.from({ length: 8 }, (_, i) => [(round * 8 + i) * 70_001, 50_000 + i * 999] as const);
        const results = await Promise.all(
          ranges.map(async ([offset, length], i) => {
            if (i % 2 === 0) {
              const buf = Buffer.alloc(length);
              await backend.read(buf, offset);
              return buf;
            }
            const { sink, bytes } = collectingSink();
            await backend.readTo(offset, length, sink, relayOptions);
            return bytes();
          }),
        );
        results.forEach((bytes, i) => {
          const [offset, length] = ranges[i] as readonly [number, number];
          expect(sha(bytes)).toBe(sha(image.subarray(offset, offset + length)));
        });
      }
      expect(new Set(requests.map((request) => request.connection)).size).toBe(1);
    } finally {
      await backend.close();
    }
  });

  it("14: a client that goes away mid-download stops the relay with its own error; the next request works", async () => {
    reset();
    const backend = await open();
    try {
      const stream = new Writable({
        write(_chunk, _encoding, done) {
          stream.destroy();
          done();
        },
      });
      await expect(backend.readTo(0, image.length, { start: () => undefined, stream }, relayOptions)).rejects.toThrow(
        /receiving side closed/,
      );
      const buf = Buffer.alloc(100);
      await backend.read(buf, 7);
      expect(buf.equals(image.subarray(7, 107))).toBe(true);
    } finally {
      await backend.close();
    }
  });

  it("14: a cancelled transfer (progress refuses) stops the relay with the cancellation", async () => {
    reset();
    const backend = await open();
    try {
      const cancelled = new Error("transfer cancelled");
      const onProgress = (bytes: number) => {
        if (bytes > 1_000_000) throw cancelled;
      };
      await expect(
        backend.readTo(0, image.length, collectingSink().sink, { ...relayOptions, onProgress }),
      ).rejects.toBe(cancelled);
    } finally {
      await backend.close();
    }
  });

  it("14: a sink whose highWaterMark exceeds the relay's gets the whole body (no wait for a drain that never comes)", async () => {
    reset();
    const backend = await open();
    try {
      const chunks: Buffer[] = [];
      let release: (() => void) | undefined;
      const stream = new Writable({
        highWaterMark: 64 * 1024 * 1024,
        write(chunk: Buffer, _encoding, done) {
          chunks.push(Buffer.from(chunk));
          // Slow at first, so bytes pile up in the stream.
          if (chunks.length === 1) release = done;
          else done();
        },
      });
      const relayed = backend.readTo(0, image.length, { start: () => undefined, stream }, relayOptions);
      await expect.poll(() => stream.writableLength, { timeout: 10_000 }).toBeGreaterThan(1024 * 1024);
      release?.();
      await relayed;
      await new Promise<void>((resolve) => stream.end(resolve));
      expect(sha(Buffer.concat(chunks))).toBe(sha(image));
    } finally {
      await backend.close();
    }
  });

  it("14: an error answer whose body ends with the connection passes its message on", async () => {
    const message = "You are not allowed to access this resource: No such ticket fake";
    reset(rawAnswer(`HTTP/1.1 403 Forbidden\r\nconnection: close\r\n\r\n${message}`, (socket) => socket.end()));
    const backend = await open();
    try {
      await expect(backend.readTo(0, 10, collectingSink().sink, relayOptions)).rejects.toMatchObject({
        code: "IMAGEIO_ERR_REMOTE",
        status: 403,
        message,
      });
    } finally {
      await backend.close();
    }
  });

  it("14: a PUT refused after 100 Continue and interim answers reports the remote's status and message", async () => {
    const message = "Requested range is out of the image";
    reset((request, socket) => {
      expect(request.method).toBe("PUT");
      socket.write(
        `HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 416 Range Not Satisfiable\r\ncontent-length: ${message.length}\r\n\r\n${message}`,
      );
    });
    const backend = await open();
    try {
      await expect(backend.write(Buffer.alloc(100, 1), 0)).rejects.toMatchObject({ status: 416, message });
      answer = serveImage;
      await backend.write(Buffer.from("again"), 10);
      expect(written.toString("latin1", 10, 15)).toBe("again");
    } finally {
      await backend.close();
    }
  });

  it("14: a chunked error answer, split anywhere, passes its message on and keeps the connection", async () => {
    const message = "You are not allowed to access this resource: No such ticket fake";
    const encoded = `HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n7;ext=1\r\n${message.slice(0, 7)}\r\n${(message.length - 7).toString(16)}\r\n${message.slice(7)}\r\n0\r\nx-trailer: 1\r\n\r\n`;
    for (const split of [1, 40, encoded.length - 3]) {
      reset((_request, socket) => {
        socket.write(encoded.slice(0, split));
        setTimeout(() => socket.write(encoded.slice(split)), 5);
      });
      const backend = await open();
      try {
        await expect(backend.read(Buffer.alloc(10), 0)).rejects.toMatchObject({ status: 403, message });
        answer = serveImage;
        const buf = Buffer.alloc(10);
        await backend.read(buf, 0);
        expect(buf.equals(image.subarray(0, 10))).toBe(true);
        expect(new Set(requests.map((request) => request.connection)).size).toBe(1);
      } finally {
        await backend.close();
      }
    }
  });

  it("14: an error answer with a malformed chunk keeps its status; the connection is replaced", async () => {
    reset(rawAnswer("HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nmessage\r\n"));
    const backend = await open();
    try {
      await expect(backend.read(Buffer.alloc(10), 0)).rejects.toMatchObject({
        status: 403,
        message: expect.stringMatching(/answered 403/),
      });
      answer = serveImage;
      const buf = Buffer.alloc(10);
      await backend.read(buf, 0);
      expect(buf.equals(image.subarray(0, 10))).toBe(true);
      expect(new Set(requests.map((request) => request.connection)).size).toBe(2);
    } finally {
      await backend.close();
    }
  });
});

/** Waits until `done()` holds or `ms` passed (then the test's own assertions tell what went wrong). */
async function waitFor(done: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
}

/**
 * A raw daemon for one test: OPTIONS gets the image's info, every other request head goes to
 * `onRequest` as soon as it arrives (before any body), with the socket to answer on.
 */
async function rawDaemon(
  onRequest: (line: string, socket: Socket) => void,
): Promise<{ url: URL; close: () => Promise<void> }> {
  const open = new Set<Socket>();
  const server = net.createServer((socket) => {
    open.add(socket);
    socket.on("close", () => open.delete(socket));
    socket.on("error", () => undefined);
    let pending = "";
    socket.on("data", (chunk: Buffer) => {
      pending += chunk.toString("latin1");
      for (let end = pending.indexOf("\r\n\r\n"); end !== -1; end = pending.indexOf("\r\n\r\n")) {
        const line = pending.slice(0, pending.indexOf("\r\n"));
        pending = pending.slice(end + 4);
        if (line.startsWith("OPTIONS ")) {
          const info = JSON.stringify({ features: [], size: image.length, max_readers: 1, max_writers: 1 });
          socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${info.length}\r\n\r\n${info}`);
        } else {
          onRequest(line, socket);
          // Whatever else comes is a body: this daemon reads no further heads.
          socket.removeAllListeners("data");
          socket.resume();
          return;
        }
      }
    });
  });
  const port = await listen(server);
  return {
    url: new URL(`http://127.0.0.1:${port}/images/fake`),
    close: async () => {
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe("14.client: review of the relay client", () => {
  it("14.client: bytes a remote sent past the end of a response are never taken as the next request's answer", async () => {
    // A broken daemon answers a range with more bytes than its content-length: here a whole
    // second 206 of the same length, as a daemon that answers a request twice would send.
    // The next GET must not get those bytes (sent before it was asked) as its range.
    const bogus = Buffer.from("HTTP/1.1 206 P\r\ncontent-length: 10\r\n\r\nNOT-MINE!!");
    for (let round = 0; round < 10; round++) {
      reset((_request, socket) => {
        socket.write("HTTP/1.1 206 P\r\ncontent-length: 200000\r\n\r\n");
        // The body and what follows it come in a later read than the head, straight into the receiver.
        setTimeout(() => socket.write(Buffer.concat([image.subarray(0, 200000), bogus])), 10);
      });
      const backend = await open();
      try {
        const first = Buffer.alloc(200000);
        await backend.read(first, 0);
        expect(sha(first)).toBe(sha(image.subarray(0, 200000)));
        answer = serveImage;
        const second = Buffer.alloc(10);
        await backend.read(second, 500);
        expect(second.toString("latin1")).toBe(image.toString("latin1", 500, 510));
        expect(requests).toHaveLength(2);
      } finally {
        await backend.close();
      }
    }
  });

  it("14.client: a PUT the remote says it took before it had the body fails, and no later request rides its connection", async () => {
    // A broken daemon answers 200 to an upload's head: the bytes still to come were not
    // taken, so the upload must not be reported done, and the next request must not be sent
    // into the middle of the body still being written on that connection.
    let heads = 0;
    const daemon = await rawDaemon((_line, socket) => {
      heads++;
      socket.write("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    });
    const backend = await HttpBackend.open(daemon.url, { preferUnixSocket: false, readTimeoutMs: 10_000 });
    try {
      const { Readable } = await import("node:stream");
      const source = (async function* () {
        for (let i = 0; i < 4; i++) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          yield image.subarray(i * 65536, (i + 1) * 65536);
        }
      })();
      const upload = backend.writeFrom(Readable.from(source), 0, 4 * 65536, {
        ...relayOptions,
        flush: false,
        limit: 4 * 65536,
      });
      await expect(upload).rejects.toMatchObject({
        status: 502,
        message: expect.stringMatching(/answered 200 before/),
      });
      await backend.write(Buffer.from("tail"), 5);
      expect(heads).toBe(2);
    } finally {
      await backend.close();
      await daemon.close();
    }
  });

  it("14.client: a TLS session from a connection refused for its host name never lets a later one skip the check", async () => {
    // Node checks the host name only on full handshakes: a session kept from a handshake whose
    // certificate did not name the host would let the next connection resume without a check.
    const certs = await testCerts();
    const open = new Set<Socket>();
    const server = tls.createServer(
      { key: readFileSync(certs.keyFile), cert: readFileSync(certs.certFile), maxVersion: "TLSv1.2" },
      (socket) => {
        open.add(socket);
        socket.on("close", () => open.delete(socket));
        handleConnection(socket, ++connections);
      },
    );
    // The certificate names localhost, 127.0.0.1 and ::1: not 127.0.0.2.
    const port = await new Promise<number>((resolve) =>
      server.listen(0, "127.0.0.2", () => resolve((server.address() as AddressInfo).port)),
    );
    reset();
    try {
      const url = new URL(`https://127.0.0.2:${port}/images/fake`);
      for (let round = 0; round < 3; round++) {
        await expect(HttpBackend.open(url, { caFile, preferUnixSocket: false })).rejects.toMatchObject({
          code: "IMAGEIO_ERR_REMOTE_UNAVAILABLE",
          message: expect.stringMatching(/127\.0\.0\.2/),
        });
      }
    } finally {
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("14.client: a chunked error answer longer than the message limit fails the request instead of hanging the process", async () => {
    // A remote (or something in front of it) answers with a large chunked error page: past
    // the limit the body is given up, and the bytes already read must not be pushed forever
    // into a collector that has no room left.
    const page = Buffer.alloc(300 * 1024, "x");
    const chunks = [0, 1, 2].map((i) => page.subarray(i * 100 * 1024, (i + 1) * 100 * 1024));
    const encoded = Buffer.concat([
      ...chunks.flatMap((chunk) => [Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n")]),
      Buffer.from("0\r\n\r\n"),
    ]);
    reset(
      rawAnswer(
        Buffer.concat([Buffer.from("HTTP/1.1 500 Internal Error\r\ntransfer-encoding: chunked\r\n\r\n"), encoded]),
      ),
    );
    const backend = await open();
    try {
      await expect(backend.read(Buffer.alloc(10), 0)).rejects.toMatchObject({ status: 500 });
      answer = serveImage;
      const buf = Buffer.alloc(10);
      await backend.read(buf, 0);
      expect(buf.equals(image.subarray(0, 10))).toBe(true);
    } finally {
      await backend.close();
    }
  });

  it("14.client: a PUT refused at once (no 100 Continue) fails with the remote's answer before the client is told to send", async () => {
    // The remote answers 403 to the head of an `Expect: 100-continue` upload: the proxy must
    // refuse its client's upload with that answer, not send 100 Continue and take the body.
    const daemon = await rawDaemon((_line, socket) => {
      socket.write("HTTP/1.1 403 Forbidden\r\ncontent-length: 14\r\n\r\nno such ticket");
    });
    const backend = await HttpBackend.open(daemon.url, { preferUnixSocket: false, readTimeoutMs: 10_000 });
    try {
      let told = false;
      let pulled = 0;
      const source = (async function* () {
        for (let i = 0; i < 4; i++) {
          pulled++;
          yield image.subarray(i * 65536, (i + 1) * 65536);
        }
      })();
      await expect(
        backend.writeFrom((await import("node:stream")).Readable.from(source), 0, 4 * 65536, {
          ...relayOptions,
          flush: false,
          limit: 4 * 65536,
          onReady: () => {
            told = true;
          },
        }),
      ).rejects.toMatchObject({ status: 403, message: "no such ticket" });
      expect(told).toBe(false);
      expect(pulled).toBe(0);
    } finally {
      await backend.close();
      await daemon.close();
    }
  });

  for (const [what, reply] of [
    ["an empty answer", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"],
    ["a short answer read with its head", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
  ] as const) {
    it(`14.client: a kept connection the remote closes while idle after ${what} is replaced for the next PUT`, async () => {
      // Daemons with an idle timeout (and proxies in between) close kept connections; an upload
      // after that must go on a new connection, not fail on the dead one.
      reset((request, socket, body) => {
        const offset = Number(/^bytes (\d+)-/.exec(request.headers.get("content-range") ?? "")?.[1]);
        body.copy(written, offset);
        socket.end(reply);
      });
      const backend = await open();
      try {
        for (let round = 0; round < 3; round++) {
          const data = image.subarray(round * 5000, round * 5000 + 4000);
          await backend.write(data, round * 5000);
          expect(sha(written.subarray(round * 5000, round * 5000 + 4000))).toBe(sha(data));
          // The remote's close reached us before the next upload starts.
          await waitFor(() => sockets.size === 0);
        }
        expect(new Set(requests.map((request) => request.connection)).size).toBe(3);
      } finally {
        await backend.close();
      }
    });
  }
});
