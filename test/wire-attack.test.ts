/**
 * Issue 14, review of the images services' own HTTP/1.1 framing (src/http/wire/): hostile
 * clients on the local unix socket of an in-process daemon, bytes of the image checked after.
 */
import { readFile } from "node:fs/promises";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type InProcessDaemon, imageWithTicket, startInProcess } from "./helpers/daemon.js";

let daemon: InProcessDaemon;

beforeAll(async () => {
  daemon = await startInProcess();
}, 30_000);
afterAll(async () => {
  await daemon?.stop();
});

/** Sends `pieces` one write at a time (each after the previous was flushed), then collects until close or `waitMs`. */
async function send(pieces: Buffer[], waitMs = 1500, halfClose = true): Promise<{ text: string; closed: boolean }> {
  const socket = net.connect({ path: daemon.localSocket as string });
  socket.setNoDelay(true);
  let text = "";
  let closed = false;
  socket.on("data", (chunk: Buffer) => {
    text += chunk.toString("latin1");
  });
  socket.on("error", () => undefined);
  const done = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, waitMs);
    socket.on("close", () => {
      closed = true;
      clearTimeout(timer);
      resolve();
    });
  });
  await new Promise((resolve) => socket.once("connect", resolve));
  for (const piece of pieces) {
    await new Promise<void>((resolve) => socket.write(piece, () => resolve()));
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (halfClose) socket.end();
  await done;
  socket.destroy();
  return { text, closed };
}

const statuses = (text: string) => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

describe("14.wire: chunked framing lines", () => {
  it("14.wire: a bare LF or CR, or any control byte, in a trailer or chunk extension is a 400 that closes; nothing after it runs", async () => {
    for (const tail of [
      "4\r\nAAAA\r\n0\r\nX: a\n\r\n",
      "4\r\nAAAA\r\n0\r\nX: a\rb\r\n\r\n",
      "4\r\nAAAA\r\n0\r\nnot a field\r\n\r\n",
      "4;a\nb\r\nAAAA\r\n0\r\n\r\n",
      "4;a\x00\r\nAAAA\r\n0\r\n\r\n",
    ]) {
      const { id, path, data } = await imageWithTicket(daemon, 64);
      // A front end taking the bare LF as a line end sees the body end there, and the PUT
      // after it as the next request: we must neither swallow it as trailers nor run it.
      const smuggled = `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 8-11/*\r\nContent-Length: 4\r\n\r\nZZZZ`;
      const r = await send([
        Buffer.from(
          `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 0-3/*\r\nTransfer-Encoding: chunked\r\n\r\n${tail}${smuggled}`,
          "latin1",
        ),
      ]);
      expect(statuses(r.text), JSON.stringify(tail)).toEqual([400]);
      expect(r.text).toContain("Invalid chunked body");
      expect(r.closed).toBe(true);
      expect((await readFile(path)).subarray(8, 12).equals(data.subarray(8, 12)), JSON.stringify(tail)).toBe(true);
    }
  });
  it("14.wire: extensions and trailers that are well formed still work", async () => {
    const { id, path } = await imageWithTicket(daemon, 64);
    const r = await send([
      Buffer.from(
        `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 0-3/*\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\t;c="d e"\r\nAA\r\n2\r\nBB\r\n0\r\nX-T: 1\tz\r\nY:\r\n\r\n`,
      ),
    ]);
    expect(statuses(r.text)).toEqual([200]);
    expect((await readFile(path)).subarray(0, 4).toString()).toBe("AABB");
  });
});

