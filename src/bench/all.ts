/**
 * `npm run bench` without a suite: issue 14's whole table in one run. In order:
 *  1. the data paths (paths.ts): daemon HTTPS/unix GET/PUT and proxy GET/PUT, for this
 *     checkout on the running Node and for the single executable, all in interleaved rounds;
 *  2. the `workers` suite when the suites table has one (it runs with its own options and
 *     prints its own table), once per runtime;
 *  3. copy start-up against qemu-img (startup.ts), both runtimes interleaved with it;
 * then one summary of every target with ✓/✗. The executable (dist/imageio) is built with
 * `npm run package` when missing or older than the sources, or left out with the reason.
 * About 4 minutes at the defaults on a 2-core machine, plus the workers suite.
 */
import { spawnSync } from "node:child_process";
import { readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { measurePaths, type Runtime } from "./paths.js";
import type { Suite } from "./run.js";
import { type BenchOptions, makeCertificate, prepareImages } from "./services.js";
import { DEFAULT_EXECUTABLE, measureStartup } from "./startup.js";
import { summaryTable, type TargetRow } from "./summary.js";

const root = new URL("../..", import.meta.url).pathname;

export const usage =
  "[--size-gib 2] [--rounds 3] [--startup-rounds 7] [--dir /var/tmp] [--executable FILE | --no-executable] [--skip paths,workers,startup]";

const PARTS = ["paths", "workers", "startup"] as const;

interface AllOptions {
  sizeGiB: number;
  rounds: number;
  startupRounds: number;
  dir: string;
  executable: string | undefined;
  noExecutable: boolean;
  skip: Set<string>;
}

function parseOptions(args: string[]): AllOptions {
  const { values } = parseArgs({
    args,
    options: {
      "size-gib": { type: "string", default: "2" },
      rounds: { type: "string", default: "3" },
      "startup-rounds": { type: "string", default: "7" },
      dir: { type: "string", default: "/var/tmp" },
      executable: { type: "string" },
      "no-executable": { type: "boolean", default: false },
      skip: { type: "string", default: "" },
    },
    strict: true,
  });
  const positive = (name: string, text: string) => {
    const value = Number(text);
    if (!(value > 0) || (name !== "--size-gib" && !Number.isSafeInteger(value))) {
      throw new Error(`${name} must be a positive ${name === "--size-gib" ? "number" : "integer"}, not '${text}'`);
    }
    return value;
  };
  const skip = new Set(values.skip.split(",").filter((part) => part !== ""));
  for (const part of skip) {
    if (!(PARTS as readonly string[]).includes(part))
      throw new Error(`--skip: unknown part '${part}' (${PARTS.join(", ")})`);
  }
  return {
    sizeGiB: positive("--size-gib", values["size-gib"]),
    rounds: positive("--rounds", values.rounds),
    startupRounds: positive("--startup-rounds", values["startup-rounds"]),
    dir: values.dir,
    executable: values.executable,
    noExecutable: values["no-executable"],
    skip,
  };
}

/** The newest modification time of the files under `dir` (recursively), in ms. */
function newestUnder(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/**
 * The executable to measure, or why there is none: the one named; else dist/imageio, built
 * (npm run package, about a minute) when missing or older than the sources.
 */
function prepareExecutable(options: AllOptions): { path: string } | { skipped: string } {
  if (options.noExecutable) return { skipped: "--no-executable" };
  if (options.executable !== undefined) return { path: options.executable };
  let builtAt = 0;
  try {
    builtAt = statSync(DEFAULT_EXECUTABLE).mtimeMs;
  } catch {
    // Missing: built below.
  }
  if (builtAt > newestUnder(join(root, "src"))) return { path: DEFAULT_EXECUTABLE };
  process.stdout.write(`Building ${DEFAULT_EXECUTABLE} (npm run package) ...\n`);
  const build = spawnSync(process.execPath, [join(root, "scripts/package/build-sea.mjs")], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (build.status !== 0) {
    const why = `${build.stderr ?? ""}${build.stdout ?? ""}`.trim().split("\n").slice(-3).join(" ");
    return { skipped: `npm run package failed: ${why || (build.error?.message ?? `status ${build.status}`)}` };
  }
  return { path: DEFAULT_EXECUTABLE };
}

export async function runAll(args: string[], suites: Record<string, () => Promise<Suite>>): Promise<void> {
  const options = parseOptions(args);
  const started = performance.now();
  const heading = (text: string) => process.stdout.write(`\n## ${text}\n\n`);
  const nodeRuntime: Runtime = { label: `Node ${process.versions.node} (bin/imageio)`, origin: undefined };
  const executable = prepareExecutable(options);
  const runtimes: Runtime[] = [nodeRuntime];
  if ("path" in executable)
    runtimes.push({ label: "embedded (dist/imageio)", origin: { executable: executable.path } });
  const rows: TargetRow[] = [];
  const notes: string[] = [];
  if ("skipped" in executable) notes.push(`The executable is left out: ${executable.skipped}.`);

  if (!options.skip.has("paths")) {
    heading(`Data paths: ${options.sizeGiB} GiB, ${options.rounds} interleaved rounds, curl as the client`);
    const benchOptions: BenchOptions = {
      sizeGiB: options.sizeGiB,
      rounds: options.rounds,
      dir: options.dir,
      dataOnly: true,
    };
    const images = await prepareImages("all", benchOptions, ["curl", "openssl"]);
    try {
      rows.push(...(await measurePaths(images, makeCertificate(images.dir), runtimes, options.rounds)));
    } finally {
      rmSync(images.dir, { recursive: true, force: true });
    }
  }

  if (!options.skip.has("workers")) {
    const load = suites.workers;
    if (load === undefined) {
      notes.push("The workers suite is not registered in src/bench/run.ts: the multi-core targets are not measured.");
    } else {
      const workers = await load();
      for (const runtime of runtimes) {
        heading(`workers suite on ${runtime.label}`);
        const suiteArgs = [
          "--size-gib",
          String(options.sizeGiB),
          "--rounds",
          String(options.rounds),
          "--dir",
          options.dir,
        ];
        if (runtime.origin !== undefined && "executable" in runtime.origin)
          suiteArgs.push("--executable", runtime.origin.executable);
        try {
          const returned = await workers.run(suiteArgs);
          if (Array.isArray(returned)) rows.push(...returned.map((row) => ({ ...row, runtime: runtime.label })));
          else
            rows.push({
              measure: "workers suite",
              runtime: runtime.label,
              value: "its table above",
              target: "-",
              met: undefined,
            });
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          process.stdout.write(`workers suite failed: ${message}\n`);
          rows.push({
            measure: "workers suite",
            runtime: runtime.label,
            value: `failed: ${message.split("\n")[0]}`,
            target: "-",
            met: undefined,
          });
        }
      }
    }
  }

  if (!options.skip.has("startup")) {
    heading("Copy start-up against qemu-img");
    const executablePath = "path" in executable ? executable.path : undefined;
    rows.push(
      ...(await measureStartup({ rounds: options.startupRounds, dir: options.dir, executable: executablePath })),
    );
  }

  heading("Summary (issue 14 targets)");
  process.stdout.write(`${summaryTable(rows)}\n`);
  for (const note of notes) process.stdout.write(`\n${note}\n`);
  process.stdout.write(
    `\nRun took ${((performance.now() - started) / 60_000).toFixed(1)} min; CPU-s/GiB from /proc of each service. On a shared machine the numbers move with its other load.\n`,
  );
}
