/**
 * Issue 11: the daemon serves nbd tickets through every images route, against real qemu-nbd
 * (started the way Vdsm does) and nbdkit exports on temporary unix sockets.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { blkhash } from "../src/io/blkhash.js";
import { MemoryBackend } from "../src/io/memory.js";
import { addTicket, type InProcessDaemon, request, startInProcess } from "./helpers/daemon.js";
import { type NbdServer, nbdinfoMap, run, skipUnless, startNbdkit, startQemuNbd } from "./helpers/nbd.js";

const MiB = 1024 * 1024;
const skip = skipUnless("qemu-nbd", "qemu-img", "qemu-io", "nbdkit", "nbdinfo");
let daemon: InProcessDaemon;
const servers: NbdServer[] = [];
let counter = 0;

beforeAll(async () => {
  daemon = await startInProcess({ config: { daemon: { max_connections: 6 } } });
});
afterAll(async () => {
  await daemon?.stop();
});
afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});

const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

async function ticket(url: string, size: number, extra: Record<string, unknown> = {}): Promise<string> {
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size, url, timeout: 300, ops: ["read", "write"], ...extra });
  return id;
}

/**
 * The chain of the design notes: base (4 MiB) with data at 0–64 KiB and a zero cluster at
 * 1 MiB; top over it with data at 2 MiB and a zero cluster at 3 MiB, and bitmap b0 on top
 * that records top's writes.
 */
