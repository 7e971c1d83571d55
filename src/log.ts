/**
 * Logging: one line per event, `key=value` fields, to stderr (journald picks it up) or a file.
 * Operators grep these lines (spec §7.4), so event names are stable.
 */
import { appendFileSync } from "node:fs";

export const LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type LogFields = Record<string, string | number | boolean | undefined | null>;

export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warning(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields, error?: unknown): void;
  /** A logger whose lines carry `[component]`. */
  child(component: string): Logger;
}

export interface LogSink {
  write(line: string): void;
}

export const stderrSink: LogSink = { write: (line) => process.stderr.write(line) };

/** Appends to a file synchronously, so lines survive a crash right after them. */
export function fileSink(path: string): LogSink {
  return { write: (line) => appendFileSync(path, line) };
}

/** Collects lines in memory, for tests. */
export function memorySink(): LogSink & { lines: string[] } {
  const lines: string[] = [];
  return { lines, write: (line) => lines.push(line) };
}

/**
 * A field value on one line: bare when it is plain printable text, else JSON-quoted with
 * every control character escaped, so a value from a client or a manager (a ticket id with a
 * newline or NUL) can neither forge a log line nor hide in one.
 */
function formatValue(value: string | number | boolean): string {
  const text = String(value);
  if (/^[!#-<>-~\u00a0-\u2027\u202a-\uffff]+$/.test(text)) return text;
  return JSON.stringify(text).replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

function formatTime(date: Date): string {
  const pad = (n: number, width = 2) => String(n).padStart(width, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())},${pad(date.getMilliseconds(), 3)}`
  );
}

export function createLogger(level: LogLevel = "INFO", sink: LogSink = stderrSink, component = "imageio"): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const emit = (at: LogLevel, event: string, fields: LogFields = {}, error?: unknown) => {
    if (LOG_LEVELS.indexOf(at) < threshold) return;
    const parts = [`${formatTime(new Date())} ${at.padEnd(7)} [${component}] ${event}`];
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) parts.push(`${key}=${formatValue(value)}`);
    }
    let line = parts.join(" ");
    if (error instanceof Error && error.stack) line += `\n${error.stack}`;
    sink.write(`${line}\n`);
  };
  return {
    debug: (event, fields) => emit("DEBUG", event, fields),
    info: (event, fields) => emit("INFO", event, fields),
    warning: (event, fields) => emit("WARNING", event, fields),
    error: (event, fields, error) => emit("ERROR", event, fields, error),
    child: (name) => createLogger(level, sink, name),
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = createLogger("ERROR", { write: () => undefined });
