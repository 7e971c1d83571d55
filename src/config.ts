/**
 * Configuration (spec §7): INI files from `<conf_dir>/conf.d/*.conf` and a system drop-in
 * directory, read in basename order over typed defaults into one frozen Config. Invalid
 * values fail at startup, naming the file, section and key.
 *
 * Files are decoded with the `ini` package. Upstream reads them with Python's configparser,
 * so before decoding each file is checked for what configparser rejects and `ini` would
 * silently accept (a section or option repeated in one file, an option without a value),
 * `key: value` lines are read as `key = value`, and an indented line continues the value
 * before it on a new line, as configparser reads it.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename, join } from "node:path";
import { decode } from "ini";
import {
  mapPythonLogging,
  type PythonLogging,
  pythonLoggingKeys,
  pythonLoggingKind,
  type SetValue,
} from "./config-pylogging.js";
import { ConfigError } from "./errors.js";
import { LOG_LEVELS } from "./log.js";

export interface Config {
  daemon: {
    poll_interval: number;
    max_connections: number;
    /** I/O buffers (of the backend's buffer_size) lent to data requests at once, daemon-wide. */
    max_buffers: number;
    /** Threads serving the images services (remote and local); 1 serves them on the main thread. */
    workers: number;
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

/**
 * Default `[daemon] workers`: half the cores, at most 8. A TLS upload keeps about one core
 * busy per thread, and the clients (or the disk) need the other half; past 8 threads the
 * disk, not the CPU, is what limits a host. On 2 cores this is 1: no worker threads at all.
 */
export function defaultWorkers(cores: number = availableParallelism()): number {
  return Math.min(8, Math.max(1, Math.floor(cores / 2)));
}

