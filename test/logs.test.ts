/**
 * Issue 13, logs an admin can use: per-connection statistics on CLOSE, one line per control
 * API request (method, path, status) without the ticket id, the same words for the same thing.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;

beforeAll(async () => {
  daemon = await startDaemon({ config: { logging: { level: "INFO" } } });
});
afterAll(async () => {
  await daemon?.stop();
});

describe("13: logs", () => {
  it("13: CLOSE carries requests, time, bytes and rate per operation of the connection", async () => {
    const image = daemon.tmp.file(`${randomUUID()}.raw`);
    await writeFile(image, "");
    await truncate(image, 4 * MiB);
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: 4 * MiB, ops: ["read", "write"], timeout: 60, url: `file://${image}` });
    // One keep-alive connection: two writes, a zero, a read, then the client closes it.
    const { Agent } = await import("node:https");
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (const offset of [0, MiB]) {
        const put = await request(daemon, {
          method: "PUT",
          path: `/images/${id}?flush=n`,
          headers: { "content-range": `bytes ${offset}-${offset + MiB - 1}/*` },
          body: randomBytes(MiB),
          agent,
        });
        expect(put.status, put.text).toBe(200);
      }
      const zero = await request(daemon, {
        method: "PATCH",
        path: `/images/${id}`,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ op: "zero", offset: 2 * MiB, size: MiB, flush: false }),
        agent,
      });
      expect(zero.status, zero.text).toBe(200);
      const get = await request(daemon, { path: `/images/${id}`, headers: { range: `bytes=0-${MiB - 1}` }, agent });
      expect(get.status).toBe(206);
    } finally {
      agent.destroy();
    }
    const logs = await daemon.waitForLog(/CLOSE connection=\d+ client=127\.0\.0\.1 seconds=\d+\.\d{3} requests=4 /);
    const close = /CLOSE connection=\d+ client=127\.0\.0\.1 seconds=\d+\.\d{3} requests=4 .*/.exec(logs)?.[0] ?? "";
    expect(close).toMatch(/ write="2 ops, \d+\.\d{3} s, 2\.00 MiB(, [\d.]+ [KMG]?i?B(ytes)?\/s)?"/);
    expect(close).toMatch(/ zero="1 ops, \d+\.\d{3} s, 1\.00 MiB/);
    expect(close).toMatch(/ read="1 ops, \d+\.\d{3} s, 1\.00 MiB/);
    expect(close).not.toContain("errors=");
    // ZERO says flush=n as WRITE does, not flush=false.
    expect(logs).toMatch(/ZERO size=1048576 offset=2097152 flush=n /);
    expect(logs).toMatch(/WRITE size=1048576 offset=0 flush=n /);
  });

  it("13: control API requests are logged with method, path and status, never the full ticket id", async () => {
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: MiB, ops: ["read"], timeout: 60, url: "file:///nonexistent" });
    expect((await request(daemon, { service: "control", path: `/tickets/${id}` })).status).toBe(200);
    const missing = randomUUID();
    expect((await request(daemon, { service: "control", path: `/tickets/${missing}` })).status).toBe(404);
    expect((await request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` })).status).toBe(204);
    const short = id.slice(0, 8);
    const logs = await daemon.waitForLog(`REQUEST method=DELETE path=/tickets/${short}… status=204`);
    expect(logs).toMatch(new RegExp(`REQUEST method=PUT path=/tickets/${short}… status=200 seconds=\\d+\\.\\d{3}`));
    expect(logs).toContain(`REQUEST method=GET path=/tickets/${short}… status=200`);
    expect(logs).toContain(`REQUEST method=GET path=/tickets/${missing.slice(0, 8)}… status=404`);
    expect(logs).not.toContain(id);
    expect(logs).not.toContain(missing);
  });
});
