/** Spec §10 items 11–30 and 74–75: authorization, OPTIONS, GET and HEAD against the real daemon. */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, rawRequest, request, startDaemon, ticketStatus } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;
let image: string;
let data: Buffer;

beforeAll(async () => {
  daemon = await startDaemon();
  image = daemon.tmp.file("image.raw");
  data = randomBytes(MiB);
  await writeFile(image, data);
});
afterAll(async () => {
  await daemon?.stop();
});

async function newTicket(extra: Record<string, unknown> = {}): Promise<string> {
  const uuid = randomUUID();
  await addTicket(daemon, { uuid, size: MiB, url: `file://${image}`, timeout: 300, ops: ["read"], ...extra });
  return uuid;
}

const sha = (buf: Buffer) => createHash("sha256").update(buf).digest("hex");

describe("authorization", () => {
  it("11: an unknown ticket is 403 on every data route, as text/plain", async () => {
    for (const [method, suffix] of [
      ["GET", ""],
      ["HEAD", ""],
      ["PUT", ""],
      ["PATCH", ""],
      ["OPTIONS", ""],
      ["GET", "/extents"],
      ["GET", "/checksum"],
    ] as const) {
      const body = method === "PATCH" ? '{"op": "flush"}' : method === "PUT" ? "x" : undefined;
      const response = await request(daemon, {
        method,
        path: `/images/nosuchticket${suffix}`,
        ...(body ? { body } : {}),
      });
      expect(response.status, `${method} ${suffix}`).toBe(403);
      if (method !== "HEAD") {
        expect(response.text).toBe("You are not allowed to access this resource: No such ticket nosuchticket\n");
        expect(response.headers["content-type"]).toBe("text/plain; charset=UTF-8");
      }
    }
  });

  it("13: a read-only ticket refuses PUT and PATCH (forbids write); a write-only ticket may GET", async () => {
    const ro = await newTicket({ transfer_id: "tx-ro" });
    const put = await request(daemon, { method: "PUT", path: `/images/${ro}`, body: "abc" });
    expect(put.status).toBe(403);
    expect(put.text).toBe("You are not allowed to access this resource: Transfer=tx-ro forbids write\n");
    for (const body of ['{"op": "zero", "size": 10}', '{"op": "flush"}']) {
      const patch = await request(daemon, { method: "PATCH", path: `/images/${ro}`, body });
      expect(patch.status).toBe(403);
      expect(patch.text).toMatch(/forbids write\n$/);
    }
    const wo = await newTicket({ ops: ["write"] });
    const get = await request(daemon, { path: `/images/${wo}`, headers: { range: "bytes=0-99" } });
    expect(get.status).toBe(206);
    expect(get.body.equals(data.subarray(0, 100))).toBe(true);
    const none = await newTicket({ ops: [] });
    expect((await request(daemon, { path: `/images/${none}` })).status).toBe(403);
  });

  it("14: 403 on /images/T and /images/T/extents carries connection: close and closes the socket", async () => {
    for (const path of ["/images/nope", "/images/nope/extents"]) {
      const result = await rawRequest(daemon, `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
      expect(result.text).toMatch(/^HTTP\/1.1 403 /);
      expect(result.text.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(result.closed).toBe(true);
    }
  });

  it("15: GET, OPTIONS and HEAD touch the ticket (expires moves, idle_time 0); extents do not", async () => {
    const id = await newTicket({ timeout: 1000 });
    const before = await ticketStatus(daemon, id);
    // Until the ticket has been idle for a second (status requests do not touch it).
    const deadline = Date.now() + 5000;
    while (((await ticketStatus(daemon, id)).idle_time as number) < 1) {
      if (Date.now() > deadline) throw new Error("the ticket never became idle");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await request(daemon, { path: `/images/${id}/extents` });
    const afterExtents = await ticketStatus(daemon, id);
    expect(afterExtents.expires).toBe(before.expires);
    expect(afterExtents.idle_time).toBeGreaterThanOrEqual(1);
    for (const method of ["GET", "OPTIONS", "HEAD"]) {
      await request(daemon, { method, path: `/images/${id}`, headers: { range: "bytes=0-0" } });
      const after = await ticketStatus(daemon, id);
      expect(after.idle_time, method).toBe(0);
      expect(after.expires as number, method).toBeGreaterThan(before.expires as number);
    }
  });
});

describe("OPTIONS", () => {
  it("16: OPTIONS /images/* lists all features, no limits or size, and the unix socket", async () => {
    const response = await request(daemon, { method: "OPTIONS", path: "/images/*" });
    expect(response.status).toBe(200);
    expect(response.headers.allow).toBe("OPTIONS,GET,PUT,PATCH");
    expect(JSON.parse(response.text)).toEqual({
      unix_socket: daemon.localSocket,
      features: ["checksum", "extents", "flush", "zero"],
    });
  });

  it("17/81/82: a read-write file ticket allows everything, 8 readers, 1 writer, the image size and direct_io", async () => {
    const id = await newTicket({ ops: ["read", "write"], size: 4 * MiB });
    const response = await request(daemon, { method: "OPTIONS", path: `/images/${id}` });
    expect(response.status).toBe(200);
    expect(response.headers.allow).toBe("OPTIONS,GET,PUT,PATCH");
    expect(response.text).toBe(
      `{"unix_socket": "${daemon.localSocket}", "features": ["checksum", "extents", "flush", "zero"], ` +
        `"max_readers": 8, "max_writers": 1, "size": ${MiB}, "direct_io": true}\n`,
    );
  });

  it("18: a read-only ticket allows OPTIONS,GET and reports checksum and extents only", async () => {
    const id = await newTicket();
    const response = await request(daemon, { method: "OPTIONS", path: `/images/${id}` });
    expect(response.headers.allow).toBe("OPTIONS,GET");
    expect(JSON.parse(response.text).features).toEqual(["checksum", "extents"]);
  });

  it("20: OPTIONS /images/ is 400 Ticket id is required", async () => {
    const response = await request(daemon, { method: "OPTIONS", path: "/images/" });
    expect(response.status).toBe(400);
    expect(response.text).toBe("Ticket id is required\n");
  });
});

describe("GET", () => {
  it("21: a closed range is 206 with the exact headers and bytes", async () => {
    const id = await newTicket();
    const response = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-1023" } });
    expect(response.status).toBe(206);
    expect(response.headers).toMatchObject({
      "content-length": "1024",
      "content-type": "application/octet-stream",
      "content-range": `bytes 0-1023/${MiB}`,
      "content-disposition": "attachment",
      "accept-ranges": "bytes",
    });
    expect(response.body.equals(data.subarray(0, 1024))).toBe(true);
  });

  it("22: unaligned ranges return exactly the bytes asked for", async () => {
    const id = await newTicket();
    for (const [first, last] of [
      [513, 1023],
      [1, 1],
      [4095, 4097],
      [12_345, 987_654],
      [MiB - 3, MiB - 1],
    ] as const) {
      const response = await request(daemon, { path: `/images/${id}`, headers: { range: `bytes=${first}-${last}` } });
      expect(response.status).toBe(206);
      expect(sha(response.body)).toBe(sha(data.subarray(first, last + 1)));
    }
  });

  it("23: bytes=N- is 206 with the rest of the image; the total is the ticket size", async () => {
    const id = await newTicket({ size: 2 * MiB });
    const response = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=1000-" } });
    expect(response.status).toBe(206);
    expect(response.headers["content-range"]).toBe(`bytes 1000-${MiB - 1}/${2 * MiB}`);
    expect(response.body.equals(data.subarray(1000))).toBe(true);
  });

  it("24: no Range is 200 with min(ticket size, image size) bytes and no content-range", async () => {
    const id = await newTicket({ size: 3 * MiB });
    const response = await request(daemon, { path: `/images/${id}` });
    expect(response.status).toBe(200);
    expect(response.headers["content-length"]).toBe(String(MiB));
    expect(response.headers["content-range"]).toBeUndefined();
    expect(response.headers["accept-ranges"]).toBe("bytes");
    expect(sha(response.body)).toBe(sha(data));
    const smaller = await newTicket({ size: 1000 });
    const partial = await request(daemon, { path: `/images/${smaller}` });
    expect(partial.body.equals(data.subarray(0, 1000))).toBe(true);
  });

  it("25: a range ending at or past the ticket size is 416 with content-range bytes */S", async () => {
    const id = await newTicket({ size: 1000 });
    const response = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-1000" } });
    expect(response.status).toBe(416);
    expect(response.headers["content-range"]).toBe("bytes */1000");
    expect(response.text).toBe("Requested range out of allowed range\n");
  });

  it("26: a ticket larger than the image: a range past the image is 416 with bytes */<image size>", async () => {
    const id = await newTicket({ size: 4 * MiB });
    const response = await request(daemon, {
      path: `/images/${id}`,
      headers: { range: `bytes=${MiB - 10}-${MiB + 9}` },
    });
    expect(response.status).toBe(416);
    expect(response.headers["content-range"]).toBe(`bytes */${MiB}`);
    expect(response.text).toBe(`Requested more bytes than available: ${MiB + 10} > ${MiB}\n`);
  });

  it("27: suffix, multiple, wrong-case and reversed ranges are 416 without content-range", async () => {
    const id = await newTicket();
    const expected: Record<string, string> = {
      "bytes=-10": "suffix-byte-range-spec not supported yet",
      "bytes=0-1,4-5": "Cannot satisfy range 'bytes=0-1,4-5', invalid range or multiple ranges",
      "Bytes=0-1": "Cannot satisfy range 'Bytes=0-1', invalid range or multiple ranges",
      "bytes=5-1": "Cannot satisfy range 'bytes=5-1', first > last",
      "bytes=-": "Cannot satisfy range 'bytes=-', no first or last",
      "bytes= 0-1": "Cannot satisfy range 'bytes= 0-1', invalid range or multiple ranges",
    };
    for (const [range, message] of Object.entries(expected)) {
      const response = await request(daemon, { path: `/images/${id}`, headers: { range } });
      expect(response.status, range).toBe(416);
      expect(response.headers["content-range"]).toBeUndefined();
      expect(response.text).toBe(`${message}\n`);
    }
  });

  it("28: a ticket filename goes into content-disposition, raw UTF-8", async () => {
    const id = await newTicket({ filename: "x.raw" });
    const response = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } });
    expect(response.headers["content-disposition"]).toBe("attachment; filename=x.raw");
    const utf8 = await newTicket({ filename: "dísk.raw" });
    const raw = await rawRequest(daemon, `HEAD /images/${utf8} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    const header = /content-disposition: (.*)\r\n/.exec(raw.text)?.[1];
    expect(Buffer.from(header ?? "", "latin1").toString("utf8")).toBe("attachment; filename=dísk.raw");
  });

  it("29: ?close=y sends connection: close and closes the socket", async () => {
    const id = await newTicket();
    const result = await rawRequest(
      daemon,
      `GET /images/${id}?close=y HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n`,
    );
    expect(result.text).toMatch(/^HTTP\/1.1 206 /);
    expect(result.text).toContain("\r\nconnection: close\r\n");
    expect(result.closed).toBe(true);
  });

  it("30: three sequential GETs on one connection all succeed (keep-alive)", async () => {
    const id = await newTicket();
    const one = `GET /images/${id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n`;
    const result = await rawRequest(daemon, one + one + one, { waitMs: 800 });
    expect(result.text.match(/HTTP\/1.1 206 Partial Content/g)).toHaveLength(3);
    expect(result.closed).toBe(false);
  });

  it("74: [D2] an open range at or past the end is 416 with bytes */size", async () => {
    const id = await newTicket();
    for (const range of ["bytes=2000000-", `bytes=${MiB}-`]) {
      const response = await request(daemon, { path: `/images/${id}`, headers: { range } });
      expect(response.status, range).toBe(416);
      expect(response.headers["content-range"]).toBe(`bytes */${MiB}`);
    }
  });

  it("responds 200 with content-length 0 for an empty image", async () => {
    const empty = daemon.tmp.file("empty.raw");
    await writeFile(empty, "");
    const id = await newTicket({ url: `file://${empty}` });
    const response = await request(daemon, { path: `/images/${id}` });
    expect(response.status).toBe(200);
    expect(response.headers["content-length"]).toBe("0");
  });
});

describe("HEAD", () => {
  it("75: [D3] HEAD is 200 with the size, accept-ranges, no body, and the connection stays usable", async () => {
    const id = await newTicket({ size: 4 * MiB });
    const head = `HEAD /images/${id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n`;
    const get = `GET /images/${id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n`;
    const result = await rawRequest(daemon, head + get, { waitMs: 800 });
    const [headResponse, getResponse] = result.text.split(/(?=HTTP\/1.1 )/);
    expect(headResponse).toMatch(/^HTTP\/1.1 200 OK\r\n/);
    expect(headResponse).toContain(`\r\ncontent-length: ${MiB}\r\n`);
    expect(headResponse).toContain("\r\naccept-ranges: bytes\r\n");
    expect(headResponse).toContain("\r\ncontent-type: application/octet-stream\r\n");
    expect(headResponse?.endsWith("\r\n\r\n")).toBe(true);
    expect(getResponse).toMatch(/^HTTP\/1.1 206 /);
    expect(Buffer.from(getResponse?.split("\r\n\r\n")[1] ?? "", "latin1").equals(data.subarray(0, 4))).toBe(true);
  });

  it("75: HEAD of an unknown ticket is 403 without a body and closes the connection", async () => {
    const result = await rawRequest(daemon, "HEAD /images/nope HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(result.text).toMatch(/^HTTP\/1.1 403 /);
    expect(result.text.endsWith("\r\n\r\n")).toBe(true);
    expect(result.closed).toBe(true);
  });
});
