/**
 * A private `qemu-nbd` for one image: how `imageio copy` and `imageio checksum` read and write
 * qcow2 and every other format qemu knows, through the nbd backend. The server listens on a
 * unix socket in a new directory only this user can enter (0700), so no other user can reach
 * the image through it; it runs in its own process group, so a Ctrl-C at the terminal does
 * not kill it under the copy's last chunks, and it is stopped by `stop()`, or when this
 * process exits, whatever the reason.
 *
 * Also `qemu-img create` for a new qcow2 destination.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { BackendOpenError, InvalidArgumentError, systemErrorCode } from "../errors.js";
import type { ImageFormat } from "./image-format.js";

const execFileAsync = promisify(execFile);

export interface QemuNbdOptions {
  /** The image file or block device. */
  path: string;
  /** Its format, as qemu names it: never probed by qemu-nbd, so a raw guest disk stays raw. */
  format: ImageFormat;
  readonly: boolean;
  /** Clients served at once: one per copy worker plus the main handle (default 8). */
  connections?: number;
  /** How long the server may take to start serving (default 10 s). */
  startTimeoutMs?: number;
  /** The qemu-nbd executable (default "qemu-nbd" from PATH). */
  command?: string;
}

export interface QemuNbdServer {
  /** The unix socket the export is served on. */
  readonly socketPath: string;
  /** The export as openBackend takes it: `nbd:unix:/path/to.sock`. */
  readonly url: string;
  /** The server's process id, for diagnostics. */
  readonly pid: number;
  /** Stops the server (SIGTERM: qemu closes the image cleanly) and removes its directory; idempotent. */
  stop(): Promise<void>;
}

/** How long a stopped server gets to close its image before it is killed. */
const STOP_TIMEOUT_MS = 10_000;
/** Between attempts to connect while the server starts. */
const POLL_INTERVAL_MS = 20;
/** Every NBD server starts its handshake with these 8 bytes (NBD protocol, "newstyle"). */
const NBD_MAGIC = Buffer.from("NBDMAGIC", "latin1");

/** Servers not stopped yet: killed synchronously if the process exits first. */
const running = new Set<ChildProcess>();

/** qemu-nbd handles SIGTERM by closing the image cleanly (qcow2 metadata written back). */
function killRunning(): void {
  for (const child of running) child.kill("SIGTERM");
}

/**
 * A signal that would end this process the default way (no handler of the command's own)
 * skips 'exit' handlers: stop the servers first, then let the signal do what it would have.
 * A command that handles the signal itself (copy's Ctrl-C) decides, and its exit stops them.
 */
function onTerminatingSignal(signal: NodeJS.Signals): void {
  if (process.listenerCount(signal) > 1) return;
  killRunning();
  untrackSignals();
  process.kill(process.pid, signal);
}

const TERMINATING_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

function trackSignals(): void {
  if (running.size > 0) return;
  process.on("exit", killRunning);
  for (const signal of TERMINATING_SIGNALS) process.on(signal, onTerminatingSignal);
}

function untrackSignals(): void {
  process.off("exit", killRunning);
  for (const signal of TERMINATING_SIGNALS) process.off(signal, onTerminatingSignal);
}

function forget(child: ChildProcess): void {
  if (!running.delete(child)) return;
  if (running.size === 0) untrackSignals();
}

/**
 * Starts qemu-nbd serving `options.path` and waits until it answers on its socket.
 * @throws InvalidArgumentError for a format qemu-nbd should not be given ("raw" is allowed);
 *   BackendOpenError when qemu-nbd is missing, fails (its message included) or does not serve
 *   within the start timeout.
 */