async function chain(): Promise<{ base: string; top: string }> {
  const base = daemon.tmp.file(`base-${counter}.qcow2`);
  const top = daemon.tmp.file(`top-${counter++}.qcow2`);
  await run("qemu-img", ["create", "-f", "qcow2", base, "4M"]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -z 1M 64k", base]);
  await run("qemu-img", ["create", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
  await run("qemu-img", ["bitmap", "--add", top, "b0"]);
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x42 2M 64k", "-c", "write -z 3M 64k", top]);
  return { base, top };
}

describe.skipIf(skip !== undefined)("nbd tickets", () => {
  it("11.6: upload, download, zero, flush, OPTIONS and checksum on a qemu-nbd qcow2 export", async () => {
    const image = daemon.tmp.file(`disk-${counter++}.qcow2`);
    const size = 6 * MiB;
    await run("qemu-img", ["create", "-f", "qcow2", image, String(size)]);
    const server = await startQemuNbd(daemon.tmp.path, image, { allocationDepth: true });
    servers.push(server);
    const id = await ticket(server.url, size);

    const options = await request(daemon, { method: "OPTIONS", path: `/images/${id}` });
    expect(options.status).toBe(200);
    expect(JSON.parse(options.text)).toMatchObject({
      features: ["checksum", "extents", "flush", "zero"],
      max_readers: 6,
      max_writers: 6,
      size,
    });

    const data = randomBytes(size);
    const put = await request(daemon, { method: "PUT", path: `/images/${id}`, body: data, service: "local" });
    expect(put.status, put.text).toBe(200);
    const part = randomBytes(12_345);
    const range = await request(daemon, {
      method: "PUT",
      path: `/images/${id}?flush=n`,
      headers: { "content-range": `bytes 777-${777 + part.length - 1}/*` },
      body: part,
    });
    expect(range.status).toBe(200);
    part.copy(data, 777);
    const zero = await request(daemon, {
      method: "PATCH",
      path: `/images/${id}`,
      body: JSON.stringify({ op: "zero", offset: MiB, size: 2 * MiB + 3, flush: true }),
    });
    expect(zero.status, zero.text).toBe(200);
    data.fill(0, MiB, 3 * MiB + 3);
    const flush = await request(daemon, { method: "PATCH", path: `/images/${id}`, body: '{"op": "flush"}' });
    expect(flush.status).toBe(200);

    const get = await request(daemon, { path: `/images/${id}`, service: "local" });
    expect(get.status).toBe(200);
    expect(sha(get.body)).toBe(sha(data));
    const partial = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=513-70000" } });
    expect(partial.status).toBe(206);
    expect(partial.body.equals(data.subarray(513, 70001))).toBe(true);

    const extents = JSON.parse((await request(daemon, { path: `/images/${id}/extents` })).text);
    const zeroed = extents.find(
      (e: { start: number; length: number }) => e.start <= MiB + 65536 && e.start + e.length > MiB + 65536,
    );
    expect(zeroed).toMatchObject({ zero: true, hole: false });

    const checksum = await request(daemon, { path: `/images/${id}/checksum` });
    expect(checksum.status).toBe(200);
    const expected = await blkhash(MemoryBackend.create({ data }));
    expect(JSON.parse(checksum.text)).toEqual(expected);

    // Past the export: the nbd backend refuses before the wire; the daemon keeps serving.
    const past = await request(daemon, {
      method: "PUT",
      path: `/images/${id}`,
      headers: { "content-range": `bytes ${size - 10}-${size + 9}/*` },
      body: Buffer.alloc(20),
    });
    expect(past.status).toBe(416);
    await server.stop();
    servers.length = 0;
    const raw = daemon.tmp.file(`expected-${counter++}.raw`);
    await writeFile(raw, data);
    await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, image]);
  });

  it("11.6: extents of a qcow2 chain: hole from allocation depth 0, zero clusters are zero but not holes", async () => {
    const { top } = await chain();
    const server = await startQemuNbd(daemon.tmp.path, top, { allocationDepth: true, readOnly: true });
    servers.push(server);
    const id = await ticket(server.url, 4 * MiB, { ops: ["read"] });
    const K = 1024;
    const response = await request(daemon, { path: `/images/${id}/extents` });
    expect(response.status).toBe(200);
    expect(JSON.parse(response.text)).toEqual([
      { start: 0, length: 64 * K, zero: false, hole: false },
      { start: 64 * K, length: 960 * K, zero: true, hole: true },
      { start: MiB, length: 64 * K, zero: true, hole: false },
      { start: MiB + 64 * K, length: 960 * K, zero: true, hole: true },
      { start: 2 * MiB, length: 64 * K, zero: false, hole: false },
      { start: 2 * MiB + 64 * K, length: 960 * K, zero: true, hole: true },
      { start: 3 * MiB, length: 64 * K, zero: true, hole: false },
      { start: 3 * MiB + 64 * K, length: 960 * K, zero: true, hole: true },
    ]);
    // The oracle agrees: unallocated in the whole chain is exactly where we say hole.
    const map = JSON.parse(await run("qemu-img", ["map", "--output=json", "-U", top])) as {
      start: number;
      length: number;
      present?: boolean;
      depth: number;
    }[];
    const holes = map.filter((e) => e.present === false).map((e) => [e.start, e.length]);
    expect(holes).toEqual([
      [64 * K, 960 * K],
      [MiB + 64 * K, 960 * K],
      [2 * MiB + 64 * K, 960 * K],
      [3 * MiB + 64 * K, 960 * K],
    ]);
    const partial = await request(daemon, { path: `/images/${id}/extents?start=${MiB + 4096}&length=${MiB}` });
    expect(JSON.parse(partial.text)).toEqual([
      { start: MiB + 4096, length: 60 * K, zero: true, hole: false },
      { start: MiB + 64 * K, length: 960 * K, zero: true, hole: true },
      { start: 2 * MiB, length: 4096, zero: false, hole: false },
    ]);
    // A raw export without -A never reports holes.
    const plain = await startQemuNbd(daemon.tmp.path, top, { readOnly: true });
    servers.push(plain);
    const noDepth = await ticket(plain.url, 4 * MiB, { ops: ["read"] });
    const flat = JSON.parse((await request(daemon, { path: `/images/${noDepth}/extents` })).text);
    expect(flat.every((e: { hole: boolean }) => !e.hole)).toBe(true);
  });

  it("11.6: a dirty ticket on an export with one bitmap returns dirty extents (context=dirty), as nbdinfo sees them; two bitmaps or none: 404", async () => {
    const { top } = await chain();
    const server = await startQemuNbd(daemon.tmp.path, top, { allocationDepth: true, readOnly: true, bitmap: "b0" });
    servers.push(server);
    const id = await ticket(server.url, 4 * MiB, { ops: ["read"], dirty: true });
    const K = 1024;
    const response = await request(daemon, { path: `/images/${id}/extents?context=dirty` });
    expect(response.status, response.text).toBe(200);
    expect(JSON.parse(response.text)).toEqual([
      { start: 0, length: 64 * K, dirty: false, zero: false },
      { start: 64 * K, length: 2 * MiB - 64 * K, dirty: false, zero: true },
      { start: 2 * MiB, length: 64 * K, dirty: true, zero: false },
      { start: 2 * MiB + 64 * K, length: 960 * K, dirty: false, zero: true },
      { start: 3 * MiB, length: 64 * K, dirty: true, zero: true },
      { start: 3 * MiB + 64 * K, length: 960 * K, dirty: false, zero: true },
    ]);
    // The oracle: nbdinfo's view of the bitmap marks exactly our dirty ranges.
    const bitmap = await nbdinfoMap(server.socket, "qemu:dirty-bitmap:b0");
    const dirtyRanges = bitmap.filter((e) => (e.type & 1) !== 0).map((e) => [e.offset, e.length]);
    expect(dirtyRanges).toEqual([
      [2 * MiB, 64 * K],
      [3 * MiB, 64 * K],
    ]);
    // Two bitmaps and no way to choose: dirty extents are refused, not guessed.
    const other = (await chain()).top;
    await run("qemu-img", ["bitmap", "--add", other, "b1"]);
    const two = await startQemuNbd(daemon.tmp.path, other, { readOnly: true, bitmap: ["b0", "b1"] });
    servers.push(two);
    const ambiguous = await ticket(two.url, 4 * MiB, { ops: ["read"], dirty: true });
    const refused = await request(daemon, { path: `/images/${ambiguous}/extents?context=dirty` });
    expect(refused.status).toBe(404);
    expect(refused.text).toContain("no single dirty bitmap");
    // Without a bitmap on the export: 404 with the reason.
    const noBitmap = await startQemuNbd(daemon.tmp.path, top, { readOnly: true });
    servers.push(noBitmap);
    const plain = await ticket(noBitmap.url, 4 * MiB, { ops: ["read"], dirty: true });
    const missing = await request(daemon, { path: `/images/${plain}/extents?context=dirty` });
    expect(missing.status).toBe(404);
    expect(missing.text).toContain("no single dirty bitmap");
  });

  it("11.7: a missing socket, a read-only export opened for writing and EIO give 500 and the daemon keeps serving", async () => {
    const gone = await ticket(`nbd:unix:${daemon.tmp.file("nosuch.sock")}`, MiB);
    const refused = await request(daemon, { path: `/images/${gone}` });
    expect(refused.status).toBe(500);
    expect(daemon.logs()).toMatch(/Cannot connect to NBD server at unix:\S*nosuch\.sock: ENOENT/);

    const image = daemon.tmp.file(`ro-${counter++}.qcow2`);
    await run("qemu-img", ["create", "-f", "qcow2", image, "1M"]);
    const readOnly = await startQemuNbd(daemon.tmp.path, image, { readOnly: true });
    servers.push(readOnly);
    const writer = await ticket(readOnly.url, MiB);
    const put = await request(daemon, { method: "PUT", path: `/images/${writer}`, body: Buffer.alloc(4096) });
    expect(put.status).toBe(500);
    expect(daemon.logs()).toContain("is read-only, but write access was asked for");

    const eio = await startNbdkit(daemon.tmp.path, "memory", ["size=1M", "error=EIO", "error-pread-rate=100%"], {
      filters: ["error"],
    });
    servers.push(eio);
    const broken = await ticket(eio.url, MiB);
    const get = await request(daemon, { path: `/images/${broken}` });
    expect(get.status).toBe(500);
    expect(daemon.logs()).toMatch(/NBD READ of \d+ bytes at offset \d+ on unix:\S+ failed: EIO/);
    // Writes still work on that export, and the daemon serves other tickets.
    const ok = await request(daemon, { method: "PUT", path: `/images/${broken}`, body: Buffer.alloc(4096, 1) });
    expect(ok.status).toBe(200);
    const options = await request(daemon, { method: "OPTIONS", path: "/images/*" });
    expect(options.status).toBe(200);
  });

  it("11.8: a server killed during a download ends the response at once; ENOSPC on upload is a 500; the daemon keeps serving", async () => {
    const slow = await startNbdkit(daemon.tmp.path, "memory", ["size=64M", "delay-read=200ms"], { filters: ["delay"] });
    servers.push(slow);
    const id = await ticket(slow.url, 64 * MiB, { ops: ["read"] });
    const started = Date.now();
    const download = request(daemon, { path: `/images/${id}` }).then(
      (response) => ({ response, error: undefined }),
      (error: unknown) => ({ response: undefined, error }),
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(slow.pid, "SIGKILL");
    const outcome = await download;
    expect(Date.now() - started).toBeLessThan(5000);
    // Either the headers were out (the body ends short) or the daemon answered 500.
    if (outcome.response !== undefined) {
      expect(outcome.response.status === 500 || outcome.response.body.length < 64 * MiB).toBe(true);
    } else {
      expect(String(outcome.error)).toMatch(/aborted|socket hang up|ECONNRESET/);
    }
    expect(daemon.logs()).toMatch(/ABORT response cut off|closed the connection/);

    const full = await startNbdkit(daemon.tmp.path, "memory", ["size=1M", "error=ENOSPC", "error-pwrite-rate=100%"], {
      filters: ["error"],
    });
    servers.push(full);
    const writer = await ticket(full.url, MiB);
    const put = await request(daemon, { method: "PUT", path: `/images/${writer}`, body: Buffer.alloc(MiB, 7) });
    expect(put.status).toBe(500);
    expect(daemon.logs()).toMatch(/NBD WRITE of \d+ bytes at offset \d+ on unix:\S+ failed: ENOSPC/);
    const options = await request(daemon, { method: "OPTIONS", path: `/images/${writer}` });
    expect(options.status).toBe(200);
  });
});
