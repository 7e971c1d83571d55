/**
 * What the daemon checks before it listens, so that every start-up failure names the setting
 * that caused it and how to fix it, and READY is never logged nor sent to systemd by a daemon
 * that is about to die: the TLS files, the service user and group, the port and sockets.
 */
import { execFileSync } from "node:child_process";
import { accessSync, constants, readFileSync } from "node:fs";
import type { Config } from "../config.js";
import { ConfigError } from "../errors.js";

/** The user and group the daemon becomes after binding ([daemon] drop_privileges). */
export interface ServiceIdentity {
  user: string;
  group: string;
  uid: number;
  gid: number;
}

/** @throws ConfigError naming `[tls] key_file`, `cert_file` or `ca_file` when one cannot be read. */
export function checkTlsFiles(config: Readonly<Config>): void {
  if (!config.tls.enable) return;
  for (const key of ["key_file", "cert_file", "ca_file"] as const) {
    const path = config.tls[key];
    if (path === "" && key === "ca_file") continue;
    try {
      // Read, not just access(): a directory passes access() and fails only at listen.
      readFileSync(path);
    } catch (error) {
      throw new ConfigError(`[tls] ${key}: cannot read ${path}: ${reason(error)}`, { cause: error });
    }
  }
}

/**
 * A problem with `[backend_http] ca_file` that does not stop the start (only transfers to
 * https:// daemons need it), or undefined.
 */
export function backendCaProblem(config: Readonly<Config>): string | undefined {
  const path = config.backend_http.ca_file;
  if (path === "") return undefined;
  try {
    accessSync(path, constants.R_OK);
    return undefined;
  } catch (error) {
    return `[backend_http] ca_file: cannot read ${path}: ${reason(error)}; transfers to https:// daemons will fail`;
  }
}

/**
 * The service user and group, looked up before anything listens; undefined when the daemon
 * keeps its user (not root, or drop_privileges = false).
 * @throws ConfigError naming `[daemon] user_name` or `group_name`, with the fix.
 */
export function serviceIdentity(config: Readonly<Config>): ServiceIdentity | undefined {
  if (!config.daemon.drop_privileges || process.getuid?.() !== 0) return undefined;
  const { user_name: user, group_name: group } = config.daemon;
  const passwd = getent("passwd", user);
  if (passwd === undefined) {
    throw new ConfigError(
      `[daemon] user_name: user '${user}' does not exist on this host. The imageio RPM creates it; ` +
        `without the RPM: useradd --system --user-group --shell /sbin/nologin ${user}. ` +
        "Or set [daemon] drop_privileges = false to keep running as root.",
    );
  }
  const entry = getent("group", group);
  if (entry === undefined) {
    throw new ConfigError(
      `[daemon] group_name: group '${group}' does not exist on this host: groupadd --system ${group}, ` +
        "or set [daemon] group_name to the service user's group.",
    );
  }
  return { user, group, uid: Number(passwd[2]), gid: Number(entry[2]) };
}

/** The fields of a passwd or group entry, or undefined when there is none. */
function getent(database: "passwd" | "group", name: string): string[] | undefined {
  try {
    const line = execFileSync("getent", [database, name], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    const fields = line.trim().split(":");
    return Number.isInteger(Number(fields[2])) && fields[2] !== "" ? fields : undefined;
  } catch {
    // getent exits 2 when the name is unknown.
    return undefined;
  }
}

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
