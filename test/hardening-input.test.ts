/**
 * Issue 10 items 7, 8, 12, 13 and 14: request bodies, parameters and tickets a client or a
 * manager could get wrong, and what the log says about them.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { supportedSchemes } from "../src/io/open.js";
import { addTicket, type InProcessDaemon, request, startInProcess } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
let daemon: InProcessDaemon;
let image: string;
let data: Buffer;

beforeAll(async () => {
  daemon = await startInProcess();
  image = daemon.tmp.file("image.raw");
  data = randomBytes(MiB);
  await writeFile(image, data);
});
afterAll(async () => {
  await daemon?.stop();
});

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

async function newTicket(extra: Record<string, unknown> = {}): Promise<string> {
  const uuid = randomUUID();
  await addTicket(daemon, { uuid, size: MiB, url: `file://${image}`, timeout: 300, ops: ["read", "write"], ...extra });
  return uuid;
}

function putTicket(body: string, id: string = randomUUID()) {
  return request(daemon, { service: "control", method: "PUT", path: `/tickets/${encodeURIComponent(id)}`, body });
}

function ticketJson(fields: Record<string, string>): string {
  const base: Record<string, string> = {
    uuid: JSON.stringify(randomUUID()),
    size: "1048576",
    url: JSON.stringify(`file://${image}`),
    timeout: "300",
    ops: '["read"]',
  };
  return `{${Object.entries({ ...base, ...fields })
    .map(([key, value]) => `"${key}": ${value}`)
    .join(", ")}}`;
}

/** Log lines written while `action` runs. */
async function linesDuring(action: () => Promise<unknown>): Promise<string[]> {
  const before = daemon.logs().length;
  await action();
  return daemon
    .logs()
    .slice(before)
    .split("\n")
    .filter((line) => line !== "");
}

describe("issue 10: JSON bodies", () => {
  it("10.7: a PATCH op that is not a string is 400 Unsupported value and zeroes nothing", async () => {
    const id = await newTicket();
    for (const op of ['{"toString": 1}', '["zero"]', "1", "true", "null"]) {
      const response = await request(daemon, {
        method: "PATCH",
        path: `/images/${id}`,
        body: `{"op": ${op}, "size": 4096}`,
      });
      expect(response.status, op).toBe(400);
      expect(response.text, op).toMatch(/^Unsupported value .* for 'op', expecting one of \['flush', 'zero'\]\n$/);
    }
    expect(sha256(readFileSync(image))).toBe(sha256(data));
  });

  it("10.7: JSON numbers written with a fraction or exponent are not integers", async () => {
    const id = await newTicket();
    const cases: [string, string][] = [
      ['{"op": "zero", "size": 4096.0}', "Integer required for 'size': 4096.0"],
      ['{"op": "zero", "size": 1e3}', "Integer required for 'size': 1000.0"],
      ['{"op": "zero", "size": 4096, "offset": 0.0}', "Integer required for 'offset': 0.0"],
    ];
    for (const [body, message] of cases) {
      const response = await request(daemon, { method: "PATCH", path: `/images/${id}`, body });
      expect(response.status, body).toBe(400);
      expect(response.text).toBe(`${message}\n`);
    }
    expect(sha256(readFileSync(image))).toBe(sha256(data));
    // An integer is still one, and a float in a key nobody reads is ignored.
    const fine = await request(daemon, {
      method: "PATCH",
      path: `/images/${id}`,
      body: '{"op": "flush", "note": 1.5}',
    });
    expect(fine.status).toBe(200);

    for (const [field, value] of [
      ["size", "1.0"],
      ["timeout", "3e2"],
      ["inactivity_timeout", "60.0"],
    ]) {
      const response = await putTicket(ticketJson({ [field as string]: value as string }));
      expect(response.status, field).toBe(400);
      expect(response.text).toContain(`Invalid value for '${field}': ${Number(value).toFixed(1)}`);
    }
    const extended = await request(daemon, {
      service: "control",
      method: "PATCH",
      path: `/tickets/${id}`,
      body: '{"timeout": 600.0}',
    });
    expect(extended.status).toBe(400);
    expect(extended.text).toBe("Invalid value for 'timeout': 600.0: expecting an integer >= 0\n");
    // Strings holding digits and dots are not numbers: a ticket id may look like one.
    expect((await putTicket(ticketJson({ transfer_id: '"1.5"' }))).status).toBe(200);
  });
});

