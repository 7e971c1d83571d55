/**
 * Issue 12: `imageio copy` as the daemon's client. The built CLI uploads to and downloads from
 * an in-process daemon (over HTTPS, and over its unix socket when local), a proxy, and an old
 * server without extents or zero; through standard input and output; and fails with the URL,
 * the status and the message, never hanging, when the ticket goes away mid-copy.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFile, stat, truncate, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import {
  addTicket,
  type DaemonProcess,
  type InProcessDaemon,
  request,
  startDaemon,
  startInProcess,
} from "./helpers/daemon.js";
import { writeSparseImage } from "./helpers/images.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;

interface Outcome {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the built CLI; `input` is written to its stdin (then closed), or `stdin` gets the child. */
function imageio(
  args: string[],
  options: { input?: Buffer; onSpawn?: (child: ChildProcessWithoutNullStreams) => void } = {},
) {
  return new Promise<Outcome>((resolve, reject) => {
    const child = spawn(process.execPath, [`${root}/bin/imageio`, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    const stdout: Buffer[] = [];
    let stderr = "";
    child.stdout.on("data", (data: Buffer) => stdout.push(data));
    child.stderr.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    child.stdin.on("error", () => undefined); // the copy may fail before reading all of it
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout: Buffer.concat(stdout), stderr }));
    if (options.onSpawn) options.onSpawn(child);
    else child.stdin.end(options.input);
  });
}

async function copyOk(...args: string[]): Promise<Outcome> {
  const result = await imageio(["copy", ...args]);
  expect(result.code, `imageio copy ${args.join(" ")}\n${result.stderr}`).toBe(0);
  return result;
}

const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const fileSha = async (path: string) => sha(await readFile(path));
const allocated = async (path: string) => (await stat(path)).blocks * 512;

/** Scattered 256 KiB runs holding about 10 % of `size`. */
const scattered = (size: number): [number, number][] => {
  const runs: [number, number][] = [];
  for (let start = 0; start < size; start += 2560 * 1024) runs.push([start, Math.min(size, start + 256 * 1024)]);
  return runs;
};

let tmp: TempDir;
let daemon: InProcessDaemon; // with its unix socket
let tcpOnly: InProcessDaemon; // without: HTTPS all the way
let caFile: string;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-copy-client-");
  [daemon, tcpOnly] = await Promise.all([startInProcess(), startInProcess({ config: { local: { enable: false } } })]);
  caFile = (await testCerts()).caFile;
});
afterAll(async () => {
  await Promise.all([daemon?.stop(), tcpOnly?.stop()]);
  await tmp?.remove();
});

let counter = 0;
/** A file on the daemon's side and a ticket for it; returns the ticket's URL and the file. */
async function ticketFor(
  target: InProcessDaemon | DaemonProcess,
  options: { size?: number; contents?: Buffer; ops?: string[]; sparse?: boolean } = {},
) {
  const path = target.tmp.file(`ticket-image-${counter++}.raw`);
  if (options.contents) await writeFile(path, options.contents);
  else {
    await writeFile(path, "");
    await truncate(path, options.size ?? 0);
  }
  const id = randomUUID();
  const size = options.size ?? options.contents?.length ?? 0;
  await addTicket(target, {
    uuid: id,
    size,
    url: `file://${path}`,
    timeout: 300,
    ops: options.ops ?? ["read", "write"],
    sparse: options.sparse ?? true,
  });
  return { id, path, url: `https://localhost:${target.remotePort}/images/${id}` };
}

const logCount = (logs: string, pattern: RegExp) => logs.split("\n").filter((line) => pattern.test(line)).length;

