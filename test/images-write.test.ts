/** Spec §10 items 31–46 and 76: PUT and PATCH against the real daemon, byte-exact. */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFile, stat, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, rawRequest, request, startDaemon } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;
let counter = 0;

beforeAll(async () => {
  daemon = await startDaemon();
});
afterAll(async () => {
  if (process.env.SHOW_LOGS) console.log(daemon.logs().slice(-4000));
  await daemon?.stop();
});

/** A new image file holding `contents`, and a read-write ticket for it. */
async function imageWithTicket(contents: Buffer, extra: Record<string, unknown> = {}) {
  const path = daemon.tmp.file(`image-${counter++}.raw`);
  await writeFile(path, contents);
  const id = randomUUID();
  await addTicket(daemon, {
    uuid: id,
    size: contents.length,
    url: `file://${path}`,
    timeout: 300,
    ops: ["read", "write"],
    ...extra,
  });
  return { path, id, url: `/images/${id}` };
}

const sha = (buf: Buffer) => createHash("sha256").update(buf).digest("hex");

describe("PUT", () => {
  it("31: a body with Content-Range bytes 7-13/20 is written at offset 7; 200 with content-length 0", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(20, "."));
    const response = await request(daemon, {
      method: "PUT",
      path: url,
      headers: { "content-range": "bytes 7-13/20" },
      body: "content",
    });
    expect(response.status).toBe(200);
    expect(response.headers["content-length"]).toBe("0");
    expect((await readFile(path)).toString()).toBe(".......content......");
  });

  // That the 200 leaves only after the flush is proved with a spy backend in flush-order.test.ts.
  it("32: without Content-Range the offset is 0 and the whole body is written", async () => {
    const data = randomBytes(3 * MiB + 513);
    const { path, url } = await imageWithTicket(Buffer.alloc(data.length));
    const response = await request(daemon, { method: "PUT", path: url, body: data });
    expect(response.status).toBe(200);
    expect(sha(await readFile(path))).toBe(sha(data));
    const download = await request(daemon, { path: url });
    expect(sha(download.body)).toBe(sha(data));
  });

  it("33: ?flush=n is accepted; ?flush=x is 400 naming the choices", async () => {
    const { url } = await imageWithTicket(Buffer.alloc(100));
    expect((await request(daemon, { method: "PUT", path: `${url}?flush=n`, body: "x" })).status).toBe(200);
    const bad = await request(daemon, { method: "PUT", path: `${url}?flush=x`, body: "x" });
    expect(bad.status).toBe(400);
    expect(bad.text).toBe("Unsupported value 'x' for 'flush', expecting one of ['n', 'y']\n");
  });

  it("34: Content-Range bytes 0-*/* is accepted; malformed ones are 400", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(20, "."));
    const ok = await request(daemon, {
      method: "PUT",
      path: url,
      headers: { "content-range": "bytes 0-*/*" },
      body: "ab",
    });
    expect(ok.status).toBe(200);
    const cases: Record<string, string> = {
      "bytes 13-7/20": "Invalid Content-Range 'bytes 13-7/20', first > last",
      "bytes 7-20/20": "Invalid Content-Range 'bytes 7-20/20', last >= complete",
      "7-13/20": "Invalid Content-Range '7-13/20'",
      "bytes 7-13": "Invalid Content-Range 'bytes 7-13'",
      "bytes */20": "Invalid Content-Range 'bytes */20'",
      "": "Invalid Content-Range ''",
    };
    for (const [value, message] of Object.entries(cases)) {
      const response = await request(daemon, {
        method: "PUT",
        path: url,
        headers: { "content-range": value },
        body: "zz",
      });
      expect(response.status, value).toBe(400);
      expect(response.text).toBe(`${message}\n`);
    }
    expect((await readFile(path)).toString()).toBe(`ab${".".repeat(18)}`);
  });

  it("35: only the first Content-Range position counts; a write past the end of a file grows it exactly", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(100, "."), { size: 200 });
    const response = await request(daemon, {
      method: "PUT",
      path: url,
      headers: { "content-range": "bytes 99-100/*" },
      body: "X",
    });
    expect(response.status).toBe(200);
    expect((await readFile(path)).toString()).toBe(`${".".repeat(99)}X`);
    const grow = await request(daemon, {
      method: "PUT",
      path: url,
      headers: { "content-range": "bytes 150-*/*" },
      body: "end",
    });
    expect(grow.status).toBe(200);
    expect((await stat(path)).size).toBe(153);
  });

  it("36: no Content-Length nor chunked framing is 400; a bad Content-Length is 400 and closes", async () => {
    const { url } = await imageWithTicket(Buffer.alloc(100));
    const none = await rawRequest(daemon, `PUT ${url} HTTP/1.1\r\nHost: x\r\n\r\n`, { waitMs: 500 });
    expect(none.text).toMatch(/^HTTP\/1.1 400 /);
    expect(none.text).toContain("\r\n\r\nContent-Length header is required\n");
    for (const [value, message] of [
      ["-1", "Negative Content-Length: -1"],
      ["invalid", "Invalid Content-Length: 'invalid'"],
    ]) {
      const result = await rawRequest(daemon, `PUT ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: ${value}\r\n\r\n`);
      expect(result.text).toMatch(/^HTTP\/1.1 400 /);
      expect(result.text.endsWith(`\r\n\r\n${message}\n`)).toBe(true);
      expect(result.closed).toBe(true);
    }
  });

  it("37: a PUT past the ticket size is 416 bytes */S, writes nothing and closes the connection", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(100, "."));
    for (const [range, body] of [
      ["bytes 100-101/*", "ab"],
      ["bytes 0-100/*", "x".repeat(101)],
    ] as const) {
      const result = await rawRequest(
        daemon,
        `PUT ${url} HTTP/1.1\r\nHost: x\r\nContent-Range: ${range}\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      expect(result.text).toMatch(/^HTTP\/1.1 416 /);
      expect(result.text).toContain("\r\ncontent-range: bytes */100\r\n");
      expect(result.text).toContain("\r\nconnection: close\r\n");
      expect(result.text.endsWith("Requested range out of allowed range\n")).toBe(true);
      expect(result.closed).toBe(true);
    }
    expect((await readFile(path)).toString()).toBe(".".repeat(100));
  });

  it("38: Content-Length: 0 is a no-op 200", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(10, "."));
    const response = await request(daemon, { method: "PUT", path: url, headers: { "content-length": 0 } });
    expect(response.status).toBe(200);
    expect((await readFile(path)).toString()).toBe("..........");
  });

  it("39: Expect: 100-continue gets an interim 100 Continue, then the final response", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(10, "."));
    const result = await rawRequest(
      daemon,
      `PUT ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc`,
      { waitMs: 600 },
    );
    expect(result.text).toMatch(/^HTTP\/1.1 100 Continue\r\n\r\nHTTP\/1.1 200 OK\r\n/);
    expect((await readFile(path)).toString()).toBe("abc.......");
  });

  it("39: a PUT refused before its body gets the final status without 100 Continue, and the connection closes", async () => {
    const result = await rawRequest(
      daemon,
      "PUT /images/no-such-ticket HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    );
    expect(result.text).toMatch(/^HTTP\/1.1 403 /);
    expect(result.text).not.toContain("100 Continue");
    expect(result.text).toContain("\r\nconnection: close\r\n");
    expect(result.closed).toBe(true);
  });

  it("76: [D4] a chunked PUT with Content-Range bytes 7-*/* writes at 7", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(4 * MiB));
    const data = randomBytes(3 * MiB + 5);
    const chunks = [data.subarray(0, 1000), data.subarray(1000, 2 * MiB), data.subarray(2 * MiB)];
    const body = Buffer.concat([
      ...chunks.flatMap((c) => [Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from("\r\n")]),
      Buffer.from("0\r\n\r\n"),
    ]);
    const head = `PUT ${url} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 7-*/*\r\n\r\n`;
    const result = await rawRequest(daemon, Buffer.concat([Buffer.from(head), body]), { waitMs: 1500 });
    expect(result.text).toMatch(/^HTTP\/1.1 200 /);
    const contents = await readFile(path);
    expect(sha(contents.subarray(7, 7 + data.length))).toBe(sha(data));
    expect(contents.subarray(0, 7).every((b) => b === 0)).toBe(true);
  });

  it("76: [D4] a chunked PUT passing the ticket size is 416, writes nothing past it, and closes", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(100, "."), { size: 50 });
    const body = `40\r\n${"y".repeat(64)}\r\n0\r\n\r\n`;
    const result = await rawRequest(
      daemon,
      `PUT ${url} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${body}`,
    );
    expect(result.text).toMatch(/^HTTP\/1.1 416 /);
    expect(result.text).toContain("\r\ncontent-range: bytes */50\r\n");
    expect(result.closed).toBe(true);
    const contents = (await readFile(path)).toString();
    expect(contents.slice(50)).toBe(".".repeat(50));
  });

  it("76: [D4] Content-Length together with Transfer-Encoding is 400 and closes", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(10, "."));
    const result = await rawRequest(
      daemon,
      `PUT ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
    );
    expect(result.text).toMatch(/^HTTP\/1.1 400 /);
    expect(result.closed).toBe(true);
    expect((await readFile(path)).toString()).toBe("..........");
  });

  it("9.4: a body shorter than Content-Length from a vanished client writes what arrived and nothing more; the daemon keeps serving", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(MiB, "."));
    await rawRequest(daemon, `PUT ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n${"a".repeat(400)}`, {
      waitMs: 300,
    });
    // The write of what arrived finishes after the client is gone: poll for it.
    const deadline = Date.now() + 5000;
    let contents = (await readFile(path)).toString("latin1");
    while (contents.slice(0, 400) !== "a".repeat(400) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      contents = (await readFile(path)).toString("latin1");
    }
    expect(contents.slice(0, 400)).toBe("a".repeat(400));
    expect(contents.slice(400)).toBe(".".repeat(MiB - 400));
    const next = await request(daemon, { path: url, headers: { range: "bytes=0-0" } });
    expect(next.status).toBe(206);
  });

  it("uploads of sizes around the buffer size round-trip byte-exact at unaligned offsets", async () => {
    const size = 8 * MiB;
    const { url } = await imageWithTicket(Buffer.alloc(3 * size));
    for (const [offset, length] of [
      [0, size - 1],
      [1, size],
      [4095, size + 1],
      [size - 4096, size + 4096],
      [12_345, 2 * size + 4097],
    ] as const) {
      const data = randomBytes(length);
      const put = await request(daemon, {
        method: "PUT",
        path: `${url}?flush=n`,
        headers: { "content-range": `bytes ${offset}-*/*` },
        body: data,
      });
      expect(put.status).toBe(200);
      const get = await request(daemon, { path: url, headers: { range: `bytes=${offset}-${offset + length - 1}` } });
      expect(sha(get.body), `${offset}+${length}`).toBe(sha(data));
    }
  });
});

/**
 * Concurrent writers of one image, served by one thread and by two ([daemon] workers, issue 14):
 * the block and size locks that keep their bytes must hold across threads too.
 */
describe.each([1, 2])("concurrent writers, [daemon] workers = %i", (workers) => {
  let shared: DaemonProcess;
  beforeAll(async () => {
    shared = daemon;
    if (workers > 1) daemon = await startDaemon({ config: { daemon: { workers } } });
  });
  afterAll(async () => {
    if (daemon !== shared) await daemon.stop();
    daemon = shared;
  });

  it("connections writing distinct ranges inside one block at once all keep their bytes", async () => {
    const { url, path } = await imageWithTicket(Buffer.alloc(8192, "."));
    for (let round = 0; round < 5; round++) {
      await Promise.all(
        Array.from({ length: 8 }, (_, k) =>
          request(daemon, {
            service: "local",
            method: "PUT",
            path: `${url}?flush=n`,
            headers: { "content-range": `bytes ${10 + k * 100}-*/*` },
            body: Buffer.alloc(100, 65 + k + round),
          }),
        ),
      );
      const contents = await readFile(path);
      for (let k = 0; k < 8; k++) {
        expect(
          contents.subarray(10 + k * 100, 110 + k * 100).every((b) => b === 65 + k + round),
          `writer ${k}`,
        ).toBe(true);
      }
      expect(contents.subarray(810).every((b) => b === 46)).toBe(true);
    }
  });

  it("9.1: connections growing one file at once all keep their bytes, and the file ends at the furthest write", async () => {
    for (let round = 0; round < 6; round++) {
      const { url, path } = await imageWithTicket(Buffer.alloc(1000, "."), { size: 64 * 1024 });
      const writers = 2 + round;
      const writes = Array.from({ length: writers }, (_, k) => ({
        offset: 1000 + k * 5003,
        data: randomBytes(4999 - round),
      }));
      const responses = await Promise.all(
        writes.map(({ offset, data }) =>
          request(daemon, {
            service: "local",
            method: "PUT",
            path: `${url}?flush=n`,
            headers: { "content-range": `bytes ${offset}-*/*` },
            body: data,
          }),
        ),
      );
      expect(responses.map((r) => r.status)).toEqual(writes.map(() => 200));
      const last = writes[writes.length - 1] as { offset: number; data: Buffer };
      const contents = await readFile(path);
      expect(contents.length, `round ${round}: size`).toBe(last.offset + last.data.length);
      for (const [k, { offset, data }] of writes.entries()) {
        expect(contents.subarray(offset, offset + data.length).equals(data), `round ${round} writer ${k}`).toBe(true);
      }
    }
  });
});

describe("PATCH", () => {
  const patch = (url: string, body: unknown) =>
    request(daemon, { method: "PATCH", path: url, body: typeof body === "string" ? body : JSON.stringify(body) });

  it("40: zero 4096+8192 makes that range read as zeros and leaves the rest", async () => {
    const data = randomBytes(64 * 1024);
    const { path, url } = await imageWithTicket(data);
    const response = await patch(url, { op: "zero", offset: 4096, size: 8192 });
    expect(response.status).toBe(200);
    expect(response.body.length).toBe(0);
    const expected = Buffer.from(data);
    expected.fill(0, 4096, 12_288);
    expect((await readFile(path)).equals(expected)).toBe(true);
  });

  it("41: zero without offset starts at 0; flush true and unknown keys are accepted; unaligned ranges work", async () => {
    const data = randomBytes(10_000);
    const { path, url } = await imageWithTicket(data);
    expect((await patch(url, { op: "zero", size: 100, flush: true, future: "x" })).status).toBe(200);
    expect((await patch(url, { op: "zero", offset: 5001, size: 3333 })).status).toBe(200);
    const expected = Buffer.from(data);
    expected.fill(0, 0, 100);
    expected.fill(0, 5001, 8334);
    expect((await readFile(path)).equals(expected)).toBe(true);
  });

  it("42: bad zero values are 400 before the ticket is looked up", async () => {
    const cases: [unknown, string][] = [
      [{ op: "zero" }, "Missing required value for 'size'"],
      [{ op: "zero", size: -1 }, "Invalid value -1 < 0"],
      [{ op: "zero", size: "x" }, "Integer required for 'size': 'x'"],
      [{ op: "zero", size: 1, offset: -1 }, "Invalid value -1 < 0"],
      [{ op: "zero", size: 1, flush: "x" }, "Boolean required for 'flush': 'x'"],
    ];
    for (const [body, message] of cases) {
      const response = await patch("/images/unknown-ticket", body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.text).toBe(`${message}\n`);
    }
  });

  it("43: an unknown op or a non-JSON body is 400", async () => {
    const { url } = await imageWithTicket(Buffer.alloc(100));
    const trim = await patch(url, { op: "trim" });
    expect(trim.status).toBe(400);
    expect(trim.text).toBe("Unsupported value 'trim' for 'op', expecting one of ['flush', 'zero']\n");
    const junk = await patch(url, "{not json");
    expect(junk.status).toBe(400);
    expect(junk.text).toMatch(/^Invalid JSON message /);
    for (const body of ["null", "[1]", "7"]) expect((await patch(url, body)).status).toBe(400);
  });

  it("44: zero past the ticket size is 416 bytes */S and the connection stays open", async () => {
    const { url } = await imageWithTicket(Buffer.alloc(100));
    const body = JSON.stringify({ op: "zero", offset: 50, size: 51 });
    const one = `PATCH ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const result = await rawRequest(daemon, one + one, { waitMs: 600 });
    expect(result.text.match(/HTTP\/1.1 416 /g)).toHaveLength(2);
    expect(result.text).toContain("\r\ncontent-range: bytes */100\r\n");
    expect(result.closed).toBe(false);
  });

  it("45: flush is 200; on a read-only ticket 403", async () => {
    const { url } = await imageWithTicket(Buffer.alloc(100));
    expect((await patch(url, { op: "flush" })).status).toBe(200);
    const ro = await imageWithTicket(Buffer.alloc(100), { ops: ["read"] });
    expect((await patch(ro.url, { op: "flush" })).status).toBe(403);
  });

  it("46: zero on a sparse ticket deallocates; on a non-sparse ticket the area stays allocated", async () => {
    const sparse = await imageWithTicket(randomBytes(4 * MiB), { sparse: true });
    const dense = await imageWithTicket(randomBytes(4 * MiB));
    const before = (await stat(sparse.path)).blocks;
    await patch(sparse.url, { op: "zero", size: 4 * MiB, flush: true });
    await patch(dense.url, { op: "zero", size: 4 * MiB, flush: true });
    expect((await stat(sparse.path)).blocks).toBeLessThan(before / 4);
    expect((await stat(dense.path)).blocks * 512).toBeGreaterThanOrEqual(4 * MiB);
    for (const { path } of [sparse, dense]) expect((await readFile(path)).every((b) => b === 0)).toBe(true);
  });

  it("zeroes a range larger than one zero step (128 MiB) on a sparse file", async () => {
    const { path, url } = await imageWithTicket(Buffer.alloc(0), { size: 300 * MiB });
    await truncate(path, 300 * MiB);
    await writeFile(path, Buffer.alloc(4096, 1), { flag: "r+" });
    expect((await patch(url, { op: "zero", size: 300 * MiB })).status).toBe(200);
    const head = Buffer.alloc(4096);
    const handle = await (await import("node:fs/promises")).open(path, "r");
    await handle.read(head, 0, 4096, 0);
    await handle.close();
    expect(head.every((b) => b === 0)).toBe(true);
  });
});
