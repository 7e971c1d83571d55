/**
 * Real NBD servers for tests, on temporary unix sockets, stopped by PID: qemu-nbd started the
 * way Vdsm starts it, and nbdkit with its plugins and filters. Plus the oracles (qemu-img,
 * nbdinfo) and a check that says which tools are missing, so tests skip with a reason.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { closeSync, constants, existsSync, openSync, unlinkSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** The tools a test needs that are not installed, for `describe.skipIf` with a printed reason. */
export function missingTools(...tools: string[]): string[] {
  return tools.filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
}

/** Skip reason for a suite, printed once; undefined when every tool is there. */
export function skipUnless(...tools: string[]): string | undefined {
  const missing = missingTools(...tools);
  if (missing.length === 0) return undefined;
  const reason = `skipped: ${missing.join(", ")} not installed`;
  console.warn(reason);
  return reason;
}

export interface NbdServer {
  socket: string;
  /** `nbd:unix:SOCKET[:exportname=NAME]`. */
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Polls `check` every 10 ms until it is true. @throws after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopPid(pid: number, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, signal);
  await waitFor(`process ${pid} to exit`, () => !alive(pid), 10_000).catch(() => {
    if (alive(pid)) process.kill(pid, "SIGKILL");
  });
}

/** Whether O_DIRECT works in `dir` (tmpfs refuses it): qemu-nbd falls back to writeback there. */
export function canUseDirectIo(dir: string): boolean {
  const probe = join(dir, ".direct-probe");
  try {
    closeSync(openSync(probe, constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT, 0o600));
    return true;
  } catch {
    return false;
  } finally {
    if (existsSync(probe)) unlinkSync(probe);
  }
}

export interface QemuNbdOptions {
  format?: "qcow2" | "raw";
  exportName?: string;
  readOnly?: boolean;
  shared?: number;
  /** `-A`: qemu:allocation-depth (Vdsm passes it for qcow2 only). */
  allocationDepth?: boolean;
  /** `-B NAME`: export persistent dirty bitmaps (with readOnly, as Vdsm does for backups). */
  bitmap?: string | string[];
  /** `--discard=unmap` on writable exports (default true, as Vdsm). */
  discard?: boolean;
}

/**
 * Starts qemu-nbd the way Vdsm does (`--persistent --shared=8 --cache=none --aio=native`,
 * `--discard=unmap` when writable), with `--fork --pid-file` so it returns once serving.
 */
export async function startQemuNbd(dir: string, image: string, options: QemuNbdOptions = {}): Promise<NbdServer> {
  const name = `qemu-nbd-${Math.random().toString(36).slice(2, 8)}`;
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const direct = canUseDirectIo(dir);
  const args = [
    `--socket=${socket}`,
    "--persistent",
    `--shared=${options.shared ?? 8}`,
    `--export-name=${options.exportName ?? ""}`,
    `--cache=${direct ? "none" : "writeback"}`,
    `--aio=${direct ? "native" : "threads"}`,
    `--format=${options.format ?? "qcow2"}`,
    "--fork",
    `--pid-file=${pidFile}`,
  ];
  if (options.readOnly) args.push("--read-only");
  else if (options.discard ?? true) args.push("--discard=unmap");
  if (options.allocationDepth) args.push("--allocation-depth");
  for (const bitmap of [options.bitmap ?? []].flat()) args.push(`--bitmap=${bitmap}`);
  args.push(image);
  await execFileAsync("qemu-nbd", args);
  const pid = Number((await readFile(pidFile, "utf8")).trim());
  const suffix = options.exportName ? `:exportname=${options.exportName}` : "";
  return { socket, url: `nbd:unix:${socket}${suffix}`, pid, stop: () => stopPid(pid) };
}

export interface NbdkitServer extends NbdServer {
  child: ChildProcess;
  /** What nbdkit printed (the log filter writes to a file instead: see logFile). */
  output(): string;
}

/**
 * Starts `nbdkit -f --exit-with-parent -U SOCK [--filter=F …] PLUGIN ARGS…` and waits for its
 * pid file, which nbdkit writes once it listens.
 */
export async function startNbdkit(
  dir: string,
  plugin: string,
  args: string[] = [],
  options: { filters?: string[]; flags?: string[] } = {},
): Promise<NbdkitServer> {
  const name = `nbdkit-${Math.random().toString(36).slice(2, 8)}`;
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const argv = [
    "-f",
    "--exit-with-parent",
    "-U",
    socket,
    "-P",
    pidFile,
    ...(options.flags ?? []),
    ...(options.filters ?? []).map((filter) => `--filter=${filter}`),
    plugin,
    ...args,
  ];
  const child = spawn("nbdkit", argv, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (data: Buffer) => {
    output += data.toString();
  });
  child.stderr?.on("data", (data: Buffer) => {
    output += data.toString();
  });
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  await waitFor(`nbdkit ${plugin} to listen`, () => {
    if (exited) throw new Error(`nbdkit ${argv.join(" ")} exited: ${output}`);
    return existsSync(pidFile) && existsSync(socket);
  });
  const pid = child.pid as number;
  return {
    socket,
    url: `nbd:unix:${socket}`,
    pid,
    child,
    output: () => output,
    stop: async () => {
      if (exited) return;
      const done = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      await done;
    },
  };
}

export async function run(command: string, args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(command, args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** `qemu-img map --output=json -U` of an image file. */
export async function qemuImgMap(
  image: string,
  format = "qcow2",
): Promise<{ start: number; length: number; zero: boolean; data: boolean; depth: number }[]> {
  return JSON.parse(await run("qemu-img", ["map", "--output=json", "-U", "-f", format, image]));
}

/** `nbdinfo --map=CONTEXT --json URI` of a unix-socket export. */
export async function nbdinfoMap(
  socket: string,
  context = "base:allocation",
  exportName = "",
): Promise<{ offset: number; length: number; type: number }[]> {
  const uri = `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`;
  return JSON.parse(await run("nbdinfo", ["--json", `--map=${context}`, uri]));
}
