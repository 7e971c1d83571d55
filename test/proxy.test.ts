/**
 * Spec §10 items 69–71 and issue 5: a daemon and a proxy in front of it (port 0, temp
 * sockets, test CA). Data goes through the proxy and is checked directly, and back.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type DaemonProcess, type Endpoints, request, startDaemon, ticketStatus } from "./helpers/daemon.js";
import { exchange, tlsTarget } from "./helpers/raw.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 24 * MiB;
let daemon: DaemonProcess;
let proxy: DaemonProcess;

beforeAll(async () => {
  const certs = await testCerts();
  [daemon, proxy] = await Promise.all([
    startDaemon(),
    startDaemon({ command: "proxy", config: { backend_http: { ca_file: certs.caFile } } }),
  ]);
});
afterAll(async () => {
  await Promise.all([daemon?.stop(), proxy?.stop()]);
});

const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/** An image on the daemon, a daemon ticket for it, and a proxy ticket pointing at that. */
async function proxiedImage(
  options: { contents?: Buffer; ops?: string[]; proxyOps?: string[]; target?: DaemonProcess; size?: number } = {},
) {
  const target = options.target ?? daemon;
  const contents = options.contents ?? Buffer.alloc(SIZE);
  const path = target.tmp.file(`image-${randomUUID()}.raw`);
  await writeFile(path, contents);
  const remoteId = randomUUID();
  const size = options.size ?? contents.length;
  await addTicket(target, {
    uuid: remoteId,
    size,
    url: `file://${path}`,
    timeout: 300,
    ops: options.ops ?? ["read", "write"],
  });
  const id = randomUUID();
  await addTicket(proxy, {
    uuid: id,
    size,
    url: `https://localhost:${target.remotePort}/images/${remoteId}`,
    timeout: 300,
    ops: options.proxyOps ?? options.ops ?? ["read", "write"],
  });
  return { path, id, remoteId, proxyUrl: `/images/${id}`, directUrl: `/images/${remoteId}` };
}

function startDownload(endpoints: Endpoints, path: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port: endpoints.remotePort,
        path,
        ca: readFileSync(endpoints.certs.caFile),
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

/** Reads the rest of a response; resolves with the byte count and whether it ended cleanly. */
function drain(res: IncomingMessage): Promise<{ bytes: number; complete: boolean }> {
  return new Promise((resolve) => {
    let bytes = 0;
    res.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
    });
    res.on("end", () => resolve({ bytes, complete: res.complete }));
    res.on("error", () => resolve({ bytes, complete: false }));
    res.on("close", () => resolve({ bytes, complete: res.complete }));
    res.resume();
  });
}

