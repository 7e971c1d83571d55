/**
 * `imageio daemon`: loads the configuration, checks what it names, starts the images, local
 * and control services, drops privileges, tells systemd it is ready, reopens its log file on
 * SIGHUP, and stops cleanly on SIGTERM/SIGINT.
 * The proxy is this command with other defaults (commands/profiles.ts).
 */
import { chownSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { type Config, configSourcesToText, configToJson, type LoadedConfig, loadConfigWithSources } from "../config.js";
import { ConfigError, ImageioError } from "../errors.js";
import { acceptTicket } from "../http/handlers/tickets.js";
import { describeAddress } from "../http/server.js";
import { type RunningServices, startServices } from "../http/services.js";
import { keepFreedHeapMemory, sendUnixDatagram } from "../io/native.js";
import { createLogger, FileSink, type Logger, type LogLevel, type LogSink, stderrSink } from "../log.js";
import { parseJsonLikePython } from "../pyformat.js";
import type { TicketFields } from "../tickets/ticket.js";
import { VERSION } from "../version.js";
import { type DevSetup, prepareDevEnvironment, printDevInstructions } from "./dev.js";
import { DAEMON_PROFILE, type DaemonProfile } from "./profiles.js";
import { backendCaProblem, checkTlsFiles, type ServiceIdentity, serviceIdentity } from "./startup-checks.js";

export interface DaemonOptions {
  config: string;
  /** `--show-config` (JSON) or `--show-config=sources` (each value with its origin). */
  showConfig?: boolean | string;
  ticket?: string;
  dev?: boolean;
}

/**
 * Keeps freed heap memory for the next reads (see keepFreedHeapMemory): a daemon without it
 * still works, only at a higher CPU cost per byte, so a refusal is a warning.
 */
function tuneHeap(log: Logger): void {
  try {
    const outcome = keepFreedHeapMemory();
    log.debug("HEAP tuning", { source: outcome === "applied" ? "imageio" : "MALLOC_* environment" });
  } catch (error) {
    log.warning("HEAP tuning refused", { reason: (error as Error).message });
  }
}

/** How long running requests may take to finish after SIGTERM. */
const SHUTDOWN_GRACE_MS = 10_000;

/**
 * Runs the daemon until a signal stops it; resolves with the exit code. Everything that can
 * fail at start (configuration, log file, ticket file, TLS files, service user, ports) fails
 * before READY, naming its setting.
 */
export async function runDaemon(options: DaemonOptions, profile: DaemonProfile = DAEMON_PROFILE): Promise<number> {
  let dev: DevSetup | undefined;
  let loaded: LoadedConfig;
  try {
    if (options.dev) {
      dev = prepareDevEnvironment(process.cwd());
      loaded = loadConfigWithSources(dev.configFile, { defaults: profile.defaults });
    } else {
      loaded = loadConfigWithSources(options.config, { defaults: profile.defaults, systemDirs: [profile.systemDir] });
    }
  } catch (error) {
    return startupFailure(error);
  }
  const { config } = loaded;
  if (options.showConfig !== undefined && options.showConfig !== false) return showConfig(loaded, options.showConfig);
  let sink: LogSink;
  let identity: ServiceIdentity | undefined;
  try {
    identity = serviceIdentity(config);
    sink = openLogSink(config, identity);
  } catch (error) {
    return startupFailure(error);
  }
  const log = createLogger(config.logging.level as LogLevel, sink, profile.name);
  ignoreStraySignals(log);
  for (const warning of loaded.warnings) log.warning("CONFIG", { reason: warning });
  // A failure goes to stderr (the journal, or the terminal) and, when there is one, the log file.
  const fail = async (error: unknown) => {
    if (sink instanceof FileSink) {
      log.error("STARTUP failed", { reason: error instanceof Error ? error.message : String(error) });
      await sink.close();
    }
    return startupFailure(error);
  };

  let tickets: TicketFields[] = [];
  let ownRunDir: boolean;
  try {
    const ticketFile = options.ticket ?? dev?.ticketFile;
    if (ticketFile !== undefined) tickets = [readTicketFile(ticketFile, config)];
    checkTlsFiles(config);
    ownRunDir = makeRunDir(config.daemon.run_dir) || isUnitRuntimeDirectory(config.daemon.run_dir);
  } catch (error) {
    return fail(error);
  }
  const caProblem = backendCaProblem(config);
  if (caProblem !== undefined) log.warning("CONFIG", { reason: caProblem });

  tuneHeap(log);

  let services: RunningServices;
  try {
    services = await startServices(config, { log, tickets });
  } catch (error) {
    return fail(error);
  }
  try {
    if (identity !== undefined) dropPrivileges(config, identity, ownRunDir, log);
  } catch (error) {
    await services.close(0);
    return fail(error);
  }
  log.info("READY", {
    version: VERSION,
    remote: services.remote ? describeAddress(services.remote.address) : undefined,
    local: services.local ? describeAddress(services.local.address) : undefined,
    control: services.control ? describeAddress(services.control.address) : undefined,
  });
  notifySystemd(config, log);
  if (dev && services.remote) printDevInstructions(dev, services);

  return new Promise((resolve) => {
    const stop = (signal: string) => {
      log.info("STOP", { signal });
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onInt);
      process.off("SIGHUP", onHup);
      services.close(SHUTDOWN_GRACE_MS).then(
        async () => {
          if (sink instanceof FileSink) await sink.close();
          resolve(0);
        },
        (error: unknown) => {
          log.error("STOP failed", {}, error);
          resolve(1);
        },
      );
    };
    const onTerm = () => stop("SIGTERM");
    const onInt = () => stop("SIGINT");
    // logrotate renamed the file (packaging/imageio.logrotate): write a new one at the path.
    const onHup = () => {
      if (!(sink instanceof FileSink)) return;
      const file = sink.path;
      sink.reopen().then(
        () => log.info("LOG reopened", { file }),
        (error: unknown) => log.error("LOG reopen failed", { file, reason: (error as Error).message }),
      );
    };
    process.on("SIGTERM", onTerm);
    process.on("SIGINT", onInt);
    process.on("SIGHUP", onHup);
  });
}

