/**
 * `npm run bench -- daemon`: throughput and cost of the daemon's data path. A 2 GiB fully
 * allocated image is downloaded and uploaded with curl over HTTPS and over the local unix
 * socket, in interleaved rounds next to `dd` with O_DIRECT on the same disk (the baseline).
 * Reported: MiB/s, the ratio to dd, and the daemon's own CPU seconds per GiB (from
 * /proc/<pid>/stat); then the daemon's peak RSS with 8 transfers at once.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import { commandExists, interleave, markdownTable, measure, median } from "./harness.js";
import type { Suite } from "./run.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface Options {
  sizeGiB: number;
  rounds: number;
  dir: string;
}

function parseOptions(args: string[]): Options {
  const options: Options = { sizeGiB: 2, rounds: 3, dir: "/var/tmp" };
  for (let i = 0; i < args.length; i++) {
    const value = args[i + 1];
    if (args[i] === "--size-gib" && value) options.sizeGiB = Number(args[++i]);
    else if (args[i] === "--rounds" && value) options.rounds = Number(args[++i]);
    else if (args[i] === "--dir" && value) options.dir = args[++i] as string;
    else throw new Error(`unknown option '${args[i]}'`);
  }
  return options;
}

/** utime + stime of a process, in seconds. */
function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function rssOf(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) * 1024 : 0;
}

async function writeImage(path: string, size: number): Promise<void> {
  const handle = await open(path, "w");
  const chunk = randomBytes(8 * MiB);
  for (let offset = 0; offset < size; offset += chunk.length) {
    await handle.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
  }
  await handle.sync();
  await handle.close();
}

function control(socket: string, method: string, path: string, body?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function startDaemon(dir: string): Promise<{ pid: number; port: number; local: string; stop: () => void }> {
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
    ],
    { stdio: "ignore" },
  );
  const config = [
    "[daemon]",
    `run_dir = ${dir}`,
    "drop_privileges = false",
    "systemd_enable = false",
    "[tls]",
    `key_file = ${join(dir, "key.pem")}`,
    `cert_file = ${join(dir, "cert.pem")}`,
    "[remote]",
    "host = 127.0.0.1",
    "port = 0",
    "[local]",
    `socket = ${join(dir, "local.sock")}`,
    "[control]",
    `socket = ${join(dir, "control.sock")}`,
    "[logging]",
    "level = INFO",
    "",
  ].join("\n");
  writeFileSync(join(dir, "daemon.conf"), config);
  const bin = new URL("../../bin/imageio", import.meta.url).pathname;
  const child = spawn(process.execPath, [bin, "daemon", "--config", join(dir, "daemon.conf")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let output = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr.on("data", (data: Buffer) => {
      output += data.toString();
      const match = /READY .*remote=\S+:(\d+)/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`daemon exited with ${code}: ${output}`)));
  });
  return { pid: child.pid as number, port, local: join(dir, "local.sock"), stop: () => child.kill("SIGTERM") };
}

