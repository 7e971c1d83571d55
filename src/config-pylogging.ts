/**
 * ovirt-imageio configured its logging with Python's `logging.config.fileConfig` sections in
 * the same files as its settings, and Vdsm and engine-setup write them (`[handlers] keys`,
 * `[logger_root] level` and `handlers`). These sections are known here, so such files load
 * without complaint, and what maps onto imageio's one log is honoured: the root logger's
 * level and whether its handler writes a file (which) or a stream (stderr, the journal).
 * Formats, handler levels and other loggers have no equivalent and are accepted as they are.
 */
import { ConfigError } from "./errors.js";
import type { LogLevel } from "./log.js";

/** The file upstream's default `logfile` handler writes (its `[handler_logfile] args`). */
export const UPSTREAM_LOG_FILE = "/var/log/ovirt-imageio/daemon.log";

/** Keys Python's fileConfig reads in each kind of logging section. */
const KEYS_BY_KIND: Record<string, readonly string[]> = {
  list: ["keys"],
  logger: ["level", "handlers", "propagate", "qualname"],
  handler: ["class", "args", "kwargs", "level", "formatter"],
  formatter: ["format", "datefmt", "class", "style", "validate", "defaults"],
};

/** Python's level names, and imageio's level for each. */
const PYTHON_LEVELS: Record<string, LogLevel> = {
  NOTSET: "DEBUG",
  DEBUG: "DEBUG",
  INFO: "INFO",
  WARN: "WARNING",
  WARNING: "WARNING",
  ERROR: "ERROR",
  CRITICAL: "ERROR",
  FATAL: "ERROR",
};

/** The kind of a Python logging section, or undefined for any other section name. */
export function pythonLoggingKind(section: string): string | undefined {
  if (section === "loggers" || section === "handlers" || section === "formatters") return "list";
  const prefix = /^(logger|handler|formatter)_./.exec(section)?.[1];
  return prefix;
}

/** The keys a Python logging section may hold. */
export function pythonLoggingKeys(section: string): readonly string[] {
  return KEYS_BY_KIND[pythonLoggingKind(section) ?? ""] ?? [];
}

/** One setting as the files left it: the value and the file that set it last. */
export interface SetValue {
  value: string;
  file: string;
}

/** Python logging sections merged over all files, later files winning key by key. */
export type PythonLogging = Map<string, Map<string, SetValue>>;

export interface MappedLogging {
  level?: { value: LogLevel; source: string };
  file?: { value: string; source: string };
}

/**
 * What the Python logging sections say about imageio's log: the root logger's level, and
 * the file (or "" for stderr) of the first of its handlers that writes a file or a stream.
 * @throws ConfigError naming the file, section and key of a value that cannot be mapped.
 */
export function mapPythonLogging(sections: PythonLogging): MappedLogging {
  const mapped: MappedLogging = {};
  const root = sections.get("logger_root");
  const level = root?.get("level");
  if (level !== undefined) {
    const value = PYTHON_LEVELS[level.value.toUpperCase()];
    if (value === undefined) {
      throw new ConfigError(
        `${level.file}: [logger_root] level: invalid value '${level.value}': expecting one of ${Object.keys(PYTHON_LEVELS).join(", ")}`,
      );
    }
    mapped.level = { value, source: `${level.file} [logger_root] level` };
  }
  const handlers = root?.get("handlers");
  if (handlers !== undefined) {
    for (const name of handlers.value.split(",").map((part) => part.trim())) {
      if (name === "") continue;
      const file = handlerTarget(name, sections.get(`handler_${name}`));
      if (file !== undefined) {
        mapped.file = { value: file, source: `${handlers.file} [logger_root] handlers = ${name}` };
        break;
      }
    }
  }
  return mapped;
}

/**
 * The file a handler writes ("" for a stream), or undefined for a handler that does
 * neither. Upstream's built-in `logfile` and `stderr` handlers apply when no file defines them.
 */
function handlerTarget(name: string, section: Map<string, SetValue> | undefined): string | undefined {
  const className = section?.get("class")?.value ?? { logfile: "RotatingFileHandler", stderr: "StreamHandler" }[name];
  if (className === undefined) return undefined;
  if (/StreamHandler$/.test(className)) return "";
  if (!/FileHandler$/.test(className)) return undefined;
  const kwargs = section?.get("kwargs");
  const fromKwargs = kwargs && /['"]filename['"]\s*:\s*(['"])(.*?)\1/.exec(kwargs.value)?.[2];
  if (fromKwargs) return fromKwargs;
  const args = section?.get("args");
  if (args === undefined) return name === "logfile" ? UPSTREAM_LOG_FILE : undefined;
  const first = /^\s*[([]\s*(['"])(.*?)\1/.exec(args.value)?.[2];
  if (first === undefined || first === "") {
    throw new ConfigError(
      `${args.file}: [handler_${name}] args: cannot find the log file in '${args.value}': expecting ('PATH', ...)`,
    );
  }
  return first;
}