/** Defaults of the host daemon (spec §7.2). */
export const DAEMON_DEFAULTS: Config = {
  daemon: {
    poll_interval: 1.0,
    max_connections: 8,
    max_buffers: 16,
    workers: defaultWorkers(),
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
  "daemon.max_buffers": [1, 65536],
  "daemon.workers": [1, 64],
  // 0 is refused in tickets (it would mean "never time out"), so as their default too.
  "daemon.inactivity_timeout": [1, Number.MAX_SAFE_INTEGER],
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

/** Where each value came from: "default", or the file (and for mapped values, the setting). */
export type ConfigSources = Record<string, Record<string, string>>;

export interface LoadedConfig {
  config: Readonly<Config>;
  sources: ConfigSources;
  /**
   * Unknown sections and keys, each naming file, section and key: the caller logs them at
   * WARNING. They do not stop the start (spec §7.1 ignores them), so a file a newer Vdsm or
   * engine-setup writes never keeps a host's daemon down.
   */
  warnings: string[];
}

/**
 * Sections upstream reads that have no effect here, with their keys: accepted so upstream's
 * files load, shown by nothing.
 */
const COMPAT_SECTIONS: Record<string, readonly string[]> = { profile: ["filename"] };

/**
 * Loads the configuration from a conf dir (`PATH/conf.d/*.conf`) or one `.conf` file, plus
 * the system drop-in directories, merged in basename order over the defaults.
 * @throws ConfigError naming the file and key, or `Could not find <pattern>` without any file.
 */
export function loadConfig(path: string, options: LoadOptions = {}): Readonly<Config> {
  return loadConfigWithSources(path, options).config;
}

/** loadConfig, also telling where each value came from (`--show-config=sources`). */
export function loadConfigWithSources(path: string, options: LoadOptions = {}): LoadedConfig {
  const defaults = options.defaults ?? DAEMON_DEFAULTS;
  const isFile = existsSync(path) && statSync(path).isFile();
  const pattern = isFile ? path : join(path, "conf.d", "*.conf");
  const files = isFile ? [path] : confFiles(join(path, "conf.d"));
  for (const dir of options.systemDirs ?? []) files.push(...confFiles(dir));
  if (files.length === 0) throw new ConfigError(`Could not find ${pattern}`);
  files.sort((a, b) => (basename(a) < basename(b) ? -1 : basename(a) > basename(b) ? 1 : 0));

  const config = structuredClone(defaults) as unknown as Record<string, Section>;
  const sources: ConfigSources = {};
  for (const [name, section] of Object.entries(config)) {
    sources[name] = Object.fromEntries(Object.keys(section).map((key) => [key, "default"]));
  }
  const pythonLogging: PythonLogging = new Map();
  const warnings: string[] = [];
  for (const file of files) {
    for (const [sectionName, values] of Object.entries(readIniFile(file))) {
      if (pythonLoggingKind(sectionName) !== undefined) {
        warnings.push(...unknownKeys(file, sectionName, values, pythonLoggingKeys(sectionName)));
        const merged = pythonLogging.get(sectionName) ?? new Map<string, SetValue>();
        for (const [key, value] of Object.entries(values)) merged.set(key, { value, file });
        pythonLogging.set(sectionName, merged);
        continue;
      }
      const compat = COMPAT_SECTIONS[sectionName];
      if (compat !== undefined) {
        warnings.push(...unknownKeys(file, sectionName, values, compat));
        continue;
      }
      const section = config[sectionName];
      if (section === undefined) {
        warnings.push(unknownSection(file, sectionName, Object.keys(config)));
        continue;
      }
      const known = Object.keys(section);
      warnings.push(...unknownKeys(file, sectionName, values, known));
      for (const [key, raw] of Object.entries(values)) {
        if (!known.includes(key)) continue;
        section[key] = convert(file, sectionName, key, String(raw), section[key] as string | number | boolean);
        (sources[sectionName] as Record<string, string>)[key] = file;
      }
    }
  }
  // [logging] wins where a file sets it; otherwise upstream's logging sections decide.
  const mapped = mapPythonLogging(pythonLogging);
  const logging = config.logging as Section;
  const loggingSources = sources.logging as Record<string, string>;
  for (const key of ["level", "file"] as const) {
    const value = mapped[key];
    if (value !== undefined && loggingSources[key] === "default") {
      logging[key] = value.value;
      loggingSources[key] = value.source;
    }
  }
  const result = config as unknown as Config;
  try {
    validate(result);
  } catch (error) {
    // An invalid configuration is often a mistyped key: say which keys were ignored too.
    if (!(error instanceof ConfigError) || warnings.length === 0) throw error;
    throw new ConfigError([error.message, ...warnings.map((warning) => `also: ${warning}`)].join("\n"), {
      cause: error,
    });
  }
  return { config: deepFreeze(result), sources, warnings };
}

/** A message naming the file, section and key of every key not in `known`, with the likely key. */
function unknownKeys(
  file: string,
  section: string,
  values: Record<string, string>,
  known: readonly string[],
): string[] {
  return Object.keys(values)
    .filter((key) => !known.includes(key))
    .map((key) => {
      const hint = nearest(key, known);
      return (
        `${file}: [${section}] ${key}: unknown option, ignored${hint === undefined ? "" : ` (did you mean '${hint}'?)`}; ` +
        `[${section}] takes ${known.join(", ")}`
      );
    });
}

function unknownSection(file: string, section: string, known: string[]): string {
  const hint = nearest(section, known);
  return (
    `${file}: [${section}]: unknown section, ignored${hint === undefined ? "" : ` (did you mean '[${hint}]'?)`}; ` +
    `known sections: ${known.map((name) => `[${name}]`).join(" ")}, and Python logging sections`
  );
}

/** The known name closest to a typo (at most 2 edits away), for the error message. */
function nearest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] as number;
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
  // Option lines keep their value lines until the file is read: continuation lines extend them.
  const normalized: (string | { key: string; lines: string[] })[] = [];
  const seen = new Map<string, Set<string>>();
  let current: Set<string> | undefined;
  // The option an indented line continues (as configparser reads it), with its indentation,
  // and the blank lines seen since, which belong to the value only if it goes on.
  let continued: { key: string; lines: string[]; indent: number } | undefined;
  let blanks = 0;
  text.split(/\r?\n/).forEach((line, index) => {
    const where = `${file}:${index + 1}`;
    const trimmed = line.trim();
    if (trimmed === "") {
      blanks++;
      return;
    }
    if (trimmed.startsWith("#") || trimmed.startsWith(";")) return;
    const indent = line.length - line.trimStart().length;
    if (continued !== undefined && indent > continued.indent) {
      for (; blanks > 0; blanks--) continued.lines.push("");
      continued.lines.push(trimmed);
      return;
    }
    continued = undefined;
    blanks = 0;
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
    continued = { key, lines: [value], indent };
    normalized.push(continued);
  });
  // Quote each value so `ini` keeps it as written (no inline comment stripping, no unquoting);
  // a continued value is its lines joined by newlines, as configparser gives it (without the
  // empty first line of a value that starts on the next line, which Python's int() and
  // literal_eval() skip anyway).
  const iniText = normalized
    .map((entry) =>
      typeof entry === "string" ? entry : `${entry.key} = ${JSON.stringify(entry.lines.join("\n").trim())}`,
    )
    .join("\n");
  const decoded = decode(iniText) as Record<string, Record<string, string>>;
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

/**
 * The merged configuration in the files' own format, each value followed by where it came
 * from, for `--show-config=sources`. Values print as JSON strings where INI would hide
 * something (empty, spaces, the abstract socket's NUL).
 */
export function configSourcesToText(config: Config, sources: ConfigSources): string {
  const lines: string[] = [];
  for (const [name, section] of Object.entries(config) as [string, Section][]) {
    if (lines.length > 0) lines.push("");
    lines.push(`[${name}]`);
    for (const [key, value] of Object.entries(section)) {
      const text = typeof value === "string" && !/^[^\s"\0]+$/.test(value) ? JSON.stringify(value) : String(value);
      lines.push(`${key} = ${text}    ; ${sources[name]?.[key] ?? "default"}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
