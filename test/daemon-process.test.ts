/**
 * The daemon as an operator runs it: configuration errors, --show-config, --ticket, systemd
 * notification, SIGTERM; and direct I/O modes ([D10], item 82).
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, request, startDaemon, startInProcess, ticketStatus, writeTestConfig } from "./helpers/daemon.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;
let tmp: TempDir;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-process-");
});
afterAll(async () => {
  await tmp.remove();
});

async function imageio(...args: string[]) {
  try {
    const { stdout, stderr } = await run(process.execPath, [`${root}/bin/imageio`, ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

describe("daemon process", () => {
  it("67: fails to start without configuration files, naming the pattern", async () => {
    const result = await imageio("daemon", "--config", tmp.file("nowhere"));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`Could not find ${tmp.file("nowhere")}/conf.d/*.conf`);
  });

  it("67: --show-config prints the merged configuration as JSON", async () => {
    const dir = await makeTempDir("imageio-show-");
    try {
      await writeTestConfig(dir, { daemon: { max_connections: 3 } });
      const result = await imageio("daemon", "--config", dir.path, "--show-config");
      expect(result.code).toBe(0);
      const config = JSON.parse(result.stdout) as { daemon: { max_connections: number }; remote: { port: number } };
      expect(config.daemon.max_connections).toBe(3);
      expect(config.remote.port).toBe(0);
    } finally {
      await dir.remove();
    }
  });

  it("68: a ticket file given at startup serves requests from the first connection", async () => {
    const image = tmp.file("ticketed.raw");
    const data = randomBytes(4096);
    await writeFile(image, data);
    const id = randomUUID();
    const ticketFile = tmp.file("ticket.json");
    await writeFile(
      ticketFile,
      JSON.stringify({ uuid: id, size: 4096, url: `file://${image}`, timeout: 300, ops: ["read"] }),
    );
    const daemon = await startDaemon({ args: ["--ticket", ticketFile] });
    try {
      const response = await request(daemon, { path: `/images/${id}` });
      expect(response.status).toBe(200);
      expect(response.body.equals(data)).toBe(true);
    } finally {
      await daemon.stop();
    }
    const bad = tmp.file("bad-ticket.json");
    await writeFile(bad, JSON.stringify({ uuid: "x" }));
    const dir = await makeTempDir("imageio-bad-ticket-");
    try {
      await writeTestConfig(dir);
      const result = await imageio("daemon", "--config", dir.path, "--ticket", bad);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `Cannot load ticket file ${bad}: Invalid ticket: Required ticket parameter is missing: size`,
      );
    } finally {
      await dir.remove();
    }
  });

  it("SIGTERM lets a running download finish, removes the socket files and exits 0", async () => {
    const daemon = await startDaemon();
    const image = daemon.tmp.file("big.raw");
    await writeFile(image, Buffer.alloc(64 * MiB, 7));
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: 64 * MiB, url: `file://${image}`, timeout: 300, ops: ["read"] });
    const download = request(daemon, { path: `/images/${id}` });
    // SIGTERM once the download is running.
    await expect.poll(async () => (await ticketStatus(daemon, id)).active, { timeout: 10_000 }).toBe(true);
    const controlSocket = daemon.controlSocket;
    const stopped = daemon.stop("SIGTERM");
    const response = await download;
    expect(response.status).toBe(200);
    expect(response.body.length).toBe(64 * MiB);
    expect(await stopped).toBe(0);
    expect(existsSync(controlSocket)).toBe(false);
  });

  it("tells systemd READY=1 on NOTIFY_SOCKET once listening", async () => {
    const dir = await makeTempDir("imageio-notify-");
    const socketPath = dir.file("notify.sock");
    // Node has no unix datagram sockets; python3 plays systemd's part.
    const listener = spawn("python3", [
      "-c",
      "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); print('bound', flush=True); print(s.recv(4096).decode(), flush=True)",
      socketPath,
    ]);
    let received = "";
    listener.stdout.on("data", (chunk: Buffer) => {
      received += chunk.toString();
    });
    await new Promise<void>((resolve) => listener.stdout.once("data", () => resolve()));
    await writeTestConfig(dir, { daemon: { systemd_enable: true } });
    const daemon = spawn(process.execPath, [`${root}/bin/imageio`, "daemon", "--config", dir.path], {
      env: { ...process.env, NOTIFY_SOCKET: socketPath },
      stdio: "ignore",
    });
    try {
      await new Promise<void>((resolve) => listener.once("exit", () => resolve()));
      expect(received).toContain("READY=1");
      expect(received).toContain(`MAINPID=${daemon.pid}`);
    } finally {
      daemon.kill("SIGTERM");
      await new Promise((resolve) => daemon.once("exit", resolve));
      await dir.remove();
    }
  });
});

describe("direct I/O modes ([D10], item 82)", () => {
  const failingProbe = async () => null;

  async function roundTrip(daemon: Awaited<ReturnType<typeof startInProcess>>) {
    const image = daemon.tmp.file("image.raw");
    await writeFile(image, Buffer.alloc(MiB));
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: MiB, url: `file://${image}`, timeout: 300, ops: ["read", "write"] });
    const data = randomBytes(MiB - 7);
    const options = await request(daemon, { method: "OPTIONS", path: `/images/${id}` });
    const put = await request(daemon, {
      method: "PUT",
      path: `/images/${id}`,
      headers: { "content-range": "bytes 7-*/*" },
      body: data,
    });
    const flush = await request(daemon, { method: "PATCH", path: `/images/${id}`, body: '{"op": "flush"}' });
    const get = await request(daemon, { path: `/images/${id}`, headers: { range: `bytes=7-${MiB - 1}` } });
    return { options, put, flush, get, data };
  }

  it("82: direct = auto on a filesystem that rejects O_DIRECT works buffered, reports direct_io false, warns once", async () => {
    const daemon = await startInProcess({ fileOptions: { probeDirect: failingProbe } });
    try {
      const { options, put, flush, get, data } = await roundTrip(daemon);
      expect(JSON.parse(options.text).direct_io).toBe(false);
      expect([put.status, flush.status, get.status]).toEqual([200, 200, 206]);
      expect(get.body.equals(data)).toBe(true);
      expect(daemon.logs().match(/DIRECT_IO fallback/g)).toHaveLength(1);
    } finally {
      await daemon.stop();
    }
  });

  it("82: direct = never reports direct_io false; direct = always on such a filesystem is 500", async () => {
    const never = await startInProcess({ config: { backend_file: { direct: "never" } } });
    try {
      const { options, get, data } = await roundTrip(never);
      expect(JSON.parse(options.text).direct_io).toBe(false);
      expect(get.body.equals(data)).toBe(true);
    } finally {
      await never.stop();
    }
    const always = await startInProcess({
      config: { backend_file: { direct: "always" } },
      fileOptions: { probeDirect: failingProbe },
    });
    try {
      const { options } = await roundTrip(always);
      expect(options.status).toBe(500);
    } finally {
      await always.stop();
    }
  });

  it("82: on ext4 (this test's filesystem) direct_io is true", async () => {
    const daemon = await startInProcess();
    try {
      const { options } = await roundTrip(daemon);
      expect(JSON.parse(options.text).direct_io).toBe(true);
    } finally {
      await daemon.stop();
    }
  });
});
