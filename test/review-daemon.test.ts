/**
 * The review of issues 10 and 13, daemon items (numbered as the review numbers them): the log
 * file and run dir under the hardened unit's privileges, as the real daemon process.
 */
import { execFile, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, statSync } from "node:fs";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { request, startDaemon, writeTestConfig } from "./helpers/daemon.js";
import { startLoggingToFile, waitForFile } from "./helpers/logfile.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const execFileAsync = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

/** A temp dir others may traverse (the service user must reach its log directory in it). */
async function openTempDir(): Promise<TempDir> {
  const tmp = await makeTempDir("imageio-review-");
  chmodSync(tmp.path, 0o755);
  cleanups.push(() => tmp.remove());
  return tmp;
}

/** The uid, gid and group of `nobody`, or undefined (with the reason printed) when the test cannot run as it. */
async function serviceUser(): Promise<{ uid: number; gid: number; group: string } | undefined> {
  if (process.getuid?.() !== 0) {
    console.log("skipped: dropping privileges needs root");
    return undefined;
  }
  const id = (...args: string[]) => execFileAsync("id", args).then(({ stdout }) => stdout.trim());
  try {
    const [uid, gid, group] = await Promise.all([id("-u", "nobody"), id("-g", "nobody"), id("-gn", "nobody")]);
    return { uid: Number(uid), gid: Number(gid), group };
  } catch {
    console.log("skipped: no user 'nobody' to run as");
    return undefined;
  }
}

/** A log file path in a 0755 directory of the service user's, as the RPM makes /var/log/ovirt-imageio. */
function serviceLogFile(tmp: TempDir, user: { uid: number; gid: number }): string {
  const logDir = tmp.file("log");
  mkdirSync(logDir, { mode: 0o755 });
  chownSync(logDir, user.uid, user.gid);
  return `${logDir}/daemon.log`;
}

async function runUntilReady(confDir: string, logFile: string, launcher: string[] = []): Promise<string> {
  const daemon = await startLoggingToFile(confDir, logFile, launcher);
  cleanups.push(async () => {
    daemon.child.kill("SIGTERM");
    await daemon.exited;
  });
  return daemon.ready;
}

describe("review 14: log file mode", () => {
  it("review 14: a new log file is created 0640", async () => {
    const tmp = await openTempDir();
    const logFile = tmp.file("daemon.log");
    const confDir = await writeTestConfig(tmp, { logging: { file: logFile } });
    await runUntilReady(confDir, logFile);
    expect(statSync(logFile).mode & 0o777).toBe(0o640);
  });
});

describe("review 1 and 6: the hardened unit's privileges", () => {
  it("review 1: without CAP_DAC_OVERRIDE (the unit's bounding set), a log file in the service user's 0755 directory starts, owned by that user", async () => {
    const user = await serviceUser();
    if (user === undefined) return;
    if (spawnSync("setpriv", ["--version"]).error !== undefined) {
      console.log("skipped: setpriv not installed (Debian: apt-get install util-linux)");
      return;
    }
    const tmp = await openTempDir();
    const logFile = serviceLogFile(tmp, user);
    const confDir = await writeTestConfig(tmp, {
      daemon: { drop_privileges: true, user_name: "nobody", group_name: user.group },
      logging: { file: logFile },
    });
    await runUntilReady(confDir, logFile, ["setpriv", "--bounding-set", "-dac_override", "--"]);
    await waitForFile(logFile, /PRIVILEGES dropped/);
    const stat = statSync(logFile);
    expect([stat.uid, stat.mode & 0o777]).toEqual([user.uid, 0o640]);
  });

  it("review 6: a run_dir that was there before keeps its owner; one the daemon creates goes to the service user", async () => {
    const user = await serviceUser();
    if (user === undefined) return;
    const tmp = await openTempDir();
    const existing = tmp.file("run");
    mkdirSync(existing, { mode: 0o755 });
    const logFile = serviceLogFile(tmp, user);
    const drop = { drop_privileges: true, user_name: "nobody", group_name: user.group };
    const confDir = await writeTestConfig(tmp, { daemon: { ...drop, run_dir: existing }, logging: { file: logFile } });
    await runUntilReady(confDir, logFile);
    await waitForFile(logFile, /PRIVILEGES dropped/);
    expect(statSync(existing).uid).toBe(0);

    const other = await openTempDir();
    const created = other.file("run/imageio");
    const otherLog = serviceLogFile(other, user);
    const otherConf = await writeTestConfig(other, {
      daemon: { ...drop, run_dir: created },
      logging: { file: otherLog },
    });
    await runUntilReady(otherConf, otherLog);
    await waitForFile(otherLog, /PRIVILEGES dropped/);
    expect(statSync(created).uid).toBe(user.uid);
  });
});

