/** Spec §10 items 60–66, 78, 82, 83 and bad input: general HTTP, TLS, services and logs. */
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VERSION } from "../src/version.js";
import { addTicket, completeResponse, type DaemonProcess, rawRequest, request, startDaemon } from "./helpers/daemon.js";

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
  await addTicket(daemon, { uuid, size: MiB, url: `file://${image}`, timeout: 300, ops: ["read", "write"], ...extra });
  return uuid;
}

describe("routing and methods", () => {
  it("60: unknown paths are 404 No handler; /info/ answers the version on the remote service only", async () => {
    for (const path of ["/foo", "/info", "/images/T/extent", "/images/T/extents/x", "/images/a/b", "/images/T/"]) {
      const response = await request(daemon, { path });
      expect(response.status, path).toBe(404);
      expect(response.text).toBe(`No handler for '${path}'\n`);
    }
    const info = await request(daemon, { path: "/info/" });
    expect(info.status).toBe(200);
    expect(info.text).toBe(`{"version": "${VERSION}"}\n`);
    expect((await request(daemon, { service: "local", path: "/info/" })).status).toBe(404);
  });

  it("61: unknown methods are 405 Invalid method; undefined ones are 405 naming the path", async () => {
    const foo = await rawRequest(daemon, "FOO /images/T HTTP/1.1\r\nHost: x\r\n\r\n", { until: completeResponse });
    expect(foo.text).toMatch(/^HTTP\/1.1 405 /);
    expect(foo.text.endsWith("Invalid method 'FOO'\n")).toBe(true);
    for (const method of ["DELETE", "POST"]) {
      const response = await request(daemon, { method, path: "/images/T" });
      expect(response.status).toBe(405);
      expect(response.text).toBe(`Method '${method}' not defined for '/images/T'\n`);
    }
    expect((await request(daemon, { method: "HEAD", path: "/images/T/extents" })).status).toBe(405);
  });

  it("62: a request line longer than 4096 bytes is 414 and the connection closes", async () => {
    const result = await rawRequest(daemon, `GET /images/${"x".repeat(5000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(result.text).toMatch(/^HTTP\/1.1 414 /);
    expect(result.closed).toBe(true);
    const huge = await rawRequest(daemon, `GET /images/${"x".repeat(70_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(huge.text).toMatch(/^HTTP\/1.1 414 /);
  });

  it("63: responses carry server, date and content-length first, lowercase; JSON and errors end with a newline", async () => {
    const result = await rawRequest(daemon, "GET /info/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const [head, body] = result.text.split("\r\n\r\n");
    const lines = (head ?? "").split("\r\n");
    expect(lines[0]).toBe("HTTP/1.1 200 OK");
    expect(lines[1]).toBe(`server: imageio/${VERSION}`);
    expect(lines[2]).toMatch(/^date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
    for (const line of lines.slice(1)) expect(line.split(":")[0]).toBe(line.split(":")[0]?.toLowerCase());
    expect(lines).toContain(`content-length: ${body?.length}`);
    expect(head).not.toMatch(/transfer-encoding/i);
    expect(body?.endsWith("}\n")).toBe(true);
  });

  it("64: CORS headers appear only when asked for, also on errors", async () => {
    const id = await newTicket();
    const plain = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } });
    expect(plain.headers["access-control-allow-origin"]).toBeUndefined();
    const get = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0", origin: "https://x" } });
    expect(get.headers).toMatchObject({ "access-control-allow-origin": "*", "access-control-max-age": "86400" });
    const denied = await request(daemon, { path: "/images/nope", headers: { origin: "https://x" } });
    expect(denied.status).toBe(403);
    expect(denied.headers["access-control-allow-origin"]).toBe("*");
    const preflight = await request(daemon, {
      method: "OPTIONS",
      path: `/images/${id}`,
      headers: {
        origin: "https://x",
        "access-control-request-method": "PUT",
        "access-control-request-headers": "range",
      },
    });
    expect(preflight.headers).toMatchObject({
      "access-control-allow-methods": "OPTIONS,GET,PUT",
      "access-control-allow-headers": "*",
      "access-control-max-age": "86400",
    });
    const patch = await request(daemon, {
      method: "PATCH",
      path: `/images/${id}`,
      headers: { origin: "x" },
      body: '{"op":"flush"}',
    });
    expect(patch.headers["access-control-allow-origin"]).toBeUndefined();
  });
});

describe("services", () => {
  it("66: the local socket serves /images without TLS, the same bytes, and not /tickets", async () => {
    const id = await newTicket();
    const local = await request(daemon, {
      service: "local",
      path: `/images/${id}`,
      headers: { range: "bytes=100-199" },
    });
    expect(local.status).toBe(206);
    expect(local.body.equals(data.subarray(100, 200))).toBe(true);
    const options = await request(daemon, { service: "local", method: "OPTIONS", path: `/images/${id}` });
    expect(JSON.parse(options.text).unix_socket).toBe(daemon.localSocket);
    expect((await request(daemon, { service: "local", path: `/tickets/${id}` })).status).toBe(404);
    expect((await request(daemon, { path: `/tickets/${id}` })).status).toBe(404);
  });

  it("65: an idle connection is not closed after Node's usual 5 s (the limit is 60 s)", async () => {
    const result = await rawRequest(daemon, "GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n", { waitMs: 6500 });
    expect(result.text).toMatch(/^HTTP\/1.1 200 /);
    expect(result.closed).toBe(false);
  }, 15_000);

  it("65: a connection that opened a ticket backend closes after the ticket's inactivity_timeout", async () => {
    const id = await newTicket({ inactivity_timeout: 1 });
    const started = Date.now();
    const result = await rawRequest(daemon, `GET /images/${id} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n`, {
      waitMs: 5000,
    });
    const elapsed = Date.now() - started;
    expect(result.text).toMatch(/^HTTP\/1.1 206 /);
    expect(result.closed).toBe(true);
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(4000);
  });

  it("83: [D11] the control socket has mode 0660", () => {
    expect(statSync(daemon.controlSocket).mode & 0o777).toBe(0o660);
  });
});

describe("TLS", () => {
  const handshake = (options: tls.ConnectionOptions) =>
    new Promise<string>((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port: daemon.remotePort,
        ca: readFileSync(daemon.certs.caFile),
        servername: "localhost",
        ...options,
      });
      socket.once("secureConnect", () => {
        resolve(socket.getProtocol() ?? "");
        socket.destroy();
      });
      socket.once("error", reject);
    });

  it("78: [D6] TLS 1.0 and 1.1 are refused; 1.2 and 1.3 accepted; 1.3 chosen when offered", async () => {
    const legacy = { ciphers: "DEFAULT@SECLEVEL=0" };
    await expect(handshake({ ...legacy, minVersion: "TLSv1", maxVersion: "TLSv1" })).rejects.toThrow();
    await expect(handshake({ ...legacy, minVersion: "TLSv1.1", maxVersion: "TLSv1.1" })).rejects.toThrow();
    expect(await handshake({ minVersion: "TLSv1.2", maxVersion: "TLSv1.2" })).toBe("TLSv1.2");
    expect(await handshake({})).toBe("TLSv1.3");
  });

  it("prefers AES-128-GCM, the cheapest strong suite, whatever the client lists first", async () => {
    const cipher = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port: daemon.remotePort,
        ca: readFileSync(daemon.certs.caFile),
        servername: "localhost",
        ciphers: "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
      });
      socket.once("secureConnect", () => {
        resolve(socket.getCipher().name);
        socket.destroy();
      });
      socket.once("error", reject);
    });
    expect(cipher).toBe("TLS_AES_128_GCM_SHA256");
  });

  it("a client that does not trust the daemon's CA cannot connect", async () => {
    await expect(handshake({ ca: [] as unknown as string })).rejects.toThrow();
  });
});

