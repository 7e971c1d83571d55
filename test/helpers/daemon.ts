/**
 * Starting the real daemon for tests — as a process (`node bin/imageio daemon`) on port 0
 * and temp sockets, or in this process with a fake clock — and talking to it with node's
 * http/https clients and raw sockets.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { promisify } from "node:util";
import { type Config, DAEMON_DEFAULTS, loadConfig } from "../../src/config.js";
import type { BackendOpener } from "../../src/http/connection.js";
import { portOf, type RunningServices, startServices } from "../../src/http/services.js";
import type { FileBackendOptions } from "../../src/io/file.js";
import { createLogger, memorySink } from "../../src/log.js";
import type { Clock } from "../../src/tickets/clock.js";
import { type TestCerts, testCerts } from "./certs.js";
import { makeTempDir, type TempDir } from "./tmp.js";

const root = new URL("../..", import.meta.url).pathname;
const execFileAsync = promisify(execFile);

export type ConfigOverrides = Record<string, Record<string, string | number | boolean>>;

export interface Endpoints {
  remotePort: number;
  localSocket: string | undefined;
  controlSocket: string;
  certs: TestCerts;
  tmp: TempDir;
}

export interface DaemonProcess extends Endpoints {
  child: ChildProcess;
  /** Everything the daemon logged so far. */
  logs(): string;
  /**
   * Everything logged once `pattern` appears (the log pipe may deliver a line after the
   * response it was written before). @throws after `timeoutMs` without it.
   */
  waitForLog(pattern: RegExp | string, timeoutMs?: number): Promise<string>;
  /** Sends a signal and waits for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface InProcessDaemon extends Endpoints {
  services: RunningServices;
  logs(): string;
  stop(): Promise<void>;
}

/** Builds `dir/conf.d/99-test.conf` for a daemon on port 0 and temp sockets. */
export async function writeTestConfig(tmp: TempDir, overrides: ConfigOverrides = {}): Promise<string> {
  const certs = await testCerts();
  const sections: ConfigOverrides = {
    daemon: { run_dir: tmp.path, drop_privileges: false, systemd_enable: false },
    tls: { key_file: certs.keyFile, cert_file: certs.certFile, ca_file: certs.caFile },
    remote: { host: "127.0.0.1", port: 0 },
    local: { socket: tmp.file("local.sock") },
    control: { socket: tmp.file("control.sock") },
    logging: { level: "DEBUG" },
  };
  for (const [section, values] of Object.entries(overrides)) sections[section] = { ...sections[section], ...values };
  const text = Object.entries(sections)
    .map(
      ([name, values]) =>
        `[${name}]\n${Object.entries(values)
          .map(([k, v]) => `${k} = ${v}`)
          .join("\n")}\n`,
    )
    .join("\n");
  await mkdir(tmp.file("conf.d"), { recursive: true });
  await writeFile(tmp.file("conf.d/99-test.conf"), text);
  return tmp.path;
}

async function ensureBuilt(): Promise<void> {
  if (!existsSync(`${root}/dist/cli.js`))
    await execFileAsync("npx", ["tsc", "-p", "tsconfig.build.json"], { cwd: root });
}

