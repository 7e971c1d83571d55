import { randomBytes } from "node:crypto";
import net, { type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { BodyReader } from "./body.js";
import { Inbound } from "./inbound.js";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A connected pair: the server side read by an Inbound into a body reader, as WireConnection does. */
async function connectedBody(length: number) {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect({ host: "127.0.0.1", port: (server.address() as net.AddressInfo).port });
  const socket = await accepted;
  cleanups.push(() => {
    client.destroy();
    socket.destroy();
    server.close();
  });
  // Every useUserBuffer call leaves Node one native stream listener (its reads and end) until the socket is destroyed.
  const handle = (socket as unknown as { _handle: { useUserBuffer: (buffer: Uint8Array) => void } })._handle;
  const original = handle.useUserBuffer;
  let switches = 0;
  handle.useUserBuffer = function (this: unknown, buffer: Uint8Array) {
    switches++;
    return original.call(this, buffer);
  };
  let reads = 0;
  let body: BodyReader | undefined;
  const inbound = new Inbound(socket, {
    directRegion: (most) => body?.directRegion(most),
    directRead: (count) => {
      reads++;
      body?.directRead(count);
    },
    wake: () => {
      reads++;
      body?.wake();
    },
  });
  body = new BodyReader(
    { kind: "length", length },
    inbound,
    () => undefined,
    () => inbound.withdrawDirect(),
  );
  inbound.begin();
  return { client, body, switches: () => switches, reads: () => reads };
}

async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("14.left: abandoned body reads", () => {
  it("14.left: (5) 100 abandoned reads on one connection leave no listener each; every byte still arrives in order", async () => {
    const rounds = 100;
    const sent = randomBytes(2 * rounds + 1000);
    const { client, body, switches, reads } = await connectedBody(sent.length);
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on("warning", onWarning);
    cleanups.push(() => process.off("warning", onWarning));
    const received: Buffer[] = [];
    for (let round = 0; round < rounds; round++) {
      const cancel = new AbortController();
      const dest = Buffer.alloc(4096);
      const filling = body.fill(dest, cancel.signal);
      // A first byte arrives while the fill waits: the next read then goes straight into `dest`.
      const before = reads();
      client.write(sent.subarray(2 * round, 2 * round + 1));
      await until(() => reads() > before);
      // The transfer is cancelled; the fill ends at the client's next bytes, with what it has.
      cancel.abort();
      client.write(sent.subarray(2 * round + 1, 2 * round + 2));
      const count = await filling;
      received.push(Buffer.from(dest.subarray(0, count)));
    }
    client.end(sent.subarray(2 * rounds));
    const rest = Buffer.alloc(sent.length);
    let filled = 0;
    for (let count = 1; count > 0; filled += count) count = await body.fill(rest.subarray(filled));
    received.push(rest.subarray(0, filled));
    expect(Buffer.concat(received).equals(sent)).toBe(true);
    // The read buffer is switched when reading starts, and at most once more (at the end).
    expect(switches()).toBeLessThanOrEqual(2);
    expect(warnings.map((warning) => warning.name)).not.toContain("MaxListenersExceededWarning");
  });
});
