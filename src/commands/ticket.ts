/**
 * `imageio ticket add|show|extend|remove`: an admin client for the control service, like
 * upstream's ovirt-imageioctl. It finds the control socket (or TCP port) in the configuration.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import type { Command } from "commander";
import { type Config, loadConfig } from "../config.js";
import { DAEMON_PROFILE, type DaemonProfile, PROXY_PROFILE } from "./profiles.js";

interface ControlResponse {
  status: number;
  body: string;
}

function controlRequest(
  config: Readonly<Config>,
  method: string,
  path: string,
  body?: string,
): Promise<ControlResponse> {
  const target =
    config.control.transport === "tcp"
      ? { host: config.control.prefer_ipv4 ? "127.0.0.1" : "::1", port: config.control.port }
      : { socketPath: config.control.socket };
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, method, path, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        text += chunk;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function runTicketCommand(
  { profile, config: configPath }: { profile: DaemonProfile; config: string },
  action: (config: Readonly<Config>) => Promise<ControlResponse>,
  print: (response: ControlResponse) => string,
): Promise<number> {
  try {
    const config = loadConfig(configPath, { defaults: profile.defaults, systemDirs: [profile.systemDir] });
    const response = await action(config);
    if (response.status >= 300) {
      process.stderr.write(`imageio ticket: ${response.status} ${response.body.trim()}\n`);
      return 1;
    }
    const output = print(response);
    if (output !== "") process.stdout.write(`${output}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`imageio ticket: ${(error as Error).message}\n`);
    return 1;
  }
}

/** The ticket format in brief, after `imageio ticket add --help` (docs/tickets.md has it all). */
const TICKET_FORMAT = `
The file is one JSON object:
  uuid                string, required   the ticket id clients use in /images/<uuid> (a secret)
  size                integer, required  upper bound of every range, in bytes
  ops                 list, required     "read", "write" (write implies read)
  timeout             integer, required  seconds the ticket lives, renewed after each request
  url                 string, required   file:///path, nbd:unix:/socket[:exportname=NAME],
                                         nbd://HOST:PORT/EXPORT, https://HOST:54322/images/ID
  inactivity_timeout  integer            seconds an idle connection stays open, at least 1
                                         (0 is refused: it would mean never; default:
                                         [daemon] inactivity_timeout, 60)
  transfer_id         string             names the transfer in messages and logs
  filename            string             the download's file name (content-disposition)
  sparse              boolean, false     zeroing may deallocate
  dirty               boolean, false     allow extents?context=dirty (NBD dirty bitmaps)

Example file:
  {"uuid": "8f1c0a4e-6d2b-4b8a-9f57-3c1e2d4a5b6c", "size": 1073741824,
   "ops": ["read", "write"], "timeout": 300, "url": "file:///var/lib/images/disk.raw"}

Example:
  imageio ticket add ticket.json`;

/** Why `remove` cannot run with this id and --all flag, or undefined when it can. */
function removeUsageError(id: string | undefined, all: boolean): string | undefined {
  if (all) return id === undefined ? undefined : "give a ticket id or --all, not both";
  if (id === undefined) return "missing ticket id (use --all to remove every ticket)";
  if (id.trim() === "") return "empty ticket id (use --all to remove every ticket)";
  return undefined;
}

/** Registers `imageio ticket`. */
export function addTicketCommand(program: Command): void {
  const ticket = program
    .command("ticket")
    .description("add, show, extend or remove tickets through the daemon's control socket")
    .option("-c, --config <path>", "the daemon's configuration (to find the control socket)")
    .option("--proxy", "talk to the proxy (its defaults and /etc/ovirt-imageio-proxy)")
    .addHelpText(
      "after",
      [
        "",
        "Ticket timeouts (seconds): 'timeout' is how long the ticket lives after its last use;",
        "'inactivity_timeout' (default [daemon] inactivity_timeout) is how long a connection using",
        "it may stay idle, and must be at least 1: 0 is refused, it would mean never.",
        "",
        "Examples:",
        "  imageio ticket add ticket.json && imageio ticket show 5d3c0f2e-…",
        "  imageio ticket remove 5d3c0f2e-…",
        "  imageio ticket remove --all",
      ].join("\n"),
    );
  const profileOf = () => {
    const { config, proxy } = ticket.opts() as { config?: string; proxy?: boolean };
    const profile = proxy ? PROXY_PROFILE : DAEMON_PROFILE;
    return { profile, config: config ?? profile.confDir };
  };
  const encode = (id: string) => encodeURIComponent(id);

  ticket
    .command("add <file>")
    .description("add the ticket in a JSON file")
    .addHelpText("after", TICKET_FORMAT)
    .action(async (file: string) => {
      let text: string;
      let id: string;
      try {
        text = readFileSync(file, "utf8");
        id = String((JSON.parse(text) as { uuid?: unknown }).uuid ?? "");
      } catch (error) {
        process.stderr.write(`imageio ticket: cannot read ${file}: ${(error as Error).message}\n`);
        process.exitCode = 1;
        return;
      }
      process.exitCode = await runTicketCommand(
        profileOf(),
        (config) => controlRequest(config, "PUT", `/tickets/${encode(id || "-")}`, text),
        () => "",
      );
    });

  ticket
    .command("show <id>")
    .description("print a ticket's status as JSON")
    .action(async (id: string) => {
      process.exitCode = await runTicketCommand(
        profileOf(),
        (config) => controlRequest(config, "GET", `/tickets/${encode(id)}`),
        (response) => JSON.stringify(JSON.parse(response.body), null, 4),
      );
    });

  ticket
    .command("extend <id> <seconds>")
    .description("let a ticket live SECONDS more, and keep that timeout")
    .action(async (id: string, seconds: string) => {
      if (!/^\d+$/.test(seconds)) {
        process.stderr.write(`imageio ticket: invalid seconds: '${seconds}'\n`);
        process.exitCode = 2;
        return;
      }
      process.exitCode = await runTicketCommand(
        profileOf(),
        (config) =>
          controlRequest(config, "PATCH", `/tickets/${encode(id)}`, JSON.stringify({ timeout: Number(seconds) })),
        () => "",
      );
    });

  ticket
    .command("remove [id]")
    .description("cancel and remove a ticket, or every ticket with --all")
    .option("--all", "remove every ticket at once (running transfers are not waited for)")
    .action(async (id: string | undefined, options: { all?: boolean }) => {
      // `DELETE /tickets/` removes every ticket: only an explicit --all may send it, never an
      // empty id from a script's unset variable.
      const usage = removeUsageError(id, options.all === true);
      if (usage !== undefined) {
        process.stderr.write(`imageio ticket remove: ${usage}\n`);
        process.exitCode = 2;
        return;
      }
      const path = options.all ? "/tickets/" : `/tickets/${encode(id as string)}`;
      process.exitCode = await runTicketCommand(
        profileOf(),
        (config) => controlRequest(config, "DELETE", path),
        () => "",
      );
    });
}
