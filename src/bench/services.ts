/**
 * What the daemon and proxy benchmarks share: options, a test image, a certificate, starting
 * `imageio daemon` or `imageio proxy` on a temp configuration, adding tickets, and reading
 * a process' CPU time and memory from /proc.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import http from "node:http";
import { join, resolve as resolvePath } from "node:path";
import { createSelfSignedCertificate } from "../commands/dev.js";
import { commandExists } from "./harness.js";

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export interface BenchOptions {
  sizeGiB: number;
  rounds: number;
  dir: string;
  /**
   * Another checkout of imageio (built, with bin/imageio) whose services run next to this
   * one's in the same interleaved rounds: a before/after comparison under the same load.
   */
  baseline?: string;
  /**
   * Run this checkout's services from a single executable (`dist/imageio` from `npm run
   * package`, on the Node it embeds) instead of `node bin/imageio`.
   */
  executable?: string;
  /** Only the transfer table: no memory, stall and churn measurements after it. */
  dataOnly: boolean;
}

export function parseBenchOptions(args: string[]): BenchOptions {
  const options: BenchOptions = { sizeGiB: 2, rounds: 3, dir: "/var/tmp", dataOnly: false };
  for (let i = 0; i < args.length; i++) {
    const value = args[i + 1];
    if (args[i] === "--size-gib" && value) options.sizeGiB = Number(args[++i]);
    else if (args[i] === "--rounds" && value) options.rounds = Number(args[++i]);
    else if (args[i] === "--dir" && value) options.dir = args[++i] as string;
    else if (args[i] === "--data-only") options.dataOnly = true;
    else if (args[i] === "--executable" && value) options.executable = resolvePath(args[++i] as string);
    else if (args[i] === "--baseline" && value) options.baseline = resolvePath(args[++i] as string);
    else throw new Error(`unknown option '${args[i]}'`);
  }
  return options;
}

export interface BenchImages {
  dir: string;
  size: number;
  /** A fully allocated image to read. */
  image: string;
  /** A fully allocated image of the same size to write over. */
  target: string;
}

/**
 * Checks the tools a suite needs and writes its two images in a new directory under
 * `options.dir` (same disk as the baseline's files). The caller removes `dir`.
 * @throws when a tool is missing.
 */
export async function prepareImages(suite: string, options: BenchOptions, tools: string[]): Promise<BenchImages> {
  for (const tool of tools) {
    if (!commandExists(tool)) throw new Error(`${tool} is required for this benchmark`);
  }
  const dir = mkdtempSync(join(options.dir, `imageio-bench-${suite}-`));
  const size = options.sizeGiB * GiB;
  const images = { dir, size, image: join(dir, "image.raw"), target: join(dir, "target.raw") };
  process.stdout.write(`Writing two ${options.sizeGiB} GiB images in ${dir} ...\n`);
  await writeImage(images.image, size);
  await writeImage(images.target, size);
  return images;
}

/** utime + stime of a process, in seconds (clock ticks of 1/100 s on Linux). */
export function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export function rssOf(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) * 1024 : 0;
}

/** Writes `size` bytes of random data (fully allocated) and syncs them. */
export async function writeImage(path: string, size: number): Promise<void> {
  const handle = await open(path, "w");
  const chunk = randomBytes(8 * MiB);
  for (let offset = 0; offset < size; offset += chunk.length) {
    await handle.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
  }
  await handle.sync();
  await handle.close();
}

/** Drops the page cache (root only) so every run reads from the disk, as on a real host. */
export function dropCaches(): void {
  execFileSync("sync");
  try {
    writeFileSync("/proc/sys/vm/drop_caches", "1");
  } catch {
    // Not root: runs may read from the page cache.
  }
}

/** A self-signed certificate for localhost, also used as the CA that verifies it. */
export function makeCertificate(dir: string): { key: string; cert: string } {
  const key = join(dir, "key.pem");
  const cert = join(dir, "cert.pem");
  createSelfSignedCertificate(key, cert, 1);
  return { key, cert };
}

