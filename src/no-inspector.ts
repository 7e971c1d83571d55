/**
 * imageio never runs with Node's inspector: a debugger attached to the daemon or the proxy
 * reads every image and every ticket. Node opens it on SIGUSR1 (which any process of the same
 * user, or a log rotation script, may send) and on `--inspect*` from the command line or
 * NODE_OPTIONS, which the single executable honours too.
 */
import { isSea } from "node:sea";

/**
 * The single executable starts with `--disable-sigusr1` (scripts/package/build-sea.mjs) and
 * reads no options from its command line or NODE_OPTIONS: its inspector cannot have been
 * opened, so it never loads node:inspector (a tenth of an empty copy's start-up).
 */
function inspectorClosedFromStart(): boolean {
  return isSea() && process.execArgv.includes("--disable-sigusr1");
}

/** Ignores SIGUSR1: a JavaScript listener replaces the handler that would start the inspector. */
function ignoreInspectorSignal(): void {
  process.on("SIGUSR1", () => undefined);
}

/**
 * Makes the inspector unreachable for the life of the process: SIGUSR1 no longer opens it,
 * and one already open from `--inspect` (command line or NODE_OPTIONS) is closed at once.
 * (`--inspect-brk` and `--inspect-wait` stop before any of our code runs: the units clear
 * NODE_OPTIONS for that reason.)
 * @returns true when an open inspector was closed, so the caller can say so.
 */
export function disableInspector(): boolean {
  ignoreInspectorSignal();
  if (inspectorClosedFromStart()) return false;
  const inspector = process.getBuiltinModule("node:inspector");
  if (inspector.url() === undefined) return false;
  inspector.close();
  return true;
}

/**
 * True when this process was started to open the inspector: `--inspect*` (also `-brk`,
 * `-wait`, `-port`) in its own command line options or in NODE_OPTIONS (which the single
 * executable never reads: there only its own options count). The daemon and the proxy refuse
 * to run so; `--inspect-brk` has paused the process before this can run, which only clearing
 * NODE_OPTIONS (the units do) prevents.
 */
export function inspectorRequested(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions = isSea() ? "" : (process.env.NODE_OPTIONS ?? ""),
): boolean {
  const isInspect = (option: string) => /^--inspect(-brk|-wait|-port)?(=|$)/.test(option);
  return execArgv.some(isInspect) || nodeOptions.split(/\s+/).some(isInspect);
}
