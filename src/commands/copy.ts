/**
 * `imageio copy SRC DST`: an offline copy between files and block devices with direct I/O,
 * moving only data (src/io/copy.ts does the work). This module turns arguments into opened
 * backends, shows progress, handles Ctrl-C, and maps outcomes to exit statuses:
 * 0 done, 1 failed (the message names path, offset and errno), 2 usage error, 128 + signal
 * number when interrupted (130 for Ctrl-C).
 */
import { constants as fsConstants, type Stats } from "node:fs";
import { open, stat } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import { resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Options, SingleBar } from "cli-progress";
import { type Command, InvalidArgumentError as CommanderArgumentError, Option } from "commander";
import { BackendOpenError, CancelledError, ImageioError, systemErrorCode, UnsupportedUrlError } from "../errors.js";
import type { Backend } from "../io/backend.js";
import { DEFAULT_BUFFER_SIZE } from "../io/buffers.js";
import {
  type CopyOptions,
  type CopyProgress,
  type CopyResult,
  copy,
  DEFAULT_COPY_WORKERS,
  MAX_COPY_BUFFER_SIZE,
  MAX_COPY_WORKERS,
} from "../io/copy.js";
import { openBackend } from "../io/open.js";
import { formatSize, parseSize } from "../units.js";

type ProgressMode = "auto" | "bar" | "json" | "none";

/** Parsed options, as commander hands them to the action. */
export interface CopyCommandOptions {
  workers: number;
  bufferSize: number;
  sparse?: boolean;
  preallocate?: boolean;
  targetIsZero?: boolean;
  detectZeroes?: boolean;
  verify?: boolean;
  quiet?: boolean;
  progress: ProgressMode;
}

/** Schemes `imageio copy` accepts as URLs; https joins when the http backend lands. */
const COPY_SCHEMES = new Set(["file:", "nbd:"]);

/** A usage error found after commander parsed the line (same file twice, bad URL): exit 2. */
class UsageError extends Error {}

/** Adds `imageio copy` to the program. */
export function addCopyCommand(program: Command): void {
  program
    .command("copy")
    .description("copy a disk image between files and block devices with direct I/O, moving only data")
    .argument("<src>", "source file, block device, file: URL or nbd: URL (nbd:unix:/path[:exportname=NAME])")
    .argument("<dst>", "destination file, block device, file: or nbd: URL (a missing file is created)")
    .addOption(
      new Option("-w, --workers <n>", `parallel workers, 1 to ${MAX_COPY_WORKERS}`)
        .argParser(parseWorkers)
        .default(DEFAULT_COPY_WORKERS),
    )
    .addOption(
      new Option("-b, --buffer-size <size>", "bytes per read and write per worker (K, M, G suffixes)")
        .argParser(parseBufferSize)
        .default(DEFAULT_BUFFER_SIZE, formatSize(DEFAULT_BUFFER_SIZE).replace(".00 ", " ")),
    )
    .addOption(
      new Option("--sparse", "deallocate zero ranges of DST (default for regular files)").conflicts("preallocate"),
    )
    .addOption(new Option("--preallocate", "keep DST fully allocated: zero ranges are zeroed, not deallocated"))
    .addOption(new Option("--target-is-zero", "DST already reads as zeros: skip zero ranges (implied for a new file)"))
    .addOption(new Option("--detect-zeroes", "zero rather than write 4 KiB blocks of zeros (default)"))
    .addOption(new Option("--no-detect-zeroes", "write data blocks as read, even when they are zeros"))
    .addOption(new Option("--verify", "compare block checksums of SRC and DST after the copy"))
    .addOption(new Option("-q, --quiet", "print only errors (and JSON progress when asked for)"))
    .addOption(
      new Option("--progress <mode>", "auto: a bar on a terminal; json: one JSON object per line on stdout")
        .choices(["auto", "bar", "json", "none"])
        .default("auto"),
    )
    .addHelpText(
      "after",
      [
        "",
        "Example:",
        "  imageio copy /var/tmp/disk.raw /dev/vg0/lv-disk",
        "",
        "Exit status: 0 copied, 1 failed, 2 usage error, 130 interrupted (Ctrl-C).",
      ].join("\n"),
    )
    .action(runCopy);
}