export async function startQemuNbd(options: QemuNbdOptions): Promise<QemuNbdServer> {
  const connections = options.connections ?? 8;
  if (!Number.isSafeInteger(connections) || connections < 1) {
    throw new InvalidArgumentError(`Invalid number of NBD connections: ${connections}`);
  }
  const dir = await mkdtemp(join(tmpdir(), "imageio-nbd-"));
  const socketPath = join(dir, "nbd.sock");
  const args = [
    `--socket=${socketPath}`,
    `--format=${options.format}`,
    `--shared=${connections}`,
    // Workers connect and disconnect at different times: the server must outlive a moment
    // with no client. We stop it ourselves.
    "--persistent",
    // Zero extents reported with holes (qemu:allocation-depth) and zeroing that deallocates.
    "--allocation-depth",
    "--discard=unmap",
    ...(options.readonly ? ["--read-only"] : []),
    options.path,
  ];
  let child: ChildProcess;
  try {
    child = spawn(options.command ?? "qemu-nbd", args, { stdio: ["ignore", "ignore", "pipe"], detached: true });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw new BackendOpenError(`Cannot start qemu-nbd for '${options.path}': ${(error as Error).message}`, {
      cause: error,
    });
  }
  trackSignals();
  running.add(child);
  let stderr = "";
  child.stderr?.on("data", (data: Buffer) => {
    if (stderr.length < 4096) stderr += data.toString();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code, signal) => {
      forget(child);
      resolve(code ?? (signal === null ? null : -1));
    });
  });
  // A missing executable is an 'error' without an 'exit'.
  const spawnFailure = new Promise<Error>((resolve) =>
    child.once("error", (error) => {
      forget(child);
      resolve(error);
    }),
  );

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.pid !== undefined && running.has(child)) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  const deadline = performance.now() + (options.startTimeoutMs ?? 10_000);
  try {
    for (;;) {
      const outcome = await Promise.race([
        serves(socketPath).then((ok) => (ok ? "ready" : "not yet")),
        exited.then(() => "exited" as const),
        spawnFailure,
      ]);
      if (outcome === "ready") break;
      if (outcome instanceof Error) {
        const missing = (outcome as NodeJS.ErrnoException).code === "ENOENT";
        throw new BackendOpenError(
          missing
            ? `Cannot open '${options.path}' as ${options.format}: qemu-nbd is not installed (it comes with qemu-utils or qemu-img)`
            : `Cannot start qemu-nbd for '${options.path}': ${outcome.message}`,
          { cause: outcome },
        );
      }
      if (outcome === "exited") {
        throw new BackendOpenError(
          `Cannot open '${options.path}' as ${options.format}: qemu-nbd failed: ${stderr.trim() || `exit status ${child.exitCode}`}`,
        );
      }
      if (performance.now() > deadline) {
        throw new BackendOpenError(
          `Cannot open '${options.path}' as ${options.format}: qemu-nbd did not serve within ${options.startTimeoutMs ?? 10_000} ms`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
    }
  } catch (error) {
    await stop();
    throw error;
  }
  // Unref'd so a forgotten server never keeps this process alive; stdio too.
  child.unref();
  child.stderr?.destroy();
  return { socketPath, url: `nbd:unix:${socketPath}`, pid: child.pid ?? -1, stop };
}

/** True once a connection to `socketPath` receives the NBD greeting; false while nobody listens. */
function serves(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ path: socketPath });
    let received = Buffer.alloc(0);
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= NBD_MAGIC.length) finish(received.subarray(0, NBD_MAGIC.length).equals(NBD_MAGIC));
    });
    socket.on("error", () => finish(false));
    socket.on("close", () => finish(false));
    socket.setTimeout(2000, () => finish(false));
  });
}

/**
 * Creates a new qcow2 image of `size` bytes at `path` with `qemu-img create`: compat 1.1
 * (qcow2 v3, which can store zero clusters), the default 64 KiB clusters. `path` must not
 * exist: qemu-img would truncate an existing file, so the file is first created exclusively.
 * @throws BackendOpenError when `path` exists, or with qemu-img's message (no permission, no
 *   qemu-img); nothing is left behind then.
 */
export async function createQcow2(path: string, size: number): Promise<void> {
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`Invalid image size: ${size}`);
  try {
    await (await open(path, "wx", 0o644)).close();
  } catch (error) {
    const reason = systemErrorCode(error) === "EEXIST" ? "it already exists" : (error as Error).message;
    throw new BackendOpenError(`Cannot create qcow2 image '${path}': ${reason}`, { cause: error });
  }
  try {
    // -o compat=1.1 explicitly: older qemu-img default to 0.10, which cannot store zero clusters.
    await execFileAsync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=1.1", path, String(size)]);
  } catch (error) {
    const failed = error as NodeJS.ErrnoException & { stderr?: string };
    const reason =
      failed.code === "ENOENT"
        ? "qemu-img is not installed (it comes with qemu-utils or qemu-img)"
        : (failed.stderr ?? "").trim() || failed.message;
    await rm(path, { force: true });
    throw new BackendOpenError(`Cannot create qcow2 image '${path}': ${reason}`, { cause: error });
  }
}
