import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import net, { type Socket } from "node:net";
import tls from "node:tls";
import { afterEach, describe, expect, it } from "vitest";
import { testCerts } from "../../../test/helpers/certs.js";
import { readIntoUserBuffers, userBufferSupport } from "./user-buffer.js";

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/**
 * Switches each served socket to user-buffer reads (after some bytes may already be buffered)
 * and collects what it reads into small, reused buffers, pausing now and then.
 */
function collect(socket: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const received: Buffer[] = [];
    const buffers = [Buffer.alloc(4096), Buffer.alloc(7000)];
    let index = 0;
    let last = buffers[0] as Buffer;
    let reads = 0;
    socket.on("error", reject);
    socket.once("end", () => resolve(Buffer.concat(received)));
    readIntoUserBuffers(socket, {
      early: (chunk) => received.push(Buffer.from(chunk)),
      next: () => {
        index ^= 1;
        last = buffers[index] as Buffer;
        return last;
      },
      read: (count) => {
        received.push(Buffer.from(last.subarray(0, count)));
        if (++reads % 50 !== 0) return true;
        // Paused: reading starts again on resume, and nothing is lost meanwhile.
        setTimeout(() => socket.resume(), 1);
        return false;
      },
    });
    socket.resume();
  });
}

const servers: net.Server[] = [];
afterEach(() => {
  for (const server of servers.splice(0)) server.close();
});

function listen(server: net.Server): Promise<number> {
  servers.push(server);
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)),
  );
}

describe("14: reading sockets into user buffers (the images services' framing depends on it)", () => {
  it(`14: this Node (${process.version}) offers the socket onread fields`, () => {
    expect(userBufferSupport()).toBeUndefined();
  });

  it("14: a live TLS socket switched after its handshake delivers every byte, in order, through pauses", async () => {
    const certs = await testCerts();
    const data = randomBytes(3 * 1024 * 1024 + 123);
    const [key, cert, ca] = await Promise.all([certs.keyFile, certs.certFile, certs.caFile].map((f) => readFile(f)));
    const received = new Promise<Buffer>((resolve, reject) => {
      const server = tls.createServer({ key, cert }, (socket) => collect(socket).then(resolve, reject));
      void listen(server).then((port) => {
        const client = tls.connect({ port, host: "127.0.0.1", ca, servername: "localhost" });
        client.on("error", reject);
        // The first bytes go with the handshake's end: some may be buffered before the switch.
        client.end(data);
      });
    });
    expect(sha256(await received)).toBe(sha256(data));
  });

  it("14: a plain socket delivers every byte, in order, through pauses", async () => {
    const data = randomBytes(5 * 1024 * 1024 + 7);
    const received = new Promise<Buffer>((resolve, reject) => {
      const server = net.createServer((socket) => collect(socket).then(resolve, reject));
      void listen(server).then((port) => {
        const client = net.connect({ port, host: "127.0.0.1" });
        client.on("error", reject);
        client.end(data);
      });
    });
    expect(sha256(await received)).toBe(sha256(data));
  });
});
