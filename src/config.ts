/**
 * Configuration (spec §7): INI files from `<conf_dir>/conf.d/*.conf` and a system drop-in
 * directory, read in basename order over typed defaults into one frozen Config. Invalid
 * values fail at startup, naming the file, section and key.
 *
 * Files are decoded with the `ini` package. Upstream reads them with Python's configparser,
 * so before decoding each file is checked for what configparser rejects and `ini` would
 * silently accept (a section or option repeated in one file, an option without a value,
 * continuation lines), and `key: value` lines are read as `key = value`.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { decode } from "ini";
import { ConfigError } from "./errors.js";
import { LOG_LEVELS } from "./log.js";

export interface Config {
  daemon: {
    poll_interval: number;
    max_connections: number;
    inactivity_timeout: number;
    run_dir: string;
    drop_privileges: boolean;
    user_name: string;
    group_name: string;
    systemd_enable: boolean;
  };
  tls: { enable: boolean; key_file: string; cert_file: string; ca_file: string; enable_tls1_1: boolean };
  backend_file: { buffer_size: number; direct: string };
  backend_http: { ca_file: string; buffer_size: number };
  backend_nbd: {
    buffer_size: number;
    /** NBD requests in flight per connection. */
    requests: number;
    /** Bytes per NBD READ/WRITE request: one HTTP buffer becomes buffer_size / request_size requests. */
    request_size: number;
    /** Payload bytes in flight per connection. */
    queue_size: number;
    /** Seconds to connect and negotiate; a qemu-nbd serving its --shared limit never greets. */
    handshake_timeout: number;
  };
  remote: { host: string; port: number };
  local: { enable: boolean; socket: string };
  control: {
    enable: boolean;
    transport: string;
    socket: string;
    port: number;
    prefer_ipv4: boolean;
    remove_timeout: number;
  };
  logging: { level: string; file: string };
}

/** The abstract unix socket upstream's local service listens on. */
export const DEFAULT_LOCAL_SOCKET = "\0/org/ovirt/imageio";

/** Defaults of the host daemon (spec §7.2). */
export const DAEMON_DEFAULTS: Config = {
  daemon: {
    poll_interval: 1.0,
    max_connections: 8,
    inactivity_timeout: 60,
    run_dir: "/run/ovirt-imageio",
    drop_privileges: true,
    user_name: "ovirtimg",
    group_name: "ovirtimg",
    systemd_enable: true,
  },
  tls: { enable: true, key_file: "", cert_file: "", ca_file: "", enable_tls1_1: false },
  backend_file: { buffer_size: 8388608, direct: "auto" },
  backend_http: { ca_file: "", buffer_size: 8388608 },
  // 16 × 256 KiB in flight keeps qemu-nbd busy; one 8 MiB request at a time leaves it idle
  // between requests (docs/nbd.md, `npm run bench -- nbd`).
  backend_nbd: {
    buffer_size: 8388608,
    requests: 16,
    request_size: 262144,
    queue_size: 16777216,
    handshake_timeout: 10,
  },
  remote: { host: "::", port: 54322 },
  local: { enable: true, socket: DEFAULT_LOCAL_SOCKET },
  control: {
    enable: true,
    transport: "unix",
    socket: "/run/ovirt-imageio/sock",
    port: -1,
    prefer_ipv4: true,
    remove_timeout: 60,
  },
  logging: { level: "INFO", file: "" },
};

/** Choices for string options that take one of a few values. */
const CHOICES: Record<string, readonly string[]> = {
  "backend_file.direct": ["auto", "always", "never"],
  "control.transport": ["unix", "tcp"],
  "logging.level": LOG_LEVELS,
};

