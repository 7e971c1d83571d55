/**
 * Logging from data-plane threads ([daemon] workers): a thread's Logger posts each event to
 * the main thread, which writes it with its own Logger, so every line goes to the one log (its
 * file, reopened on SIGHUP, or stderr) in the one format.
 */
import { LOG_LEVELS, type LogFields, type Logger, type LogLevel, loggerOf } from "../log.js";

/** One log event as it crosses threads; the stack of an error travels as text. */
export interface LogEvent {
  type: "log";
  level: LogLevel;
  /** The child logger's component, undefined for the root. */
  component: string | undefined;
  event: string;
  fields: LogFields;
  error: { message: string; stack: string | undefined } | undefined;
}

/** A thread's Logger: events at `level` and above are posted, the rest dropped here. */
export function forwardingLogger(post: (event: LogEvent) => void, level: LogLevel, component?: string): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const emit = (at: LogLevel, event: string, fields: LogFields = {}, error?: unknown) => {
    if (LOG_LEVELS.indexOf(at) < threshold) return;
    const cause = error instanceof Error ? { message: error.message, stack: error.stack } : undefined;
    post({ type: "log", level: at, component, event, fields, error: cause });
  };
  return loggerOf(emit, (name) => forwardingLogger(post, level, name));
}

/** The main thread's side: writes the threads' events with `log` (and its children). */
export class ThreadLogRelay {
  private readonly children = new Map<string, Logger>();

  constructor(private readonly log: Logger) {}

  write(message: LogEvent): void {
    const log = this.loggerFor(message.component);
    const { level, event, fields } = message;
    if (level === "ERROR") {
      let error: Error | undefined;
      if (message.error !== undefined) {
        error = new Error(message.error.message);
        if (message.error.stack !== undefined) error.stack = message.error.stack;
      }
      log.error(event, fields, error);
    } else if (level === "WARNING") log.warning(event, fields);
    else if (level === "INFO") log.info(event, fields);
    else log.debug(event, fields);
  }

  private loggerFor(component: string | undefined): Logger {
    if (component === undefined) return this.log;
    let log = this.children.get(component);
    if (log === undefined) {
      log = this.log.child(component);
      this.children.set(component, log);
    }
    return log;
  }
}
