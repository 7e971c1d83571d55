/**
 * Issue 11: the NBD client and backend against a scripted server (out-of-order replies,
 * protocol errors, odd block status) and real ones (nbdkit with its filters, qemu-nbd):
 * pipelining, errors, disconnects and handshake timeouts.
 */
import { createHash, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ZeroExtent } from "../src/io/backend.js";
import { NbdBackend } from "../src/io/nbd.js";
import { NbdClient } from "../src/io/nbd-client.js";
import { parseNbdUrl } from "../src/io/nbd-url.js";
import { openBackend } from "../src/io/open.js";
import { type FakeServer, startFakeNbd } from "./helpers/fake-nbd.js";
import { type NbdServer, nbdinfoMap, run, skipUnless, startNbdkit, startQemuNbd } from "./helpers/nbd.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const MiB = 1024 * 1024;
let tmp: TempDir;
const servers: (NbdServer | FakeServer)[] = [];
const backends: { close(): Promise<void> }[] = [];

beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});
afterEach(async () => {
  for (const backend of backends.splice(0)) await backend.close().catch(() => {});
  for (const server of servers.splice(0)) "stop" in server ? await server.stop() : await server.close();
});

async function keep<T extends { close(): Promise<void> }>(value: Promise<T>): Promise<T> {
  const resolved = await value;
  backends.push(resolved);
  return resolved;
}

const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
const pattern = (offset: number, length: number) => {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i += 8) bytes.writeBigUInt64BE(BigInt(offset + i), i);
  return bytes;
};

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const list: T[] = [];
  for await (const item of iterable) list.push(item);
  return list;
}

/** Resolves with how long `promise` took to settle, and its rejection. */
async function settleTime(promise: Promise<unknown>): Promise<{ ms: number; error: unknown }> {
  const start = Date.now();
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  return { ms: Date.now() - start, error };
}

