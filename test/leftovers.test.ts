/**
 * Issue 14, the defects its last review noticed and left ("14.left"): raw bytes against the
 * real daemon process on its TLS port and its unix local socket.
 */
import { readdir, readFile } from "node:fs/promises";
import net, { type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DaemonProcess, imageWithTicket, startDaemon } from "./helpers/daemon.js";
import { exchange, imagesServices, type RawTarget, statusOf, unixTarget } from "./helpers/raw.js";

let daemon: DaemonProcess;

beforeAll(async () => {
  daemon = await startDaemon();
}, 30_000);
afterAll(async () => {
  await daemon?.stop();
});

/** The daemon's open descriptors. */
async function openDescriptors(): Promise<number> {
  return (await readdir(`/proc/${daemon.child.pid}/fd`)).length;
}

/** Polls `probe` until it returns true or `ms` pass; the last value. */
async function eventually(probe: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Sends `data` on a new connection and resolves once the server's answer and FIN arrived; the socket stays open. */
async function answeredAndKeptOpen(target: RawTarget, data: string): Promise<{ text: string; socket: Socket }> {
  const socket = await target.open();
  socket.on("error", () => undefined);
  // Our side stays open after the server's FIN (Node would otherwise end it at once).
  socket.allowHalfOpen = true;
  return new Promise((resolve) => {
    let text = "";
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
    });
    socket.once("end", () => resolve({ text, socket }));
    socket.write(data);
  });
}

describe("14.left: request lines", () => {
  it("14.left: (1) a connection whose head was refused is closed once answered, not left open until the inactivity timeout", async () => {
    const before = await openDescriptors();
    const kept: Socket[] = [];
    try {
      for (const target of imagesServices(daemon)) {
        for (let round = 0; round < 20; round++) {
          // A client that reads the 400 but never closes its side (and one sending more after its bad line).
          const extra = round % 2 === 0 ? "" : "x".repeat(1000);
          const { text, socket } = await answeredAndKeptOpen(target, `GET /info/ HTTP/1.1 extra\r\n\r\n${extra}`);
          expect(statusOf(text), target.name).toBe(400);
          kept.push(socket);
        }
      }
      // 40 connections still open on our side: the daemon's descriptors come back within the linger.
      expect(await eventually(async () => (await openDescriptors()) <= before, 10_000)).toBe(true);
    } finally {
      for (const socket of kept) socket.destroy();
    }
  });

  it("14.left: (2) a method that is not a token (a control byte in it) is a malformed request line: 400, closed", async () => {
    for (const target of imagesServices(daemon)) {
      for (const method of ["GE\x01T", "GE\x7fT", "G@T", "GET\t"]) {
        const answer = await exchange(target, `${method} /info/ HTTP/1.1\r\nHost: x\r\n\r\n`);
        expect(statusOf(answer.text), `${target.name} ${JSON.stringify(method)}`).toBe(400);
        expect(answer.text).toContain("Invalid request: invalid method");
        // The answer never echoes the bytes it refused.
        for (const refused of ["\x01", "\x7f", "@"]) expect(answer.text).not.toContain(refused);
        expect(answer.closed).toBe(true);
      }
      // A token naming no method we know stays 405 (spec §3.2).
      const unknown = await exchange(target, "FOO /info/ HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(statusOf(unknown.text), target.name).toBe(405);
    }
  });
});

describe("14.left: chunked bodies", () => {
  it("14.left: (3) a chunk size followed by spaces is 400 and writes nothing; spaces before an extension stay allowed", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, path, data } = await imageWithTicket(daemon, 4096);
      const head = `PUT /images/${id} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n`;
      // RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, where only a chunk-ext starts with BWS.
      for (const size of ["5  ", "5\t", "5 \t"]) {
        const refused = await exchange(target, `${head}${size}\r\nhello\r\n0\r\n\r\n`);
        expect(statusOf(refused.text), `${target.name} ${JSON.stringify(size)}`).toBe(400);
        expect(refused.text).toContain("Invalid chunked body: invalid chunk size line");
        expect(refused.closed).toBe(true);
        expect((await readFile(path)).equals(data)).toBe(true);
      }
      const accepted = await exchange(target, `${head}5 ;name=value\r\nhello\r\n0\r\n\r\n`, 1500, { halfClose: true });
      expect(statusOf(accepted.text), target.name).toBe(200);
      expect((await readFile(path)).subarray(0, 5).toString()).toBe("hello");
    }
  });
});

describe("14.left: OPTIONS *", () => {
  it("14.left: (4) OPTIONS * asks about the server: 200 with what OPTIONS /images/* answers; the control service lists its methods", async () => {
    for (const target of imagesServices(daemon)) {
      const answer = await exchange(target, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 1500, { halfClose: true });
      expect(statusOf(answer.text), target.name).toBe(200);
      expect(answer.text).toContain("\r\nallow: OPTIONS,GET,PUT,PATCH\r\n");
      const body = JSON.parse(answer.text.slice(answer.text.indexOf("\r\n\r\n") + 4));
      expect(body).toEqual({ unix_socket: daemon.localSocket, features: ["checksum", "extents", "flush", "zero"] });
      // The asterisk form names no resource for any other method.
      const get = await exchange(target, "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 1500, { halfClose: true });
      expect(statusOf(get.text), target.name).toBe(405);
    }
    const control = await exchange(
      unixTarget("control", daemon.controlSocket),
      "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
      1500,
      { halfClose: true },
    );
    expect(statusOf(control.text)).toBe(200);
    expect(control.text).toContain("\r\nallow: OPTIONS,PUT,GET,PATCH,DELETE\r\n");
    expect(control.text).toContain("\r\ncontent-length: 0\r\n");
  });
});

describe("14.left: TLS handshakes", () => {
  it("14.left: (6) a TCP client that sends its FIN before any TLS byte is closed at once, not at the handshake deadline", async () => {
    const before = await openDescriptors();
    const closes: Promise<number>[] = [];
    for (let round = 0; round < 10; round++) {
      const socket = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
      socket.on("error", () => undefined);
      const started = Date.now();
      closes.push(new Promise((resolve) => socket.once("close", () => resolve(Date.now() - started))));
      socket.once("connect", () => socket.end());
    }
    // The handshake deadline is 60 s: a close within a few seconds is the FIN's doing.
    const deadline = new Promise<number>((resolve) =>
      setTimeout(() => resolve(Number.POSITIVE_INFINITY), 5000).unref(),
    );
    for (const close of closes) expect(await Promise.race([close, deadline])).toBeLessThan(5000);
    expect(await eventually(async () => (await openDescriptors()) <= before, 5000)).toBe(true);
    // A client that half-closes after its request on a finished handshake is still answered.
    const [remote] = imagesServices(daemon) as [RawTarget];
    const answer = await exchange(remote, "GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n", 1500, { halfClose: true });
    expect(statusOf(answer.text)).toBe(200);
  });
});
