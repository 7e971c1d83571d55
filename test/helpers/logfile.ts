/** A daemon that logs to a file, and waiting for what it writes there, against a deadline. */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";

/** Polls `path` until `pattern` appears in it; returns the match. @throws after `timeoutMs`. */
export async function waitForFile(path: string, pattern: RegExp, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = "";
    try {
      text = readFileSync(path, "utf8");
    } catch {
      // Not created yet.
    }
    const match = pattern.exec(text)?.[0];
    if (match !== undefined) return match;
    if (Date.now() > deadline) throw new Error(`no line matching ${pattern} in ${path}:\n${text.slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export interface DaemonWithLogFile {
  child: ChildProcess;
  /** The READY line, from the log file. */
  ready: string;
  /** What the daemon wrote to stderr so far (nothing, when all goes to the file). */
  stderr(): string;
  exited: Promise<number | null>;
}

/**
 * Starts `imageio daemon --config confDir` whose configuration logs to `logFile`, and waits
 * for READY there. The caller kills the child.
 */
export async function startLoggingToFile(
  confDir: string,
  logFile: string,
  /** Runs the daemon under this command (e.g. `setpriv --bounding-set -dac_override --`). */
  launcher: string[] = [],
): Promise<DaemonWithLogFile> {
  const root = new URL("../..", import.meta.url).pathname;
  const [file, ...args] = [...launcher, process.execPath, `${root}/bin/imageio`, "daemon", "--config", confDir];
  const child = spawn(file as string, args, {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (data: Buffer) => {
    stderr += data.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  try {
    const ready = await waitForFile(logFile, /READY .*/);
    return { child, ready, stderr: () => stderr, exited };
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`${(error as Error).message}\nstderr:\n${stderr}`);
  }
}