describe("NBD transmission against a scripted server", () => {
  it("11.3: replies in reverse order, split in chunks of any order, land in the right bytes", async () => {
    const held: (() => void)[] = [];
    const server = await startFakeNbd(tmp.path, {
      size: 64 * MiB,
      onRequest: (request, reply) => {
        if (request.type !== 0) return reply.simple(request.cookie);
        const half = Math.floor(request.length / 2);
        held.push(() => {
          reply.data(
            request.cookie,
            request.offset + half,
            pattern(request.offset + half, request.length - half),
            false,
          );
          reply.data(request.cookie, request.offset, pattern(request.offset, half), true);
        });
        if (held.length === 8) for (const send of held.splice(0).reverse()) send();
      },
    });
    servers.push(server);
    const client = await keep(NbdClient.connect(parseNbdUrl(server.url)));
    const buffers = Array.from({ length: 8 }, () => Buffer.alloc(64 * 1024));
    await Promise.all(buffers.map((buf, i) => client.read(buf, i * 1024 * 1024)));
    buffers.forEach((buf, i) => {
      expect(buf.equals(pattern(i * MiB, 64 * 1024))).toBe(true);
    });
    expect(client.pendingCount).toBe(0);
  });

  it("11.3: a reply to an unknown cookie fails every pending request at once, and later calls fail fast", async () => {
    let seen = 0;
    const server = await startFakeNbd(tmp.path, {
      size: MiB,
      onRequest: (_request, reply) => {
        seen += 1;
        if (seen === 4) reply.simple(Buffer.from("00000000deadbeef", "hex"));
      },
    });
    servers.push(server);
    const client = await keep(NbdClient.connect(parseNbdUrl(server.url)));
    const reads = Array.from({ length: 4 }, (_, i) => settleTime(client.read(Buffer.alloc(4096), i * 4096)));
    for (const { ms, error } of await Promise.all(reads)) {
      expect(ms).toBeLessThan(1000);
      expect(error).toMatchObject({ code: "IMAGEIO_ERR_BACKEND_IO", errno: "EPROTO" });
      expect(String(error)).toContain("unknown cookie");
    }
    await expect(client.read(Buffer.alloc(1), 0)).rejects.toMatchObject({ errno: "EPROTO" });
  });

  it("11.3: EOF in the middle of a payload fails all pending requests with ECONNRESET", async () => {
    const server = await startFakeNbd(tmp.path, {
      size: MiB,
      onRequest: (request, reply, socket) => {
        if (request.offset === 0) {
          reply.raw(
            Buffer.concat([Buffer.from("668e33ef00010001", "hex"), request.cookie, Buffer.from("00001008", "hex")]),
          );
          reply.raw(Buffer.alloc(100));
          socket.destroy();
        }
      },
    });
    servers.push(server);
    const client = await keep(NbdClient.connect(parseNbdUrl(server.url)));
    const results = await Promise.all(
      [4096, 0, 8192].map((offset) => settleTime(client.read(Buffer.alloc(4096), offset))),
    );
    for (const { error } of results) expect(error).toMatchObject({ errno: "ECONNRESET" });
    expect(String(results[0]?.error)).toMatch(/closed the connection with \d+ requests in flight/);
  });

  it("11.3: an unknown error chunk type fails only its request; the connection keeps working", async () => {
    const server = await startFakeNbd(tmp.path, {
      size: MiB,
      onRequest: (request, reply) => {
        if (request.offset === 4096) return reply.chunk(request.cookie, 0x8fff, Buffer.alloc(6), true);
        reply.data(request.cookie, request.offset, pattern(request.offset, request.length), true);
      },
    });
    servers.push(server);
    const client = await keep(NbdClient.connect(parseNbdUrl(server.url)));
    await expect(client.read(Buffer.alloc(4096), 4096)).rejects.toThrow(/unknown error chunk type 0x8fff/);
    const buf = Buffer.alloc(4096);
    await client.read(buf, 8192);
    expect(buf.equals(pattern(8192, 4096))).toBe(true);
  });

  it("11.4: extents: short replies are re-queried, overshoot clipped, unequal contexts cut, unknown bits ignored", async () => {
    const queries: [number, number][] = [];
    const size = 10 * MiB;
    const server = await startFakeNbd(tmp.path, {
      size,
      contexts: { "base:allocation": 7, "qemu:allocation-depth": 3 },
      onRequest: (request, reply) => {
        if (request.type !== 7) return reply.simple(request.cookie);
        queries.push([request.offset, request.length]);
        // base: 1 MiB with an unknown bit 2 (ignored), then zero to the end, but each reply stops
        // 3 MiB after its offset; depth: allocated below 2 MiB, then a hole. Depth replies stop
        // at 2 MiB, and a last extent may overshoot the export end by far.
        const base: [number, number][] =
          request.offset < MiB
            ? [
                [MiB - request.offset, 0x4],
                [2 * MiB, 0x3],
              ]
            : [[3 * MiB, 0x3]];
        const depth: [number, number][] =
          request.offset < 2 * MiB ? [[2 * MiB - request.offset, 1]] : [[0xfff00000, 0]];
        reply.status(request.cookie, 7, base, false);
        reply.status(request.cookie, 3, depth, true);
      },
    });
    servers.push(server);
    const backend = await keep(NbdBackend.open(server.url, { readonly: true }));
    expect(await collect(backend.extents("zero"))).toEqual([
      { start: 0, length: MiB, zero: false, hole: false },
      { start: MiB, length: MiB, zero: true, hole: false },
      { start: 2 * MiB, length: 8 * MiB, zero: true, hole: true },
    ]);
    // Re-queried where the shorter context (depth) ended, then where base's replies ended.
    expect(queries).toEqual([
      [0, size],
      [2 * MiB, 8 * MiB],
      [5 * MiB, 5 * MiB],
      [8 * MiB, 2 * MiB],
    ]);
    // A partial range is clipped on both sides.
    expect(await collect(backend.extents("zero", { start: MiB - 10, length: 20 }))).toEqual([
      { start: MiB - 10, length: 10, zero: false, hole: false },
      { start: MiB, length: 10, zero: true, hole: false },
    ]);
  });

  it("11.4: block status that makes no progress is an error, not a loop", async () => {
    const server = await startFakeNbd(tmp.path, {
      size: MiB,
      contexts: { "base:allocation": 1 },
      onRequest: (request, reply) => {
        if (request.type !== 7) return reply.simple(request.cookie);
        reply.status(request.cookie, 9, [[4096, 0]], true);
      },
    });
    servers.push(server);
    const backend = await keep(NbdBackend.open(server.url, { readonly: true }));
    await expect(collect(backend.extents("zero"))).rejects.toThrow(/context 9, which was not negotiated/);
  });

  it("11.8: a server that never finishes the handshake times out with a clear message", async () => {
    const server = await startFakeNbd(tmp.path, { size: MiB, silent: true });
    servers.push(server);
    const { ms, error } = await settleTime(NbdBackend.open(server.url, { nbd: { handshakeTimeoutMs: 300 } }));
    expect(error).toMatchObject({ code: "IMAGEIO_ERR_BACKEND_OPEN" });
    expect(String(error)).toContain("did not complete the handshake within 0.3 s");
    expect(ms).toBeLessThan(2000);
  });
});