describe("review 7, 8, 11: tickets, TLS files, signals", () => {
  it("review 7: file URLs no open accepts (remote host, query or fragment, NUL) are 400 at PUT /tickets", async () => {
    const daemon = await startDaemon();
    cleanups.push(async () => {
      await daemon.stop();
    });
    const urls = {
      "file://otherhost/x": "names a remote host",
      "file:///etc/passwd?x#y": "must not have a query or fragment",
      "file:///img%00x": "has a NUL byte in its path",
    };
    for (const [url, reason] of Object.entries(urls)) {
      const ticket = { uuid: "review-7", size: 1024, ops: ["read"], timeout: 60, url };
      const response = await request(daemon, {
        service: "control",
        method: "PUT",
        path: "/tickets/review-7",
        body: JSON.stringify(ticket),
      });
      expect(response.status, url).toBe(400);
      expect(response.text).toContain(`Invalid ticket: Invalid value for 'url': '${url}': File URL`);
      expect(response.text).toContain(reason);
    }
    expect((await request(daemon, { service: "control", path: "/tickets/review-7" })).status).toBe(404);
    // A proxy ticket: the remote URL's checks run too, and its ticket id stays out of the log.
    const remoteId = "0b0c4a52-remote-ticket-id-secret";
    const url = `https://daemon.example:54322/images/${remoteId}?x=1`;
    const proxied = await request(daemon, {
      service: "control",
      method: "PUT",
      path: "/tickets/review-7",
      body: JSON.stringify({ uuid: "review-7", size: 1024, ops: ["read"], timeout: 60, url }),
    });
    expect(proxied.status).toBe(400);
    expect(proxied.text).toContain(`'${url}': Remote image URL https://daemon.example:54322/… must look like`);
    const logs = await daemon.waitForLog("must look like https://host:port/images/ID");
    expect(logs).toContain("https://daemon.example:54322/images/0b0c4a52…?x=1");
    expect(logs).not.toContain(remoteId);
  });

  it("review 8: a TLS file that is a directory names its [tls] key before READY", async () => {
    for (const key of ["key_file", "cert_file", "ca_file"]) {
      const tmp = await openTempDir();
      const confDir = await writeTestConfig(tmp, { tls: { [key]: tmp.path } });
      const result = await execFileAsync(process.execPath, [`${root}/bin/imageio`, "daemon", "--config", confDir], {
        timeout: 20_000,
      })
        .then(({ stdout, stderr }) => ({ code: 0, output: stdout + stderr }))
        .catch((error: { code: number; stdout: string; stderr: string }) => ({
          code: error.code,
          output: error.stdout + error.stderr,
        }));
      expect(result.code, key).toBe(1);
      expect(result.output).toContain(`imageio: [tls] ${key}: cannot read ${tmp.path}: EISDIR`);
      expect(result.output).not.toContain("READY");
    }
  });

  it("review 11: SIGUSR2 and other stray signals are logged at INFO and ignored; the daemon keeps serving", async () => {
    const daemon = await startDaemon();
    cleanups.push(async () => {
      await daemon.stop();
    });
    for (const signal of ["SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGIO", "SIGPWR", "SIGXFSZ"] as const) {
      daemon.child.kill(signal);
      await daemon.waitForLog(new RegExp(` INFO .*SIGNAL ignored signal=${signal}\\b`));
    }
    expect(daemon.child.exitCode).toBeNull();
    expect((await request(daemon, { service: "control", path: "/tickets/none" })).status).toBe(404);
    expect(await daemon.stop()).toBe(0);
  });
});
