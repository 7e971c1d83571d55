/** Spec §10 items 47–55 and 79–80: extents and checksums from the real daemon. */
import { randomBytes, randomUUID } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blkhash } from "../src/io/blkhash.js";
import { openBackend } from "../src/io/open.js";
import { addTicket, type DaemonProcess, rawRequest, request, startDaemon } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;
let counter = 0;

beforeAll(async () => {
  daemon = await startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
});

async function ticketFor(path: string, size: number, extra: Record<string, unknown> = {}): Promise<string> {
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size, url: `file://${path}`, timeout: 300, ops: ["read"], ...extra });
  return id;
}

/** A 1 MiB sparse file with data only in 0–64 KiB (item 79). */
async function sparseImage(): Promise<string> {
  const path = daemon.tmp.file(`sparse-${counter++}.raw`);
  await writeFile(path, "");
  await truncate(path, MiB);
  const handle = await open(path, "r+");
  await handle.write(randomBytes(65536), 0, 65536, 0);
  await handle.close();
  return path;
}

const json = (text: string) => JSON.parse(text) as unknown;

describe("extents", () => {
  it("47: a fully allocated file is one data extent", async () => {
    const path = daemon.tmp.file("full.raw");
    await writeFile(path, randomBytes(MiB + 4096));
    const id = await ticketFor(path, MiB + 4096);
    const response = await request(daemon, { path: `/images/${id}/extents` });
    expect(response.status).toBe(200);
    expect(response.headers["content-type"]).toBe("application/json");
    expect(response.text).toBe(`[{"start": 0, "length": ${MiB + 4096}, "zero": false, "hole": false}]\n`);
  });

  it("79: [D7] a sparse file reports its hole as zero, never hole: true", async () => {
    const id = await ticketFor(await sparseImage(), MiB);
    const response = await request(daemon, { path: `/images/${id}/extents` });
    expect(json(response.text)).toEqual([
      { start: 0, length: 65536, zero: false, hole: false },
      { start: 65536, length: 983040, zero: true, hole: false },
    ]);
  });

  it("48: context=zero equals the default; context=foo is 400", async () => {
    const id = await ticketFor(await sparseImage(), MiB);
    const plain = await request(daemon, { path: `/images/${id}/extents` });
    const zero = await request(daemon, { path: `/images/${id}/extents?context=zero` });
    expect(zero.text).toBe(plain.text);
    const foo = await request(daemon, { path: `/images/${id}/extents?context=foo` });
    expect(foo.status).toBe(400);
    expect(foo.text).toBe("Unsupported value 'foo' for 'context', expecting one of ['dirty', 'zero']\n");
  });

  it("49: context=dirty is 404 without dirty: true, and 404 from the file backend with it", async () => {
    const path = await sparseImage();
    const plain = await ticketFor(path, MiB);
    const noDirty = await request(daemon, { path: `/images/${plain}/extents?context=dirty` });
    expect(noDirty.status).toBe(404);
    expect(noDirty.text).toBe("Ticket does not support dirty extents\n");
    const dirty = await ticketFor(path, MiB, { dirty: true });
    const unsupported = await request(daemon, { path: `/images/${dirty}/extents?context=dirty` });
    expect(unsupported.status).toBe(404);
    expect(unsupported.text).toBe("Operation not supported: Backend file does not support dirty extents\n");
  });

  it("51: PUT on extents is 405; an empty id is 400; an unknown ticket is 403", async () => {
    const put = await request(daemon, { method: "PUT", path: "/images/x/extents", body: "" });
    expect(put.status).toBe(405);
    expect(put.text).toBe("Method 'PUT' not defined for '/images/x/extents'\n");
    expect((await request(daemon, { path: "/images//extents" })).status).toBe(400);
    expect((await request(daemon, { path: "/images/nope/extents" })).status).toBe(403);
  });

  it("80: [D8] start and length clip the extents; bad values are 400", async () => {
    const id = await ticketFor(await sparseImage(), MiB);
    const response = await request(daemon, { path: `/images/${id}/extents?start=32768&length=65536` });
    expect(json(response.text)).toEqual([
      { start: 32768, length: 32768, zero: false, hole: false },
      { start: 65536, length: 32768, zero: true, hole: false },
    ]);
    for (const query of ["start=x", "start=-1", "length=0", `start=${MiB}`, "length=1.5"]) {
      const bad = await request(daemon, { path: `/images/${id}/extents?${query}` });
      expect(bad.status, query).toBe(400);
      expect(bad.text).toMatch(/^Invalid value for '(start|length)': '.*'\n$/);
    }
  });

  it("extents are not an operation: they leave the ticket idle and untouched", async () => {
    const id = await ticketFor(await sparseImage(), MiB);
    await request(daemon, { path: `/images/${id}/extents` });
    const status = json((await request(daemon, { service: "control", path: `/tickets/${id}` })).text) as {
      transferred: number;
    };
    expect(status.transferred).toBe(0);
  });
});

