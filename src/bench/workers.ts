/**
 * `npm run bench -- workers`: the data plane on more than one core ([daemon] workers, issue
 * 14). Four curl clients upload distinct quarters of one image over HTTPS at once, to a daemon
 * with `workers = 1` and one with `workers = 2`, in interleaved rounds. Reported: aggregate
 * MiB/s, the daemon's CPU seconds per wall second (all its threads, from /proc/PID/stat: one
 * thread cannot pass 1.0), its CPU seconds per GiB, and how many of the connections each
 * thread served (from the OPEN lines, which name the worker). The image is on `--dir` (written
 * with O_DIRECT, as on a host); the clients' data is in /dev/shm.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { interleave, markdownTable, median } from "./harness.js";
import type { Suite } from "./run.js";
import {
  addTicket,
  cpuSecondsOf,
  GiB,
  MiB,
  makeCertificate,
  originsOf,
  parseBenchOptions,
  prepareImages,
  type RunningService,
  startService,
  writeImage,
} from "./services.js";
import type { TargetRow } from "./summary.js";

/** Concurrent uploads, each of a quarter of the image. */
const CLIENTS = 4;
/** Memory-backed files, where the clients' data waits. */
const MEMORY_DIR = "/dev/shm";
/** Issue 14's target for two workers: the daemon uses more than one core. */
const CORES_TARGET = 1.1;

interface RoundResult {
  mibps: number;
  /** Daemon CPU seconds per wall second. */
  cores: number;
  cpuPerGiB: number;
  /** Connections of the round per thread ("main" with one thread). */
  perThread: Map<string, number>;
}

export const suite: Suite = {
  description: "4 concurrent HTTPS uploads (curl) to one image, [daemon] workers = 1 vs 2",
  usage: "npm run bench -- workers [--size-gib 2] [--rounds 3] [--dir /var/tmp] [--executable dist/imageio]",
  async run(args) {
    const options = parseBenchOptions(args);
    const { dir, size, target } = await prepareImages("workers", options, ["curl", "openssl"]);
    const part = size / CLIENTS;
    // The clients read their parts from memory (tmpfs), so the disk serves only the daemon's
    // O_DIRECT writes and the round measures the daemon's threads, not the clients' reads.
    const partsDir = mkdtempSync(join(existsSync(MEMORY_DIR) ? MEMORY_DIR : dir, "imageio-bench-workers-parts-"));
    const parts = Array.from({ length: CLIENTS }, (_, k) => join(partsDir, `part-${k}.raw`));
    for (const path of parts) await writeImage(path, part);
    const certificate = makeCertificate(dir);
    const { current } = originsOf(options);
    const daemons = new Map<number, RunningService>();
    const tickets = new Map<number, string>();
    try {
      for (const workers of [1, 2]) {
        const daemon = await startService("daemon", mkdtempSync(join(dir, `workers-${workers}-`)), certificate, {
          origin: current,
          daemonSettings: [`workers = ${workers}`],
        });
        daemons.set(workers, daemon);
        tickets.set(workers, randomUUID());
        await addTicket(daemon.control, {
          uuid: tickets.get(workers),
          size,
          url: `file://${target}`,
          timeout: 3600,
          ops: ["write"],
        });
      }
      const results = await interleave<RoundResult>(
        options.rounds,
        [...daemons].map(([workers, daemon]) => ({
          name: `workers = ${workers}`,
          run: () => uploadRound(daemon, tickets.get(workers) as string, parts, part, certificate.cert),
        })),
        (name, round, r) =>
          process.stdout.write(
            `  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s, ${r.cores.toFixed(2)} cores, ` +
              `connections ${describeSplit(r.perThread)}\n`,
          ),
      );
      const one = median((results.get("workers = 1") ?? []).map((r) => r.mibps));
      const rows = [...results].map(([name, list]) => {
        const mibps = median(list.map((r) => r.mibps));
        const cores = median(list.map((r) => r.cores));
        const two = name === "workers = 2";
        const splits = [...new Set(list.map((r) => describeSplit(r.perThread)))].join("; ");
        const evenly = list.every((r) => [...r.perThread.values()].every((n) => n === CLIENTS / 2));
        return [
          name,
          mibps.toFixed(0),
          cores.toFixed(2),
          median(list.map((r) => r.cpuPerGiB)).toFixed(2),
          splits,
          two
            ? [
                `cores ≥ ${CORES_TARGET} ${cores >= CORES_TARGET ? "✓" : "✗"}`,
                `2/2 ${evenly ? "✓" : "✗"}`,
                `MiB/s ≥ workers=1 ${mibps >= one ? "✓" : "✗"}`,
              ].join(", ")
            : "-",
        ];
      });
      const twoList = results.get("workers = 2") ?? [];
      const twoMibps = median(twoList.map((r) => r.mibps));
      const twoCores = median(twoList.map((r) => r.cores));
      const split = twoList.every((r) => [...r.perThread.values()].every((n) => n === CLIENTS / 2));
      // Rows for the whole-table summary; the runner names the runtime.
      const targets: TargetRow[] = [
        {
          measure: "4 HTTPS uploads, workers = 2: daemon CPU-s per wall-s",
          runtime: "",
          value: twoCores.toFixed(2),
          target: `≥ ${CORES_TARGET}`,
          met: twoCores >= CORES_TARGET,
        },
        {
          measure: "4 HTTPS uploads, workers = 2: connections per thread",
          runtime: "",
          value: [...new Set(twoList.map((r) => describeSplit(r.perThread)))].join("; "),
          target: "2/2",
          met: split,
        },
        {
          measure: "4 HTTPS uploads: MiB/s, workers = 2 ÷ workers = 1",
          runtime: "",
          value: `${(twoMibps / one).toFixed(2)}× (${twoMibps.toFixed(0)} vs ${one.toFixed(0)} MiB/s)`,
          target: "≥ 1×",
          met: twoMibps >= one,
        },
      ];
      process.stdout.write(
        `\n${markdownTable(
          [
            "daemon",
            "MiB/s (median)",
            "daemon CPU-s per wall-s",
            "daemon CPU-s/GiB",
            "connections per thread",
            "target",
          ],
          rows,
        )}\n`,
      );
      return targets;
    } finally {
      for (const daemon of daemons.values()) daemon.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(partsDir, { recursive: true, force: true });
    }
  },
};