/** Integer options with a narrower range than "any integer". */
const INT_RANGES: Record<string, [number, number]> = {
  "daemon.max_connections": [1, 1024],
  "daemon.inactivity_timeout": [0, Number.MAX_SAFE_INTEGER],
  "remote.port": [0, 65535],
  "control.port": [-1, 65535],
  // Timers in Node hold at most 2^31-1 ms (24.8 days); longer would fire at once.
  "control.remove_timeout": [0, 2_147_483],
  "backend_file.buffer_size": [4096, 1024 * 1024 * 1024],
  "backend_http.buffer_size": [4096, 1024 * 1024 * 1024],
  "backend_nbd.buffer_size": [4096, 1024 * 1024 * 1024],
  "backend_nbd.requests": [1, 1024],
  // qemu-nbd refuses payloads above 32 MiB.
  "backend_nbd.request_size": [4096, 32 * 1024 * 1024],
  "backend_nbd.queue_size": [65536, 1024 * 1024 * 1024],
  "backend_nbd.handshake_timeout": [1, 2_147_483],
};

const BOOLEANS: Record<string, boolean> = {
  true: true,
  yes: true,
  1: true,
  on: true,
  false: false,
  no: false,
  0: false,
  off: false,
};

type Section = Record<string, string | number | boolean>;

export interface LoadOptions {
  defaults?: Config;
  /** System drop-in directories read along with the conf dir (spec: /usr/lib/ovirt-imageio/conf.d). */
  systemDirs?: string[];
}

/**
 * Loads the configuration from a conf dir (`PATH/conf.d/*.conf`) or one `.conf` file, plus
 * the system drop-in directories, merged in basename order over the defaults.
 * @throws ConfigError naming the file and key, or `Could not find <pattern>` without any file.
 */
export function loadConfig(path: string, options: LoadOptions = {}): Readonly<Config> {
  const defaults = options.defaults ?? DAEMON_DEFAULTS;
  const isFile = existsSync(path) && statSync(path).isFile();
  const pattern = isFile ? path : join(path, "conf.d", "*.conf");
  const files = isFile ? [path] : confFiles(join(path, "conf.d"));
  for (const dir of options.systemDirs ?? []) files.push(...confFiles(dir));
  if (files.length === 0) throw new ConfigError(`Could not find ${pattern}`);
  files.sort((a, b) => (basename(a) < basename(b) ? -1 : basename(a) > basename(b) ? 1 : 0));

  const config = structuredClone(defaults) as unknown as Record<string, Section>;
  let levelSet = false;
  let rootLevel: string | undefined;
  for (const file of files) {
    const sections = readIniFile(file);
    for (const [sectionName, values] of Object.entries(sections)) {
      if (sectionName === "logger_root" && typeof values.level === "string") rootLevel = values.level;
      const section = config[sectionName];
      if (section === undefined) continue; // unknown sections (upstream's logging config) are ignored
      for (const [key, raw] of Object.entries(values)) {
        if (!(key in section)) continue;
        section[key] = convert(file, sectionName, key, String(raw), section[key] as string | number | boolean);
        if (sectionName === "logging" && key === "level") levelSet = true;
      }
    }
  }
  // Upstream configured its log level in [logger_root]; honour it when [logging] says nothing.
  if (!levelSet && rootLevel !== undefined && (LOG_LEVELS as readonly string[]).includes(rootLevel.toUpperCase())) {
    (config.logging as Section).level = rootLevel.toUpperCase();
  }
  const result = config as unknown as Config;
  validate(result);
  return deepFreeze(result);
}

function confFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => name.endsWith(".conf"))
    .map((name) => join(dir, name));
}