describe("imageio copy with a daemon", () => {
  it("12: uploads a sparse raw image over HTTPS: same bytes, zero ranges sent as PATCH zero, one flush", async () => {
    const src = tmp.file("upload-src.raw");
    const size = 24 * MiB;
    const image = await writeSparseImage(src, size, scattered(size));
    const ticket = await ticketFor(tcpOnly, { contents: randomBytes(size) });
    const before = tcpOnly.logs().length;
    const result = await copyOk(src, ticket.url, "--ca-file", caFile, "--progress", "json");
    expect(await fileSha(ticket.path)).toBe(sha(image));
    const logs = tcpOnly.logs().slice(before);
    expect(logCount(logs, /\bZERO\b/)).toBeGreaterThan(0);
    expect(logCount(logs, /\bFLUSH\b/)).toBe(1);
    expect(logCount(logs, /OPEN .*client=local/)).toBe(0);
    const done = JSON.parse(result.stdout.toString().trim().split("\n").pop() ?? "{}") as Record<string, number>;
    expect(done).toMatchObject({ phase: "done", size, copied: 10 * 256 * 1024, zeroed: size - 10 * 256 * 1024 });
    // The daemon's file ticket allows one writer (max_writers 1): the four workers read in
    // parallel and write in turns over one connection, the only one the daemon sees.
    expect(done.workers).toBe(4);
    expect(logCount(logs, /OPEN /)).toBe(1);
  });

  it("12: downloads only the data extents over several connections, leaving holes in a new file", async () => {
    const size = 32 * MiB;
    const remoteImage = tcpOnly.tmp.file("download-src.raw");
    const image = await writeSparseImage(remoteImage, size, scattered(size));
    const id = randomUUID();
    await addTicket(tcpOnly, { uuid: id, size, url: `file://${remoteImage}`, timeout: 300, ops: ["read"] });
    const out = tmp.file("download-out.raw");
    const before = tcpOnly.logs().length;
    const result = await copyOk(
      `https://localhost:${tcpOnly.remotePort}/images/${id}`,
      out,
      "--ca-file",
      caFile,
      "--workers",
      "3",
      "--progress",
      "json",
    );
    expect(await fileSha(out)).toBe(sha(image));
    expect(await allocated(out)).toBeLessThanOrEqual(size / 10 + 4 * MiB);
    const logs = tcpOnly.logs().slice(before);
    // Reads of data extents only: 13 runs of 256 KiB, each within one buffer.
    expect(logCount(logs, /\bREAD\b/)).toBe(scattered(size).length);
    expect(logCount(logs, /OPEN /)).toBeGreaterThanOrEqual(3);
    const done = JSON.parse(result.stdout.toString().trim().split("\n").pop() ?? "{}") as Record<string, number>;
    expect(done).toMatchObject({ phase: "done", workers: 3, copied: scattered(size).length * 256 * 1024 });
  });

  it("12: asks a daemon for 4 MiB per request unless --buffer-size says otherwise", async () => {
    const ticket = await ticketFor(daemon, { contents: randomBytes(16 * MiB), ops: ["read"] });
    for (const [args, requests] of [
      [[], 4],
      [["--buffer-size", "8M"], 2],
    ] as const) {
      const before = daemon.logs().length;
      const out = tmp.file(`requests-${requests}.raw`);
      await copyOk(ticket.url, out, "--ca-file", caFile, ...args);
      const reads = daemon
        .logs()
        .slice(before)
        .split("\n")
        .filter((line) => /\bREAD\b/.test(line));
      expect(reads).toHaveLength(requests);
      for (const line of reads) expect(line).toContain(`size=${(16 * MiB) / requests}`);
    }
  });

  it("12: uses the daemon's unix socket when the daemon is on this host", async () => {
    const src = tmp.file("unix-src.raw");
    const image = await writeSparseImage(src, 8 * MiB, [[0, MiB]]);
    const ticket = await ticketFor(daemon, { size: 8 * MiB });
    const before = daemon.logs().length;
    await copyOk(src, ticket.url, "--ca-file", caFile);
    const out = tmp.file("unix-out.raw");
    await copyOk(ticket.url, out, "--ca-file", caFile);
    expect(await fileSha(out)).toBe(sha(image));
    const logs = daemon.logs().slice(before);
    expect(logCount(logs, /\bWRITE\b/)).toBeGreaterThan(0);
    // Only the first OPTIONS of each copy goes over TCP; the data moves over the socket.
    expect(logCount(logs, /OPEN .*client=local/)).toBeGreaterThanOrEqual(2);
    expect(logCount(logs, /OPEN .*client=127/)).toBe(2);
  });

  it("12: --verify compares with the daemon's own checksum; the rate excludes verification", async () => {
    const src = tmp.file("verify-src.raw");
    await writeSparseImage(src, 8 * MiB, [[MiB, 3 * MiB]]);
    const ticket = await ticketFor(daemon, { size: 8 * MiB });
    const result = await copyOk(src, ticket.url, "--ca-file", caFile, "--verify", "--progress", "json");
    const done = JSON.parse(result.stdout.toString().trim().split("\n").pop() ?? "{}") as {
      checksum: { algorithm: string; checksum: string };
      elapsed: number;
      copy_seconds: number;
      verify_seconds: number;
      rate: number;
    };
    expect(done.checksum.algorithm).toBe("blake2b");
    expect(daemon.logs()).toMatch(/CHECKSUM/);
    expect(done.elapsed).toBeCloseTo(done.copy_seconds + done.verify_seconds, 2);
    expect(done.rate / ((8 * MiB) / done.copy_seconds)).toBeCloseTo(1, 1);
    const checksum = await imageio(["checksum", src]);
    expect(JSON.parse(checksum.stdout.toString())).toEqual(done.checksum);
  });

  it("12: an image smaller than the ticket's leaves the rest alone and says so; a larger one is refused", async () => {
    const src = tmp.file("small-src.raw");
    const image = await writeSparseImage(src, 4 * MiB, [[0, 4 * MiB]]);
    const tail = randomBytes(4 * MiB);
    const ticket = await ticketFor(daemon, { contents: Buffer.concat([randomBytes(4 * MiB), tail]) });
    const result = await copyOk(src, ticket.url, "--ca-file", caFile);
    expect(result.stderr).toMatch(/The last 4\.00 MiB of '.*', past the source's end, were left as they were/);
    expect(await fileSha(ticket.path)).toBe(sha(Buffer.concat([image, tail])));
    const big = tmp.file("big-src.raw");
    await writeSparseImage(big, 16 * MiB, [[0, MiB]]);
    const refused = await imageio(["copy", big, ticket.url, "--ca-file", caFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/too small/);
  });

  it("12: streams a download to standard output and an upload from standard input", async () => {
    const size = 12 * MiB;
    const image = Buffer.alloc(size);
    randomBytes(MiB).copy(image, 2 * MiB);
    randomBytes(MiB).copy(image, 9 * MiB);
    const ticket = await ticketFor(daemon, { size });
    const up = await imageio(["copy", "-", ticket.url, "--ca-file", caFile], { input: image });
    expect(up.code, up.stderr).toBe(0);
    expect(await fileSha(ticket.path)).toBe(sha(image));
    // Zero runs were deallocated, not written.
    expect(await allocated(ticket.path)).toBeLessThanOrEqual(3 * MiB);
    const down = await imageio(["copy", ticket.url, "-", "--ca-file", caFile]);
    expect(down.code, down.stderr).toBe(0);
    expect(sha(down.stdout)).toBe(sha(image));
    // Standard input into a new local file: exactly its bytes, holes where zeros were.
    const local = tmp.file("from-stdin.raw");
    const fromStdin = await imageio(["copy", "-", local], { input: image.subarray(0, size - 5000) });
    expect(fromStdin.code, fromStdin.stderr).toBe(0);
    expect(await fileSha(local)).toBe(sha(image.subarray(0, size - 5000)));
    expect(await allocated(local)).toBeLessThanOrEqual(3 * MiB);
  });

  it("12: works in shell pipelines (FIFOs): gzip of a download, zcat into an upload, head cutting one short", async () => {
    const size = 8 * MiB;
    const image = Buffer.alloc(size);
    randomBytes(MiB).copy(image, 3 * MiB);
    const ticket = await ticketFor(daemon, { contents: image });
    const cli = `'${process.execPath}' '${root}/bin/imageio' copy --ca-file '${caFile}'`;
    const gz = tmp.file("pipe.raw.gz");
    const sh = (script: string) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn("bash", ["-o", "pipefail", "-c", script], { stdio: ["ignore", "ignore", "pipe"] });
        let stderr = "";
        child.stderr.on("data", (data: Buffer) => {
          stderr += data.toString();
        });
        child.once("close", (code) => resolve({ code, stderr }));
      });
    const down = await sh(`${cli} '${ticket.url}' - | gzip > '${gz}'`);
    expect(down.code, down.stderr).toBe(0);
    const target = await ticketFor(daemon, { size });
    const up = await sh(`zcat '${gz}' | ${cli} - '${target.url}'`);
    expect(up.code, up.stderr).toBe(0);
    expect(await fileSha(target.path)).toBe(sha(image));
    // head exits after 1 KiB: the copy must fail (exit 1, EPIPE), not report success.
    const cut = await sh(`${cli} '${ticket.url}' - | head -c 1024 > /dev/null`);
    expect(cut.code).toBe(1);
    expect(cut.stderr).toContain("Cannot write to standard output: the reader closed the pipe (EPIPE)");
  });

  it("12: a reader of standard output that goes away fails the download with exit 1 and EPIPE, not 0", async () => {
    const ticket = await ticketFor(daemon, { contents: randomBytes(32 * MiB), ops: ["read"] });
    const result = await imageio(["copy", ticket.url, "-", "--ca-file", caFile, "--buffer-size", "1M"], {
      onSpawn: (child) => {
        child.stdin.end();
        child.stdout.once("data", () => child.stdout.destroy());
      },
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("Cannot write to standard output: the reader closed the pipe (EPIPE)");
  });

  it("12: more input on standard input than the ticket's image holds fails with exit 1", async () => {
    const ticket = await ticketFor(daemon, { size: MiB });
    const result = await imageio(["copy", "-", ticket.url, "--ca-file", caFile], { input: randomBytes(2 * MiB) });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/standard input holds more than the 1048576 bytes/);
  });

  it("12: a ticket removed mid-upload ends the copy with exit 1 and a message naming the URL, never a hang", async () => {
    const ticket = await ticketFor(daemon, { size: 64 * MiB });
    const before = daemon.logs().length;
    const started = Date.now();
    const result = await imageio(["copy", "-", ticket.url, "--ca-file", caFile, "--buffer-size", "1M"], {
      onSpawn: (child) => {
        // Feed 4 MiB, remove the ticket once the daemon has seen writes, then keep feeding.
        child.stdin.write(randomBytes(4 * MiB));
        const poll = setInterval(async () => {
          if (!/\bWRITE\b/.test(daemon.logs().slice(before))) return;
          clearInterval(poll);
          const removed = await request(daemon, {
            service: "control",
            method: "DELETE",
            path: `/tickets/${ticket.id}`,
          });
          expect(removed.status).toBe(204);
          const more = () => {
            if (child.exitCode !== null || child.stdin.destroyed) return;
            child.stdin.write(randomBytes(MiB), () => setImmediate(more));
          };
          more();
        }, 20);
        child.once("close", () => clearInterval(poll));
      },
    });
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toContain(`https://localhost:${daemon.remotePort}/images/${ticket.id.slice(0, 8)}…`);
    expect(result.stderr).toMatch(/403 Forbidden|Cannot reach|socket hang up|ECONNRESET/);
    expect(result.stderr).not.toContain(ticket.id);
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it("12: Ctrl-C during an upload stops after the chunks in flight, flushes, and exits 130 saying how far it got", async () => {
    const ticket = await ticketFor(daemon, { size: 64 * MiB });
    const before = daemon.logs().length;
    const sent: Buffer[] = [];
    const result = await imageio(["copy", "-", ticket.url, "--ca-file", caFile, "--buffer-size", "1M"], {
      onSpawn: (child) => {
        const feed = () => {
          if (child.exitCode !== null || child.stdin.destroyed || sent.length >= 64) return;
          const chunk = randomBytes(MiB);
          sent.push(chunk);
          child.stdin.write(chunk, () => setImmediate(feed));
        };
        feed();
        const poll = setInterval(() => {
          if (!/\bWRITE\b/.test(daemon.logs().slice(before))) return;
          clearInterval(poll);
          child.kill("SIGINT");
        }, 20);
        child.once("close", () => clearInterval(poll));
      },
    });
    expect(result.code, result.stderr).toBe(130);
    const copied = Number(/the first (\d+) bytes of '.*' are copied/.exec(result.stderr)?.[1]);
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThan(64 * MiB);
    // What it says is there, is there, and flushed (the daemon logged the flush).
    const image = await readFile(ticket.path);
    expect(sha(image.subarray(0, copied))).toBe(sha(Buffer.concat(sent).subarray(0, copied)));
    expect(daemon.logs().slice(before)).toMatch(/\bFLUSH\b/);
  });

  it("12: a missing ticket fails with exit 1, the status and the daemon's message, the ticket id shortened", async () => {
    const id = randomUUID();
    const out = tmp.file("never.raw");
    const result = await imageio([
      "copy",
      `https://localhost:${daemon.remotePort}/images/${id}`,
      out,
      "--ca-file",
      caFile,
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/the daemon answered 403 Forbidden .*No such ticket/);
    expect(result.stderr).not.toContain(id);
  });

  it("12: an untrusted certificate is refused, naming the daemon; --insecure skips the check", async () => {
    const ticket = await ticketFor(tcpOnly, { contents: randomBytes(MiB), ops: ["read"] });
    const out = tmp.file("insecure.raw");
    const refused = await imageio(["copy", ticket.url, out]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/Cannot reach remote localhost:\d+: .*certificate/);
    await copyOk(ticket.url, tmp.file("insecure-2.raw"), "--insecure");
    expect(await fileSha(tmp.file("insecure-2.raw"))).toBe(await fileSha(ticket.path));
  });
});

describe("imageio copy with a proxy and an old server", () => {
  let proxy: DaemonProcess;
  let old: http.Server;
  let oldImage: Buffer;
  const oldRequests: string[] = [];

  beforeAll(async () => {
    const certs = await testCerts();
    proxy = await startDaemon({ command: "proxy", config: { backend_http: { ca_file: certs.caFile } } });
    // A daemon of old: no OPTIONS (405), so no extents, zero or flush; ranged GET and PUT only.
    oldImage = Buffer.alloc(3 * MiB);
    old = http.createServer((req, res) => {
      oldRequests.push(req.method ?? "");
      if (req.method === "GET") {
        const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
        if (range) {
          const [first, last] = [Number(range[1]), Number(range[2])];
          res.writeHead(206, { "content-length": last - first + 1 }).end(oldImage.subarray(first, last + 1));
        } else res.writeHead(200, { "content-length": oldImage.length }).end(oldImage);
      } else if (req.method === "PUT") {
        const offset = Number(/^bytes (\d+)-/.exec(String(req.headers["content-range"]))?.[1]);
        const chunks: Buffer[] = [];
        req.on("data", (chunk: Buffer) => chunks.push(chunk));
        req.on("end", () => {
          Buffer.concat(chunks).copy(oldImage, offset);
          res.writeHead(200, { "content-length": 0 }).end();
        });
      } else res.writeHead(405).end();
    });
    await new Promise<void>((resolve) => old.listen(0, "127.0.0.1", resolve));
  });
  afterAll(async () => {
    await proxy?.stop();
    await new Promise((resolve) => old?.close(resolve));
  });

  it("12: uploads and downloads through the proxy", async () => {
    const size = 16 * MiB;
    const remote = await ticketFor(daemon, { size });
    const id = randomUUID();
    await addTicket(proxy, { uuid: id, size, url: remote.url, timeout: 300, ops: ["read", "write"] });
    const url = `https://localhost:${proxy.remotePort}/images/${id}`;
    const src = tmp.file("proxy-src.raw");
    const image = await writeSparseImage(src, size, scattered(size));
    await copyOk(src, url, "--ca-file", caFile);
    expect(await fileSha(remote.path)).toBe(sha(image));
    const out = tmp.file("proxy-out.raw");
    await copyOk(url, out, "--ca-file", caFile, "--verify");
    expect(await fileSha(out)).toBe(sha(image));
  });

  it("12: an old server without extents, zero or flush still gets the same bytes, slower", async () => {
    const url = `http://127.0.0.1:${(old.address() as AddressInfo).port}/images/old`;
    const src = tmp.file("old-src.raw");
    const image = await writeSparseImage(src, 3 * MiB, [[MiB, MiB + 4096]]);
    await copyOk(src, url);
    expect(sha(oldImage)).toBe(sha(image));
    expect(oldRequests).not.toContain("PATCH");
    const out = tmp.file("old-out.raw");
    await copyOk(url, out);
    expect(await fileSha(out)).toBe(sha(image));
  });
});
