/**
 * Issue 14, multi-core: with `[daemon] workers = 2` the images services run on two threads,
 * and everything a client or a manager sees stays as with one: bytes, ticket progress,
 * cancellation, and a thread that dies takes only its own connections with it.
 */

import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectionIdCounter } from "../src/http/connection.js";
import {
  addTicket,
  type InProcessDaemon,
  request,
  startDaemon,
  startInProcess,
  ticketStatus,
} from "./helpers/daemon.js";
import { makeTempDir } from "./helpers/tmp.js";

const MiB = 1024 * 1024;
const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

let daemon: InProcessDaemon;
let counter = 0;

beforeAll(async () => {
  // remove_timeout: a DELETE whose transfer does not stop in time answers 409 within the test.
  daemon = await startInProcess({ config: { daemon: { workers: 2 }, control: { remove_timeout: 2 } } });
});
afterAll(async () => {
  if (process.env.SHOW_LOGS) console.log(daemon.logs().slice(-6000));
  await daemon?.stop();
});

async function imageWithTicket(size: number, ops: string[] = ["write"]) {
  const path = daemon.tmp.file(`workers-${counter++}.raw`);
  await writeFile(path, Buffer.alloc(size));
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size, url: `file://${path}`, timeout: 300, ops });
  return { path, id };
}

async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** One client connection kept open across requests (an agent with a single socket). */
function client(): https.Agent {
  return new https.Agent({ keepAlive: true, maxSockets: 1, ca: readFileSync(daemon.certs.caFile) });
}

/** Connection ids of OPEN lines, by the worker that serves them. */
function openedPerWorker(): Map<string, string[]> {
  const perWorker = new Map<string, string[]>();
  for (const match of daemon.logs().matchAll(/ OPEN connection=(\d+) client=\S+ worker=(\d+)/g)) {
    const [, id, worker] = match as unknown as [string, string, string];
    perWorker.set(worker, [...(perWorker.get(worker) ?? []), id]);
  }
  return perWorker;
}

/**
 * A PUT whose body goes out a chunk at a time until `stop` is called: a transfer that stays
 * running on its worker. Resolves with the status (0 when the connection was cut).
 */