describe("proxy data path (69)", () => {
  it("uploads through the proxy and downloads directly, byte-exact, at sizes around the buffer size", async () => {
    const { path, proxyUrl, directUrl } = await proxiedImage();
    for (const [offset, length] of [
      [0, 8 * MiB - 1],
      [1, 8 * MiB + 1],
      [4096, 8 * MiB - 4096],
      [777, 8 * MiB + 4096],
      [0, SIZE],
    ] as const) {
      const data = randomBytes(length);
      const put = await request(proxy, {
        method: "PUT",
        path: `${proxyUrl}?flush=y`,
        headers: { "content-range": `bytes ${offset}-*/*` },
        body: data,
      });
      expect(put.status, `${offset}+${length}`).toBe(200);
      const direct = await request(daemon, {
        path: directUrl,
        headers: { range: `bytes=${offset}-${offset + length - 1}` },
      });
      expect(sha(direct.body)).toBe(sha(data));
    }
    expect((await readFile(path)).length).toBe(SIZE);
  });

  it("uploads directly and downloads through the proxy: whole, ranged and unaligned", async () => {
    const contents = randomBytes(SIZE);
    const { proxyUrl } = await proxiedImage({ contents });
    const whole = await request(proxy, { path: proxyUrl });
    expect(whole.status).toBe(200);
    expect(sha(whole.body)).toBe(sha(contents));
    for (const [first, last] of [
      [0, 0],
      [513, 1023],
      [8 * MiB - 1, 8 * MiB],
      [4095, 16 * MiB + 4096],
    ] as const) {
      const ranged = await request(proxy, { path: proxyUrl, headers: { range: `bytes=${first}-${last}` } });
      expect(ranged.status).toBe(206);
      expect(ranged.headers["content-range"]).toBe(`bytes ${first}-${last}/${SIZE}`);
      expect(sha(ranged.body)).toBe(sha(contents.subarray(first, last + 1)));
    }
  });

  it("zeroes and flushes through the proxy", async () => {
    const contents = randomBytes(MiB);
    const { path, proxyUrl } = await proxiedImage({ contents });
    const zero = await request(proxy, {
      method: "PATCH",
      path: proxyUrl,
      body: JSON.stringify({ op: "zero", offset: 1000, size: 5000 }),
    });
    expect(zero.status).toBe(200);
    const flush = await request(proxy, { method: "PATCH", path: proxyUrl, body: JSON.stringify({ op: "flush" }) });
    expect(flush.status).toBe(200);
    const expected = Buffer.from(contents);
    expected.fill(0, 1000, 6000);
    expect((await readFile(path)).equals(expected)).toBe(true);
  });

  it("passes extents and checksums through, equal to the daemon's own", async () => {
    const contents = Buffer.alloc(SIZE);
    randomBytes(MiB).copy(contents, 3 * MiB);
    const { proxyUrl, directUrl, path } = await proxiedImage({ contents });
    // Make the zero area a hole so extents have more than one entry.
    await run("fallocate", ["--punch-hole", "--offset", String(8 * MiB), "--length", String(8 * MiB), path]);
    for (const suffix of [
      "/extents",
      "/extents?start=1000&length=10000000",
      "/checksum",
      "/checksum?algorithm=sha1&block_size=1048576",
    ]) {
      const viaProxy = await request(proxy, { path: `${proxyUrl}${suffix}` });
      const direct = await request(daemon, { path: `${directUrl}${suffix}` });
      expect(viaProxy.status, suffix).toBe(200);
      expect(viaProxy.text, suffix).toBe(direct.text);
    }
    const extents = JSON.parse((await request(proxy, { path: `${proxyUrl}/extents` })).text) as unknown[];
    expect(extents.length).toBeGreaterThan(1);
  });

  it("talks to a daemon on this host over its unix socket", async () => {
    const { proxyUrl } = await proxiedImage();
    await request(proxy, { path: proxyUrl, headers: { range: "bytes=0-99" } });
    await daemon.waitForLog(/\[local\] READ size=100 offset=0/);
  });
});