export const suite: Suite = {
  description: "daemon GET/PUT over HTTPS and the unix socket with curl, next to dd (O_DIRECT)",
  usage: "npm run bench -- daemon [--size-gib 2] [--rounds 3] [--dir /var/tmp]",
  async run(args) {
    const options = parseOptions(args);
    for (const tool of ["curl", "dd", "openssl"]) {
      if (!commandExists(tool)) throw new Error(`${tool} is required for this benchmark`);
    }
    const dir = mkdtempSync(join(options.dir, "imageio-bench-daemon-"));
    const size = options.sizeGiB * GiB;
    const image = join(dir, "image.raw");
    const target = join(dir, "target.raw");
    process.stdout.write(`Writing a ${options.sizeGiB} GiB image in ${dir} ...\n`);
    await writeImage(image, size);
    await writeImage(target, size);
    const daemon = await startDaemon(dir);
    try {
      const controlSocket = join(dir, "control.sock");
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const [id, url, ops] of [
        [readId, image, ["read"]],
        [writeId, target, ["read", "write"]],
      ] as const) {
        const body = JSON.stringify({ uuid: id, size, url: `file://${url}`, timeout: 3600, ops });
        const status = await control(controlSocket, "PUT", `/tickets/${id}`, body);
        if (status !== 200) throw new Error(`adding a ticket failed: ${status}`);
      }
      const https = `https://localhost:${daemon.port}/images`;
      const curl = ["--silent", "--show-error", "--fail"];
      const contenders = [
        {
          name: "dd read (O_DIRECT)",
          kind: "read",
          cmd: ["dd", `if=${image}`, "of=/dev/null", "bs=8M", "iflag=direct", "status=none"],
          daemon: false,
        },
        {
          name: "dd write (O_DIRECT)",
          kind: "write",
          cmd: [
            "dd",
            "if=/dev/zero",
            `of=${target}`,
            "bs=8M",
            `count=${size / (8 * MiB)}`,
            "oflag=direct",
            "conv=fsync,notrunc",
            "status=none",
          ],
          daemon: false,
        },
        {
          name: "HTTPS GET",
          kind: "read",
          cmd: ["curl", ...curl, "-k", "-o", "/dev/null", `${https}/${readId}`],
          daemon: true,
        },
        {
          name: "HTTPS PUT",
          kind: "write",
          cmd: ["curl", ...curl, "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          daemon: true,
        },
        {
          name: "unix GET",
          kind: "read",
          cmd: ["curl", ...curl, "--unix-socket", daemon.local, "-o", "/dev/null", `http://localhost/images/${readId}`],
          daemon: true,
        },
        {
          name: "unix PUT",
          kind: "write",
          cmd: [
            "curl",
            ...curl,
            "--unix-socket",
            daemon.local,
            "-T",
            image,
            "-o",
            "/dev/null",
            `http://localhost/images/${writeId}`,
          ],
          daemon: true,
        },
      ];
      type Result = { mibps: number; daemonCpuPerGiB: number; clientCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          // Start every run with the source out of the page cache, as it is on a real host.
          prepare: async () => {
            execFileSync("sync");
            try {
              writeFileSync("/proc/sys/vm/drop_caches", "1");
            } catch {
              // Not root: runs may read the source from the page cache.
            }
          },
          run: async () => {
            const before = cpuSecondsOf(daemon.pid);
            const m = await measure(c.cmd[0] as string, c.cmd.slice(1));
            const daemonCpu = cpuSecondsOf(daemon.pid) - before;
            return {
              mibps: size / MiB / m.wall,
              daemonCpuPerGiB: c.daemon ? daemonCpu / (size / GiB) : 0,
              clientCpu: m.cpu,
            };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const ddRead = median((results.get("dd read (O_DIRECT)") ?? []).map((r) => r.mibps));
      const ddWrite = median((results.get("dd write (O_DIRECT)") ?? []).map((r) => r.mibps));
      const targets: Record<string, number> = { "HTTPS GET": 1.2, "HTTPS PUT": 1.5, "unix GET": 0.4, "unix PUT": 0.6 };
      const rows = contenders.map((c) => {
        const list = results.get(c.name) ?? [];
        const mibps = median(list.map((r) => r.mibps));
        const baseline = c.kind === "read" ? ddRead : ddWrite;
        const cpu = median(list.map((r) => r.daemonCpuPerGiB));
        const target = targets[c.name];
        return [
          c.name,
          mibps.toFixed(0),
          c.daemon ? `${(mibps / baseline).toFixed(2)}×` : "1.00×",
          c.daemon ? cpu.toFixed(2) : "-",
          target === undefined ? "-" : `≤ ${target} ${cpu <= target ? "✓" : "✗"}`,
        ];
      });
      process.stdout.write(
        `\n${markdownTable(["contender", "MiB/s (median)", "vs dd", "daemon CPU-s/GiB", "target"], rows)}\n`,
      );

      // Memory: 8 transfers at once (4 downloads, 4 uploads), sampling the daemon's RSS.
      let peak = rssOf(daemon.pid);
      const sampler = setInterval(() => {
        peak = Math.max(peak, rssOf(daemon.pid));
      }, 20);
      await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          measure(
            "curl",
            i % 2 === 0
              ? [
                  "--silent",
                  "--fail",
                  "--unix-socket",
                  daemon.local,
                  "-o",
                  "/dev/null",
                  `http://localhost/images/${readId}`,
                ]
              : ["--silent", "--fail", "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          ),
        ),
      );
      clearInterval(sampler);
      process.stdout.write(
        `\nDaemon peak RSS with 8 transfers at once: ${(peak / MiB).toFixed(0)} MiB (target < 200 MiB)\n`,
      );
    } finally {
      daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