function slowUpload(id: string, offset: number, length: number) {
  const socket = tls.connect({
    host: "127.0.0.1",
    port: daemon.remotePort,
    ca: readFileSync(daemon.certs.caFile),
    servername: "localhost",
  });
  socket.on("error", () => undefined);
  let sent = 0;
  let timer: NodeJS.Timeout | undefined;
  const answered = new Promise<number>((resolve) => {
    let text = "";
    socket.on("data", (data: Buffer) => {
      text += data.toString("latin1");
      const status = /^HTTP\/1\.1 (\d+)/.exec(text)?.[1];
      if (status !== undefined) resolve(Number(status));
    });
    socket.on("close", () => resolve(0));
  });
  socket.once("secureConnect", () => {
    socket.write(
      `PUT /images/${id} HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${length}\r\n` +
        `Content-Range: bytes ${offset}-${offset + length - 1}/*\r\n\r\n`,
    );
    const chunk = Buffer.alloc(64 * 1024, 0x55);
    timer = setInterval(() => {
      if (sent + chunk.length >= length || socket.destroyed) return;
      socket.write(chunk);
      sent += chunk.length;
    }, 20);
  });
  return {
    answered,
    /** Stops sending, keeping the connection open: the request waits for the rest of its body. */
    pause: () => clearInterval(timer),
    finish: () => {
      clearInterval(timer);
      if (!socket.destroyed) socket.write(Buffer.alloc(length - sent, 0x55));
    },
    stop: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

describe("14.workers: two data-plane threads", () => {
  it("14.workers: 4 concurrent HTTPS uploads to distinct ranges of one image split 2/2 over the workers; the download's hash matches and progress is exact", async () => {
    const part = 8 * MiB;
    const { id } = await imageWithTicket(4 * part);
    const before = openedPerWorker();
    const agents = [client(), client(), client(), client()];
    // Every connection is open before any upload: each went to the least busy thread.
    await Promise.all(agents.map((agent) => request(daemon, { method: "OPTIONS", path: `/images/${id}`, agent })));
    const opened = openedPerWorker();
    const added = [...opened].map(([worker, ids]) => [worker, ids.length - (before.get(worker)?.length ?? 0)]);
    expect(Object.fromEntries(added)).toEqual({ 0: 2, 1: 2 });
    expect(daemon.services.dataPlane?.connectionsPerThread).toEqual([2, 2]);

    const parts = agents.map(() => randomBytes(part));
    const statuses = await Promise.all(
      agents.map((agent, i) =>
        request(daemon, {
          method: "PUT",
          path: `/images/${id}?flush=y`,
          headers: { "content-range": `bytes ${i * part}-${(i + 1) * part - 1}/*` },
          body: parts[i] as Buffer,
          agent,
        }).then((response) => response.status),
      ),
    );
    expect(statuses).toEqual([200, 200, 200, 200]);
    const status = await ticketStatus(daemon, id);
    expect(status.transferred).toBe(4 * part);
    // Each connection holds a backend for the ticket, on either thread.
    expect(status.connections).toBe(4);
    expect(status.active).toBe(false);

    const download = await request(daemon, { path: `/images/${id}`, agent: agents[0] as https.Agent });
    expect(download.status).toBe(200);
    expect(sha(download.body)).toBe(sha(Buffer.concat(parts)));
    for (const agent of agents) agent.destroy();
    await waitFor(async () => (await ticketStatus(daemon, id)).connections === 0, "connections to close");
    await waitFor(() => daemon.services.dataPlane?.connectionsPerThread.join() === "0,0", "threads to be idle");
  });

  it("14.workers: connection ids are unique across workers and every line goes to the one log", async () => {
    const { id } = await imageWithTicket(MiB);
    const agents = [client(), client(), client(), client()];
    await Promise.all(agents.map((agent) => request(daemon, { method: "OPTIONS", path: `/images/${id}`, agent })));
    for (const agent of agents) agent.destroy();
    const ids = [...openedPerWorker().values()].flat();
    expect(new Set(ids).size).toBe(ids.length);
    // A worker's CLOSE line names its connection like the main thread's did.
    await waitFor(() => ids.every((n) => daemon.logs().includes(` CLOSE connection=${n} `)), "CLOSE lines");
  });

  it("14.workers: connection ids keep growing past 2^31 on every thread, as they did on one", async () => {
    const { id } = await imageWithTicket(MiB);
    // The counter all threads share, as after 2^31 - 1 connections.
    new BigInt64Array(connectionIdCounter())[0] = 2n ** 31n - 1n;
    const agents = [client(), client()];
    await Promise.all(agents.map((agent) => request(daemon, { method: "OPTIONS", path: `/images/${id}`, agent })));
    for (const agent of agents) agent.destroy();
    const opened = [...openedPerWorker().values()].flat();
    expect(opened).toContain("2147483648");
    expect(opened).toContain("2147483649");
    expect(daemon.logs()).not.toMatch(/ OPEN connection=-/);
  });

  it("14.workers: DELETE of a ticket with transfers running on both workers stops both, answers 204, and the ticket is refused after", async () => {
    const { id } = await imageWithTicket(64 * MiB);
    const uploads = [slowUpload(id, 0, 32 * MiB), slowUpload(id, 32 * MiB, 32 * MiB)];
    await waitFor(async () => {
      const status = await ticketStatus(daemon, id);
      return status.active === true && status.connections === 2;
    }, "both uploads to run");
    expect(daemon.services.dataPlane?.connectionsPerThread).toEqual([1, 1]);
    const removed = await request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` });
    expect(removed.status).toBe(204);
    // Both running requests were stopped: 403, or cut off mid-body.
    for (const upload of uploads) expect([0, 403]).toContain(await upload.answered);
    const missing = await request(daemon, { service: "control", path: `/tickets/${id}` });
    expect(missing.status).toBe(404);
    const refused = await request(daemon, { method: "PUT", path: `/images/${id}`, body: Buffer.alloc(4096) });
    expect(refused.status).toBe(403);
    expect(refused.text).toContain(`No such ticket`);
    for (const upload of uploads) upload.stop();
  });

  it("14.workers: a worker that dies loses only its own connection: the other worker's upload completes, the ticket and its counts stay right, and a new thread serves", async () => {
    const plane = daemon.services.dataPlane;
    if (plane === undefined) throw new Error("no data plane");
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const { id, path } = await imageWithTicket(8 * MiB);
    const doomed = slowUpload(id, 0, 4 * MiB);
    await waitFor(() => plane.connectionsPerThread.join() === "1,0", "first upload on worker 0");
    const survivor = slowUpload(id, 4 * MiB, 4 * MiB);
    await waitFor(async () => (await ticketStatus(daemon, id)).connections === 2, "both uploads to run");

    plane.crashWorkerForTest(0);
    expect(await doomed.answered).toBe(0);
    await waitFor(() => daemon.logs().includes("WORKER lost worker=0"), "the loss to be logged");
    // The dead thread's connection no longer counts; the other one still runs.
    await waitFor(async () => (await ticketStatus(daemon, id)).connections === 1, "the dead connection to be released");
    expect((await ticketStatus(daemon, id)).active).toBe(true);

    survivor.finish();
    expect(await survivor.answered).toBe(200);
    const written = await readFile(path);
    expect(written.subarray(4 * MiB).equals(Buffer.alloc(4 * MiB, 0x55))).toBe(true);
    const status = await ticketStatus(daemon, id);
    expect(status.active).toBe(false);
    // The survivor's range, and what the dead connection had written before it died.
    expect(status.transferred as number).toBeGreaterThanOrEqual(4 * MiB);
    survivor.stop();
    doomed.stop();

    // The replacement knows every ticket: new connections on both threads are served.
    await waitFor(() => daemon.logs().includes("WORKER started worker=0"), "a new worker 0");
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const agents = [client(), client()];
    const answers = await Promise.all(
      agents.map((agent) => request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-4095" }, agent })),
    );
    expect(answers.map((answer) => answer.status)).toEqual([206, 206]);
    expect(plane.connectionsPerThread).toEqual([1, 1]);
    for (const agent of agents) agent.destroy();
  });

  it("14.workers: a thread whose replacement fails to start is tried again until one serves; meanwhile the other thread serves every connection", async () => {
    const plane = daemon.services.dataPlane;
    if (plane === undefined) throw new Error("no data plane");
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const { id } = await imageWithTicket(MiB, ["read"]);
    const startedBefore = daemon.logs().split("WORKER started worker=1").length;
    plane.failNextStartsForTest(2);
    plane.crashWorkerForTest(1);
    await waitFor(() => daemon.logs().split("WORKER cannot start worker=1").length === 2, "a failed start");
    // Without thread 1 every connection goes to thread 0, and is served.
    const agent = client();
    const answer = await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-4095" }, agent });
    expect(answer.status).toBe(206);
    expect(plane.connectionsPerThread[0]).toBe(1);
    agent.destroy();
    await waitFor(
      () => daemon.logs().split("WORKER started worker=1").length > startedBefore,
      "thread 1 to start after two failed tries",
    );
    expect(daemon.logs().split("WORKER cannot start worker=1").length).toBe(3);
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const agents = [client(), client()];
    const answers = await Promise.all(
      agents.map((each) => request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-4095" }, agent: each })),
    );
    expect(answers.map((each) => each.status)).toEqual([206, 206]);
    expect(plane.connectionsPerThread).toEqual([1, 1]);
    for (const each of agents) each.destroy();
  });
});

describe("14.workers: no thread to serve", () => {
  it("14.workers: while no thread can serve, a storm of connections is refused with one warning line, no stack per connection, and the control service answers", async () => {
    const alone = await startInProcess({ config: { daemon: { workers: 2 } } });
    try {
      const plane = alone.services.dataPlane;
      if (plane === undefined) throw new Error("no data plane");
      plane.failNextStartsForTest(1000);
      plane.crashWorkerForTest(0);
      plane.crashWorkerForTest(1);
      await waitFor(
        () => /WORKER cannot start worker=0/.test(alone.logs()) && /WORKER cannot start worker=1/.test(alone.logs()),
        "both threads to fail their restart",
      );
      const closed = Array.from(
        { length: 200 },
        () =>
          new Promise<void>((resolve) => {
            const socket = net.connect({ host: "127.0.0.1", port: alone.remotePort });
            socket.on("error", () => undefined);
            socket.once("close", () => resolve());
          }),
      );
      await Promise.all(closed);
      expect((await request(alone, { service: "control", path: "/tickets/none" })).status).toBe(404);
      const refusals = alone.logs().match(/.*REFUSE cannot hand over connection.*/g) ?? [];
      expect(refusals).toHaveLength(1);
      expect(refusals[0]).toMatch(/WARNING .*reason="no data-plane thread is serving" refused=1/);
      expect(alone.logs()).not.toMatch(/REFUSE cannot hand over connection[^\n]*\nError/);
    } finally {
      await alone.stop();
    }
  });
});

describe("14.workers: the buffer budget", () => {
  it("14.workers: more workers than max_buffers run as many threads as buffers, with a warning, so the daemon-wide budget holds; uploads on every thread complete", async () => {
    const small = await startInProcess({ config: { daemon: { workers: 4, max_buffers: 2 } } });
    try {
      const plane = small.services.dataPlane;
      if (plane === undefined) throw new Error("no data plane");
      expect(plane.connectionsPerThread).toHaveLength(2);
      expect(small.logs()).toMatch(
        /WARNING .*CONFIG \[daemon\] workers reduced to max_buffers workers=4 max_buffers=2 threads=2/,
      );
      const path = small.tmp.file("budget.raw");
      await writeFile(path, Buffer.alloc(4 * MiB));
      const id = randomUUID();
      await addTicket(small, { uuid: id, size: 4 * MiB, url: `file://${path}`, timeout: 300, ops: ["write"] });
      const data = randomBytes(4 * MiB);
      const agents = [0, 1, 2, 3].map(
        () => new https.Agent({ keepAlive: true, maxSockets: 1, ca: readFileSync(small.certs.caFile) }),
      );
      const answers = await Promise.all(
        agents.map((agent, k) =>
          request(small, {
            method: "PUT",
            path: `/images/${id}`,
            body: data.subarray(k * MiB, (k + 1) * MiB),
            headers: { "content-range": `bytes ${k * MiB}-${(k + 1) * MiB - 1}/*` },
            agent,
          }),
        ),
      );
      expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200, 200]);
      expect(sha(await readFile(path))).toBe(sha(data));
      for (const agent of agents) agent.destroy();
    } finally {
      await small.stop();
    }
  });
});

