/** Spec §10 items 12, 56–59 and 77: ticket status, expiry and progress (fake clock, in process). */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { truncate, writeFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import https from "node:https";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "../src/tickets/clock.js";
import { addTicket, type InProcessDaemon, request, startInProcess, ticketStatus } from "./helpers/daemon.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const clock = new FakeClock();
let daemon: InProcessDaemon;
let image: string;

beforeAll(async () => {
  daemon = await startInProcess({ clock });
  image = daemon.tmp.file("image.raw");
  await writeFile(image, "");
  await truncate(image, GiB);
});
afterAll(async () => {
  await daemon?.stop();
});

async function newTicket(extra: Record<string, unknown> = {}): Promise<string> {
  const uuid = randomUUID();
  await addTicket(daemon, { uuid, size: GiB, url: `file://${image}`, timeout: 300, ops: ["read"], ...extra });
  return uuid;
}

/** Starts a download and returns the response paused, with the transfer in progress. */
function startDownload(id: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port: daemon.remotePort,
        path: `/images/${id}`,
        ca: readFileSync(daemon.certs.caFile),
        servername: "localhost",
        agent: false,
      },
      (res) => {
        res.pause();
        resolve(res);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

function drain(res: IncomingMessage): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    res.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
    });
    res.on("end", () => resolve(bytes));
    res.on("error", reject);
    res.resume();
  });
}

describe("ticket status", () => {
  it("12: a ticket with timeout 1 is expired 2 s later: 403 Transfer=<tid> expired", async () => {
    const id = await newTicket({ timeout: 1, transfer_id: "tx-12" });
    clock.advance(2);
    const response = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } });
    expect(response.status).toBe(403);
    expect(response.text).toBe("You are not allowed to access this resource: Transfer=tx-12 expired\n");
  });

  it("56: transferred is the union of the ranges read; a read-write ticket has none", async () => {
    const id = await newTicket();
    for (const range of ["bytes=0-65535", "bytes=32768-131071", "bytes=524288-589823"]) {
      expect((await request(daemon, { path: `/images/${id}`, headers: { range } })).status).toBe(206);
    }
    expect((await ticketStatus(daemon, id)).transferred).toBe(196608);
    const rw = await newTicket({ ops: ["read", "write"] });
    await request(daemon, { path: `/images/${rw}`, headers: { range: "bytes=0-9" } });
    expect("transferred" in (await ticketStatus(daemon, rw))).toBe(false);
  });

  it("57/58: during a long GET the ticket is active with one connection and growing transferred; then idle", async () => {
    const id = await newTicket();
    const res = await startDownload(id);
    await expect
      .poll(async () => ((await ticketStatus(daemon, id)).transferred as number) > 0, { timeout: 10_000 })
      .toBe(true);
    const during = await ticketStatus(daemon, id);
    expect(during).toMatchObject({ active: true, idle_time: 0, connections: 1 });
    expect(during.transferred as number).toBeGreaterThan(0);
    expect(during.transferred as number).toBeLessThan(GiB);
    const received = await drain(res);
    expect(received).toBe(GiB);
    // The connection's end reaches the daemon after the last byte reached us.
    await expect
      .poll(() => ticketStatus(daemon, id), { timeout: 10_000 })
      .toMatchObject({ active: false, transferred: GiB, connections: 0 });
  });

  it("59: an operation running when the ticket expires completes, and then extends the ticket", async () => {
    const id = await newTicket({ timeout: 10 });
    const res = await startDownload(id);
    clock.advance(30);
    expect(await drain(res)).toBe(GiB);
    // The operation ends (and extends the ticket) once the daemon has seen it finish.
    await expect.poll(() => ticketStatus(daemon, id), { timeout: 10_000 }).toMatchObject({ active: false });
    const status = await ticketStatus(daemon, id);
    expect(status.expires).toBe(Math.floor(clock.now()) + 10);
    expect((await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } })).status).toBe(206);
  });

  it("77: [D5] after PATCH timeout 3600 and a GET, the ticket expires 3600 s from now", async () => {
    const id = await newTicket({ timeout: 300 });
    await request(daemon, {
      service: "control",
      method: "PATCH",
      path: `/tickets/${id}`,
      body: JSON.stringify({ timeout: 3600 }),
    });
    expect((await ticketStatus(daemon, id)).timeout).toBe(3600);
    clock.advance(100);
    await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } });
    expect((await ticketStatus(daemon, id)).expires).toBe(Math.floor(clock.now()) + 3600);
  });

  it("idle_time counts seconds since the last access", async () => {
    const id = await newTicket();
    clock.advance(7);
    expect((await ticketStatus(daemon, id)).idle_time).toBe(7);
  });
});