export interface RunningService {
  pid: number;
  port: number;
  local: string;
  control: string;
  /** The end of what the service logged. */
  logs(): string;
  stop(): void;
}

/** Which imageio runs a service: this checkout's, another checkout's, or a single executable. */
export type ServiceOrigin = { checkout: string } | { executable: string } | undefined;

/** The origin of this checkout's services under `options`, and of the baseline's. */
export function originsOf(options: BenchOptions): { current: ServiceOrigin; baseline: ServiceOrigin } {
  return {
    current: options.executable === undefined ? undefined : { executable: options.executable },
    baseline: options.baseline === undefined ? undefined : { checkout: options.baseline },
  };
}

/**
 * Starts `imageio daemon` or `imageio proxy` on 127.0.0.1:0 with sockets in `dir`, from this
 * checkout unless `options.origin` names another checkout or an executable.
 * @param options.localSocket false: without its unix socket (clients on this host then use HTTPS).
 * @param options.name names its configuration and sockets, for two services of one kind in `dir`.
 * @param options.extraConfig more INI lines (sections and keys) appended to the configuration.
 * @param options.daemonSettings more `key = value` lines of its [daemon] section (e.g. workers).
 */
export async function startService(
  kind: "daemon" | "proxy",
  dir: string,
  certificate: { key: string; cert: string },
  options: {
    localSocket?: boolean;
    name?: string;
    extraConfig?: string[];
    daemonSettings?: string[];
    origin?: ServiceOrigin;
  } = {},
): Promise<RunningService> {
  const name = options.name ?? kind;
  const config = [
    "[daemon]",
    `run_dir = ${dir}`,
    "drop_privileges = false",
    "systemd_enable = false",
    ...(options.daemonSettings ?? []),
    "[tls]",
    `key_file = ${certificate.key}`,
    `cert_file = ${certificate.cert}`,
    "[backend_http]",
    `ca_file = ${certificate.cert}`,
    "[remote]",
    "host = 127.0.0.1",
    "port = 0",
    "[local]",
    `enable = ${options.localSocket ?? true}`,
    `socket = ${join(dir, `${name}-local.sock`)}`,
    "[control]",
    "transport = unix",
    `socket = ${join(dir, `${name}-control.sock`)}`,
    "[logging]",
    "level = INFO",
    ...(options.extraConfig ?? []),
    "",
  ].join("\n");
  writeFileSync(join(dir, `${name}.conf`), config);
  const args = [kind, "--config", join(dir, `${name}.conf`)];
  const origin = options.origin;
  const [command, argv] =
    origin !== undefined && "executable" in origin
      ? [origin.executable, args]
      : [
          process.execPath,
          [
            origin === undefined
              ? new URL("../../bin/imageio", import.meta.url).pathname
              : join(origin.checkout, "bin", "imageio"),
            ...args,
          ],
        ];
  const child = spawn(command, argv, {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let output = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stderr.on("data", (data: Buffer) => {
      output = (output + data.toString()).slice(-8000);
      const match = /READY .*remote=\S+:(\d+)/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`${kind} exited with ${code}: ${output}`)));
  });
  return {
    pid: child.pid as number,
    port,
    local: join(dir, `${name}-local.sock`),
    control: join(dir, `${name}-control.sock`),
    logs: () => output,
    stop: () => child.kill("SIGTERM"),
  };
}

/** Adds a ticket through a control socket. @throws when the service refuses it. */
export function addTicket(controlSocket: string, ticket: Record<string, unknown>): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: controlSocket, method: "PUT", path: `/tickets/${ticket.uuid}` }, (res) => {
      res.resume();
      res.on("end", () =>
        res.statusCode === 200 ? resolve() : reject(new Error(`adding a ticket failed: ${res.statusCode}`)),
      );
    });
    req.on("error", reject);
    req.end(JSON.stringify(ticket));
  });
}
