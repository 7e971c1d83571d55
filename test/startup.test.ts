/**
 * Issue 13, as an admin meets it: every start-up failure names its setting before READY,
 * unknown keys are reported at WARNING, --show-config=sources, and a log file that logrotate can rotate
 * (SIGHUP reopens it).
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import net from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type Endpoints, request, startDaemon, writeTestConfig } from "./helpers/daemon.js";
import { startLoggingToFile, waitForFile } from "./helpers/logfile.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
let tmp: TempDir;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-startup-");
});
afterAll(async () => {
  await tmp.remove();
});

/** Runs `imageio daemon` with test settings plus `overrides` until it exits (it must fail here). */
async function failedStart(overrides: Parameters<typeof writeTestConfig>[1]) {
  const dir = await makeTempDir("imageio-startup-conf-", tmp.path);
  const confDir = await writeTestConfig(dir, overrides);
  try {
    await run(process.execPath, [`${root}/bin/imageio`, "daemon", "--config", confDir], { timeout: 20_000 });
    throw new Error("the daemon started");
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, output: `${failed.stdout}${failed.stderr}` };
  }
}

describe("13: start-up failures name their setting, before READY", () => {
  it("13: a missing TLS key names [tls] key_file", async () => {
    const result = await failedStart({ tls: { key_file: tmp.file("missing-key.pem") } });
    expect(result.code).toBe(1);
    expect(result.output).toContain(`imageio: [tls] key_file: cannot read ${tmp.file("missing-key.pem")}: ENOENT`);
    expect(result.output).not.toContain("READY");
  });

  it("13: a key that is not a key names [tls] key_file and cert_file", async () => {
    const garbage = tmp.file("garbage.pem");
    await writeFile(garbage, "not a key\n");
    const result = await failedStart({ tls: { key_file: garbage } });
    expect(result.code).toBe(1);
    expect(result.output).toMatch(/imageio: \[tls\] key_file, cert_file: cannot use the key or certificate: /);
    expect(result.output).not.toContain("READY");
  });

  it("13: a busy port names [remote] port", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const result = await failedStart({ remote: { port } });
      expect(result.code).toBe(1);
      expect(result.output).toContain(`imageio: [remote] host '127.0.0.1' port ${port}: cannot listen:`);
      expect(result.output).toContain("EADDRINUSE");
      expect(result.output).toContain("another process listens there");
      expect(result.output).not.toContain("READY");
    } finally {
      blocker.close();
    }
  });

  it("13: a missing service user says so and how to fix it", async (context) => {
    if (process.getuid?.() !== 0) {
      console.log("skipped: dropping privileges needs root");
      context.skip();
    }
    const result = await failedStart({ daemon: { drop_privileges: true, user_name: "imageio-no-such-user" } });
    expect(result.code).toBe(1);
    expect(result.output).toContain("imageio: [daemon] user_name: user 'imageio-no-such-user' does not exist");
    expect(result.output).toContain("useradd --system");
    expect(result.output).toContain("drop_privileges = false");
    expect(result.output).not.toContain("READY");
  });

  it("13: a mistyped key is reported at WARNING with file, section and key, and ignored as upstream does", async () => {
    const daemon = await startDaemon({ config: { remote: { prot: 54322 } } });
    try {
      const line = /.*CONFIG.*/.exec(await daemon.waitForLog("CONFIG"))?.[0] ?? "";
      expect(line).toContain("WARNING");
      expect(line).toMatch(
        /conf\.d\/99-test\.conf: \[remote\] prot: unknown option, ignored \(did you mean 'port'\?\)/,
      );
      // The daemon serves on the port it was given, not on a guess.
      expect(daemon.logs()).toContain("READY");
    } finally {
      await daemon.stop();
    }
  });

  it("13: --show-config prints unknown keys as warnings on stderr", async () => {
    const dir = await makeTempDir("imageio-startup-conf-", tmp.path);
    const confDir = await writeTestConfig(dir, { remtoe: { port: 1 } });
    const { stdout, stderr } = await run(process.execPath, [
      `${root}/bin/imageio`,
      "daemon",
      "--config",
      confDir,
      "--show-config",
    ]);
    expect(stderr).toMatch(
      /imageio: warning: \S+99-test\.conf: \[remtoe\]: unknown section, ignored \(did you mean '\[remote\]'\?\)/,
    );
    expect(JSON.parse(stdout).remote.port).not.toBe(1);
  });

  it("13: a run directory that cannot be created names [daemon] run_dir", async () => {
    const file = tmp.file("not-a-directory");
    await writeFile(file, "");
    const result = await failedStart({ daemon: { run_dir: `${file}/run` } });
    expect(result.code).toBe(1);
    expect(result.output).toContain(`imageio: [daemon] run_dir: cannot create ${file}/run: ENOTDIR`);
    expect(result.output).not.toContain("READY");
  });

  it("13: a log file that cannot be opened names [logging] file", async () => {
    const result = await failedStart({ logging: { file: tmp.file("no-such-dir/daemon.log") } });
    expect(result.code).toBe(1);
    expect(result.output).toContain(`imageio: [logging] file: cannot open ${tmp.file("no-such-dir/daemon.log")}`);
  });
});