function parseWorkers(text: string): number {
  const workers = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!(workers >= 1 && workers <= MAX_COPY_WORKERS)) {
    throw new CommanderArgumentError(`expected a whole number from 1 to ${MAX_COPY_WORKERS}`);
  }
  return workers;
}

function parseBufferSize(text: string): number {
  let size: number;
  try {
    size = parseSize(text);
  } catch (error) {
    throw new CommanderArgumentError(error instanceof Error ? error.message : String(error));
  }
  if (size < 4096 || size > MAX_COPY_BUFFER_SIZE || size % 4096 !== 0) {
    throw new CommanderArgumentError(`expected a multiple of 4 KiB from 4K to ${formatSize(MAX_COPY_BUFFER_SIZE)}`);
  }
  return size;
}

/** An image named on the command line. */
interface Target {
  /** As the user wrote it, for messages. */
  label: string;
  url: URL;
  /** The local path of a file: URL; undefined for an NBD export. */
  path: string | undefined;
}

function parseTarget(arg: string): Target {
  const label = `'${arg}'`;
  // Only "file:", "nbd:" and "scheme://" are URLs, so a relative path such as "disk:1.raw"
  // stays a path. NBD URLs are not hierarchical (nbd:unix:/path): the nbd backend parses them.
  if (/^nbds/i.test(arg)) throw new UsageError(`Unsupported URL ${label}: NBD over TLS (nbds) is not supported`);
  if (/^nbd:/i.test(arg)) return { label, url: parseUrlOrUsage(arg, label), path: undefined };
  if (!/^file:/i.test(arg) && !/^[a-z][a-z0-9+.-]*:\/\//i.test(arg)) {
    const url = pathToFileURL(resolve(arg));
    return { label, url, path: fileURLToPath(url) };
  }
  const url = parseUrlOrUsage(arg, label);
  if (!COPY_SCHEMES.has(url.protocol)) {
    throw new UsageError(`Unsupported URL ${label}: copy takes paths, file: and nbd: URLs`);
  }
  try {
    return { label, url, path: fileURLToPath(url) };
  } catch (error) {
    throw new UsageError(`Invalid file URL ${label}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function parseUrlOrUsage(arg: string, label: string): URL {
  try {
    return new URL(arg);
  } catch {
    throw new UsageError(`Invalid URL ${label}`);
  }
}

async function statOrUndefined(target: Target): Promise<Stats | undefined> {
  if (target.path === undefined) return undefined;
  try {
    return await stat(target.path);
  } catch (error) {
    const code = systemErrorCode(error);
    if (code === "ENOENT") return undefined;
    const reason = error instanceof Error ? error.message : String(error);
    throw new BackendOpenError(`Cannot access ${target.label}: ${reason}`, { cause: error });
  }
}

function sameImage(a: Stats, b: Stats): boolean {
  // Two device nodes (/dev/vg/lv and /dev/dm-3) name one device when their rdev matches.
  if (a.isBlockDevice() && b.isBlockDevice()) return a.rdev === b.rdev;
  return a.dev === b.dev && a.ino === b.ino;
}

/** Creates DST as an empty regular file; false when it already existed. */
async function createIfMissing(target: Target): Promise<boolean> {
  if (target.path === undefined) return false;
  try {
    const handle = await open(target.path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
    await handle.close();
    return true;
  } catch (error) {
    const code = systemErrorCode(error);
    if (code === "EEXIST") return false;
    const reason = error instanceof Error ? error.message : String(error);
    throw new BackendOpenError(`Cannot create ${target.label}: ${reason}`, { cause: error });
  }
}

/** The `imageio copy` action; sets process.exitCode rather than exiting, so output flushes. */
export async function runCopy(srcArg: string, dstArg: string, options: CopyCommandOptions): Promise<void> {
  const say = (text: string) => {
    if (!options.quiet) process.stderr.write(`${text}\n`);
  };
  const opened: Backend[] = [];
  const interrupt = new Interrupt();
  let reporter: ProgressReporter | undefined;
  let created: string | undefined;
  try {
    const src = parseTarget(srcArg);
    const dst = parseTarget(dstArg);
    const srcStat = await statOrUndefined(src);
    const dstStat = await statOrUndefined(dst);
    const sameExport = src.path === undefined && src.url.href === dst.url.href;
    if (sameExport || (srcStat !== undefined && dstStat !== undefined && sameImage(srcStat, dstStat))) {
      throw new UsageError(`${src.label} and ${dst.label} are the same image`);
    }
    const onDirectFallback = (reason: string) => say(`imageio copy: warning: ${reason}`);
    const srcBackend = await openBackend(src.url, { readonly: true, onDirectFallback });
    opened.push(srcBackend);
    if (dstStat === undefined && (await createIfMissing(dst))) created = dst.label;
    const dstBackend = await openBackend(dst.url, { onDirectFallback });
    opened.push(dstBackend);

    const size = await srcBackend.size();
    // A new file reads as zeros, so zero ranges need no work; preallocating it first with one
    // fallocate keeps that true while making every block allocated.
    if (created !== undefined && options.preallocate) await dstBackend.zero(0, size, { punchHole: false });
    const copyOptions: CopyOptions = {
      workers: options.workers,
      bufferSize: options.bufferSize,
      sparse: !options.preallocate,
      targetIsZero: created !== undefined || (options.targetIsZero ?? false),
      detectZeroes: options.detectZeroes ?? true,
      verify: options.verify ?? false,
      signal: interrupt.signal,
      srcName: src.label,
      dstName: dst.label,
    };
    reporter = await makeReporter(options);
    const progress = reporter;
    copyOptions.onProgress = (p) => progress.update(p);
    interrupt.onFirst = () => {
      progress.stop();
      say("imageio copy: stopping after the chunks in flight (Ctrl-C again to exit at once)");
    };
    interrupt.install();
    const started = performance.now();
    const result = await copy(srcBackend, dstBackend, copyOptions);
    reporter.stop();
    say(summary(src, dst, result, (performance.now() - started) / 1000));
    process.exitCode = 0;
  } catch (error) {
    reporter?.stop();
    process.exitCode = failureStatus(error, interrupt);
    process.stderr.write(`imageio copy: ${describeFailure(error)}\n`);
    if (process.exitCode === 2) process.stderr.write("(run 'imageio copy --help' for usage)\n");
    else if (created !== undefined)
      process.stderr.write(`imageio copy: ${created} was created by this copy and is incomplete\n`);
  } finally {
    interrupt.uninstall();
    await Promise.allSettled(opened.map((backend) => backend.close()));
  }
}

function failureStatus(error: unknown, interrupt: Interrupt): number {
  if (error instanceof CancelledError && interrupt.signalNumber !== undefined) return 128 + interrupt.signalNumber;
  return error instanceof UsageError || error instanceof UnsupportedUrlError ? 2 : 1;
}

function describeFailure(error: unknown): string {
  if (error instanceof ImageioError || error instanceof UsageError) return error.message;
  // Anything else is a bug or a system error we did not wrap: keep the stack for the report.
  if (error instanceof Error) return error.stack ?? error.message;
  return String(error);
}

function summary(src: Target, dst: Target, result: CopyResult, seconds: number): string {
  const rate = seconds > 0 ? result.size / seconds : 0;
  const lines = [
    `Copied ${src.label} to ${dst.label}: ${formatSize(result.size)} in ${seconds.toFixed(2)} s ` +
      `(${formatSize(rate)}/s); ${formatSize(result.dataBytes)} data, ${formatSize(result.zeroedBytes)} zeroed, ` +
      `${formatSize(result.skippedBytes)} skipped`,
  ];
  if (result.checksum !== undefined) {
    lines.push(`Verified: both have ${result.checksum.algorithm} block checksum ${result.checksum.checksum}`);
  }
  return lines.join("\n");
}

/**
 * SIGINT and SIGTERM: the first one stops the copy at the next chunk (the copy then flushes
 * and reports how far it got); a second one exits at once.
 */
class Interrupt {
  private readonly controller = new AbortController();
  signalNumber: number | undefined;
  onFirst: (() => void) | undefined;
  private readonly handler = (signal: NodeJS.Signals) => {
    const number = osConstants.signals[signal];
    if (this.signalNumber !== undefined) {
      process.stderr.write(`imageio copy: ${signal} again: exiting without waiting for the chunks in flight\n`);
      process.exit(128 + number);
    }
    this.signalNumber = number;
    this.onFirst?.();
    this.controller.abort();
  };

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  install(): void {
    process.on("SIGINT", this.handler);
    process.on("SIGTERM", this.handler);
  }

  uninstall(): void {
    process.off("SIGINT", this.handler);
    process.off("SIGTERM", this.handler);
  }
}

interface ProgressReporter {
  update(progress: CopyProgress): void;
  /** Ends the output (final line, bar removed from the cursor line); idempotent. */
  stop(): void;
}

async function makeReporter(options: CopyCommandOptions): Promise<ProgressReporter> {
  if (options.progress === "json") return new JsonReporter();
  if (options.quiet || options.progress === "none") return { update: () => undefined, stop: () => undefined };
  if (options.progress === "bar" || process.stderr.isTTY) {
    // Loaded only when drawn: scripts and --quiet runs start faster without it.
    const { SingleBar } = await import("cli-progress");
    return new BarReporter(new SingleBar(BarReporter.options(options.progress === "bar")));
  }
  return { update: () => undefined, stop: () => undefined };
}

/** Bytes per second over the last few seconds, so the rate follows changes in speed. */
class RateMeter {
  private samples: [number, number][] = [];

  constructor(private readonly windowMs = 3000) {}

  reset(): void {
    this.samples = [];
  }

  rate(done: number, now = performance.now()): number {
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - (this.samples[1]?.[0] ?? now) >= this.windowMs) this.samples.shift();
    const [t0, d0] = this.samples[0] ?? [now, done];
    return now > t0 ? Math.round(((done - d0) * 1000) / (now - t0)) : 0;
  }
}

/** `{"phase":"copy","done":…,"total":…,"rate":…}` lines on stdout, at most 4 a second. */
class JsonReporter implements ProgressReporter {
  private readonly meter = new RateMeter();
  private phase: CopyProgress["phase"] | undefined;
  private last = 0;
  private pending: string | undefined;
  private closed = false;

  constructor() {
    // A reader that goes away (`| head -1`) must not kill the copy: stop reporting instead.
    process.stdout.on("error", () => {
      this.closed = true;
    });
  }

  update(progress: CopyProgress): void {
    const now = performance.now();
    if (progress.phase !== this.phase) {
      this.phase = progress.phase;
      this.meter.reset();
      this.last = 0;
    }
    const line = JSON.stringify({ ...progress, rate: this.meter.rate(progress.done, now) });
    // The first and last line of each phase always go out; the ones between are throttled.
    if (now - this.last >= 250 || progress.done === progress.total || progress.done === 0) {
      this.write(line);
      this.last = now;
    } else {
      this.pending = line;
    }
  }

  stop(): void {
    if (this.pending !== undefined) this.write(this.pending);
  }

  private write(line: string): void {
    this.pending = undefined;
    if (!this.closed) process.stdout.write(`${line}\n`);
  }
}

/** A progress bar on stderr: bytes done and total, rate, and ETA. */
class BarReporter implements ProgressReporter {
  private readonly meter = new RateMeter();
  private phase: CopyProgress["phase"] | undefined;
  private running = false;
  private stopped = false;

  constructor(private readonly bar: SingleBar) {}

  static options(forced: boolean): Options {
    return {
      format: "{phase} |{bar}| {percentage}% | {doneText} / {totalText} | {rateText} | ETA {eta_formatted}",
      barsize: 30,
      fps: 5,
      etaBuffer: 50,
      noTTYOutput: forced,
      notTTYSchedule: 2000,
      stream: process.stderr,
    };
  }

  update(progress: CopyProgress): void {
    if (this.stopped) return;
    const payload = {
      phase: progress.phase === "copy" ? "copying  " : "verifying",
      doneText: formatSize(progress.done),
      totalText: formatSize(progress.phase === "copy" ? progress.total : progress.total / 2),
      rateText: `${formatSize(this.meter.rate(progress.done))}/s`,
    };
    if (progress.phase === "verify") payload.doneText = formatSize(progress.done / 2);
    if (progress.phase !== this.phase) {
      if (this.running) this.bar.stop();
      this.phase = progress.phase;
      this.meter.reset();
      this.bar.start(Math.max(progress.total, 1), progress.done, payload);
      this.running = true;
      return;
    }
    this.bar.update(progress.done, payload);
  }

  stop(): void {
    this.stopped = true;
    if (!this.running) return;
    this.running = false;
    this.bar.stop();
  }
}