/** Starts `imageio daemon` (or `imageio proxy`) as a child process and waits until it is READY. */
export async function startDaemon(
  options: {
    config?: ConfigOverrides;
    args?: string[];
    command?: "daemon" | "proxy";
    /** Runs the daemon under this command (e.g. `prlimit --nofile=64:64 --`). */
    launcher?: string[];
    /** Extra environment (e.g. NODE_OPTIONS). */
    env?: NodeJS.ProcessEnv;
  } = {},
): Promise<DaemonProcess> {
  await ensureBuilt();
  const command = options.command ?? "daemon";
  const tmp = await makeTempDir(`imageio-${command}-`);
  // The proxy's control service defaults to TCP; tests use a temp unix socket for both.
  const overrides: ConfigOverrides = { ...options.config };
  if (command === "proxy") overrides.control = { transport: "unix", ...overrides.control };
  const confDir = await writeTestConfig(tmp, overrides);
  const certs = await testCerts();
  const [file, ...launcherArgs] = [...(options.launcher ?? []), process.execPath];
  const child = spawn(
    file as string,
    [...launcherArgs, `${root}/bin/imageio`, command, "--config", confDir, ...(options.args ?? [])],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...options.env },
    },
  );
  let output = "";
  child.stdout?.on("data", (data: Buffer) => {
    output += data.toString();
  });
  child.stderr?.on("data", (data: Buffer) => {
    output += data.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start:\n${output}`)), 15_000);
    const check = () => {
      const line = /READY .*/.exec(output)?.[0];
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    };
    child.stderr?.on("data", check);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with ${code}:\n${output}`));
    });
  });
  const remotePort = Number(/remote=\S+:(\d+)/.exec(ready)?.[1]);
  return {
    child,
    tmp,
    certs,
    remotePort,
    localSocket: /local=(\S+)/.exec(ready)?.[1],
    controlSocket: tmp.file("control.sock"),
    logs: () => output,
    waitForLog: async (pattern, timeoutMs = 5000) => {
      const deadline = Date.now() + timeoutMs;
      const found = () => (typeof pattern === "string" ? output.includes(pattern) : pattern.test(output));
      while (!found()) {
        if (Date.now() > deadline) throw new Error(`no log line matching ${pattern} in:\n${output.slice(-3000)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return output;
    },
    stop: async (signal = "SIGTERM") => {
      if (child.exitCode === null) child.kill(signal);
      const code = await exited;
      await tmp.remove();
      return code;
    },
  };
}

/** Starts the services in this process (fake clock, injected backends), on port 0 and temp sockets. */
export async function startInProcess(
  options: {
    config?: ConfigOverrides;
    clock?: Clock;
    fileOptions?: Pick<FileBackendOptions, "probeDirect">;
    /** Handshake and request-head deadline (default 60 s). */
    deadlineMs?: number;
    /** Replaces how tickets' backends are opened (spies, failures). */
    openBackend?: BackendOpener;
  } = {},
): Promise<InProcessDaemon> {
  const tmp = await makeTempDir("imageio-daemon-");
  const confDir = await writeTestConfig(tmp, options.config);
  const certs = await testCerts();
  const config: Readonly<Config> = loadConfig(confDir, { defaults: DAEMON_DEFAULTS });
  const sink = memorySink();
  const services = await startServices(config, {
    log: createLogger("DEBUG", sink),
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.fileOptions ? { fileOptions: options.fileOptions } : {}),
    ...(options.deadlineMs === undefined ? {} : { deadlineMs: options.deadlineMs }),
    ...(options.openBackend ? { openBackend: options.openBackend } : {}),
  });
  return {
    services,
    tmp,
    certs,
    remotePort: portOf(services.remote),
    localSocket: services.local?.address as string | undefined,
    controlSocket: tmp.file("control.sock"),
    logs: () => sink.lines.join(""),
    stop: async () => {
      await services.close(1000);
      await tmp.remove();
    },
  };
}

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** Header names and values as sent, in order. */
  rawHeaders: string[];
  body: Buffer;
  text: string;
}

export interface RequestOptions {
  method?: string;
  path: string;
  headers?: Record<string, string | number>;
  body?: Buffer | string;
  service?: "remote" | "local" | "control";
  agent?: http.Agent | false;
}

/** One request with node's http/https client; resolves with the whole response. */
export function request(daemon: Endpoints, options: RequestOptions): Promise<Response> {
  const service = options.service ?? "remote";
  const common = {
    method: options.method ?? "GET",
    path: options.path,
    headers: options.headers ?? {},
    agent: options.agent ?? false,
  };
  return new Promise((resolve, reject) => {
    const onResponse = (res: http.IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body,
          text: body.toString(),
        });
      });
      res.on("error", reject);
    };
    const req =
      service === "remote"
        ? https.request(
            {
              ...common,
              host: "127.0.0.1",
              port: daemon.remotePort,
              ca: readFileSync(daemon.certs.caFile),
              servername: "localhost",
            },
            onResponse,
          )
        : http.request(
            { ...common, socketPath: service === "local" ? daemon.localSocket : daemon.controlSocket },
            onResponse,
          );
    req.on("error", reject);
    req.end(options.body);
  });
}

/** Adds a ticket through the control API; fails the test on anything but 200. */
export async function addTicket(daemon: Endpoints, ticket: Record<string, unknown>): Promise<void> {
  const response = await request(daemon, {
    service: "control",
    method: "PUT",
    path: `/tickets/${encodeURIComponent(String(ticket.uuid))}`,
    body: JSON.stringify(ticket),
  });
  if (response.status !== 200) throw new Error(`adding ticket failed: ${response.status} ${response.text}`);
}

/** An image of `size` random bytes in the daemon's temp dir, with a read-write ticket. */
export async function imageWithTicket(
  daemon: Endpoints,
  size: number,
): Promise<{ id: string; path: string; data: Buffer }> {
  const id = randomUUID();
  const path = daemon.tmp.file(`image-${id}.raw`);
  const data = randomBytes(size);
  await writeFile(path, data);
  await addTicket(daemon, { uuid: id, size, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
  return { id, path, data };
}

export async function ticketStatus(daemon: Endpoints, id: string): Promise<Record<string, unknown>> {
  const response = await request(daemon, { service: "control", path: `/tickets/${encodeURIComponent(id)}` });
  if (response.status !== 200) throw new Error(`ticket status failed: ${response.status} ${response.text}`);
  return JSON.parse(response.text) as Record<string, unknown>;
}

export interface RawResult {
  /** Everything the server sent. */
  text: string;
  /** True when the server closed the connection (before our timeout). */
  closed: boolean;
}

/**
 * Sends raw bytes (malformed requests) over TLS to the remote service, or over a unix socket,
 * and collects what comes back until the server closes or `waitMs` passes.
 */
export function rawRequest(
  daemon: Endpoints,
  data: string | Buffer,
  options: {
    service?: "remote" | "local" | "control";
    waitMs?: number;
    /** Stops waiting as soon as what arrived satisfies this (e.g. completeResponse). */
    until?: (text: string) => boolean;
  } = {},
): Promise<RawResult> {
  const service = options.service ?? "remote";
  return new Promise((resolve, reject) => {
    const socket: net.Socket =
      service === "remote"
        ? tls.connect({
            host: "127.0.0.1",
            port: daemon.remotePort,
            ca: readFileSync(daemon.certs.caFile),
            servername: "localhost",
          })
        : net.connect({ path: (service === "local" ? daemon.localSocket : daemon.controlSocket) as string });
    let text = "";
    let closed = false;
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ text, closed });
    }, options.waitMs ?? 1500);
    socket.on(service === "remote" ? "secureConnect" : "connect", () => socket.write(data));
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (options.until?.(text)) {
        clearTimeout(timer);
        socket.destroy();
        resolve({ text, closed });
      }
    });
    socket.on("end", () => {
      closed = true;
    });
    socket.on("close", () => {
      closed = true;
      clearTimeout(timer);
      resolve({ text, closed });
    });
    socket.on("error", (error) => {
      if ((error as NodeJS.ErrnoException).code === "ECONNRESET") return;
      reject(error);
    });
  });
}

/** True when `text` holds one whole HTTP response: its head and content-length bytes of body. */
export function completeResponse(text: string): boolean {
  const end = text.indexOf("\r\n\r\n");
  if (end === -1) return false;
  const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1];
  return length !== undefined && text.length - (end + 4) >= Number(length);
}

/** Runs curl; resolves with its exit code, stdout and stderr. */
export async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync("curl", ["--silent", "--show-error", ...args], {
      encoding: "latin1",
      maxBuffer: 1024 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}