describe("checksum", () => {
  it("52: the default checksum is blake2b over 4 MiB blocks and matches the spec vector", async () => {
    const path = daemon.tmp.file("vector.raw");
    await writeFile(path, Buffer.concat([Buffer.alloc(4 * MiB), Buffer.alloc(MiB, 0xff)]));
    const id = await ticketFor(path, 5 * MiB);
    const response = await request(daemon, { path: `/images/${id}/checksum` });
    expect(response.status).toBe(200);
    expect(response.text).toBe(
      '{"algorithm": "blake2b", "block_size": 4194304, "checksum": "c399ccc0123e72534d3ae086cbdd3c2298099f8e3beb0b06995b669b0d48e338"}\n',
    );
  });

  it("53: sha256 with 1 MiB blocks, on a size that is not a multiple of 512", async () => {
    const path = daemon.tmp.file("a.raw");
    await writeFile(path, Buffer.alloc(3 * MiB + 1, "a"));
    const id = await ticketFor(path, 3 * MiB + 1);
    const response = await request(daemon, { path: `/images/${id}/checksum?algorithm=sha256&block_size=1048576` });
    expect(json(response.text)).toEqual({
      algorithm: "sha256",
      block_size: MiB,
      checksum: "9c8f5172f149daaf521bf7affba43e9eae95fa1887267336a7a5c5d9daea0c80",
    });
  });

  it("the checksum of a sparse image equals the one computed locally on the same bytes", async () => {
    const path = await sparseImage();
    const id = await ticketFor(path, MiB);
    const response = await request(daemon, { path: `/images/${id}/checksum?block_size=1048576` });
    const backend = await openBackend(`file://${path}`, { readonly: true });
    try {
      expect((json(response.text) as { checksum: string }).checksum).toBe(
        (await blkhash(backend, { blockSize: MiB })).checksum,
      );
    } finally {
      await backend.close();
    }
  });

  it("54: bad block sizes and algorithms are 400, checked before the ticket", async () => {
    const cases: Record<string, string> = {
      "block_size=x": "Invalid block size: 'x'",
      "block_size=524288": "Block size out of allowed range: 1048576-16777216",
      "block_size=33554432": "Block size out of allowed range: 1048576-16777216",
      "block_size=1049088": "Block size is not aligned to 4096",
    };
    for (const [query, message] of Object.entries(cases)) {
      const response = await request(daemon, { path: `/images/unknown/checksum?${query}` });
      expect(response.status, query).toBe(400);
      expect(response.text).toBe(`${message}\n`);
    }
    const algorithm = await request(daemon, { path: "/images/unknown/checksum?algorithm=crc32" });
    expect(algorithm.status).toBe(400);
    expect(algorithm.text).toMatch(
      /^Unsupported value 'crc32' for 'algorithm', expecting one of \['blake2b', .*'sha256'.*\]\n$/,
    );
    const forbidden = await rawRequest(daemon, "GET /images/unknown/checksum HTTP/1.1\r\nHost: x\r\n\r\n", {
      waitMs: 400,
    });
    expect(forbidden.text).toMatch(/^HTTP\/1.1 403 /);
    expect(forbidden.closed).toBe(false);
  });

  it("55: /checksum/algorithms lists sorted names for any id, without authorization", async () => {
    for (const id of ["anything", ""]) {
      const response = await request(daemon, { path: `/images/${id}/checksum/algorithms` });
      expect(response.status).toBe(200);
      const { algorithms } = json(response.text) as { algorithms: string[] };
      expect(algorithms).toEqual([...algorithms].sort());
      expect(algorithms).toEqual(expect.arrayContaining(["blake2b", "sha1", "sha256"]));
    }
  });

  it("a checksum counts toward transferred like a read of the whole image", async () => {
    const path = daemon.tmp.file("counted.raw");
    await writeFile(path, randomBytes(2 * MiB));
    const id = await ticketFor(path, 2 * MiB);
    await request(daemon, { path: `/images/${id}/checksum` });
    const status = json((await request(daemon, { service: "control", path: `/tickets/${id}` })).text) as {
      transferred: number;
      active: boolean;
    };
    expect(status).toMatchObject({ transferred: 2 * MiB, active: false });
  });
});
