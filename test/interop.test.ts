/**
 * Real clients against the real daemon: curl (HTTPS and the unix socket) and qemu-img's curl
 * block driver (HEAD for the size, then ranged GETs). Skipped with the reason printed where
 * the tool is missing; .ci/run installs both.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { open, readFile, truncate, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, curl, type DaemonProcess, startDaemon, ticketStatus } from "./helpers/daemon.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function missing(tool: string, args: string[]): Promise<string | null> {
  try {
    await run(tool, args);
    return null;
  } catch (error) {
    return `${tool} is not available: ${(error as Error).message.split("\n")[0]}`;
  }
}

const noCurl = await missing("curl", ["--version"]);
const noQemu = await missing("qemu-img", ["--version"]);
if (noCurl) console.log(`skipped: curl tests: ${noCurl}`);
if (noQemu) console.log(`skipped: qemu-img tests: ${noQemu}`);

let daemon: DaemonProcess;
beforeAll(async () => {
  daemon = await startDaemon();
});
afterAll(async () => {
  await daemon?.stop();
});

const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

async function newImage(size: number, extra: Record<string, unknown> = {}) {
  const path = daemon.tmp.file(`image-${randomUUID()}.raw`);
  await writeFile(path, "");
  await truncate(path, size);
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size, url: `file://${path}`, timeout: 300, ops: ["read", "write"], ...extra });
  return { path, id, url: `https://localhost:${daemon.remotePort}/images/${id}` };
}

describe.skipIf(noCurl !== null)("curl", () => {
  it("uploads with -T and downloads byte-exact over HTTPS, verifying the daemon's certificate", async () => {
    const size = 9 * MiB + 4097;
    const { url, path } = await newImage(size);
    const source = daemon.tmp.file("curl-source.raw");
    const data = randomBytes(size);
    await writeFile(source, data);
    const ca = ["--cacert", daemon.certs.caFile];
    const put = await curl([...ca, "-T", source, "-w", "%{http_code}", "-o", "/dev/null", url]);
    expect(put.stdout).toBe("200");
    expect(sha(await readFile(path))).toBe(sha(data));
    const target = daemon.tmp.file("curl-target.raw");
    const get = await curl([...ca, "-o", target, "-w", "%{http_code}", url]);
    expect(get.stdout).toBe("200");
    expect(sha(await readFile(target))).toBe(sha(data));
    const ranged = await curl([...ca, "-r", "1000-1999", url]);
    expect(Buffer.from(ranged.stdout, "latin1").equals(data.subarray(1000, 2000))).toBe(true);
  });

  it("zeroes with PATCH and reads ticket status over the unix sockets", async () => {
    const { id, path } = await newImage(MiB);
    const handle = await open(path, "r+");
    await handle.write(Buffer.alloc(MiB, 0xee), 0, MiB, 0);
    await handle.close();
    const local = `http://localhost/images/${id}`;
    const zero = await curl([
      "--unix-socket",
      daemon.localSocket as string,
      "-X",
      "PATCH",
      "--data",
      '{"op": "zero", "offset": 4096, "size": 8192}',
      "-w",
      "%{http_code}",
      local,
    ]);
    expect(zero.stdout).toBe("200");
    const contents = await readFile(path);
    expect(contents.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
    expect(contents.subarray(0, 4096).every((b) => b === 0xee)).toBe(true);
    const status = await curl(["--unix-socket", daemon.controlSocket, `http://localhost/tickets/${id}`]);
    expect(JSON.parse(status.stdout).uuid).toBe(id);
  });

  it("a chunked upload from stdin works ([D4])", async () => {
    const { url, path } = await newImage(2 * MiB);
    const data = randomBytes(MiB + 77);
    const child = execFile("curl", [
      "--silent",
      "--cacert",
      daemon.certs.caFile,
      "-T",
      "-",
      "-H",
      "Transfer-Encoding: chunked",
      "-w",
      "%{http_code}",
      "-o",
      "/dev/null",
      url,
    ]);
    let out = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.stdin?.end(data);
    await new Promise((resolve) => child.once("exit", resolve));
    expect(out).toBe("200");
    expect((await readFile(path)).subarray(0, data.length).equals(data)).toBe(true);
  });
});

describe.skipIf(noQemu !== null)("qemu-img", () => {
  /**
   * qemu-img's curl driver occasionally stalls with every request answered: both ends' socket
   * queues empty, the daemon idle, qemu-img waiting (seen about once in 30 runs). A 5 MiB read
   * takes about a second, so each call gets 25 s and two retries.
   */
  async function qemuImg(args: string[]): Promise<string> {
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const { stdout } = await run("timeout", ["25", "qemu-img", ...args]);
        return stdout;
      } catch (error) {
        lastError = error;
      }
    }
    throw lastError;
  }

  // Two calls of three tries of up to 25 s each must fit in the test's time.
  it("reads an image over HTTPS through HEAD and ranged GETs, byte-exact", { timeout: 160_000 }, async () => {
    const size = 5 * MiB + 512;
    const { id, path } = await newImage(size, { ops: ["read"] });
    const data = randomBytes(size);
    await writeFile(path, data);
    const json = JSON.stringify({
      "file.driver": "https",
      "file.url": `https://localhost:${daemon.remotePort}/images/${id}`,
      "file.sslverify": false,
      "file.readahead": 0,
    });
    const info = JSON.parse(await qemuImg(["info", "--output=json", `json:${json}`])) as { "virtual-size": number };
    expect(info["virtual-size"]).toBe(size);
    const target = daemon.tmp.file("qemu-target.raw");
    await qemuImg(["convert", "-f", "raw", "-O", "raw", `json:${json}`, target]);
    expect(sha(await readFile(target))).toBe(sha(data));
    const status = await ticketStatus(daemon, id);
    expect(status.transferred).toBe(size);
  });
});