const realSkip = skipUnless("nbdkit", "qemu-nbd", "qemu-img", "nbdinfo");

describe.skipIf(realSkip !== undefined)("NBD against real servers", () => {
  it("11.2: a server without fixed newstyle is refused; a missing export is named", async () => {
    const old = await startNbdkit(tmp.path, "memory", ["size=1M"], { flags: ["--mask-handshake=0"] });
    servers.push(old);
    await expect(NbdBackend.open(old.url)).rejects.toThrow(/does not support fixed newstyle negotiation/);
    const image = tmp.file("named.qcow2");
    await run("qemu-img", ["create", "-f", "qcow2", image, "1M"]);
    const named = await startQemuNbd(tmp.path, image, { exportName: "sda" });
    servers.push(named);
    await expect(NbdBackend.open(`nbd:unix:${named.socket}:exportname=sdb`)).rejects.toThrow(
      /no export named 'sdb': export 'sdb' not present/,
    );
    const ok = await keep(NbdBackend.open(`nbd:unix:${named.socket}:exportname=sda`));
    expect(await ok.size()).toBe(MiB);
    expect(ok.exportInfo.minimumBlock).toBe(1);
    expect(ok.exportInfo.maximumPayload).toBe(32 * MiB);
  });

  it("11.2: without structured replies (nbdkit --no-sr) reads and writes work and extents are one data extent", async () => {
    const server = await startNbdkit(tmp.path, "memory", ["size=4M"], { flags: ["--no-sr"] });
    servers.push(server);
    const backend = await keep(NbdBackend.open(server.url));
    expect(backend.exportInfo.structuredReplies).toBe(false);
    const data = randomBytes(3 * MiB + 17);
    await backend.write(data, 5);
    const back = Buffer.alloc(data.length);
    await backend.read(back, 5);
    expect(back.equals(data)).toBe(true);
    expect(await collect(backend.extents("zero"))).toEqual([{ start: 0, length: 4 * MiB, zero: false, hole: false }]);
  });

  it("11.2: a 4096-byte minimum block size (blocksize-policy) is obeyed through the aligned wrapper", async () => {
    const server = await startNbdkit(
      tmp.path,
      "memory",
      ["size=1M", "blocksize-minimum=4096", "blocksize-error-policy=error"],
      {
        filters: ["blocksize-policy"],
      },
    );
    servers.push(server);
    const backend = await keep(openBackend(server.url));
    const model = Buffer.alloc(MiB);
    for (const [offset, length] of [
      [1, 10],
      [4095, 4099],
      [100_000, 300_001],
    ] as const) {
      const data = randomBytes(length);
      await backend.write(data, offset);
      data.copy(model, offset);
    }
    const back = Buffer.alloc(MiB);
    await backend.read(back, 0);
    expect(back.equals(model)).toBe(true);
  });

  it("11.5: random I/O up to 40 MiB matches a model on nbdkit memory and qemu-nbd raw (qemu-img compare)", async () => {
    const size = 48 * MiB;
    const image = tmp.file("random.raw");
    await run("qemu-img", ["create", "-f", "raw", image, String(size)]);
    const qemu = await startQemuNbd(tmp.path, image, { format: "raw" });
    const memory = await startNbdkit(tmp.path, "memory", [`size=${size}`]);
    servers.push(qemu, memory);
    for (const server of [qemu, memory]) {
      const model = Buffer.alloc(size);
      const backend = await keep(NbdBackend.open(server.url));
      let seed = 7;
      const next = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      for (let round = 0; round < 12; round++) {
        const length = round === 0 ? 40 * MiB + 3 : 1 + next(round % 2 === 0 ? 40 * MiB : 70_000);
        const offset = next(size - length);
        if (round % 4 === 3) {
          await backend.zero(offset, length, { punchHole: round % 8 === 3 });
          model.fill(0, offset, offset + length);
        } else {
          const data = randomBytes(length);
          await backend.write(data, offset);
          data.copy(model, offset);
        }
        const check = Buffer.alloc(Math.min(length, 3 * MiB));
        await backend.read(check, offset);
        expect(check.equals(model.subarray(offset, offset + check.length))).toBe(true);
      }
      await backend.flush();
      const all = Buffer.alloc(size);
      await backend.read(all, 0);
      expect(sha(all)).toBe(sha(model));
      if (server === qemu) {
        const expected = tmp.file("model.raw");
        await writeFile(expected, model);
        await run("qemu-img", ["compare", "-U", "-f", "raw", "-F", "raw", expected, image]);
      }
    }
  });

  it("11.3: pipelining keeps 16 requests (or the byte bound) in flight, never more, and the cookie table drains", async () => {
    const server = await startNbdkit(tmp.path, "memory", ["size=64M", "delay-read=50ms"], { filters: ["delay"] });
    servers.push(server);
    /** Issues `count` 256 KiB reads and returns the most requests the client held pending at once. */
    const mostInFlight = async (client: NbdClient, count: number): Promise<number> => {
      let done = false;
      const reads = Promise.all(
        Array.from({ length: count }, (_, i) => client.read(Buffer.alloc(256 * 1024), i * 256 * 1024)),
      ).finally(() => {
        done = true;
      });
      let most = 0;
      while (!done) {
        most = Math.max(most, client.pendingCount);
        await new Promise((resolve) => setImmediate(resolve));
      }
      await reads;
      expect(client.pendingCount).toBe(0);
      return most;
    };
    const client = await keep(NbdClient.connect(parseNbdUrl(server.url)));
    expect(await mostInFlight(client, 64)).toBe(16);
    // The byte bound: 1 MiB in flight is four 256 KiB reads.
    const bounded = await keep(NbdClient.connect(parseNbdUrl(server.url), { maxBytes: MiB }));
    expect(await mostInFlight(bounded, 16)).toBe(4);
  });

  it("11.8: a server killed with requests in flight fails them all within a second; later calls fail fast", async () => {
    const server = await startNbdkit(tmp.path, "memory", ["size=64M", "delay-read=10000ms"], { filters: ["delay"] });
    servers.push(server);
    const backend = await keep(NbdBackend.open(server.url));
    const read = settleTime(backend.read(Buffer.alloc(8 * MiB), 0));
    // The requests are on the wire once the client holds them pending.
    const client = (backend as unknown as { client: NbdClient }).client;
    const deadline = Date.now() + 5000;
    while (client.pendingCount < 16 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(client.pendingCount).toBe(16);
    process.kill(server.pid, "SIGKILL");
    const { ms, error } = await read;
    expect(ms).toBeLessThan(1500);
    expect(error).toMatchObject({ code: "IMAGEIO_ERR_BACKEND_IO", errno: "ECONNRESET" });
    const later = await settleTime(backend.read(Buffer.alloc(4096), 0));
    expect(later.ms).toBeLessThan(100);
    expect(later.error).toMatchObject({ errno: "ECONNRESET" });
    await backend.close();
  });

  it("11.8: a qemu-nbd serving its --shared limit never greets: the second handshake times out", async () => {
    const image = tmp.file("busy.qcow2");
    await run("qemu-img", ["create", "-f", "qcow2", image, "1M"]);
    const server = await startQemuNbd(tmp.path, image, { shared: 1 });
    servers.push(server);
    const first = await keep(NbdBackend.open(server.url));
    const { error } = await settleTime(NbdBackend.open(server.url, { nbd: { handshakeTimeoutMs: 500 } }));
    expect(String(error)).toContain("did not complete the handshake within 0.5 s");
    await first.close();
  });

  it("11.7: errors injected by nbdkit's error filter (EIO, ENOSPC, EPERM, ESHUTDOWN) reach the caller with their errno", async () => {
    for (const [errno, kind] of [
      ["EIO", "pread"],
      ["ENOSPC", "pwrite"],
      ["EPERM", "zero"],
    ] as const) {
      const server = await startNbdkit(tmp.path, "memory", ["size=1M", `error=${errno}`, `error-${kind}-rate=100%`], {
        filters: ["error"],
      });
      servers.push(server);
      const backend = await keep(NbdBackend.open(server.url));
      const operation =
        kind === "pread"
          ? backend.read(Buffer.alloc(MiB), 0)
          : kind === "pwrite"
            ? backend.write(Buffer.alloc(MiB, 1), 0)
            : backend.zero(0, MiB);
      await expect(operation).rejects.toMatchObject({ code: "IMAGEIO_ERR_BACKEND_IO", errno });
      // The connection survives a request error.
      if (kind !== "pread") expect((await backend.read(Buffer.alloc(10), 0)) === 10).toBe(true);
    }
    // ESHUTDOWN: the request fails, then the client disconnects softly and refuses new requests.
    const leaving = await startNbdkit(tmp.path, "memory", ["size=1M", "error=ESHUTDOWN", "error-pread-rate=100%"], {
      filters: ["error"],
    });
    servers.push(leaving);
    const backend = await keep(NbdBackend.open(leaving.url));
    await expect(backend.read(Buffer.alloc(4096), 0)).rejects.toMatchObject({ errno: "ESHUTDOWN" });
    await expect(backend.write(Buffer.alloc(1), 0)).rejects.toThrow(/is closing|is closed/);
  });

  it("11.7: a read-only export opened for writing fails at open; a read-only handle refuses writes before the wire", async () => {
    const image = tmp.file("ro.qcow2");
    await run("qemu-img", ["create", "-f", "qcow2", image, "1M"]);
    const server = await startQemuNbd(tmp.path, image, { readOnly: true });
    servers.push(server);
    await expect(NbdBackend.open(server.url)).rejects.toThrow(/is read-only, but write access was asked for/);
    const reader = await keep(NbdBackend.open(server.url, { readonly: true }));
    await expect(reader.write(Buffer.alloc(1), 0)).rejects.toMatchObject({ code: "IMAGEIO_ERR_NOT_SUPPORTED" });
  });

  it("11.4: sparse-random reads are stable and its extents agree with nbdinfo --map", async () => {
    const server = await startNbdkit(tmp.path, "sparse-random", ["64M", "seed=42", "percent=30", "runlength=262144"]);
    servers.push(server);
    const backend = await keep(NbdBackend.open(server.url));
    const a = Buffer.alloc(64 * MiB);
    const b = Buffer.alloc(64 * MiB);
    await backend.read(a, 0);
    await backend.read(b, 0);
    expect(sha(a)).toBe(sha(b));
    // Writing the same bytes back is verified by the plugin (different data would be EIO).
    await backend.write(a.subarray(0, 8 * MiB), 0);
    const ours: ZeroExtent[] = await collect(backend.extents("zero"));
    const theirs = await nbdinfoMap(server.socket);
    const merged: { start: number; length: number; zero: boolean }[] = [];
    for (const e of theirs) {
      const zero = (e.type & 2) !== 0;
      const last = merged.at(-1);
      if (last && last.zero === zero) last.length += e.length;
      else merged.push({ start: e.offset, length: e.length, zero });
    }
    expect(ours.map(({ start, length, zero }) => ({ start, length, zero }))).toEqual(merged);
    for (const extent of ours.filter((e) => e.zero)) {
      expect(a.subarray(extent.start, extent.start + extent.length).every((x) => x === 0)).toBe(true);
    }
  });

  it("11.8: close() waits for requests in flight, sends DISC, and is idempotent", async () => {
    const server = await startNbdkit(tmp.path, "memory", ["size=16M", "delay-read=100ms"], {
      filters: ["delay"],
      flags: ["-v"],
    });
    servers.push(server);
    const backend = await NbdBackend.open(server.url);
    const data = Buffer.alloc(8 * MiB);
    const read = backend.read(data, 0);
    const closing = backend.close();
    await expect(backend.read(Buffer.alloc(1), 0)).rejects.toMatchObject({ code: "IMAGEIO_ERR_CLOSED" });
    await read;
    await closing;
    await backend.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(server.output()).toMatch(/NBD_CMD_DISC/);
  });
});
