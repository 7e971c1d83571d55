/**
 * The two long-running roles of the one executable (spec §2): the host daemon and the proxy,
 * which is the daemon with other defaults. Light on imports, so the command line can name
 * them without loading the HTTP stack.
 */
import { type Config, DAEMON_DEFAULTS } from "../config.js";

export interface DaemonProfile {
  /** The subcommand, and the component in log lines. */
  name: "daemon" | "proxy";
  defaults: Config;
  /** Where admins keep the configuration (`--config` default). */
  confDir: string;
  /** System drop-in directory read along with the conf dir. */
  systemDir: string;
}

export const DAEMON_PROFILE: DaemonProfile = {
  name: "daemon",
  defaults: DAEMON_DEFAULTS,
  confDir: "/etc/ovirt-imageio",
  systemDir: "/usr/lib/ovirt-imageio/conf.d",
};

/**
 * The proxy: images on port 54323, no local socket, the control service on localhost TCP
 * 54324, and the engine's CA to verify the host daemons its tickets point at.
 */
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
  confDir: "/etc/ovirt-imageio-proxy",
  systemDir: "/usr/lib/ovirt-imageio-proxy/conf.d",
};
