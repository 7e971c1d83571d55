/**
 * `imageio proxy`: the daemon with the proxy's defaults (spec §2): images on port 54323,
 * no local socket, the control service on localhost TCP 54324, and the engine's CA to verify
 * the host daemons its tickets point at (`https://host:54322/images/ID`).
 */
import type { Command } from "commander";
import { type Config, DAEMON_DEFAULTS } from "../config.js";
import { type DaemonOptions, type DaemonProfile, runDaemon } from "./daemon.js";

export const PROXY_DEFAULTS: Config = {
  ...DAEMON_DEFAULTS,
  daemon: { ...DAEMON_DEFAULTS.daemon, run_dir: "/run/ovirt-imageio-proxy" },
  remote: { ...DAEMON_DEFAULTS.remote, port: 54323 },
  local: { ...DAEMON_DEFAULTS.local, enable: false },
  control: { ...DAEMON_DEFAULTS.control, transport: "tcp", port: 54324 },
  backend_http: { ...DAEMON_DEFAULTS.backend_http, ca_file: "/etc/pki/ovirt-engine/ca.pem" },
};

export const PROXY_PROFILE: DaemonProfile = {
  name: "proxy",
  defaults: PROXY_DEFAULTS,
  systemDir: "/usr/lib/ovirt-imageio-proxy/conf.d",
};

/** Registers `imageio proxy`. */
export function addProxyCommand(program: Command): void {
  program
    .command("proxy")
    .description("serve images on port 54323, forwarding I/O to host daemons")
    .option(
      "-c, --config <path>",
      "configuration directory (with conf.d/*.conf) or one .conf file",
      "/etc/ovirt-imageio-proxy",
    )
    .option("--show-config", "print the merged configuration as JSON and exit")
    .option("--ticket <file>", "load a ticket (JSON) before accepting connections")
    .addHelpText("after", "\nExample:\n  imageio proxy --config /etc/ovirt-imageio-proxy")
    .action(async (options: DaemonOptions) => {
      process.exitCode = await runDaemon(options, PROXY_PROFILE);
    });
}
