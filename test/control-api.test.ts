/** Spec §10 checklist items 1–10: the control API on its unix socket. */
import { randomUUID } from "node:crypto";
import { truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "../src/tickets/clock.js";
import {
  addTicket,
  type DaemonProcess,
  type InProcessDaemon,
  request,
  startDaemon,
  startInProcess,
  ticketStatus,
} from "./helpers/daemon.js";

let daemon: DaemonProcess;
let image: string;

beforeAll(async () => {
  daemon = await startDaemon();
  image = daemon.tmp.file("image.raw");
  await writeFile(image, Buffer.alloc(1024 * 1024, 1));
});
afterAll(async () => {
  await daemon?.stop();
});

const ticket = (extra: Record<string, unknown> = {}) => ({
  uuid: randomUUID(),
  size: 1024 * 1024,
  url: `file://${image}`,
  timeout: 300,
  ops: ["read"],
  ...extra,
});

const control = (method: string, path: string, body?: unknown) =>
  request(daemon, {
    service: "control",
    method,
    path,
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });

describe("control API", () => {
  it("1: PUT /tickets/T stores the ticket under body.uuid whatever the URL id, 200 with content-length 0", async () => {
    const t = ticket();
    const response = await control("PUT", "/tickets/some-other-id", t);
    expect(response.status).toBe(200);
    expect(response.headers["content-length"]).toBe("0");
    expect(response.body.length).toBe(0);
    expect((await ticketStatus(daemon, t.uuid)).uuid).toBe(t.uuid);
    expect((await control("GET", "/tickets/some-other-id")).status).toBe(404);
    const empty = await control("PUT", "/tickets/", t);
    expect(empty.status).toBe(400);
    expect(empty.text).toBe("Ticket id is required\n");
  });

  it("2: a ticket missing a required field is refused naming the field", async () => {
    for (const name of ["uuid", "size", "ops", "timeout", "url"]) {
      const t: Record<string, unknown> = ticket();
      delete t[name];
      const response = await control("PUT", "/tickets/x", t);
      expect(response.status).toBe(400);
      expect(response.text).toBe(`Invalid ticket: Required ticket parameter is missing: ${name}\n`);
      expect(response.headers["content-type"]).toBe("text/plain; charset=UTF-8");
    }
  });

  it("3: wrong types, an unsupported scheme and non-JSON bodies are refused with 400", async () => {
    const cases: Record<string, unknown>[] = [
      { size: "1" },
      { size: -1 },
      { size: 1.5 },
      { size: true },
      { size: 2 ** 53 },
      { timeout: "x" },
      { url: 1 },
      { sparse: "yes" },
      { dirty: 1 },
      { ops: ["read", "delete"] },
      { ops: "read" },
      { inactivity_timeout: 1e30 },
      { url: "ftp://x" },
      { uuid: "a/b" },
      { filename: "a\r\nb" },
      { sparse: null },
      { transfer_id: 7 },
    ];
    for (const extra of cases) {
      const response = await control("PUT", "/tickets/x", ticket(extra));
      expect(response.status, JSON.stringify(extra)).toBe(400);
      expect(response.text).toMatch(/^Invalid ticket: /);
    }
    const scheme = await control("PUT", "/tickets/x", ticket({ url: "ftp://x" }));
    expect(scheme.text).toBe("Invalid ticket: Invalid value for 'url': 'ftp://x': Unsupported url scheme: ftp\n");
    const size = await control("PUT", "/tickets/x", ticket({ size: "1" }));
    expect(size.text).toMatch(/^Invalid ticket: Invalid value for 'size': '1': expecting a <class 'int'> value/);
    for (const body of ["not json", "null", "1", '"x"', "[1]"]) {
      const response = await control("PUT", "/tickets/x", body);
      expect(response.status, body).toBe(400);
    }
    expect((await control("PUT", "/tickets/x", "{bad")).text).toMatch(/^Ticket is not in a json format: /);
  });

  it("4: GET /tickets/T shows the status keys in order, with defaults", async () => {
    const t = ticket();
    await addTicket(daemon, t);
    const response = await control("GET", `/tickets/${t.uuid}`);
    expect(response.status).toBe(200);
    expect(response.headers["content-type"]).toBe("application/json");
    expect(response.text.endsWith("}\n")).toBe(true);
    const status = JSON.parse(response.text) as Record<string, unknown>;
    expect(Object.keys(status)).toEqual([
      "active",
      "canceled",
      "connections",
      "expires",
      "idle_time",
      "inactivity_timeout",
      "ops",
      "size",
      "sparse",
      "dirty",
      "timeout",
      "url",
      "uuid",
      "transfer_id",
      "transferred",
    ]);
    expect(status).toMatchObject({
      sparse: false,
      dirty: false,
      inactivity_timeout: 60,
      transfer_id: `(ticket/${t.uuid.slice(0, 18)})`,
      transferred: 0,
    });
    expect(response.text).toContain('"active": false, "canceled": false');
    const rw = ticket({ ops: ["read", "write"], filename: "x.raw" });
    await addTicket(daemon, rw);
    const rwStatus = await ticketStatus(daemon, rw.uuid);
    expect(rwStatus.filename).toBe("x.raw");
    expect("transferred" in rwStatus).toBe(false);
  });

  it("the default transfer_id takes 18 characters of the uuid, not UTF-16 halves", async () => {
    const t = ticket({ uuid: `${"a".repeat(17)}😀${"b".repeat(5)}` });
    await addTicket(daemon, t);
    expect((await ticketStatus(daemon, t.uuid)).transfer_id).toBe(`(ticket/${"a".repeat(17)}😀)`);
  });

  it("5: GET of an unknown ticket is 404", async () => {
    const response = await control("GET", "/tickets/unknown");
    expect(response.status).toBe(404);
    expect(response.text).toBe("No such ticket 'unknown'\n");
  });

  it("7: DELETE /tickets/T is 204 with content-length 0, also for unknown tickets", async () => {
    const t = ticket();
    await addTicket(daemon, t);
    for (const id of [t.uuid, t.uuid, "never-existed"]) {
      const response = await control("DELETE", `/tickets/${id}`);
      expect(response.status).toBe(204);
      expect(response.headers["content-length"]).toBe("0");
    }
    expect((await control("GET", `/tickets/${t.uuid}`)).status).toBe(404);
  });

  it("8: DELETE /tickets/ removes all tickets", async () => {
    const a = ticket();
    const b = ticket();
    await addTicket(daemon, a);
    await addTicket(daemon, b);
    expect((await control("DELETE", "/tickets/")).status).toBe(204);
    expect((await control("GET", `/tickets/${a.uuid}`)).status).toBe(404);
    expect((await control("GET", `/tickets/${b.uuid}`)).status).toBe(404);
  });

  it("10: after delete every /images/T request is refused with 403", async () => {
    const t = ticket({ ops: ["read", "write"] });
    await addTicket(daemon, t);
    expect((await request(daemon, { path: `/images/${t.uuid}`, headers: { range: "bytes=0-9" } })).status).toBe(206);
    await control("DELETE", `/tickets/${t.uuid}`);
    for (const [method, path] of [
      ["GET", ""],
      ["PUT", ""],
      ["OPTIONS", ""],
      ["GET", "/extents"],
      ["GET", "/checksum"],
    ] as const) {
      const response = await request(daemon, {
        method,
        path: `/images/${t.uuid}${path}`,
        body: method === "PUT" ? "x" : "",
      });
      expect(response.status, `${method} ${path}`).toBe(403);
      expect(response.text).toBe(`You are not allowed to access this resource: No such ticket ${t.uuid}\n`);
    }
  });

  it("the control service serves nothing but /tickets/, and images are not served there", async () => {
    expect((await control("GET", "/images/x")).status).toBe(404);
    expect((await control("GET", "/info/")).status).toBe(404);
    expect((await control("POST", "/tickets/x")).status).toBe(405);
  });
});

describe("control API with a fake clock", () => {
  let inProcess: InProcessDaemon;
  const clock = new FakeClock();
  beforeAll(async () => {
    inProcess = await startInProcess({ clock, config: { control: { remove_timeout: 1 } } });
    // Large (and sparse, so cheap) enough that a download cannot fit in socket buffers.
    await writeFile(inProcess.tmp.file("image.raw"), "");
    await truncate(inProcess.tmp.file("image.raw"), 1024 * 1024 * 1024);
  });
  afterAll(async () => {
    await inProcess?.stop();
  });
  const url = () => `file://${inProcess.tmp.file("image.raw")}`;

  it("5/6: an expired ticket is still shown; PATCH revives it, sets expires and timeout [D5]", async () => {
    const t = ticket({ url: url(), timeout: 10 });
    await addTicket(inProcess, t);
    clock.advance(20);
    const expired = await ticketStatus(inProcess, t.uuid);
    expect(expired.expires as number).toBeLessThanOrEqual(clock.now());
    const get = await request(inProcess, { path: `/images/${t.uuid}` });
    expect(get.status).toBe(403);
    expect(get.text).toMatch(/Transfer=\(ticket\/.*\) expired\n$/);
    const patch = await request(inProcess, {
      service: "control",
      method: "PATCH",
      path: `/tickets/${t.uuid}`,
      body: JSON.stringify({ timeout: 3600, ignored: 1 }),
    });
    expect(patch.status).toBe(200);
    expect(patch.body.length).toBe(0);
    const status = await ticketStatus(inProcess, t.uuid);
    expect(status.timeout).toBe(3600);
    expect(status.expires).toBe(Math.floor(clock.now()) + 3600);
    expect((await request(inProcess, { path: `/images/${t.uuid}`, headers: { range: "bytes=0-0" } })).status).toBe(206);
  });

  it("6: PATCH with a negative, missing or non-integer timeout is 400; on an unknown ticket 404", async () => {
    const t = ticket({ url: url() });
    await addTicket(inProcess, t);
    for (const body of [{ timeout: -1 }, {}, { timeout: "10" }, { timeout: 1.5 }, "junk"]) {
      const response = await request(inProcess, {
        service: "control",
        method: "PATCH",
        path: `/tickets/${t.uuid}`,
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
      expect(response.status, JSON.stringify(body)).toBe(400);
    }
    const unknown = await request(inProcess, {
      service: "control",
      method: "PATCH",
      path: "/tickets/nope",
      body: JSON.stringify({ timeout: 10 }),
    });
    expect(unknown.status).toBe(404);
    expect(unknown.text).toBe("No such ticket: nope\n");
  });

  it("9: DELETE during an operation cancels it; not stopped in time → 409 and the ticket stays canceled; a retry succeeds", async () => {
    const t = ticket({ url: url(), ops: ["read"], size: 1024 * 1024 * 1024 });
    await addTicket(inProcess, t);
    const agent = new (await import("node:https")).Agent({ keepAlive: false });
    // Start a download and stop reading it, so the operation cannot reach its next chunk.
    const { default: https } = await import("node:https");
    const { readFileSync } = await import("node:fs");
    const stalled = await new Promise<import("node:http").IncomingMessage>((resolve, reject) => {
      const req = https.request(
        {
          host: "127.0.0.1",
          port: inProcess.remotePort,
          path: `/images/${t.uuid}`,
          ca: readFileSync(inProcess.certs.caFile),
          servername: "localhost",
          agent,
        },
        resolve,
      );
      req.on("error", reject);
      req.end();
    });
    stalled.pause();
    // Stalled: the operation is active and its socket full, so transferred stops growing.
    let transferred = -1;
    await expect
      .poll(
        async () => {
          const status = await ticketStatus(inProcess, t.uuid);
          const stalledNow = status.active === true && status.transferred === transferred;
          transferred = status.transferred as number;
          return stalledNow;
        },
        { timeout: 10_000, interval: 50 },
      )
      .toBe(true);
    expect((await ticketStatus(inProcess, t.uuid)).active).toBe(true);
    const first = await request(inProcess, { service: "control", method: "DELETE", path: `/tickets/${t.uuid}` });
    expect(first.status).toBe(409);
    expect(first.text).toBe(`Timeout cancelling transfer (ticket/${t.uuid.slice(0, 18)})\n`);
    expect((await ticketStatus(inProcess, t.uuid)).canceled).toBe(true);
    const refused = await request(inProcess, { path: `/images/${t.uuid}`, headers: { range: "bytes=0-0" } });
    expect(refused.status).toBe(403);
    expect(refused.text).toMatch(/was canceled\n$/);
    // Reading again lets the operation reach its next chunk, see the cancel, and stop.
    const ended = new Promise<void>((resolve) => {
      stalled.on("close", () => resolve());
      stalled.on("error", () => resolve());
    });
    stalled.resume();
    await ended;
    const retry = await request(inProcess, { service: "control", method: "DELETE", path: `/tickets/${t.uuid}` });
    expect(retry.status).toBe(204);
    expect((await request(inProcess, { service: "control", path: `/tickets/${t.uuid}` })).status).toBe(404);
  });
});