describe("bad input keeps the daemon serving", () => {
  it("malformed headers and framing get 400 or 501 and a closed connection", async () => {
    const cases: [string, RegExp][] = [
      ["GET /info/ HTTP/1.1\r\nNoColonHere\r\n\r\n", /^HTTP\/1.1 400 /],
      ["GET /info/ HTTP/1.1\r\nBad : x\r\n\r\n", /^HTTP\/1.1 400 /],
      ["PUT /images/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", /^HTTP\/1.1 (400|501) /],
      ["PUT /images/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", /^HTTP\/1.1 501 /],
      ["GARBAGE\r\n\r\n", /^HTTP\/1.1 (400|405) /],
    ];
    for (const [raw, status] of cases) {
      const result = await rawRequest(daemon, raw);
      expect(result.text, JSON.stringify(raw)).toMatch(status);
      expect(result.closed).toBe(true);
    }
    expect((await request(daemon, { path: "/info/" })).status).toBe(200);
  });

  it("an Expect value other than 100-continue is ignored, as upstream does", async () => {
    const own = daemon.tmp.file("expect.raw");
    await writeFile(own, Buffer.alloc(10));
    const id = await newTicket({ url: `file://${own}`, size: 10 });
    const result = await rawRequest(
      daemon,
      `PUT /images/${id} HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 3\r\n\r\nabc`,
      { waitMs: 500 },
    );
    expect(result.text).toMatch(/^HTTP\/1.1 200 OK\r\nserver: /);
    expect((await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-2" } })).text).toBe("abc");
  });

  it("CONNECT is 405 Invalid method", async () => {
    const result = await rawRequest(daemon, "CONNECT /images/x HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(result.text).toMatch(/^HTTP\/1.1 405 /);
    expect(result.text.endsWith("Invalid method 'CONNECT'\n")).toBe(true);
  });

  it("a write ending within the last block below 2^53 is 416, not an internal error", async () => {
    const own = daemon.tmp.file("huge-offset.raw");
    await writeFile(own, "");
    const id = await newTicket({ url: `file://${own}`, size: Number.MAX_SAFE_INTEGER });
    const response = await request(daemon, {
      method: "PUT",
      path: `/images/${id}`,
      headers: { "content-range": `bytes ${Number.MAX_SAFE_INTEGER - 100}-*/*` },
      body: "abc",
    });
    expect(response.status).toBe(416);
    expect(response.text).toMatch(/reaches past the largest supported offset/);
  });

  it("a JSON body over 64 KiB is 413", async () => {
    const id = await newTicket();
    const response = await request(daemon, {
      method: "PATCH",
      path: `/images/${id}`,
      body: JSON.stringify({ op: "flush", pad: "x".repeat(70_000) }),
    });
    expect(response.status).toBe(413);
  });

  it("a ticket for a missing file is 500 without details, and the details are logged", async () => {
    const id = await newTicket({ url: `file://${daemon.tmp.file("missing.raw")}` });
    const response = await request(daemon, { path: `/images/${id}` });
    expect(response.status).toBe(500);
    expect(response.text).toBe("Server failed to perform the request, check logs\n");
    expect(await daemon.waitForLog("missing.raw")).toContain("no such file or directory");
  });

  it("a client vanishing mid-download leaves the daemon serving others", async () => {
    const id = await newTicket();
    await rawRequest(daemon, `GET /images/${id} HTTP/1.1\r\nHost: x\r\n\r\n`, { waitMs: 5 });
    const next = await request(daemon, { path: `/images/${id}` });
    expect(next.body.equals(data)).toBe(true);
  });

  it("83: [D11] after upload, download, 403 and delete no log line holds the full ticket id", async () => {
    const id = await newTicket();
    await request(daemon, { method: "PUT", path: `/images/${id}`, body: "hello" });
    await request(daemon, { path: `/images/${id}` });
    await request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` });
    const denied = await request(daemon, { path: `/images/${id}` });
    expect(denied.status).toBe(403);
    expect(denied.text).toContain(id);
    await request(daemon, { service: "control", path: `/tickets/${id}` });
    // The last request's lines are in the log before we read it.
    const logs = await daemon.waitForLog(`No such ticket '${id.slice(0, 8)}…'`);
    expect(logs).toContain(id.slice(0, 8));
    expect(logs).not.toContain(id);
  });
});
