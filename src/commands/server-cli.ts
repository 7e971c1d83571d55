/**
 * `imageio daemon` and `imageio proxy` on the command line. The server modules load only
 * when one of them runs, so `imageio copy` and `imageio ticket` start without them.
 */
import type { Command } from "commander";
import { inspectorRequested } from "../no-inspector.js";
import type { DaemonOptions } from "./daemon.js";
import { DAEMON_PROFILE, type DaemonProfile, PROXY_PROFILE } from "./profiles.js";

function addServerCommand(program: Command, profile: DaemonProfile, description: string): Command {
  return program
    .command(profile.name)
    .description(description)
    .option("-c, --config <path>", "configuration directory (with conf.d/*.conf) or one .conf file", profile.confDir)
    .option(
      "--show-config [format]",
      "print the merged configuration and exit: json (the default), or sources (each value with the file that set it)",
    )
    .option("--ticket <file>", "load a ticket (JSON) before accepting connections")
    .addHelpText("after", `\nExample:\n  imageio ${profile.name} --config ${profile.confDir}`)
    .action(async (options: DaemonOptions) => {
      if (inspectorRequested()) {
        process.stderr.write(
          `imageio ${profile.name}: refusing to run with the Node.js inspector requested (--inspect in the ` +
            "command line or NODE_OPTIONS): a debugger reads every image and ticket. Unset NODE_OPTIONS.\n",
        );
        process.exitCode = 1;
        return;
      }
      const { runDaemon } = await import("./daemon.js");
      process.exitCode = await runDaemon(options, profile);
    });
}

/** Registers `imageio daemon`. */
export function addDaemonCommand(program: Command): void {
  addServerCommand(
    program,
    DAEMON_PROFILE,
    "serve images to ticket holders over HTTPS (port 54322) and a local unix socket",
  ).option("--dev", "run on the development setup in ./.imageio-dev (what npm start does)");
}

/** Registers `imageio proxy`. */
export function addProxyCommand(program: Command): void {
  addServerCommand(program, PROXY_PROFILE, "serve images on port 54323, forwarding I/O to host daemons");
}