describe("issue 10: checksum parameters", () => {
  it("10.8: an integer block size out of range says so; only a non-integer is invalid", async () => {
    const id = await newTicket();
    const cases: [string, string][] = [
      ["-4096", "Block size out of allowed range: 1048576-16777216"],
      ["0", "Block size out of allowed range: 1048576-16777216"],
      ["99999999999999999999999", "Block size out of allowed range: 1048576-16777216"],
      ["33554432", "Block size out of allowed range: 1048576-16777216"],
      ["4096.0", "Invalid block size: '4096.0'"],
      ["x", "Invalid block size: 'x'"],
      ["", "Invalid block size: ''"],
    ];
    for (const [value, message] of cases) {
      const response = await request(daemon, { path: `/images/${id}/checksum?block_size=${value}` });
      expect(response.status, value).toBe(400);
      expect(response.text, value).toBe(`${message}\n`);
    }
  });
});

describe("issue 10: ticket URLs and timeouts", () => {
  it("10.12: a ticket whose URL scheme no backend serves is 400 naming the scheme", async () => {
    const response = await putTicket(ticketJson({ url: '"nbd:unix:/run/vdsm/nbd/x.sock"' }));
    // Derived from the backend table: once an nbd backend registers, nbd tickets are accepted.
    if (supportedSchemes().includes("nbd")) {
      expect(response.status).toBe(200);
      return;
    }
    expect(response.status).toBe(400);
    expect(response.text).toMatch(/^Invalid ticket: Invalid value for 'url': 'nbd:unix:\/run\/vdsm\/nbd\/x.sock': /);
    expect(response.text).toContain(
      "Unsupported url scheme: nbd: this daemon has no backend for it (serving file, http, https)",
    );
    for (const url of ["file:///x", "https://host:54322/images/x", "http://host/images/x"]) {
      expect((await putTicket(ticketJson({ url: JSON.stringify(url) }))).status, url).toBe(200);
    }
  });

  it("10.12: a relative file URL is refused, not resolved from /", async () => {
    for (const url of ["file:etc/passwd", "file:image.raw", "FILE:etc/passwd"]) {
      const response = await putTicket(ticketJson({ url: JSON.stringify(url) }));
      expect(response.status, url).toBe(400);
      expect(response.text).toContain(`File URL '${url}' is relative; expecting an absolute path (file:///path)`);
    }
  });

  it("10.14: inactivity_timeout 0 is refused, as it would mean never", async () => {
    const response = await putTicket(ticketJson({ inactivity_timeout: "0" }));
    expect(response.status).toBe(400);
    expect(response.text).toBe(
      "Invalid ticket: Invalid value for 'inactivity_timeout': 0: expecting an integer from 1 to 2^53-1 (seconds)\n",
    );
    expect((await putTicket(ticketJson({ inactivity_timeout: "1" }))).status).toBe(200);
  });
});

