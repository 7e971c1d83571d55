/**
 * `npm run bench -- startup`: the copy of an empty 1 TiB sparse image, where start-up is
 * nearly all the time, with `node bin/imageio` (this checkout on the Node running the
 * benchmark), the single executable users run (`dist/imageio`, on the Node it embeds) and
 * `qemu-img convert`, in interleaved rounds, each cold (caches dropped first, root only, as
 * the copy suite's runs) and warm (the same command ran just before). Target (issue 14):
 * imageio's wall time at most 2× qemu-img's, judged on the executable.
 */
import { existsSync } from "node:fs";
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

export interface StartupOptions {
  rounds: number;
  dir: string;
  /** The single executable to measure; undefined leaves it out. */
  executable: string | undefined;
}

interface Tool {
  name: string;
  /** The runtime column of the summary; undefined for the reference tool. */
  runtime: string | undefined;
  command(src: string, dst: string): [string, string[]];
}

/**
 * Runs the comparison, prints its table and returns the summary rows (one per imageio
 * runtime: its median wall time against qemu-img's).
 * @throws when qemu-img is missing.
 */
export async function measureStartup(options: StartupOptions): Promise<TargetRow[]> {
  if (!commandExists("qemu-img")) throw new Error("qemu-img is required for this benchmark");
  const tools: Tool[] = [
    {
      name: "imageio (node bin/imageio)",
      runtime: `Node ${process.versions.node} (bin/imageio)`,
      command: (src, dst) => [process.execPath, [join(root, "bin/imageio"), "copy", "--quiet", src, dst]],
    },
    {
      name: REFERENCE,
      runtime: undefined,
      command: (src, dst) => ["qemu-img", ["convert", "-t", "none", "-T", "none", "-f", "raw", "-O", "raw", src, dst]],
    },
  ];
  const executable = options.executable;
  if (executable !== undefined) {
    tools.push({
      name: "imageio (executable)",
      runtime: "embedded (dist/imageio)",
      command: (src, dst) => [executable, ["copy", "--quiet", src, dst]],
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
    process.stdout.write(
      `\nCopy of an empty 1 TiB sparse image, median of ${options.rounds} (cold: caches dropped first):\n\n${markdownTable(
        ["tool", "cold ms", "÷ qemu-img", "warm ms", "÷ qemu-img"],
        tools.map((tool) => [
          tool.name,
          ...modes.flatMap((mode) => [
            (wallOf(tool.name, mode) * 1000).toFixed(0),
            `${(wallOf(tool.name, mode) / wallOf(REFERENCE, mode)).toFixed(2)}×`,
          ]),
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

/** The executable to measure: the one named, else dist/imageio when it was built. */
export function findExecutable(named: string | undefined): string | undefined {
  if (named !== undefined) return named;
  return existsSync(DEFAULT_EXECUTABLE) ? DEFAULT_EXECUTABLE : undefined;
}

export const suite: Suite = {
  description: "start-up: imageio copy of an empty 1 TiB image (node and dist/imageio) vs qemu-img convert",
  usage: "npm run bench -- startup [--rounds 5] [--dir /var/tmp] [--executable dist/imageio]",
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        rounds: { type: "string", default: "5" },
        dir: { type: "string", default: "/var/tmp" },
        executable: { type: "string" },
      },
      strict: true,
    });
    const rounds = Number(values.rounds);
    if (!Number.isSafeInteger(rounds) || rounds < 1) throw new Error("--rounds must be a positive integer");
    const executable = findExecutable(values.executable);
    if (executable === undefined) {
      process.stdout.write(`${DEFAULT_EXECUTABLE} is not built (npm run package): measuring node bin/imageio only\n`);
    }
    return measureStartup({ rounds, dir: values.dir, executable });
  },
};