describe("proxy OPTIONS and errors (70, 71)", () => {
  it("71: allow and features follow the proxy ticket; limits and size come from the daemon", async () => {
    const rw = await proxiedImage();
    const options = await request(proxy, { method: "OPTIONS", path: rw.proxyUrl });
    expect(options.status).toBe(200);
    expect(options.headers.allow).toBe("OPTIONS,GET,PUT,PATCH");
    expect(JSON.parse(options.text)).toEqual({
      features: ["checksum", "extents", "flush", "zero"],
      max_readers: 8,
      max_writers: 1,
      size: SIZE,
    });
    const ro = await proxiedImage({ ops: ["read", "write"], proxyOps: ["read"] });
    const roOptions = await request(proxy, { method: "OPTIONS", path: ro.proxyUrl });
    expect(roOptions.headers.allow).toBe("OPTIONS,GET");
    expect(JSON.parse(roOptions.text).features).toEqual(["checksum", "extents"]);
    expect((await request(proxy, { method: "PUT", path: ro.proxyUrl, body: "x" })).status).toBe(403);
  });

  it("70: a missing remote ticket is 403, a remote 416 keeps its content-range, a remote failure is 500", async () => {
    const missing = randomUUID();
    await addTicket(proxy, {
      uuid: missing,
      size: MiB,
      url: `https://localhost:${daemon.remotePort}/images/no-such-remote`,
      timeout: 300,
      ops: ["read"],
    });
    const forbidden = await request(proxy, { path: `/images/${missing}` });
    expect(forbidden.status).toBe(403);
    expect(forbidden.text).toBe("You are not allowed to access this resource: No such ticket no-such-remote\n");

    // The proxy ticket allows more than the daemon's: the daemon's 416 passes through.
    const small = await proxiedImage({ contents: Buffer.alloc(MiB) });
    await addTicket(proxy, {
      uuid: small.id,
      size: 4 * MiB,
      url: `https://localhost:${daemon.remotePort}/images/${small.remoteId}`,
      timeout: 300,
      ops: ["read", "write"],
    });
    const tooFar = await request(proxy, {
      method: "PATCH",
      path: small.proxyUrl,
      body: JSON.stringify({ op: "zero", offset: 0, size: 2 * MiB }),
    });
    expect(tooFar.status).toBe(416);
    expect(tooFar.headers["content-range"]).toBe(`bytes */${MiB}`);

    const broken = randomUUID();
    const brokenRemote = randomUUID();
    await addTicket(daemon, {
      uuid: brokenRemote,
      size: MiB,
      url: "file:///nonexistent/x.raw",
      timeout: 300,
      ops: ["read"],
    });
    await addTicket(proxy, {
      uuid: broken,
      size: MiB,
      url: `https://localhost:${daemon.remotePort}/images/${brokenRemote}`,
      timeout: 300,
      ops: ["read"],
    });
    const failed = await request(proxy, { path: `/images/${broken}` });
    expect(failed.status).toBe(500);
    expect(failed.text).toBe("Server failed to perform the request, check logs\n");
  });

  it("70: a large upload the daemon refuses early keeps the daemon's status (416, 403), not 500", async () => {
    const small = await proxiedImage({ contents: Buffer.alloc(MiB) });
    await addTicket(proxy, {
      uuid: small.id,
      size: 8 * MiB,
      url: `https://localhost:${daemon.remotePort}/images/${small.remoteId}`,
      timeout: 300,
      ops: ["read", "write"],
    });
    const tooFar = await request(proxy, {
      method: "PUT",
      path: small.proxyUrl,
      headers: { "content-range": `bytes ${MiB - 1000}-*/*` },
      body: Buffer.alloc(4 * MiB, 7),
    });
    expect(tooFar.status).toBe(416);
    expect(tooFar.headers["content-range"]).toBe(`bytes */${MiB}`);
    const readOnly = await proxiedImage({ contents: Buffer.alloc(MiB), ops: ["read"], proxyOps: ["read", "write"] });
    const refused = await request(proxy, { method: "PUT", path: readOnly.proxyUrl, body: Buffer.alloc(MiB, 1) });
    expect(refused.status).toBe(403);
    expect(refused.text).toMatch(/forbids write\n$/);
  });

  it("[D11] the proxy's logs shorten the daemon's ticket ids in the daemon's messages", async () => {
    const id = randomUUID();
    const remote = `remote-${randomUUID()}`;
    await addTicket(proxy, {
      uuid: id,
      size: MiB,
      url: `https://localhost:${daemon.remotePort}/images/${remote}`,
      timeout: 300,
      ops: ["read"],
    });
    const response = await request(proxy, { path: `/images/${id}` });
    expect(response.text).toContain(remote);
    const logs = await proxy.waitForLog(`No such ticket ${remote.slice(0, 8)}…`);
    expect(logs).not.toContain(remote);
  });

  it("an unreachable daemon is 502 naming the host and the reason", async () => {
    const id = randomUUID();
    await addTicket(proxy, { uuid: id, size: MiB, url: "https://localhost:1/images/x", timeout: 300, ops: ["read"] });
    const response = await request(proxy, { path: `/images/${id}` });
    expect(response.status).toBe(502);
    expect(response.text).toMatch(/^Cannot reach remote localhost:1: .*ECONNREFUSED/);
  });

  it("a daemon whose certificate the proxy's CA did not sign is 502", async () => {
    const other = await startDaemon({
      command: "proxy",
      config: { backend_http: { ca_file: "/etc/ssl/certs/ca-certificates.crt" } },
    });
    try {
      const { id } = await proxiedImage();
      const ticket = await ticketStatus(proxy, id);
      await addTicket(other, { uuid: id, size: SIZE, url: ticket.url, timeout: 300, ops: ["read"] });
      const response = await request(other, { path: `/images/${id}` });
      expect(response.status).toBe(502);
      expect(response.text).toMatch(/^Cannot reach remote localhost:\d+: .*(certificate|self-signed|issuer)/i);
    } finally {
      await other.stop();
    }
  });

  it("a daemon stopped mid-download cuts the proxied response short instead of hanging", async () => {
    const victim = await startDaemon();
    try {
      const { proxyUrl } = await proxiedImage({ target: victim, contents: Buffer.alloc(256 * MiB) });
      const res = await startDownload(proxy, proxyUrl);
      victim.child.kill("SIGKILL");
      const result = await drain(res);
      expect(result.complete).toBe(false);
      expect(result.bytes).toBeLessThan(256 * MiB);
      // The proxy keeps serving.
      expect((await request(proxy, { path: "/info/" })).status).toBe(200);
    } finally {
      await victim.stop();
    }
  });

  it("a daemon stopped mid-upload ends the proxied upload with an error instead of hanging", async () => {
    const victim = await startDaemon();
    try {
      const { proxyUrl } = await proxiedImage({ target: victim, contents: Buffer.alloc(64 * MiB) });
      const outcome = new Promise<string>((resolve) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port: proxy.remotePort,
            path: proxyUrl,
            method: "PUT",
            headers: { "content-length": 64 * MiB },
            ca: readFileSync(proxy.certs.caFile),
            servername: "localhost",
            agent: false,
          },
          (res) => {
            res.resume();
            resolve(`status ${res.statusCode}`);
          },
        );
        req.on("error", (error) => resolve(`error ${(error as NodeJS.ErrnoException).code ?? error.message}`));
        // Send the first MiB, stop the daemon, then keep sending: the proxy must answer or close.
        req.write(Buffer.alloc(MiB, 1), () => {
          victim.child.kill("SIGKILL");
          const timer = setInterval(() => {
            if (!req.destroyed) req.write(Buffer.alloc(MiB, 2));
            else clearInterval(timer);
          }, 20);
          req.once("close", () => clearInterval(timer));
        });
      });
      expect(await outcome).toMatch(/^(status 50[24]|error )/);
      expect((await request(proxy, { path: "/info/" })).status).toBe(200);
    } finally {
      await victim.stop();
    }
  });

  it("a proxy ticket removed mid-transfer cuts the transfer, and later requests get 403", async () => {
    const { id, proxyUrl } = await proxiedImage({ contents: Buffer.alloc(256 * MiB), ops: ["read"] });
    const res = await startDownload(proxy, proxyUrl);
    // Mid-transfer: the proxy's download is running (the client reads nothing meanwhile).
    const deadline = Date.now() + 5000;
    while ((await ticketStatus(proxy, id)).active !== true) {
      if (Date.now() > deadline) throw new Error("the proxied download never became active");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const removal = request(proxy, { service: "control", method: "DELETE", path: `/tickets/${id}` });
    const result = await drain(res);
    expect(result.complete).toBe(false);
    expect((await removal).status).toBe(204);
    const after = await request(proxy, { path: proxyUrl, headers: { range: "bytes=0-0" } });
    expect(after.status).toBe(403);
  });
});

