/**
 * Issue 10, wire items 1, 4, 5, 6, 9, 10 and 11: probes an attacker on the host or the
 * network would send, on raw sockets against the real daemon process.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openBackend } from "../src/io/open.js";
import { addTicket, curl, type DaemonProcess, request, startDaemon, startInProcess } from "./helpers/daemon.js";
import {
  type Departure,
  exchange,
  type RawTarget,
  sendAndLeave,
  tcpTarget,
  tlsTarget,
  unixTarget,
} from "./helpers/raw.js";

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

/** The default daemon: TLS remote, unix local and control sockets by path. */
let tlsDaemon: DaemonProcess;
/** Plain TCP remote, TCP control port, and the local socket on a random abstract name. */
let plainDaemon: DaemonProcess;
let controlPort: number;
let abstractName: string;
let image: string;
let data: Buffer;

beforeAll(async () => {
  [tlsDaemon, plainDaemon] = await Promise.all([
    startDaemon(),
    startDaemon({ config: { tls: { enable: false }, control: { transport: "tcp", port: 0 }, local: { socket: "" } } }),
  ]);
  controlPort = Number(/control=\S+:(\d+)/.exec(plainDaemon.logs())?.[1]);
  abstractName = `\0${/local=@(\S+)/.exec(plainDaemon.logs())?.[1]}`;
  image = tlsDaemon.tmp.file("image.raw");
  data = randomBytes(MiB);
  await writeFile(image, data);
}, 30_000);
afterAll(async () => {
  await Promise.all([tlsDaemon?.stop(), plainDaemon?.stop()]);
});

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

async function newTicket(daemon: DaemonProcess): Promise<string> {
  const uuid = randomUUID();
  const ticket = { uuid, size: MiB, url: `file://${image}`, timeout: 300, ops: ["read", "write"] };
  if (daemon === tlsDaemon) {
    await addTicket(daemon, ticket);
    return uuid;
  }
  // The plain daemon's control service is a TCP port.
  const status = await new Promise<number | undefined>((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: controlPort, method: "PUT", path: `/tickets/${uuid}` },
      (res) => {
        res.resume();
        resolve(res.statusCode);
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(ticket));
  });
  expect(status).toBe(200);
  return uuid;
}

function everyService(): RawTarget[] {
  return [
    tlsTarget("remote (TLS)", tlsDaemon.remotePort, tlsDaemon.certs.caFile),
    unixTarget("local (unix path)", tlsDaemon.localSocket as string),
    unixTarget("control (unix path)", tlsDaemon.controlSocket),
    tcpTarget("remote (plain TCP)", plainDaemon.remotePort),
    unixTarget("local (abstract)", abstractName),
    tcpTarget("control (TCP)", controlPort),
  ];
}