describe("issue 10: logs", () => {
  it("10.13: a missing image, a refused ticket and a bad request are one line each with the reason, no stack", async () => {
    const missing = await newTicket({ url: `file://${daemon.tmp.file("missing.raw")}` });
    const lines = await linesDuring(async () => {
      expect((await request(daemon, { path: `/images/${missing}` })).status).toBe(500);
    });
    const failure = lines.filter((line) => line.includes("ERROR request failed"));
    expect(failure).toHaveLength(1);
    expect(failure[0]).toMatch(/^\S+ \S+ ERROR /);
    expect(failure[0]).toContain("missing.raw");
    expect(failure[0]).toContain("no such file or directory");
    expect(lines.some((line) => /^\s+at /.test(line))).toBe(false);

    const refused = await linesDuring(async () => {
      expect((await request(daemon, { path: `/images/${randomUUID()}` })).status).toBe(403);
    });
    const denial = refused.filter((line) => line.includes("status=403"));
    expect(denial).toHaveLength(1);
    expect(denial[0]).toMatch(/^\S+ \S+ WARNING .*reason="You are not allowed to access this resource: /);
    expect(refused.some((line) => /^\s+at /.test(line))).toBe(false);
  });

  it("10.13: a peer that resets before the TLS handshake completes is logged with its address", async () => {
    const lines = await linesDuring(async () => {
      const socket = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
      socket.on("error", () => undefined);
      await new Promise((resolve) => socket.once("connect", resolve));
      socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
      socket.resetAndDestroy();
      const deadline = Date.now() + 5000;
      while (!daemon.logs().includes("TLS peer left before the handshake") && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    });
    // At DEBUG (review 15): a reset before the handshake is a scanner or a health check.
    const line = lines.find((text) => text.includes("TLS peer left before the handshake"));
    expect(line).toMatch(/DEBUG .*TLS peer left before the handshake client=(::ffff:)?127\.0\.0\.1 reason=ECONNRESET/);
    expect(lines.join("\n")).not.toContain("client=undefined");
  });

  it("review 15: a plain TCP connect-and-reset is a DEBUG line with the address; a failed handshake a WARNING", async () => {
    const before = daemon.logs().length;
    const handshakeLines = () =>
      daemon
        .logs()
        .slice(before)
        .split("\n")
        .filter((text) => /TLS (peer left|handshake failed)/.test(text));
    // A health check or a scanner: connects, sends nothing, resets.
    const probe = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
    probe.on("error", () => undefined);
    await new Promise((resolve) => probe.once("connect", resolve));
    probe.resetAndDestroy();
    // Plain HTTP to the TLS port: the handshake itself fails.
    const http = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
    http.on("error", () => undefined);
    await new Promise((resolve) => http.once("connect", resolve));
    http.end("GET /info/ HTTP/1.1\r\n\r\n");
    const deadline = Date.now() + 5000;
    while (handshakeLines().length < 2 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 20));
    const lines = handshakeLines();
    const left = lines.filter((text) => text.includes("TLS peer left before the handshake"));
    const failed = lines.filter((text) => text.includes("TLS handshake failed"));
    expect(left).toHaveLength(1);
    expect(left[0]).toMatch(/ DEBUG .*client=(::ffff:)?127\.0\.0\.1 reason=ECONNRESET/);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatch(/ WARNING .*client=(::ffff:)?127\.0\.0\.1 reason=ERR_SSL_/);
  });

  it("10.13: a ticket id or transfer id with a newline or NUL stays on one escaped log line", async () => {
    const uuid = `evil\n2026-01-01 00:00:00,000 INFO    [imageio] FORGED\u0000${randomUUID()}`;
    const lines = await linesDuring(async () => {
      expect(
        (await putTicket(ticketJson({ uuid: JSON.stringify(uuid), transfer_id: '"t\\r\\nid\\u0000"' }), uuid)).status,
      ).toBe(200);
      expect(
        (await request(daemon, { service: "control", path: `/tickets/${encodeURIComponent(uuid)}x` })).status,
      ).toBe(404);
    });
    expect(lines.some((line) => line.startsWith("2026-01-01"))).toBe(false);
    expect(lines.join("\n")).not.toContain("\u0000");
    const added = lines.find((line) => line.includes(" ADD "));
    expect(added).toContain('transfer="t\\r\\nid\\u0000"');

    // Without any space to make it quoted: a NUL and a terminal escape sequence.
    const bare = await linesDuring(async () => {
      const body = ticketJson({ transfer_id: '"id\\u0000x\\u001b[2J"' });
      expect((await putTicket(body)).status).toBe(200);
    });
    const line = bare.find((text) => text.includes(" ADD ")) as string;
    expect(line).toContain('transfer="id\\u0000x\\u001b[2J"');
    expect([...line].some((char) => char.charCodeAt(0) < 0x20 || char.charCodeAt(0) === 0x7f)).toBe(false);
  });
});