describe("13: configuration sources", () => {
  it("13: --show-config=sources prints each value with the file that set it", async () => {
    const dir = await makeTempDir("imageio-sources-", tmp.path);
    const confDir = await writeTestConfig(dir, { remote: { port: 12345 } });
    const { stdout } = await run(process.execPath, [
      `${root}/bin/imageio`,
      "daemon",
      "--config",
      confDir,
      "--show-config=sources",
    ]);
    expect(stdout).toContain(`port = 12345    ; ${dir.file("conf.d/99-test.conf")}`);
    expect(stdout).toContain("max_connections = 8    ; default");
    const json = await run(process.execPath, [`${root}/bin/imageio`, "daemon", "--config", confDir, "--show-config"]);
    expect(JSON.parse(json.stdout).remote).toEqual({ host: "127.0.0.1", port: 12345 });
  });
});

describe("13: the log file", () => {
  it("13: one file, reopened on SIGHUP after logrotate renamed it; nothing lost", async () => {
    const dir = await makeTempDir("imageio-logfile-", tmp.path);
    const logFile = dir.file("daemon.log");
    const confDir = await writeTestConfig(dir, { logging: { file: logFile, level: "INFO" } });
    const { child, ready, stderr, exited } = await startLoggingToFile(confDir, logFile);
    try {
      const daemon: Endpoints = {
        remotePort: Number(/remote=\S+:(\d+)/.exec(ready)?.[1]),
        localSocket: undefined,
        controlSocket: dir.file("control.sock"),
        certs: await testCerts(),
        tmp: dir,
      };
      // Lines before the rotation go to the old file, lines after it to the new one.
      const first = randomUUID();
      await addTicket(daemon, { uuid: first, size: 4096, ops: ["read"], timeout: 60, url: `file://${logFile}` });
      await waitForFile(logFile, /ADD transfer=/);
      await rename(logFile, `${logFile}.1`);
      child.kill("SIGHUP");
      await waitForFile(logFile, /LOG reopened file=/);
      const second = randomUUID();
      await addTicket(daemon, { uuid: second, size: 4096, ops: ["read"], timeout: 60, url: `file://${logFile}` });
      const status = await request(daemon, { service: "control", path: `/tickets/${second}` });
      expect(status.status).toBe(200);
      await waitForFile(logFile, new RegExp(`ADD transfer=${second.slice(0, 8)}`));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      const rotated = await readFile(`${logFile}.1`, "utf8");
      const current = await readFile(logFile, "utf8");
      expect(rotated).toContain("READY");
      expect(rotated).toContain(`ADD transfer=${first.slice(0, 8)}`);
      expect(rotated).not.toContain(`ADD transfer=${second.slice(0, 8)}`);
      expect(current).toContain(`ADD transfer=${second.slice(0, 8)}`);
      expect(current).toContain("STOP signal=SIGTERM");
      // The daemon is alive through SIGHUP and logs nothing to stderr.
      expect(stderr()).toBe("");
    } finally {
      child.kill("SIGKILL");
    }
  });
});
