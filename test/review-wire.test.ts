/**
 * The review of issues 10 and 13, wire items (numbered as the review numbers them): raw bytes
 * against the real daemon process on its TLS port and its unix local socket.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DaemonProcess, imageWithTicket, startDaemon } from "./helpers/daemon.js";
import { exchange, imagesServices, type RawTarget, statusOf, unixTarget } from "./helpers/raw.js";

const KiB = 1024;
let daemon: DaemonProcess;

beforeAll(async () => {
  daemon = await startDaemon();
}, 30_000);
afterAll(async () => {
  await daemon?.stop();
});

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

describe("review 2: ticket ids in logs", () => {
  it("review 2: 404 and 405 give the client the full path, the log a shortened id", async () => {
    const { id } = await imageWithTicket(daemon, 64 * KiB);
    const [local] = imagesServices(daemon).slice(1) as [RawTarget];
    const notFound = await exchange(local, `GET /images/${id}/nothing HTTP/1.1\r\nConnection: close\r\n\r\n`);
    expect(statusOf(notFound.text)).toBe(404);
    expect(notFound.text).toContain(`No handler for '/images/${id}/nothing'`);
    const notAllowed = await exchange(local, `POST /images/${id} HTTP/1.1\r\nConnection: close\r\n\r\n`);
    expect(statusOf(notAllowed.text)).toBe(405);
    expect(notAllowed.text).toContain(`Method 'POST' not defined for '/images/${id}'`);
    const control = unixTarget("control", daemon.controlSocket);
    const controlAnswer = await exchange(control, `GET /tickets/${id}/x HTTP/1.1\r\nConnection: close\r\n\r\n`);
    expect(statusOf(controlAnswer.text)).toBe(404);
    const logs = await daemon.waitForLog(`No handler for '/tickets/${id.slice(0, 8)}…/x'`);
    expect(logs).toContain(`No handler for '/images/${id.slice(0, 8)}…/nothing'`);
    expect(logs).toContain(`Method 'POST' not defined for '/images/${id.slice(0, 8)}…'`);
    expect(logs).toContain(`path=/tickets/${id.slice(0, 8)}…/x`);
    expect(logs).not.toContain(id);
  });
});

describe("review 3/4: Connection: close with more bytes in the same segment", () => {
  it("review 3/4: the request is answered with connection: close and the PUT after it never runs", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, path, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(
        target,
        `GET /images/${id} HTTP/1.1\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n` +
          `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 0-3/*\r\nContent-Length: 4\r\n\r\nXXXX`,
      );
      expect(statusOf(answer.text), target.name).toBe(206);
      expect(answer.text).toContain("\r\nconnection: close\r\n");
      expect(answer.text.match(/HTTP\/1\.1 /g)).toHaveLength(1);
      expect(answer.closed).toBe(true);
      expect(sha256(await readFile(path)), target.name).toBe(sha256(data));
    }
  });
});

describe("review 5: a half-close after a complete request", () => {
  it("review 5: PUT with its whole body then FIN is written and answered", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, path, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(
        target,
        `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 100-103/*\r\nContent-Length: 4\r\n\r\nWXYZ`,
        5000,
        { halfClose: true },
      );
      expect(statusOf(answer.text), target.name).toBe(200);
      expect(answer.closed, "the server ends its side once it answered").toBe(true);
      const expected = Buffer.from(data);
      expected.write("WXYZ", 100, "latin1");
      expect(sha256(await readFile(path)), target.name).toBe(sha256(expected));
    }
  });

  it("review 5: a ranged GET and /extents, pipelined then FIN, are both answered", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(
        target,
        `GET /images/${id} HTTP/1.1\r\nRange: bytes=10-19\r\n\r\nGET /images/${id}/extents HTTP/1.1\r\n\r\n`,
        5000,
        { halfClose: true },
      );
      expect(statusOf(answer.text), target.name).toBe(206);
      expect(answer.text).toContain(data.subarray(10, 20).toString("latin1"));
      expect(answer.text).toContain(`[{"start": 0, "length": ${64 * KiB}, "zero": false`);
      expect(answer.closed).toBe(true);
    }
  });

  it("review 5: a FIN before the body is complete is a disconnect: no answer, nothing written past what came", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, path, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(
        target,
        `PUT /images/${id} HTTP/1.1\r\nContent-Range: bytes 0-7/*\r\nContent-Length: 8\r\n\r\nQQQQ`,
        5000,
        { halfClose: true },
      );
      expect(answer.text, target.name).toBe("");
      expect(answer.closed).toBe(true);
      const written = await readFile(path);
      expect(written.subarray(4).equals(data.subarray(4)), target.name).toBe(true);
    }
  });
});

describe("review 9, 10, 12: refusals", () => {
  it("review 9: a 70000-byte header is 431, a 70000-byte request line still 414", async () => {
    for (const target of imagesServices(daemon)) {
      const { id } = await imageWithTicket(daemon, 64 * KiB);
      const header = await exchange(target, `GET /images/${id} HTTP/1.1\r\nX-Big: ${"a".repeat(70_000)}\r\n\r\n`);
      expect(statusOf(header.text), target.name).toBe(431);
      expect(header.text).toContain("Request header fields too large");
      const line = await exchange(target, `GET /images/${id}?${"a".repeat(70_000)} HTTP/1.1\r\n\r\n`);
      expect(statusOf(line.text), target.name).toBe(414);
    }
  });

  it("review 10: two Content-Length headers are 400 'Multiple Content-Length headers'; nothing is written", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, path, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(
        target,
        `PUT /images/${id} HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nABCD`,
      );
      expect(statusOf(answer.text), target.name).toBe(400);
      expect(answer.text).toContain("\r\n\r\nMultiple Content-Length headers\n");
      expect(answer.closed).toBe(true);
      expect(sha256(await readFile(path))).toBe(sha256(data));
    }
  });

  it("review 12: a request line without HTTP version (HTTP/0.9) is 505 and closes; no image bytes go out", async () => {
    for (const target of imagesServices(daemon)) {
      const { id, data } = await imageWithTicket(daemon, 64 * KiB);
      const answer = await exchange(target, `GET /images/${id}\r\n\r\n`);
      expect(statusOf(answer.text), target.name).toBe(505);
      expect(answer.text).toContain("HTTP version not supported");
      expect(answer.text).not.toContain(data.subarray(0, 16).toString("latin1"));
      expect(answer.closed).toBe(true);
    }
  });
});