describe("14.wire: HTTP/1.0", () => {
  it("14.wire: an HTTP/1.0 keep-alive request with Transfer-Encoding is served, then the connection closes (RFC 9112 §6.1)", async () => {
    const { id, path } = await imageWithTicket(daemon, 64);
    const r = await send(
      [
        Buffer.from(
          `PUT /images/${id} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Range: bytes 0-3/*\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nCCCC\r\n0\r\n\r\n` +
            `PUT /images/${id} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Range: bytes 4-7/*\r\nContent-Length: 4\r\n\r\nDDDD`,
        ),
      ],
      1500,
      false,
    );
    expect(statuses(r.text)).toEqual([200]);
    expect(r.text).toContain("\r\nconnection: close\r\n");
    expect(r.closed).toBe(true);
    const image = await readFile(path);
    expect(image.subarray(0, 4).toString()).toBe("CCCC");
    expect(image.subarray(4, 8).toString()).not.toBe("DDDD");
  });

  it("14.wire: an HTTP/1.0 keep-alive request without Transfer-Encoding keeps its connection", async () => {
    const { id, data } = await imageWithTicket(daemon, 64);
    const get = `GET /images/${id} HTTP/1.0\r\nConnection: keep-alive\r\nRange: bytes=0-3\r\n\r\n`;
    const r = await send([Buffer.from(get + get)], 1500, true);
    expect(statuses(r.text)).toEqual([206, 206]);
    expect(r.text.endsWith(data.subarray(0, 4).toString("latin1"))).toBe(true);
  });
});

describe("14.wire: refused heads", () => {
  it("14.wire: a head refused as unreadable is answered and the connection closed, also while the client keeps it open", async () => {
    for (const head of [
      "GET / HTTP/1.1\r\nbad line\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n",
      "PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]) {
      const r = await send([Buffer.from(head)], 1500, false);
      expect(statuses(r.text), JSON.stringify(head)).toEqual([400]);
      expect(r.closed, JSON.stringify(head)).toBe(true);
    }
  });
});

describe("14.wire: Expect: 100-continue", () => {
  it("14.wire: a final answer to a request still waiting for its 100 Continue closes the connection; the next request is never read as its body", async () => {
    const { id, data } = await imageWithTicket(daemon, 64);
    const socket = net.connect({ path: daemon.localSocket as string });
    socket.on("error", () => undefined);
    let text = "";
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
    });
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    // The client waits for a 100 that never comes, gets the final answer, and sends no body:
    // its next request on the connection must not be taken for the 5 announced bytes.
    socket.write(`GET /images/${id} HTTP/1.1\r\nRange: bytes=0-3\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`);
    const deadline = Date.now() + 5000;
    while (!text.endsWith(data.subarray(0, 4).toString("latin1")) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    if (!socket.destroyed) socket.write(`GET /images/${id} HTTP/1.1\r\nRange: bytes=4-7\r\n\r\n`);
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1500))]);
    socket.destroy();
    expect(statuses(text)).toEqual([206]);
    expect(text).toContain("\r\nconnection: close\r\n");
  });

  it("14.wire: after its 100 Continue and body, a request keeps its connection", async () => {
    const { id, path } = await imageWithTicket(daemon, 64);
    const r = await send([
      Buffer.from(
        `PUT /images/${id} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Range: bytes 0-3/*\r\nContent-Length: 4\r\n\r\nEEEE` +
          `GET /images/${id} HTTP/1.1\r\nRange: bytes=0-3\r\n\r\n`,
      ),
    ]);
    expect(statuses(r.text)).toEqual([100, 200, 206]);
    expect(r.text.endsWith("EEEE")).toBe(true);
    expect((await readFile(path)).subarray(0, 4).toString()).toBe("EEEE");
  });
});

describe("14.wire: a body nobody reads any more", () => {
  it("14.wire: a PATCH body refused as too large, then cut by the client, never takes the daemon down", async () => {
    const { id } = await imageWithTicket(daemon, 64);
    for (let round = 0; round < 5; round++) {
      // The refusal comes while the body is still arriving; the connection then closes under
      // the body stream's last read.
      const r = await send(
        [
          Buffer.from(
            `PATCH /images/${id} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: ${1 << 20}\r\n\r\n`,
          ),
          Buffer.alloc(200 * 1024, 0x20),
        ],
        1500,
        false,
      );
      expect(statuses(r.text)).toEqual([413]);
    }
    const after = await send([Buffer.from(`OPTIONS /images/${id} HTTP/1.1\r\n\r\n`)]);
    expect(statuses(after.text)).toEqual([200]);
  });
});