/** One round: every client uploads its part at once; measured from the first start to the last exit. */
async function uploadRound(
  daemon: RunningService,
  ticket: string,
  parts: string[],
  part: number,
  ca: string,
): Promise<RoundResult> {
  const firstId = lastConnectionId(daemon) + 1;
  const cpuBefore = cpuSecondsOf(daemon.pid);
  const started = performance.now();
  await Promise.all(
    parts.map((path, k) =>
      run("curl", [
        "--silent",
        "--show-error",
        "--fail",
        "--cacert",
        ca,
        "-T",
        path,
        "-H",
        `Content-Range: bytes ${k * part}-${(k + 1) * part - 1}/*`,
        "-o",
        "/dev/null",
        `https://localhost:${daemon.port}/images/${ticket}`,
      ]),
    ),
  );
  const wall = (performance.now() - started) / 1000;
  const cpu = cpuSecondsOf(daemon.pid) - cpuBefore;
  const total = part * parts.length;
  return {
    mibps: total / MiB / wall,
    cores: cpu / wall,
    cpuPerGiB: cpu / (total / GiB),
    perThread: opened(daemon, firstId),
  };
}

/** Runs a command to completion. @throws when it fails. */
function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (data: Buffer) => {
      stderr += data.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`${command} failed (${code}): ${stderr}`))));
  });
}

const OPEN_LINE = / OPEN connection=(\d+) client=(\S+)(?: worker=(\d+))?/g;

function lastConnectionId(daemon: RunningService): number {
  let last = 0;
  for (const match of daemon.logs().matchAll(OPEN_LINE)) last = Math.max(last, Number(match[1]));
  return last;
}

/** The HTTPS connections opened since `firstId`, per thread serving them. */
function opened(daemon: RunningService, firstId: number): Map<string, number> {
  const perThread = new Map<string, number>();
  for (const match of daemon.logs().matchAll(OPEN_LINE)) {
    if (Number(match[1]) < firstId || match[2] === "local") continue;
    const thread = match[3] === undefined ? "main" : `worker ${match[3]}`;
    perThread.set(thread, (perThread.get(thread) ?? 0) + 1);
  }
  return perThread;
}

function describeSplit(perThread: Map<string, number>): string {
  return [...perThread]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([thread, count]) => `${thread}: ${count}`)
    .join(", ");
}