describe("14.workers: ticket changes reach every worker", () => {
  /** Two held connections, one on each worker. */
  async function onBothWorkers(id: string) {
    const plane = daemon.services.dataPlane;
    if (plane === undefined) throw new Error("no data plane");
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const agents = [client(), client()];
    for (const agent of agents) await request(daemon, { method: "OPTIONS", path: `/images/${id}`, agent });
    expect(plane.connectionsPerThread).toEqual([1, 1]);
    return agents;
  }

  const put = (agent: https.Agent, id: string, offset: number, body: Buffer) =>
    request(daemon, {
      method: "PUT",
      path: `/images/${id}`,
      headers: { "content-range": `bytes ${offset}-${offset + body.length - 1}/*` },
      body,
      agent,
    });

  it("14.workers: an expired ticket is refused on both workers, and extending it makes both accept it again", async () => {
    const path = daemon.tmp.file(`workers-${counter++}.raw`);
    await writeFile(path, Buffer.alloc(MiB));
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: MiB, url: `file://${path}`, timeout: 1, ops: ["write"] });
    const agents = await onBothWorkers(id);
    // Poll until the ticket's second is over: both workers see the same expiry.
    let statuses: number[] = [];
    await waitFor(async () => {
      statuses = await Promise.all(agents.map(async (agent) => (await put(agent, id, 0, Buffer.alloc(4096))).status));
      return statuses.every((status) => status === 403);
    }, "both workers to refuse the expired ticket");
    const extended = await request(daemon, {
      service: "control",
      method: "PATCH",
      path: `/tickets/${id}`,
      body: JSON.stringify({ timeout: 300 }),
    });
    expect(extended.status).toBe(200);
    // A refused request closed its connection (403 closes): new ones, on both workers again.
    for (const agent of agents) agent.destroy();
    const again = await onBothWorkers(id);
    const data = [randomBytes(4096), randomBytes(4096)];
    const answers = await Promise.all(again.map((agent, k) => put(agent, id, k * 4096, data[k] as Buffer)));
    expect(answers.map((answer) => answer.status)).toEqual([200, 200]);
    expect((await readFile(path)).subarray(0, 8192).equals(Buffer.concat(data))).toBe(true);
    for (const agent of again) agent.destroy();
  });

  it("14.workers: a ticket the control API added is usable at once on connections already open on both workers", async () => {
    const { id: first } = await imageWithTicket(MiB);
    const agents = await onBothWorkers(first);
    for (let round = 0; round < 10; round++) {
      const { id, path } = await imageWithTicket(MiB);
      const data = [randomBytes(4096), randomBytes(4096)];
      const answers = await Promise.all(agents.map((agent, k) => put(agent, id, k * 4096, data[k] as Buffer)));
      expect(
        answers.map((answer) => answer.status),
        `round ${round}`,
      ).toEqual([200, 200]);
      expect((await readFile(path)).subarray(0, 8192).equals(Buffer.concat(data))).toBe(true);
    }
    expect(daemon.services.dataPlane?.connectionsPerThread).toEqual([1, 1]);
    for (const agent of agents) agent.destroy();
  });

  it("14.workers: a ticket added again under its id is the new one on both workers", async () => {
    const path = daemon.tmp.file(`workers-${counter++}.raw`);
    await writeFile(path, Buffer.alloc(2 * MiB));
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: MiB, url: `file://${path}`, timeout: 300, ops: ["write"] });
    await addTicket(daemon, { uuid: id, size: 2 * MiB, url: `file://${path}`, timeout: 300, ops: ["write"] });
    const agents = await onBothWorkers(id);
    // Past the first ticket's size, inside the second's.
    const answers = await Promise.all(
      agents.map((agent, k) => put(agent, id, MiB + k * 4096, Buffer.alloc(4096, 0x61 + k))),
    );
    expect(answers.map((answer) => answer.status)).toEqual([200, 200]);
    expect((await ticketStatus(daemon, id)).transferred).toBe(8192);
    for (const agent of agents) agent.destroy();
  });

  it("14.workers: DELETE of a ticket whose transfer does not stop in time is 409 and the ticket stays canceled; once it stopped a retry removes it", async () => {
    const { id } = await imageWithTicket(8 * MiB);
    const stalled = slowUpload(id, 0, 8 * MiB);
    await waitFor(async () => (await ticketStatus(daemon, id)).active === true, "the upload to run");
    stalled.pause();
    const removed = await request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` });
    expect(removed.status).toBe(409);
    expect((await ticketStatus(daemon, id)).canceled).toBe(true);
    stalled.stop();
    await waitFor(async () => (await ticketStatus(daemon, id)).active === false, "the upload to end");
    const retried = await request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` });
    expect(retried.status).toBe(204);
    expect((await request(daemon, { service: "control", path: `/tickets/${id}` })).status).toBe(404);
  });
});

