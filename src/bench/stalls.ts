/**
 * `npm run bench -- stalls` (also the end of `daemon`): does the daemon keep answering while
 * it works, and does its memory come back? Reported:
 * - the worst latency of a control request (`GET /tickets/ID`, one after another every few
 *   milliseconds) while the daemon zeroes, walks extents and computes a checksum, next to the
 *   worst latency while idle: a stalled event loop shows up here as it does for Vdsm;
 * - the daemon's RSS before, during and after 200 connections dropped mid-upload.
 */
import { randomUUID } from "node:crypto";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { markdownTable } from "./harness.js";
import type { Suite } from "./run.js";
import {
  addTicket,
  GiB,
  MiB,
  makeCertificate,
  parseBenchOptions,
  type RunningService,
  rssOf,
  startService,
  writeImage,
} from "./services.js";

export const suite: Suite = {
  description: "control latency while the daemon zeroes, walks extents and hashes; RSS after connection churn",
  usage: "npm run bench -- stalls [--dir /var/tmp]",
  async run(args) {
    const options = parseBenchOptions(args);
    const dir = mkdtempSync(join(options.dir, "imageio-bench-stalls-"));
    const daemon = await startService("daemon", dir, makeCertificate(dir));
    try {
      await reportStalls(daemon, dir);
      await reportChurn(daemon, dir);
    } finally {
      daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

/** A file with `count` data extents: 4 KiB of data every 8 KiB. */
function fragmentedImage(path: string, count: number): number {
  const fd = openSync(path, "w");
  const block = Buffer.alloc(4096, 0x61);
  try {
    for (let k = 0; k < count; k++) writeSync(fd, block, 0, block.length, k * 8192);
  } finally {
    closeSync(fd);
  }
  return count * 8192;
}

/** One request on a unix socket; resolves with its status once the body was read. */
function call(socketPath: string, method: string, path: string, body?: string, agent?: http.Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path, agent: agent ?? false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** Runs `work` while polling the control API; resolves with the worst control latency in ms. */
async function worstLatencyDuring(daemon: RunningService, ticketId: string, work: () => Promise<unknown>) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let running = true;
  let worst = 0;
  const poll = (async () => {
    while (running) {
      const start = performance.now();
      await call(daemon.control, "GET", `/tickets/${ticketId}`, undefined, agent);
      worst = Math.max(worst, performance.now() - start);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  const started = performance.now();
  try {
    await work();
  } finally {
    running = false;
    await poll;
    agent.destroy();
  }
  return { worst, seconds: (performance.now() - started) / 1000 };
}

export async function reportStalls(daemon: RunningService, dir: string): Promise<void> {
  const extentsCount = 100_000;
  const fragmented = join(dir, "fragmented.raw");
  const fragmentedSize = fragmentedImage(fragmented, extentsCount);
  const sparse = join(dir, "sparse.raw");
  closeSync(openSync(sparse, "w"));
  const zeroSize = 8 * GiB;
  const hashed = join(dir, "hashed.raw");
  await writeImage(hashed, 512 * MiB);
  const tickets: Record<string, string> = {};
  for (const [name, path, size] of [
    ["fragmented", fragmented, fragmentedSize],
    ["sparse", sparse, zeroSize],
    ["hashed", hashed, 512 * MiB],
  ] as const) {
    tickets[name] = randomUUID();
    await addTicket(daemon.control, {
      uuid: tickets[name],
      size,
      url: `file://${path}`,
      timeout: 3600,
      ops: ["read", "write"],
    });
  }
  const probe = tickets.fragmented as string;
  const cases: [string, () => Promise<unknown>][] = [
    ["idle (1 s)", () => new Promise((resolve) => setTimeout(resolve, 1000))],
    [
      `PATCH zero 8 GiB (file)`,
      () =>
        call(
          daemon.local,
          "PATCH",
          `/images/${tickets.sparse}`,
          JSON.stringify({ op: "zero", offset: 0, size: zeroSize }),
        ),
    ],
    [
      `GET extents (${extentsCount} data extents)`,
      () => call(daemon.local, "GET", `/images/${tickets.fragmented}/extents`),
    ],
    ["GET checksum (512 MiB)", () => call(daemon.local, "GET", `/images/${tickets.hashed}/checksum`)],
  ];
  const rows: string[][] = [];
  for (const [name, work] of cases) {
    const { worst, seconds } = await worstLatencyDuring(daemon, probe, work);
    rows.push([name, seconds.toFixed(2), worst.toFixed(1)]);
  }
  process.stdout.write(
    `\n${markdownTable(["while the daemon runs", "seconds", "worst control latency (ms)"], rows)}\n`,
  );
}

/**
 * Starts an upload of 16 MiB on the unix socket and resolves once 6 MiB of it were sent (the
 * socket stays open), or after `waitMs` when the daemon is not reading it (all its buffers
 * are lent out). Resolves undefined when the connection failed.
 */
function halfUpload(socketPath: string, ticketId: string, waitMs: number): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ path: socketPath });
    const timer = setTimeout(() => resolve(socket), waitMs);
    socket.on("error", () => undefined);
    socket.once("connect", () => {
      socket.write(`PUT /images/${ticketId}?flush=n HTTP/1.1\r\nHost: x\r\nContent-Length: ${16 * MiB}\r\n\r\n`);
      socket.write(Buffer.alloc(6 * MiB, 0x62), () => {
        clearTimeout(timer);
        resolve(socket);
      });
    });
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
}

export async function reportChurn(daemon: RunningService, dir: string): Promise<void> {
  const target = join(dir, "churn.raw");
  await writeImage(target, 64 * MiB);
  const id = randomUUID();
  await addTicket(daemon.control, { uuid: id, size: 64 * MiB, url: `file://${target}`, timeout: 3600, ops: ["write"] });
  // The baseline is an idle daemon: the worker threads of the zero, extents and checksum
  // above end after 5 s without work, and their memory with them.
  await new Promise((resolve) => setTimeout(resolve, 6000));
  const baseline = rssOf(daemon.pid);
  let peak = baseline;
  const sampler = setInterval(() => {
    try {
      peak = Math.max(peak, rssOf(daemon.pid));
    } catch {
      clearInterval(sampler);
      process.stderr.write(`the daemon exited during the churn:\n${daemon.logs()}\n`);
    }
  }, 20);
  // In batches: 200 connects at once overflow the listen backlog of a unix socket (EAGAIN).
  // Uploads beyond [daemon] max_buffers wait for a buffer; they count once they are open.
  const sockets: (net.Socket | undefined)[] = [];
  for (let batch = 0; batch < 200; batch += 25) {
    sockets.push(...(await Promise.all(Array.from({ length: 25 }, () => halfUpload(daemon.local, id, 2000)))));
  }
  const failed = sockets.filter((socket) => socket === undefined).length;
  if (failed > 0) process.stdout.write(`(${failed} of 200 connections failed or were closed by the daemon)\n`);
  for (const socket of sockets) socket?.destroy();
  clearInterval(sampler);
  const samples: string[][] = [];
  for (const seconds of [1, 5, 15]) {
    await new Promise((resolve) => setTimeout(resolve, seconds === 1 ? 1000 : seconds === 5 ? 4000 : 10_000));
    samples.push([`${seconds} s after dropping`, (rssOf(daemon.pid) / MiB).toFixed(0)]);
  }
  const after = rssOf(daemon.pid);
  process.stdout.write(
    `\n${markdownTable(
      ["200 connections dropped mid-upload", "daemon RSS (MiB)"],
      [["before", (baseline / MiB).toFixed(0)], ["peak", (peak / MiB).toFixed(0)], ...samples],
    )}\nRSS 15 s after: ${((after - baseline) / MiB).toFixed(0)} MiB above the baseline (target ≤ 64 MiB ${
      after - baseline <= 64 * MiB ? "✓" : "✗"
    })\n`,
  );
}