/** Reads one INI file into lowercase option names; see the module comment for the checks. */
export function readIniFile(file: string): Record<string, Record<string, string>> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new ConfigError(`Cannot read configuration file ${file}: ${(error as Error).message}`, { cause: error });
  }
  const normalized: string[] = [];
  const seen = new Map<string, Set<string>>();
  let current: Set<string> | undefined;
  text.split(/\r?\n/).forEach((line, index) => {
    const where = `${file}:${index + 1}`;
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#") || trimmed.startsWith(";")) return;
    if (/^\s/.test(line)) throw new ConfigError(`${where}: continuation lines are not supported: '${trimmed}'`);
    const header = /^\[([^\]]+)\]$/.exec(trimmed);
    if (header) {
      const name = header[1] as string;
      if (seen.has(name)) throw new ConfigError(`${where}: section '${name}' already exists in this file`);
      current = new Set();
      seen.set(name, current);
      normalized.push(`[${name}]`);
      return;
    }
    const separator = /[=:]/.exec(trimmed);
    if (separator === null) throw new ConfigError(`${where}: expected 'key = value', got '${trimmed}'`);
    if (current === undefined) throw new ConfigError(`${where}: option outside of a section: '${trimmed}'`);
    const key = trimmed.slice(0, separator.index).trim().toLowerCase();
    const value = trimmed.slice(separator.index + 1).trim();
    if (key === "") throw new ConfigError(`${where}: option without a name: '${trimmed}'`);
    if (current.has(key)) throw new ConfigError(`${where}: option '${key}' already exists in this section`);
    current.add(key);
    // Quote the value so `ini` keeps it as written (no inline comment stripping, no unquoting).
    normalized.push(`${key} = ${JSON.stringify(value)}`);
  });
  const decoded = decode(normalized.join("\n")) as Record<string, Record<string, string>>;
  // Top-level keys cannot occur (checked above); sections with dots would nest: flatten them back.
  const result: Record<string, Record<string, string>> = {};
  for (const name of seen.keys()) result[name] = pickSection(decoded, name);
  return result;
}

function pickSection(decoded: Record<string, unknown>, name: string): Record<string, string> {
  let node: unknown = decoded;
  for (const part of name.split(".")) node = (node as Record<string, unknown> | undefined)?.[part];
  const section: Record<string, string> = {};
  for (const [key, value] of Object.entries((node ?? {}) as Record<string, unknown>)) {
    // `ini` turns "true", "false" and "null" into values; the text is what counts here.
    if (typeof value !== "object" || value === null) section[key] = String(value);
  }
  return section;
}

function convert(file: string, section: string, key: string, raw: string, like: string | number | boolean) {
  const name = `${section}.${key}`;
  const fail = (expecting: string) =>
    new ConfigError(`${file}: [${section}] ${key}: invalid value '${raw}': expecting ${expecting}`);
  if (typeof like === "boolean") {
    const value = BOOLEANS[raw.toLowerCase()];
    if (value === undefined) throw fail("a boolean (true/false, yes/no, on/off, 1/0)");
    return value;
  }
  if (typeof like === "number") {
    if (Number.isInteger(like) && name !== "daemon.poll_interval") {
      if (!/^[+-]?\d+$/.test(raw)) throw fail("an integer");
      const value = Number(raw);
      const [min, max] = INT_RANGES[name] ?? [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER];
      if (!Number.isSafeInteger(value) || value < min || value > max) throw fail(`an integer from ${min} to ${max}`);
      return value;
    }
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value)) throw fail("a number");
    return value;
  }
  const choices = CHOICES[name];
  const value = name === "logging.level" ? raw.toUpperCase() : raw;
  if (choices && !choices.includes(value)) throw fail(`one of ${choices.join(", ")}`);
  return value;
}

function validate(config: Config): void {
  if (config.tls.enable && (config.tls.key_file === "" || config.tls.cert_file === "")) {
    throw new ConfigError("TLS enabled in [tls] enable but not configured: set [tls] key_file and cert_file");
  }
  if (config.control.enable && config.control.transport === "tcp" && config.control.port < 0) {
    throw new ConfigError("[control] transport = tcp requires [control] port");
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

/** The merged configuration as JSON for `--show-config` (the abstract socket's NUL escaped). */
export function configToJson(config: Config): string {
  return `${JSON.stringify(config, null, 4)}\n`;
}
