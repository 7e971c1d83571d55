/**
 * Logging: one line per event, `key=value` fields, to stderr (journald picks it up) or a file.
 * Operators grep these lines (spec §7.4), so event names are stable.
 */
import { createWriteStream, openSync, type WriteStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";

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

/**
 * The first 8 characters of a ticket id: enough to correlate log lines, useless as a
 * credential. Every ticket id a log line shows goes through here ([D11]).
 */
export function shortId(id: string): string {
  return id.length > 8 ? `${id.slice(0, 8)}…` : id;
}

export const stderrSink: LogSink = { write: (line) => process.stderr.write(line) };

/**
 * A log file held open: lines go to one write stream, so the event loop never opens, appends
 * and closes per line. `reopen()` (on SIGHUP, after logrotate renamed the file) starts a new
 * file at the same path; the old stream finishes what it holds and closes. A write error is
 * reported once on stderr and the lines that follow go there too.
 */
/** A new log file is readable by its owner's group (adm, logrotate), not by everyone. */
export const LOG_FILE_MODE = 0o640;

export class FileSink implements LogSink {
  private stream: WriteStream;
  private failed = false;

  /**
   * Opens (creating, mode 0640: logs name images and clients) `path` for appending.
   * @throws the open error, at startup.
   */
  constructor(readonly path: string) {
    this.stream = this.streamOf(openSync(path, "a", LOG_FILE_MODE));
  }

  write(line: string): void {
    if (this.failed) process.stderr.write(line);
    else this.stream.write(line);
  }

  /** Switches to a new file at the path; resolves once it is open (rejects, keeping the old one). */
  async reopen(): Promise<void> {
    // The stream owns the handle from here (a bare fd would be closed when the handle is collected).
    const handle = await open(this.path, "a", LOG_FILE_MODE);
    const old = this.stream;
    this.stream = this.streamOf(handle);
    this.failed = false;
    old.end();
  }

  /** Flushes and closes the file. */
  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(resolve));
  }

  private streamOf(fd: number | FileHandle): WriteStream {
    const stream = createWriteStream(this.path, { fd, flags: "a", autoClose: true });
    stream.on("error", (error) => {
      if (stream !== this.stream || this.failed) return;
      this.failed = true;
      process.stderr.write(`imageio: cannot write log file ${this.path}: ${error.message}; logging to stderr\n`);
    });
    return stream;
  }
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
  return loggerOf(emit, (name) => createLogger(level, sink, name));
}

/** A Logger whose level methods all go through `emit`. */
export function loggerOf(
  emit: (at: LogLevel, event: string, fields?: LogFields, error?: unknown) => void,
  child: (component: string) => Logger,
): Logger {
  return {
    debug: (event, fields) => emit("DEBUG", event, fields),
    info: (event, fields) => emit("INFO", event, fields),
    warning: (event, fields) => emit("WARNING", event, fields),
    error: (event, fields, error) => emit("ERROR", event, fields, error),
    child,
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = createLogger("ERROR", { write: () => undefined });