describe("14.workers: the daemon process with two data-plane threads", () => {
  it("14.workers: over the local socket an upload and a download round-trip; SIGTERM lets a running upload finish, then the daemon exits 0", async () => {
    const proc = await startDaemon({ config: { daemon: { workers: 2 } } });
    // Outside the daemon's directory, which stopping it removes.
    const images = await makeTempDir("imageio-workers-");
    try {
      const path = images.file("local.raw");
      await writeFile(path, Buffer.alloc(4 * MiB));
      const id = randomUUID();
      await addTicket(proc, { uuid: id, size: 4 * MiB, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
      const data = randomBytes(MiB);
      const put = await request(proc, { service: "local", method: "PUT", path: `/images/${id}`, body: data });
      expect(put.status).toBe(200);
      const get = await request(proc, {
        service: "local",
        path: `/images/${id}`,
        headers: { range: `bytes=0-${MiB - 1}` },
      });
      expect(sha(get.body)).toBe(sha(data));

      // An upload still sending its body when the daemon is told to stop.
      const socket = net.connect({ path: proc.localSocket as string });
      socket.on("error", () => undefined);
      let answer = "";
      socket.on("data", (chunk: Buffer) => {
        answer += chunk.toString("latin1");
      });
      const rest = randomBytes(MiB);
      socket.write(
        `PUT /images/${id} HTTP/1.1\r\nHost: x\r\nContent-Length: ${2 * MiB}\r\nContent-Range: bytes ${MiB}-${3 * MiB - 1}/*\r\n\r\n`,
      );
      socket.write(rest);
      await waitFor(async () => (await ticketStatus(proc, id)).active === true, "the upload to run");
      const exited = proc.stop("SIGTERM");
      await waitFor(() => proc.logs().includes("STOP signal=SIGTERM"), "the daemon to stop accepting");
      socket.write(rest);
      await waitFor(() => /^HTTP\/1\.1 200/.test(answer), "the upload's answer");
      socket.destroy();
      expect(await exited).toBe(0);
      const written = await readFile(path);
      expect(sha(written.subarray(MiB, 3 * MiB))).toBe(sha(Buffer.concat([rest, rest])));
      expect(proc.logs()).toMatch(/OPEN connection=\d+ client=local worker=[01]/);
    } finally {
      await proc.stop();
      await images.remove();
    }
  });
});

describe("14.workers: TLS sessions", () => {
  it("14.workers: a TLS session from one worker resumes on the other (the threads share ticket keys)", async () => {
    const plane = daemon.services.dataPlane;
    if (plane === undefined) throw new Error("no data plane");
    await waitFor(() => plane.connectionsPerThread.join() === "0,0", "threads to be idle");
    const connect = (session?: Buffer) =>
      tls.connect({
        host: "127.0.0.1",
        port: daemon.remotePort,
        ca: readFileSync(daemon.certs.caFile),
        servername: "localhost",
        ...(session === undefined ? {} : { session }),
      });
    const first = connect();
    first.on("error", () => undefined);
    // TLS 1.3 sends the session ticket after the handshake.
    const session = await new Promise<Buffer>((resolve) => first.once("session", resolve));
    expect(plane.connectionsPerThread).toEqual([1, 0]);
    // The first connection stays open, so the second goes to the other thread.
    const second = connect(session);
    second.on("error", () => undefined);
    await new Promise((resolve) => second.once("secureConnect", resolve));
    await waitFor(() => plane.connectionsPerThread.join() === "1,1", "the second connection on worker 1");
    expect(second.isSessionReused()).toBe(true);
    first.destroy();
    second.destroy();
  });
});
