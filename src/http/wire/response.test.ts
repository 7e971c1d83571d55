import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { WireResponse } from "./response.js";

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const step of cleanup.reverse()) step();
  cleanup = [];
});

/** A connected socket pair over a unix socket: [server side, client side]. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const dir = mkdtempSync(join(tmpdir(), "imageio-wire-response-"));
  const path = join(dir, "s.sock");
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect(path);
  const serverSide = await accepted;
  cleanup.push(() => {
    client.destroy();
    serverSide.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return [serverSide, client];
}

describe("14.wire: response heads", () => {
  it("14.wire: a header name or value with CR or LF is refused before anything is written", async () => {
    const [socket, client] = await socketPair();
    const received: Buffer[] = [];
    client.on("data", (data: Buffer) => received.push(data));
    for (const headers of [
      ["content-range", "bytes */1\r\nx-injected: 1"],
      ["x-name\nx-injected", "1"],
    ]) {
      const response = new WireResponse(socket, false);
      expect(() => response.writeHead(416, headers)).toThrow(/invalid character in header/);
      expect(response.headersSent).toBe(false);
    }
    const good = new WireResponse(socket, false);
    good.writeHead(200, ["content-length", "2"]);
    await new Promise<void>((resolve) => good.end(Buffer.from("ok"), resolve));
    const expected = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const deadline = Date.now() + 5000;
    while (Buffer.concat(received).length < expected.length && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const text = Buffer.concat(received).toString("latin1");
    expect(text).toBe(expected);
  });
});
