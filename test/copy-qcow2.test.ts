/**
 * Issue 12, "Image formats" and "Done when": `imageio copy` uploads a qcow2's guest data into
 * a raw ticket and downloads a ticket into a new qcow2, through a qemu-nbd it starts and stops
 * itself, directly and through a proxy: `qemu-img compare` identical, sparse where the source
 * was (`qemu-img map`). Also: a backing chain is read as the guest sees it, Ctrl-C leaves no
 * qemu-nbd behind, and a missing qemu-nbd is a clear error.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type DaemonProcess, type InProcessDaemon, startDaemon, startInProcess } from "./helpers/daemon.js";
import { writeSparseImage } from "./helpers/images.js";
import { qemuImgMap, run, skipUnless } from "./helpers/nbd.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const root = new URL("..", import.meta.url).pathname;
const MiB = 1024 * 1024;
const skip = skipUnless("qemu-nbd", "qemu-img", "qemu-io");
if (skip !== undefined) console.log(`skipped: copy of qcow2 images: ${skip}`);

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI; `onSpawn` gets the child (to watch its output and signal it). */
function imageio(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; onSpawn?: (child: ChildProcessWithoutNullStreams) => void } = {},
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`${root}/bin/imageio`, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: options.env ?? process.env,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (data: Buffer) => {
      stdout += data.toString();
    });
    child.stderr.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    child.stdin.end();
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
    options.onSpawn?.(child);
  });
}

async function copyOk(...args: string[]): Promise<Outcome> {
  const result = await imageio(["copy", ...args]);
  expect(result.code, `imageio copy ${args.join(" ")}\n${result.stderr}`).toBe(0);
  return result;
}

const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/**
 * Copies `src` to `dst` slowly (one worker, 4 KiB requests) and sends Ctrl-C once the copy has
 * moved its first bytes, noting the PID of the qemu-nbd serving `served` at that moment.
 */
async function copyInterrupted(src: string, dst: string, served: string) {
  let server: number | undefined;
  const args = ["copy", src, dst, "--workers", "1", "--buffer-size", "4K", "--progress", "json"];
  const result = await imageio(args, {
    onSpawn: (child) => {
      let seen = "";
      let interrupted = false;
      child.stdout.on("data", async (data: Buffer) => {
        seen += data.toString();
        if (interrupted || !/"phase":"copy","done":[1-9]/.test(seen)) return;
        interrupted = true;
        [server] = await qemuNbdServing(served);
        child.kill("SIGINT");
      });
    },
  });
  return { result, server };
}

/** The byte ranges of a qcow2 that hold data, merged: what "sparse where the source was" compares. */
async function dataRanges(image: string): Promise<[number, number][]> {
  const ranges: [number, number][] = [];
  for (const extent of await qemuImgMap(image)) {
    if (!extent.data) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === extent.start) last[1] += extent.length;
    else ranges.push([extent.start, extent.start + extent.length]);
  }
  return ranges;
}

/** PIDs of qemu-nbd processes serving `image` (read from /proc, so no helper of ours is trusted). */
async function qemuNbdServing(image: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    const args = cmdline.split("\0");
    if (args[0]?.endsWith("qemu-nbd") && args.includes(image)) pids.push(Number(entry));
  }
  return pids;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let tmp: TempDir;
let daemon: InProcessDaemon;
let proxy: DaemonProcess;
let caFile: string;
const SIZE = 24 * MiB;
/** Data runs of the test disk: 10 runs of 256 KiB and a last partial MiB; holes between. */
const RUNS: [number, number][] = [
  ...Array.from({ length: 10 }, (_, i): [number, number] => [i * 2 * MiB + 64 * 1024, i * 2 * MiB + 320 * 1024]),
  [SIZE - MiB, SIZE - 512 * 1024],
];
let rawDisk: string;
let qcow2Disk: string;
let guest: Buffer;