/**
 * Signals whose default action ends the process although nothing asked the daemon to stop:
 * a stray `kill -USR2` (or a tool that sends one to every process) must not take every
 * transfer down. TERM, INT and HUP have their own handlers; USR1 is the inspector's
 * (no-inspector.ts); QUIT, ABRT and SEGV-like signals keep their core dumps; SIGPROF belongs
 * to V8's profiler.
 */
const STRAY_SIGNALS: readonly NodeJS.Signals[] = [
  "SIGUSR2",
  "SIGALRM",
  "SIGVTALRM",
  "SIGIO",
  "SIGPWR",
  "SIGSTKFLT",
  "SIGXCPU",
  "SIGXFSZ",
];

function ignoreStraySignals(log: Logger): void {
  for (const signal of STRAY_SIGNALS) process.on(signal, () => log.info("SIGNAL ignored", { signal }));
}

/** `--show-config[=json|sources]`: prints the configuration; the exit code. */
function showConfig({ config, sources, warnings }: LoadedConfig, format: true | string): number {
  for (const warning of warnings) process.stderr.write(`imageio: warning: ${warning}\n`);
  if (format === "sources") process.stdout.write(configSourcesToText(config, sources));
  else if (format === true || format === "json") process.stdout.write(configToJson(config));
  else return startupFailure(`--show-config: unknown format '${format}': expecting json or sources`);
  return 0;
}

/**
 * stderr, or `[logging] file` held open. A daemon that will drop privileges opens (and
 * creates) it as the service user, who reopens it on SIGHUP: root in the hardened unit may
 * not write into the service user's log directory (no CAP_DAC_OVERRIDE), and a file only
 * root could write would fail at the first logrotate instead of now.
 * @throws ConfigError naming the setting.
 */
function openLogSink(config: Readonly<Config>, identity: ServiceIdentity | undefined): LogSink {
  if (config.logging.file === "") return stderrSink;
  try {
    return identity === undefined
      ? new FileSink(config.logging.file)
      : asServiceUser(identity, () => new FileSink(config.logging.file));
  } catch (error) {
    throw new ConfigError(`[logging] file: cannot open ${config.logging.file}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

function startupFailure(error: unknown): number {
  const message = error instanceof ImageioError || error instanceof Error ? error.message : String(error);
  process.stderr.write(`imageio: ${message}\n`);
  return 1;
}

/**
 * True when systemd made `path` for this service (`RuntimeDirectory=`, announced in
 * $RUNTIME_DIRECTORY): it is the daemon's as much as one it created.
 */
function isUnitRuntimeDirectory(path: string): boolean {
  const dirs = process.env.RUNTIME_DIRECTORY?.split(":") ?? [];
  return dirs.some((dir) => dir !== "" && resolvePath(dir) === resolvePath(path));
}

/**
 * Runs `work` with the service user's effective ids (root keeps its real and saved ids, so it
 * gets them back), for files that user must own and reopen later.
 */
function asServiceUser<T>(identity: ServiceIdentity, work: () => T): T {
  const posix = process as NodeJS.Process & Required<Pick<NodeJS.Process, "setegid" | "seteuid">>;
  posix.setegid(identity.gid);
  posix.seteuid(identity.uid);
  try {
    return work();
  } finally {
    posix.seteuid(0);
    posix.setegid(0);
  }
}

/**
 * Creates `[daemon] run_dir` when missing; true when it did (only then is it the daemon's
 * to give to the service user).
 * @throws ConfigError naming `[daemon] run_dir` when it cannot be created.
 */
function makeRunDir(path: string): boolean {
  if (existsSync(path)) return false;
  try {
    mkdirSync(path, { recursive: true, mode: 0o755 });
    return true;
  } catch (error) {
    throw new ConfigError(`[daemon] run_dir: cannot create ${path}: ${(error as Error).message}`, { cause: error });
  }
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
 * Started as root with drop_privileges, hand what the daemon made (the socket files, and the
 * run dir when it created it or systemd made it for the unit) to the service user and become that user (spec §2). Sockets are
 * already bound. A run dir that was there before (`/run`, a directory the unit made) keeps
 * its owner; the log file was created by the service user already.
 */
function dropPrivileges(config: Readonly<Config>, identity: ServiceIdentity, ownRunDir: boolean, log: Logger): void {
  const { user, group, uid, gid } = identity;
  const owned = ownRunDir ? [config.daemon.run_dir] : [];
  if (config.control.enable && config.control.transport === "unix") owned.push(config.control.socket);
  // A path local socket (not an abstract name, which has no owner) is for the service user's clients.
  if (config.local.enable && config.local.socket !== "" && !config.local.socket.startsWith("\0"))
    owned.push(config.local.socket);
  for (const path of owned) if (existsSync(path)) chownSync(path, uid, gid);
  // The user's own supplementary groups (on an oVirt host kvm and qemu, which own the images),
  // as login does. (process.initgroups is POSIX-only and missing from @types/node 20.)
  const posix = process as NodeJS.Process & { initgroups?: (user: string, extraGroup: number) => void };
  posix.initgroups?.(user, gid);
  process.setgid?.(gid);
  process.setuid?.(uid);
  log.info("PRIVILEGES dropped", { user, group, groups: process.getgroups?.().join(",") });
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
