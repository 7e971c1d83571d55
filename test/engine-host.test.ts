/**
 * Issue 13: on an engine host, engine-setup writes /etc/ovirt-imageio/conf.d/50-engine.conf
 * for ovirt-imageio, and the unit that serves the proxy is imageio.service, which runs
 * `imageio daemon --config /etc/ovirt-imageio`. This test writes that file as engine-setup
 * does (its sections and keys, Python logging included), starts `imageio daemon` on it, and
 * uploads and downloads through it to a host daemon, as the engine's clients do.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, readFile, truncate, writeFile } from "node:fs/promises";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type DaemonProcess, type Endpoints, request, startDaemon } from "./helpers/daemon.js";
import { startLoggingToFile } from "./helpers/logfile.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const MiB = 1024 * 1024;
let tmp: TempDir;
let host: DaemonProcess;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-engine-");
  host = await startDaemon();
});
afterAll(async () => {
  await host?.stop();
  await tmp?.remove();
});

/** engine-setup's file, with the engine's PKI paths replaced by the test CA's. */
async function engineSetupConfig(): Promise<string> {
  const certs = await testCerts();
  await mkdir(tmp.file("conf.d"));
  await writeFile(
    tmp.file("conf.d/50-engine.conf"),
    [
      "# Configuration overrides for ovirt-engine.",
      "[tls]",
      "enable = true",
      `key_file = ${certs.keyFile}`,
      `cert_file = ${certs.certFile}`,
      `ca_file = ${certs.caFile}`,
      "",
      "[backend_http]",
      `ca_file = ${certs.caFile}`,
      "",
      "[remote]",
      "port = 54323",
      "",
      "[local]",
      "enable = false",
      "",
      "[control]",
      "transport = tcp",
      "port = 54324",
      "",
      "[handlers]",
      "keys = logfile",
      "",
      "[logger_root]",
      "handlers = logfile",
      "level = INFO",
      "",
    ].join("\n"),
  );
  // What a test host must change: free ports, no root, no systemd, and the logfile handler's
  // file (ovirt-imageio's default is /var/log/ovirt-imageio/daemon.log).
  await writeFile(
    tmp.file("conf.d/99-test.conf"),
    [
      "[daemon]",
      `run_dir = ${tmp.path}`,
      "drop_privileges = false",
      "systemd_enable = false",
      "[remote]",
      "host = 127.0.0.1",
      "port = 0",
      "[control]",
      "port = 0",
      "[handler_logfile]",
      "class = logging.handlers.RotatingFileHandler",
      `args = ("${tmp.file("daemon.log")}",)`,
      "",
    ].join("\n"),
  );
  return tmp.path;
}

/** A control API request over TCP, as the engine sends it. */
function control(port: number, method: string, path: string, body?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("13: an engine host", () => {
  it("13: imageio daemon on engine-setup's 50-engine.conf is the proxy, logging where its handlers say", async () => {
    const confDir = await engineSetupConfig();
    const { child, ready, stderr, exited } = await startLoggingToFile(confDir, tmp.file("daemon.log"));
    try {
      // No local socket, control over TCP on localhost: the proxy's shape.
      expect(ready).not.toContain("local=");
      const controlPort = Number(/control=127\.0\.0\.1:(\d+)/.exec(ready)?.[1]);
      const proxy: Endpoints = {
        remotePort: Number(/remote=127\.0\.0\.1:(\d+)/.exec(ready)?.[1]),
        localSocket: undefined,
        controlSocket: "",
        certs: await testCerts(),
        tmp,
      };
      // The host daemon's ticket, and the engine's proxy ticket pointing at it.
      const image = tmp.file("disk.raw");
      await writeFile(image, "");
      await truncate(image, 4 * MiB);
      const hostId = randomUUID();
      await addTicket(host, {
        uuid: hostId,
        size: 4 * MiB,
        ops: ["read", "write"],
        timeout: 300,
        url: `file://${image}`,
      });
      const proxyId = randomUUID();
      const ticket = {
        uuid: proxyId,
        size: 4 * MiB,
        ops: ["read", "write"],
        timeout: 300,
        url: `https://localhost:${host.remotePort}/images/${hostId}`,
      };
      expect(await control(controlPort, "PUT", `/tickets/${proxyId}`, JSON.stringify(ticket))).toBe(200);

      const data = randomBytes(4 * MiB);
      const put = await request(proxy, { method: "PUT", path: `/images/${proxyId}`, body: data });
      expect(put.status, put.text).toBe(200);
      const get = await request(proxy, { path: `/images/${proxyId}` });
      expect(get.status).toBe(200);
      const sha = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
      expect(sha(get.body)).toBe(sha(data));
      expect(sha(await readFile(image))).toBe(sha(data));

      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      const log = await readFile(tmp.file("daemon.log"), "utf8");
      expect(log).toContain(`REQUEST method=PUT path=/tickets/${proxyId.slice(0, 8)}… status=200`);
      expect(log).not.toContain(proxyId);
      // INFO, from [logger_root] level: no DEBUG lines.
      expect(log).not.toMatch(/ DEBUG /);
      expect(stderr()).toBe("");
    } finally {
      child.kill("SIGKILL");
    }
  });
});