describe("proxy to an old daemon that needs Content-Length", () => {
  it("turns a chunked client upload into PUTs with content-length", async () => {
    const image = Buffer.alloc(3 * MiB, ".");
    const seen: string[] = [];
    const old = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.headers["content-length"] ?? "chunked"}`);
      if (req.method === "OPTIONS") {
        res.writeHead(405).end();
      } else if (req.method === "PUT") {
        if (req.headers["content-length"] === undefined) {
          res.writeHead(400).end("Content-Length header is required\n");
          return;
        }
        const at = Number(/^bytes (\d+)-/.exec(String(req.headers["content-range"]))?.[1]);
        const chunks: Buffer[] = [];
        req.on("data", (chunk: Buffer) => chunks.push(chunk));
        req.on("end", () => {
          Buffer.concat(chunks).copy(image, at);
          res.writeHead(200, { "content-length": 0 }).end();
        });
      } else {
        res.writeHead(200, { "content-length": image.length }).end(image);
      }
    });
    await new Promise<void>((resolve) => old.listen(0, "127.0.0.1", resolve));
    try {
      const id = randomUUID();
      const port = (old.address() as AddressInfo).port;
      await addTicket(proxy, {
        uuid: id,
        size: image.length,
        url: `http://127.0.0.1:${port}/images/old`,
        timeout: 300,
        ops: ["read", "write"],
      });
      const data = randomBytes(2 * MiB + 5);
      const put = await request(proxy, {
        method: "PUT",
        path: `/images/${id}`,
        headers: { "transfer-encoding": "chunked", "content-range": "bytes 10-*/*" },
        body: data,
      });
      expect(put.status).toBe(200);
      expect(image.subarray(10, 10 + data.length).equals(data)).toBe(true);
      expect(seen.filter((line) => line.startsWith("PUT")).every((line) => line !== "PUT chunked")).toBe(true);
    } finally {
      await new Promise((resolve) => old.close(resolve));
    }
  });
});

