/**
 * `imageio daemon`: loads the configuration, starts the images, local and control services,
 * tells systemd it is ready, drops privileges, and stops cleanly on SIGTERM/SIGINT.
 * The proxy is this command with other defaults (commands/profiles.ts).
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { type Config, configToJson, loadConfig } from "../config.js";
import { ConfigError, ImageioError } from "../errors.js";
import { acceptTicket } from "../http/handlers/tickets.js";
import { describeAddress } from "../http/server.js";
import { type RunningServices, startServices } from "../http/services.js";
import { sendUnixDatagram } from "../io/native.js";
import { createLogger, fileSink, type Logger, type LogLevel, stderrSink } from "../log.js";
import { parseJsonLikePython } from "../pyformat.js";
import type { TicketFields } from "../tickets/ticket.js";
import { VERSION } from "../version.js";
import { type DevSetup, prepareDevEnvironment, printDevInstructions } from "./dev.js";
import { DAEMON_PROFILE, type DaemonProfile } from "./profiles.js";

export interface DaemonOptions {
  config: string;
  showConfig?: boolean;
  ticket?: string;
  dev?: boolean;
}

/** How long running requests may take to finish after SIGTERM. */
const SHUTDOWN_GRACE_MS = 10_000;

/** Runs the daemon until a signal stops it; resolves with the exit code. */
export async function runDaemon(options: DaemonOptions, profile: DaemonProfile = DAEMON_PROFILE): Promise<number> {
  let dev: DevSetup | undefined;
  let config: Readonly<Config>;
  try {
    if (options.dev) {
      dev = prepareDevEnvironment(process.cwd());
      config = loadConfig(dev.configFile, { defaults: profile.defaults });
    } else {
      config = loadConfig(options.config, { defaults: profile.defaults, systemDirs: [profile.systemDir] });
    }
  } catch (error) {
    return startupFailure(error);
  }
  if (options.showConfig) {
    process.stdout.write(configToJson(config));
    return 0;
  }
  const log = createLogger(
    config.logging.level as LogLevel,
    config.logging.file === "" ? stderrSink : fileSink(config.logging.file),
    profile.name,
  );

  let tickets: TicketFields[] = [];
  try {
    const ticketFile = options.ticket ?? dev?.ticketFile;
    if (ticketFile !== undefined) tickets = [readTicketFile(ticketFile, config)];
    if (!existsSync(config.daemon.run_dir)) mkdirSync(config.daemon.run_dir, { recursive: true, mode: 0o755 });
  } catch (error) {
    return startupFailure(error);
  }

  let services: RunningServices;
  try {
    services = await startServices(config, { log, tickets });
  } catch (error) {
    log.error("STARTUP failed", { reason: (error as Error).message });
    return startupFailure(error);
  }
  log.info("READY", {
    version: VERSION,
    remote: services.remote ? describeAddress(services.remote.address) : undefined,
    local: services.local ? describeAddress(services.local.address) : undefined,
    control: services.control ? describeAddress(services.control.address) : undefined,
  });
  try {
    dropPrivileges(config, log);
  } catch (error) {
    await services.close(0);
    return startupFailure(error);
  }
  notifySystemd(config, log);
  if (dev && services.remote) printDevInstructions(dev, services);

  return new Promise((resolve) => {
    const stop = (signal: string) => {
      log.info("STOP", { signal });
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onInt);
      services.close(SHUTDOWN_GRACE_MS).then(
        () => resolve(0),
        (error: unknown) => {
          log.error("STOP failed", {}, error);
          resolve(1);
        },
      );
    };
    const onTerm = () => stop("SIGTERM");
    const onInt = () => stop("SIGINT");
    process.on("SIGTERM", onTerm);
    process.on("SIGINT", onInt);
  });
}

function startupFailure(error: unknown): number {
  const message = error instanceof ImageioError || error instanceof Error ? error.message : String(error);
  process.stderr.write(`imageio: ${message}\n`);
  return 1;
}

function readTicketFile(path: string, config: Readonly<Config>): TicketFields {
  let body: unknown;
  try {
    body = parseJsonLikePython(readFileSync(path, "utf8"));
  } catch (error) {
    throw new ConfigError(`Cannot load ticket file ${path}: ${(error as Error).message}`, { cause: error });
  }
  try {
    return acceptTicket(body, config);
  } catch (error) {
    throw new ConfigError(`Cannot load ticket file ${path}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Started as root with drop_privileges, hand the run dir, control socket and log file to the
 * service user and become that user (spec §2). Sockets are already bound.
 */
function dropPrivileges(config: Readonly<Config>, log: Logger): void {
  if (!config.daemon.drop_privileges || process.getuid?.() !== 0) return;
  const { user_name: user, group_name: group } = config.daemon;
  const uid = Number(execFileSync("id", ["-u", user], { encoding: "utf8" }).trim());
  const gid = Number(execFileSync("getent", ["group", group], { encoding: "utf8" }).split(":")[2]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid))
    throw new ConfigError(`Cannot find user ${user} or group ${group}`);
  const owned = [config.daemon.run_dir];
  if (config.control.enable && config.control.transport === "unix") owned.push(config.control.socket);
  // A path local socket (not an abstract name, which has no owner) is for the service user's clients.
  if (config.local.enable && config.local.socket !== "" && !config.local.socket.startsWith("\0"))
    owned.push(config.local.socket);
  if (config.logging.file !== "") owned.push(config.logging.file);
  for (const path of owned) if (existsSync(path)) chownSync(path, uid, gid);
  // The user's own supplementary groups (e.g. kvm or qemu for image access), as login does.
  // (process.initgroups is POSIX-only and missing from @types/node 20.)
  const posix = process as NodeJS.Process & { initgroups?: (user: string, extraGroup: number) => void };
  posix.initgroups?.(user, gid);
  process.setgid?.(gid);
  process.setuid?.(uid);
  log.info("PRIVILEGES dropped", { user, group });
}

/** sd_notify READY=1 once every service listens, when systemd asked for it (Type=notify). */
function notifySystemd(config: Readonly<Config>, log: Logger): void {
  const socket = process.env.NOTIFY_SOCKET;
  if (!config.daemon.systemd_enable || socket === undefined || socket === "") return;
  try {
    sendUnixDatagram(socket, `READY=1\nSTATUS=imageio ${VERSION} serving\nMAINPID=${process.pid}\n`);
  } catch (error) {
    log.warning("NOTIFY failed", { reason: (error as Error).message });
  }
}
