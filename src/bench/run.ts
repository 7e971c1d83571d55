/**
 * Benchmark runner: `npm run bench -- SUITE [options]` (or `node dist/bench/run.js SUITE`).
 * Each suite is a module in this directory exporting `suite`; add new ones to the table.
 */

/** A benchmark suite: a description for --help and an entry point taking the remaining arguments. */
export interface Suite {
  description: string;
  usage: string;
  run(args: string[]): Promise<void>;
}

const suites: Record<string, () => Promise<Suite>> = {
  client: async () => (await import("./client.js")).suite,
  copy: async () => (await import("./copy.js")).suite,
  daemon: async () => (await import("./daemon.js")).suite,
  nbd: async () => (await import("./nbd.js")).suite,
  proxy: async () => (await import("./proxy.js")).suite,
  stalls: async () => (await import("./stalls.js")).suite,
  workers: async () => (await import("./workers.js")).suite,
};

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === "--help" || name === "-h") {
    const lines = ["Usage: npm run bench -- SUITE [options]", "", "Suites:"];
    for (const [suiteName, load] of Object.entries(suites)) {
      const suite = await load();
      lines.push(`  ${suiteName.padEnd(8)} ${suite.description}`, `           ${suite.usage}`);
    }
    process.stdout.write(`${lines.join("\n")}\n`);
    return name === undefined ? 2 : 0;
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