describe("proxy configuration", () => {
  it("defaults to port 54323, no local socket, control over TCP 54324 and the engine CA", async () => {
    const { stdout } = await run(process.execPath, [
      new URL("../bin/imageio", import.meta.url).pathname,
      "proxy",
      "--config",
      proxy.tmp.file("conf.d/99-test.conf"),
      "--show-config",
    ]);
    const config = JSON.parse(stdout) as { remote: { port: number }; local: { enable: boolean } };
    expect(config.local.enable).toBe(false);
    const { stdout: defaults } = await run(process.execPath, [
      new URL("../bin/imageio", import.meta.url).pathname,
      "proxy",
      "--config",
      await (async () => {
        const file = proxy.tmp.file("minimal.conf");
        await writeFile(
          file,
          `[tls]\nkey_file = ${(await testCerts()).keyFile}\ncert_file = ${(await testCerts()).certFile}\n`,
        );
        return file;
      })(),
      "--show-config",
    ]);
    expect(JSON.parse(defaults)).toMatchObject({
      remote: { port: 54323 },
      local: { enable: false },
      control: { transport: "tcp", port: 54324 },
      backend_http: { ca_file: "/etc/pki/ovirt-engine/ca.pem" },
    });
  });
});

describe("a proxy whose own CA file cannot be read", () => {
  it("answers 500 (its own fault, not the client's) and keeps the file's path in its log", async () => {
    const broken = await startDaemon({
      command: "proxy",
      config: { backend_http: { ca_file: "/nonexistent/imageio-test-ca.pem" } },
    });
    try {
      const id = randomUUID();
      await addTicket(broken, {
        uuid: id,
        size: MiB,
        url: `https://localhost:${daemon.remotePort}/images/${randomUUID()}`,
        timeout: 300,
        ops: ["read"],
      });
      const answer = await request(broken, { path: `/images/${id}`, headers: { range: "bytes=0-3" } });
      expect(answer.status).toBe(500);
      expect(answer.text).not.toContain("/nonexistent/");
      await broken.waitForLog("Cannot read CA file /nonexistent/imageio-test-ca.pem");
    } finally {
      await broken.stop();
    }
  });
});

describe("14.wire: the proxy's own framing", () => {
  it("14.wire: an upload the daemon refuses while its client is still sending, then cut, never takes the proxy down", async () => {
    const image = await proxiedImage({ contents: Buffer.alloc(MiB, 3) });
    // The proxy's ticket is larger than the daemon's: the proxy relays, the daemon refuses.
    await addTicket(proxy, {
      uuid: image.id,
      size: 8 * MiB,
      url: `https://localhost:${daemon.remotePort}/images/${image.remoteId}`,
      timeout: 300,
      ops: ["read", "write"],
    });
    const target = tlsTarget("proxy", proxy.remotePort, proxy.certs.caFile);
    for (let round = 0; round < 3; round++) {
      // Past the daemon's ticket's end: it answers 416 while the proxy relays the body; the
      // proxy passes it on and closes under its body stream's read.
      const answer = await exchange(
        target,
        Buffer.concat([
          Buffer.from(
            `PUT ${image.proxyUrl} HTTP/1.1\r\nContent-Range: bytes ${MiB - 10}-*/*\r\nContent-Length: ${4 * MiB}\r\n\r\n`,
          ),
          Buffer.alloc(512 * 1024, 7),
        ]),
        3000,
      );
      expect(answer.text).toMatch(/^HTTP\/1\.1 416 /);
    }
    const after = await request(proxy, { path: image.proxyUrl, headers: { range: "bytes=0-3" } });
    expect(after.status).toBe(206);
    expect(after.body.equals(Buffer.alloc(4, 3))).toBe(true);
  });
});