beforeAll(async () => {
  if (skip !== undefined) return;
  tmp = await makeTempDir("imageio-copy-qcow2-");
  const certs = await testCerts();
  caFile = certs.caFile;
  [daemon, proxy] = await Promise.all([
    startInProcess(),
    startDaemon({ command: "proxy", config: { backend_http: { ca_file: certs.caFile } } }),
  ]);
  rawDisk = tmp.file("disk.raw");
  guest = await writeSparseImage(rawDisk, SIZE, RUNS);
  qcow2Disk = tmp.file("disk.qcow2");
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", rawDisk, qcow2Disk]);
});
afterAll(async () => {
  await Promise.all([daemon?.stop(), proxy?.stop()]);
  await tmp?.remove();
});

/** An empty raw ticket of SIZE on the daemon; its URL and its file. */
async function rawTicket(): Promise<{ url: string; path: string }> {
  const path = daemon.tmp.file(`ticket-${randomUUID()}.raw`);
  await writeFile(path, "");
  await truncate(path, SIZE);
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size: SIZE, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
  return { url: `https://localhost:${daemon.remotePort}/images/${id}`, path };
}

describe.skipIf(skip !== undefined)("imageio copy of qcow2 images to and from daemons", () => {
  it("12: uploads a qcow2's guest data into a raw ticket and downloads it back as a sparse qcow2", async () => {
    const ticket = await rawTicket();
    const up = await copyOk(qcow2Disk, ticket.url, "--ca-file", caFile, "--progress", "json", "--verify");
    expect(sha(await readFile(ticket.path))).toBe(sha(guest));
    const upDone = JSON.parse(up.stdout.trim().split("\n").pop() ?? "{}") as Record<string, unknown>;
    // Only the data crossed the network: the holes of the qcow2 were zeroed or skipped.
    expect(upDone).toMatchObject({ phase: "done", size: SIZE, copied: RUNS.reduce((n, [s, e]) => n + e - s, 0) });

    const out = tmp.file("downloaded.qcow2");
    await copyOk(ticket.url, out, "--ca-file", caFile, "--verify");
    const info = JSON.parse(await run("qemu-img", ["info", "--output=json", out])) as Record<string, unknown>;
    expect(info).toMatchObject({ format: "qcow2", "virtual-size": SIZE });
    await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", qcow2Disk, out]);
    expect(await dataRanges(out)).toEqual(await dataRanges(qcow2Disk));
    expect(await dataRanges(out)).toEqual(RUNS);
  });

  it("12: uploads and downloads qcow2 through the proxy", async () => {
    const ticket = await rawTicket();
    const id = randomUUID();
    await addTicket(proxy, { uuid: id, size: SIZE, url: ticket.url, timeout: 300, ops: ["read", "write"] });
    const url = `https://localhost:${proxy.remotePort}/images/${id}`;
    await copyOk(qcow2Disk, url, "--ca-file", caFile);
    expect(sha(await readFile(ticket.path))).toBe(sha(guest));
    const out = tmp.file("via-proxy.qcow2");
    await copyOk(url, out, "--ca-file", caFile);
    await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", rawDisk, out]);
    expect(await dataRanges(out)).toEqual(RUNS);
  });

  it("12: a qcow2 with a backing file is copied as the guest sees it, backing data included", async () => {
    const base = tmp.file("base.qcow2");
    const baseRaw = tmp.file("base.raw");
    await writeSparseImage(baseRaw, 8 * MiB, [
      [0, MiB],
      [4 * MiB, 5 * MiB],
    ]);
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", baseRaw, base]);
    const top = tmp.file("top.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    // The top overwrites half of the base's first run and adds data of its own.
    await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 512k 1M", "-c", "write -P 0xa5 6M 64k", top]);
    const expected = tmp.file("top-expected.raw");
    await run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", top, expected]);

    const out = tmp.file("top-copy.raw");
    await copyOk(top, out);
    expect(sha(await readFile(out))).toBe(sha(await readFile(expected)));
    const ticket = await rawTicket();
    await copyOk(top, ticket.url, "--ca-file", caFile);
    expect(sha((await readFile(ticket.path)).subarray(0, 8 * MiB))).toBe(sha(await readFile(expected)));
  });
});

describe.skipIf(skip !== undefined)("imageio copy's own qemu-nbd", () => {
  it("12: Ctrl-C in the middle of a copy from qcow2 stops its qemu-nbd (checked by PID)", async () => {
    const dense = tmp.file("dense.qcow2");
    const denseRaw = tmp.file("dense.raw");
    await writeFile(denseRaw, randomBytes(64 * MiB));
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", denseRaw, dense]);
    const out = tmp.file("interrupted.raw");
    const { result, server } = await copyInterrupted(dense, out, dense);
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toMatch(/interrupted/i);
    expect(server).toBeGreaterThan(0);
    // The copy waited for its server to stop before it exited.
    expect(alive(server as number)).toBe(false);
    expect(await qemuNbdServing(dense)).toEqual([]);
  });

  it("12: Ctrl-C while writing a new qcow2 stops its qemu-nbd, and the image is still a valid qcow2", async () => {
    const src = tmp.file("dense-src.raw");
    await writeFile(src, randomBytes(64 * MiB));
    const out = tmp.file("interrupted.qcow2");
    const { result, server } = await copyInterrupted(src, out, out);
    expect(result.code, result.stderr).toBe(130);
    expect(alive(server as number)).toBe(false);
    expect(await qemuNbdServing(out)).toEqual([]);
    await run("qemu-img", ["check", "-q", out]);
  });

  it("12: a copy from qcow2 that fails stops its qemu-nbd too, and says why", async () => {
    // The ticket's image is smaller than the guest disk: the copy fails before any data moves.
    const path = daemon.tmp.file("too-small.raw");
    await writeFile(path, Buffer.alloc(4 * MiB));
    const id = randomUUID();
    await addTicket(daemon, { uuid: id, size: 4 * MiB, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
    const url = `https://localhost:${daemon.remotePort}/images/${id}`;
    // A qemu-nbd in front of the real one records its PID (exec keeps it) before serving.
    const wrapper = tmp.file("recording-path");
    await mkdir(wrapper, { recursive: true });
    const pids = tmp.file("qemu-nbd.pids");
    const real = (await run("sh", ["-c", "command -v qemu-nbd"])).trim();
    await writeFile(`${wrapper}/qemu-nbd`, `#!/bin/sh\necho $$ >> '${pids}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    const env = { ...process.env, PATH: `${wrapper}:${process.env.PATH ?? ""}` };
    const result = await imageio(["copy", qcow2Disk, url, "--ca-file", caFile], { env });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/is too small: .*needs 25165824 bytes \(24\.00 MiB\)/);
    const started = (await readFile(pids, "utf8")).trim().split("\n").map(Number);
    expect(started).toHaveLength(1);
    expect(alive(started[0] as number)).toBe(false);
    expect(await qemuNbdServing(qcow2Disk)).toEqual([]);
  });

  it("12: without qemu-nbd (or qemu-img) on PATH, a qcow2 copy fails clearly and creates nothing", async () => {
    const empty = tmp.file("empty-path");
    await mkdir(empty, { recursive: true });
    const env = { ...process.env, PATH: empty };
    const out = tmp.file("no-qemu.raw");
    const noNbd = await imageio(["copy", qcow2Disk, out], { env });
    expect(noNbd.code).toBe(1);
    expect(noNbd.stderr).toMatch(/Cannot open '.*disk\.qcow2' as qcow2: qemu-nbd is not installed/);
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
    const newQcow2 = tmp.file("no-qemu.qcow2");
    const noImg = await imageio(["copy", rawDisk, newQcow2], { env });
    expect(noImg.code).toBe(1);
    expect(noImg.stderr).toMatch(/Cannot create qcow2 image '.*no-qemu\.qcow2': qemu-img is not installed/);
    await expect(stat(newQcow2)).rejects.toThrow(/ENOENT/);
    const checksum = await imageio(["checksum", qcow2Disk], { env });
    expect(checksum.code).toBe(1);
    expect(checksum.stderr).toMatch(/qemu-nbd is not installed/);
  });
});