/** Methods and headers Node hands over outside its normal request path. */
const SPECIAL_REQUESTS = [
  "CONNECT a:1 HTTP/1.1\r\n\r\n",
  "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
  "GET /images/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
  "OPTIONS /images/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
  "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

const DEPARTURES: Departure[] = ["fin", "rst", "destroy", "mid-request"];

function expectAlive(daemon: DaemonProcess): void {
  expect(daemon.child.exitCode, daemon.logs().slice(-3000)).toBeNull();
  expect(daemon.child.signalCode).toBeNull();
}

describe("issue 10: crash", () => {
  it("10.1: CONNECT and upgrade requests, then FIN, RST or a vanished client, on every service, never kill the daemon", async () => {
    const id = await newTicket(tlsDaemon);
    for (let round = 0; round < 3; round++) {
      for (const target of everyService()) {
        for (const probe of SPECIAL_REQUESTS) {
          await Promise.all(DEPARTURES.map((departure) => sendAndLeave(target, probe, departure)));
        }
      }
    }
    // Each service still answers, and both daemons still serve the image.
    for (const target of everyService()) {
      const answer = await exchange(target, "CONNECT a:1 HTTP/1.1\r\n\r\n");
      expect(answer.text, target.name).toMatch(/^HTTP\/1.1 405 /);
      expect(answer.text, target.name).toContain("Invalid method 'CONNECT'");
      expect(answer.closed, target.name).toBe(true);
    }
    expectAlive(tlsDaemon);
    expectAlive(plainDaemon);
    const response = await request(tlsDaemon, { path: `/images/${id}` });
    expect(sha256(response.body)).toBe(sha256(data));
  });

  it("10.1: an upgrade request is answered as plain HTTP, then the connection closes", async () => {
    const id = await newTicket(tlsDaemon);
    const target = unixTarget("local", tlsDaemon.localSocket as string);
    const answer = await exchange(
      target,
      `GET /images/${id} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nRange: bytes=0-3\r\n\r\n` +
        `GET /images/${id} HTTP/1.1\r\nHost: x\r\nRange: bytes=4-7\r\n\r\n`,
    );
    expect(answer.text.match(/HTTP\/1.1 /g)).toHaveLength(1);
    expect(answer.text).toMatch(/^HTTP\/1.1 206 /);
    expect(answer.text).toContain("connection: close");
    expect(answer.text.endsWith(data.subarray(0, 4).toString("latin1"))).toBe(true);
    expect(answer.closed).toBe(true);
  });
});

describe("issue 10: deadlines and descriptors", () => {
  it("10.4: a request head trickled a byte at a time is cut at the deadline; an idle connection is not", async () => {
    const daemon = await startInProcess({ deadlineMs: 1500 });
    try {
      const socket = await unixTarget("local", daemon.localSocket as string).open();
      socket.on("error", () => undefined);
      // A connection idle after a complete request, as between the requests of a transfer.
      const idle = await unixTarget("control", daemon.controlSocket).open();
      const answered = new Promise((resolve) => idle.once("data", resolve));
      idle.write("GET /tickets/none HTTP/1.1\r\nHost: x\r\n\r\n");
      await answered;
      const start = Date.now();
      socket.write("GET /images/x HTTP/1.1\r\n");
      const trickle = setInterval(() => socket.writable && socket.write("X: y\r\n"), 100);
      const closedAfter = await new Promise<number>((resolve) =>
        socket.once("close", () => resolve(Date.now() - start)),
      );
      clearInterval(trickle);
      expect(closedAfter).toBeGreaterThanOrEqual(1400);
      expect(closedAfter).toBeLessThan(5000);
      expect(daemon.logs()).toContain("TIMEOUT request head incomplete");
      // A connection between requests is governed by the inactivity timeout (60 s), not this.
      expect(idle.destroyed).toBe(false);
      expect(daemon.logs()).toContain("TIMEOUT request head incomplete client=local");
      idle.destroy();
    } finally {
      await daemon.stop();
    }
  });

  it("10.4: a TLS handshake trickled a byte at a time is cut at the deadline", async () => {
    const daemon = await startInProcess({ deadlineMs: 1500 });
    try {
      const socket = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
      socket.on("error", () => undefined);
      await new Promise((resolve) => socket.once("connect", resolve));
      const start = Date.now();
      // A TLS record header, then its body one byte at a time: never a complete ClientHello.
      socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
      const trickle = setInterval(() => socket.writable && socket.write(Buffer.from([0x01])), 100);
      const closedAfter = await new Promise<number>((resolve) =>
        socket.once("close", () => resolve(Date.now() - start)),
      );
      clearInterval(trickle);
      expect(closedAfter).toBeGreaterThanOrEqual(1400);
      expect(closedAfter).toBeLessThan(5000);
      expect(daemon.logs()).toMatch(
        /TLS handshake failed client=(::ffff:)?127\.0\.0\.1 reason=ERR_TLS_HANDSHAKE_TIMEOUT/,
      );
    } finally {
      await daemon.stop();
    }
  });

  it("10.4: with the descriptor limit reached through the images service, the control service still answers", async () => {
    const prlimit = await execFileAsync("prlimit", ["--version"]).then(
      () => true,
      () => false,
    );
    if (!prlimit) {
      console.log("skipped: prlimit (util-linux) is not installed");
      return;
    }
    const daemon = await startDaemon({ launcher: ["prlimit", "--nofile=64:64", "--"] });
    const sockets: net.Socket[] = [];
    try {
      // Far more connections than 64 descriptors allow; they never start a handshake.
      for (let i = 0; i < 100; i++) {
        const socket = net.connect({ host: "127.0.0.1", port: daemon.remotePort });
        socket.on("error", () => undefined);
        sockets.push(socket);
      }
      await Promise.all(sockets.map((socket) => new Promise((resolve) => socket.once("connect", resolve))));
      await daemon.waitForLog("REFUSE too many connections");
      const status = await Promise.race([
        request(daemon, { service: "control", path: "/tickets/none" }).then((response) => response.status),
        new Promise<string>((resolve) => setTimeout(() => resolve("no answer in 5 s"), 5000)),
      ]);
      expect(status).toBe(404);
      expectAlive(daemon);
    } finally {
      for (const socket of sockets) socket.destroy();
      await daemon.stop();
    }
  });
});

describe("issue 10: wire details", () => {
  it("10.5: a PUT whose Content-Range is header line 1001 is 431 and closes; the image is unchanged", async () => {
    const id = await newTicket(tlsDaemon);
    const before = sha256(readFileSync(image));
    const filler = Array.from({ length: 1000 }, (_, i) => `X-Filler-${i}: ${i}\r\n`).join("");
    const answer = await exchange(
      unixTarget("local", tlsDaemon.localSocket as string),
      // Host and Content-Length, 998 fillers: Content-Range is header line 1001.
      `PUT /images/${id} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n${filler.slice(0, filler.lastIndexOf("X-Filler-998"))}` +
        "Content-Range: bytes 4096-4099/*\r\n\r\nXXXX",
    );
    expect(answer.text).toMatch(/^HTTP\/1.1 431 /);
    expect(answer.text).toContain("connection: close");
    expect(answer.closed).toBe(true);
    expect(sha256(readFileSync(image))).toBe(before);
    // 1000 header lines are still fine.
    const ok = await exchange(
      unixTarget("local", tlsDaemon.localSocket as string),
      `GET /images/${id} HTTP/1.1\r\n${filler.slice(0, filler.lastIndexOf("X-Filler-998"))}Host: x\r\nRange: bytes=0-0\r\n\r\n`,
      500,
    );
    expect(ok.text).toMatch(/^HTTP\/1.1 206 /);
  });

  it("10.6: Transfer-Encoding gzip or identity gets one 501, then the connection closes", async () => {
    for (const target of everyService()) {
      for (const coding of ["gzip", "identity", "gzip, chunked"]) {
        const answer = await exchange(
          target,
          `PUT /images/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ${coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
        );
        expect(answer.text.match(/HTTP\/1.1 /g), `${target.name} ${coding}: ${answer.text}`).toHaveLength(1);
        expect(answer.text).toMatch(/^HTTP\/1.1 501 /);
        expect(answer.text).toContain(`Unsupported Transfer-Encoding: '${coding}'`);
        expect(answer.closed).toBe(true);
      }
    }
  });

  it("10.9: an absolute-form target (https://host/images/T) is served like its path", async () => {
    const id = await newTicket(tlsDaemon);
    const answer = await exchange(
      tlsTarget("remote", tlsDaemon.remotePort, tlsDaemon.certs.caFile),
      `GET https://localhost:${tlsDaemon.remotePort}/images/${id}?close=y HTTP/1.1\r\nHost: localhost\r\nRange: bytes=10-19\r\n\r\n`,
    );
    expect(answer.text).toMatch(/^HTTP\/1.1 206 /);
    expect(answer.text.endsWith(data.subarray(10, 20).toString("latin1"))).toBe(true);
    const info = await exchange(
      tcpTarget("remote", plainDaemon.remotePort),
      "GET http://127.0.0.1/info/ HTTP/1.1\r\nHost: x\r\n\r\n",
      500,
    );
    expect(info.text).toMatch(/^HTTP\/1.1 200 /);
    const other = await exchange(
      tcpTarget("remote", plainDaemon.remotePort),
      "GET ftp://h/info/ HTTP/1.1\r\n\r\n",
      500,
    );
    expect(other.text).toMatch(/^HTTP\/1.1 404 /);
  });
});

describe("issue 10: local and control sockets", () => {
  it("10.10: the abstract local socket OPTIONS advertises is reachable by exact name (curl), and by our own client", async () => {
    const id = await newTicket(plainDaemon);
    const remote = await exchange(
      tcpTarget("remote", plainDaemon.remotePort),
      `OPTIONS /images/${id} HTTP/1.1\r\nHost: x\r\n\r\n`,
      500,
    );
    const advertised = JSON.parse(remote.text.slice(remote.text.indexOf("\r\n\r\n") + 4)).unix_socket as string;
    expect(advertised).toBe(abstractName);
    const result = await curl(["--abstract-unix-socket", advertised.slice(1), `http://localhost/images/${id}`]);
    expect(result.stderr).toBe("");
    expect(sha256(Buffer.from(result.stdout, "latin1"))).toBe(sha256(data));
    // Our HTTP backend takes the same fast path (the daemon logs [local] for it).
    const backend = await openBackend(`http://127.0.0.1:${plainDaemon.remotePort}/images/${id}`);
    try {
      const buf = Buffer.alloc(4096);
      await backend.read(buf, 0);
      expect(buf.equals(data.subarray(0, 4096))).toBe(true);
    } finally {
      await backend.close();
    }
    await plainDaemon.waitForLog(/\[local\] READ size=4096 offset=0/);
  });

  it("10.10: a local socket file is created with mode 0660", () => {
    expect(statSync(tlsDaemon.localSocket as string).mode & 0o777).toBe(0o660);
  });

  it("10.10: after the privilege drop, the local socket file belongs to the service user", async () => {
    if (process.getuid?.() !== 0) {
      console.log("skipped: dropping privileges needs root");
      return;
    }
    const id = (...args: string[]) => execFileAsync("id", args).then(({ stdout }) => stdout.trim());
    const [uid, group] = await Promise.all([id("-u", "nobody"), id("-gn", "nobody")]).catch(() => [
      undefined,
      undefined,
    ]);
    if (uid === undefined || group === undefined) {
      console.log("skipped: no user 'nobody' to run as");
      return;
    }
    const daemon = await startDaemon({
      config: { daemon: { drop_privileges: true, user_name: "nobody", group_name: group } },
    });
    try {
      await daemon.waitForLog("PRIVILEGES dropped");
      const socket = statSync(daemon.localSocket as string);
      expect(socket.uid).toBe(Number(uid));
      expect(socket.mode & 0o777).toBe(0o660);
      expect((await request(daemon, { service: "local", path: "/images/none" })).status).toBe(403);
    } finally {
      await daemon.stop();
    }
  });

  it("10.11: a second daemon with the same sockets fails with EADDRINUSE and leaves the first one's sockets working", async () => {
    const overrides = {
      local: { socket: tlsDaemon.localSocket as string },
      control: { socket: tlsDaemon.controlSocket },
    };
    await expect(startDaemon({ config: overrides })).rejects.toThrow(/EADDRINUSE/);
    expect(statSync(tlsDaemon.controlSocket).isSocket()).toBe(true);
    expect((await request(tlsDaemon, { service: "control", path: "/tickets/none" })).status).toBe(404);
    const id = await newTicket(tlsDaemon);
    expect((await request(tlsDaemon, { service: "local", path: `/images/${id}` })).status).toBe(200);
  });

  it("10.11: a socket file nobody accepts on is replaced at start", async () => {
    const daemon = await startDaemon();
    const config = { local: { socket: daemon.localSocket as string }, control: { socket: daemon.controlSocket } };
    // A SIGKILLed daemon leaves its socket files behind.
    daemon.child.kill("SIGKILL");
    await new Promise((resolve) => daemon.child.once("exit", resolve));
    expect(statSync(daemon.controlSocket).isSocket()).toBe(true);
    const next = await startDaemon({ config });
    try {
      const endpoints = { ...next, controlSocket: daemon.controlSocket };
      expect((await request(endpoints, { service: "control", path: "/tickets/none" })).status).toBe(404);
    } finally {
      await next.stop();
      await daemon.tmp.remove();
    }
  });
});
