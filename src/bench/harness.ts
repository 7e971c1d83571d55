/**
 * A small benchmark harness shared by the suites in src/bench: runs a command as a child
 * process and measures its wall time, CPU seconds and peak RSS; runs contenders in
 * interleaved rounds so drifts of the machine (other load, host caches) hit all of them
 * alike; prints Markdown tables. Suites run only when asked (`npm run bench -- SUITE`),
 * never as tests.
 */
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";

/** What one run of a command cost. */
export interface Measurement {
  /** Seconds from spawn to exit. */
  wall: number;
  /** User + system CPU seconds of the child and the children it waited for. */
  cpu: number;
  /** Peak resident set size in bytes (VmHWM, sampled every few milliseconds), 0 when not seen. */
  peakRss: number;
}

/** A child that exited with a status other than 0, with the end of what it printed. */
export class CommandFailedError extends Error {}

let clockTicks: number | undefined;

/** Clock ticks per second for /proc CPU times (CLK_TCK, 100 on Linux almost everywhere). */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/**
 * CPU seconds of this process' waited-for children (cutime + cstime of /proc/self/stat).
 * The difference around one child's run is that child's CPU time, as long as we run one
 * child at a time, which measure() callers do.
 */
function childrenCpuSeconds(): number {
  const stat = readFileSync("/proc/self/stat", "utf8");
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // cutime and cstime are fields 16 and 17 of stat(5); fields[0] here is field 3.
  return (Number(fields[13]) + Number(fields[14])) / ticksPerSecond();
}

async function peakRssOf(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined; // exited between samples
  }
}

/**
 * Runs `command args` to completion and measures it. Run one at a time: CPU time is read
 * from this process' counters of waited-for children.
 * @throws CommandFailedError when it exits with a status other than 0 or a signal.
 */
export async function measure(command: string, args: string[], options: { cwd?: string } = {}): Promise<Measurement> {
  const cpuBefore = childrenCpuSeconds();
  const started = performance.now();
  const child = spawn(command, args, { cwd: options.cwd, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (data: Buffer) => {
    stderr = (stderr + data.toString()).slice(-4000);
  });
  let peakRss = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling && child.pid !== undefined) {
      peakRss = Math.max(peakRss, (await peakRssOf(child.pid)) ?? 0);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  const status = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  const wall = (performance.now() - started) / 1000;
  sampling = false;
  await sampler;
  if (status.code !== 0) {
    const how = status.signal === null ? `status ${status.code}` : `signal ${status.signal}`;
    throw new CommandFailedError(`${command} ${args.join(" ")} exited with ${how}:\n${stderr.trim()}`);
  }
  return { wall, cpu: childrenCpuSeconds() - cpuBefore, peakRss };
}

/** True when `command` can be run (looked up in PATH). */
export function commandExists(command: string): boolean {
  try {
    execFileSync("sh", ["-c", 'command -v "$1"', "sh", command], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** One contender of a comparison: how to prepare and run one measurement. */
export interface Contender<T> {
  name: string;
  /** Runs before each measurement, unmeasured (remove the previous output, sync). */
  prepare?: () => Promise<void>;
  run: () => Promise<T>;
}

/**
 * Runs every contender once per round, in an order that rotates each round so none always
 * goes first (after a pause) or last. Returns each contender's results in round order.
 */
export async function interleave<T>(
  rounds: number,
  contenders: Contender<T>[],
  onResult?: (name: string, round: number, result: T) => void,
): Promise<Map<string, T[]>> {
  const results = new Map<string, T[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < contenders.length; i++) {
      const contender = contenders[(i + round) % contenders.length] as Contender<T>;
      await contender.prepare?.();
      const result = await contender.run();
      results.get(contender.name)?.push(result);
      onResult?.(contender.name, round, result);
    }
  }
  return results;
}

/** The median of a non-empty list. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** A Markdown table; numbers should arrive formatted. */
export function markdownTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(headers), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

/** Best effort: writes dirty pages out and drops clean caches (root only), so runs start alike. */
export function settle(): void {
  try {
    execFileSync("sync");
    execFileSync("sh", ["-c", "echo 3 > /proc/sys/vm/drop_caches"], { stdio: "ignore" });
  } catch {
    // Not root: the page cache stays, which O_DIRECT contenders do not use anyway.
  }
}
