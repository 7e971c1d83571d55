/**
 * `imageio copy SRC DST`: copies between files, block devices, images on daemons and proxies
 * (`https://HOST:PORT/images/TICKET`: uploads and downloads), NBD exports (`nbd:` URLs) and
 * standard input/output (`-`), moving only data (src/io/copy.ts and src/io/stream-copy.ts do
 * the work); qcow2 and other formats go through a private qemu-nbd (src/io/qemu-nbd.ts). This
 * module turns arguments into opened backends after the safety checks (formats, devices in use), shows
 * progress, handles Ctrl-C, and maps outcomes to exit statuses: 0 done, 1 failed (the message
 * names the path or URL, and the errno or the remote's status), 2 usage error or refusal,
 * 128 + signal number when interrupted (130 for Ctrl-C).
 */
import type { Stats } from "node:fs";
import { constants as fsConstants } from "node:fs";
import { open } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import type { Options, SingleBar } from "cli-progress";
import { type Command, InvalidArgumentError as CommanderArgumentError, Option } from "commander";
import {
  BackendOpenError,
  CancelledError,
  InvalidArgumentError,
  systemErrorCode,
  UnsupportedUrlError,
} from "../errors.js";
import type { Backend, ChecksumResult } from "../io/backend.js";
import { DEFAULT_BUFFER_SIZE } from "../io/buffers.js";
import {
  CopyCancelledError,
  type CopyProgress,
  type CopyResult,
  copy,
  DEFAULT_COPY_WORKERS,
  MAX_COPY_BUFFER_SIZE,
  MAX_COPY_WORKERS,
  verifyCopy,
} from "../io/copy.js";
import { claimBlockDevice, type DeviceClaim } from "../io/device-use.js";
import type { ImageFormat } from "../io/image-format.js";
import { lendFirstClone } from "../io/lend-first-clone.js";
import { openBackend } from "../io/open.js";
import type { QemuNbdServer } from "../io/qemu-nbd.js";
import { shareWriter } from "../io/shared-writer.js";
import { type ByteSink, type ByteSource, openStdin, openStdout } from "../io/stdio.js";
import { copyFromSource, copyToSink, type StreamCopyOptions } from "../io/stream-copy.js";
import { formatSize, MiB, parseSize } from "../units.js";
import {
  checkDestinationFormat,
  checkSourceFormat,
  describeFailure,
  type Endpoint,
  FORMAT_CHOICES,
  type FormatChoice,
  parseEndpoint,
  sameNbdExport,
  statEndpoint,
  systemCaFile,
  UsageError,
} from "./copy-endpoints.js";

type ProgressMode = "auto" | "bar" | "json" | "none";

/**
 * The buffer size of uploads and downloads unless --buffer-size says otherwise: requests of
 * 4 MiB keep as many bytes in flight as the network needs, and measured 20 MiB less peak
 * memory than 8 MiB at the same speed (npm run bench -- client).
 */
const REMOTE_BUFFER_SIZE = 4 * MiB;

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
  srcFormat: FormatChoice;
  dstFormat: FormatChoice;
  caFile?: string;
  insecure?: boolean;
}

/** Adds `imageio copy` to the program. */
export function addCopyCommand(program: Command): void {
  program
    .command("copy")
    .description(
      "copy a disk image between files (raw, qcow2), block devices, daemons (upload, download) and NBD exports, moving only data",
    )
    .argument(
      "<src>",
      "source: file, block device, file: URL, https://HOST:PORT/images/TICKET, nbd: URL (nbd:unix:/path[:exportname=NAME], nbd:HOST:PORT, nbd://HOST:PORT/NAME), or - (stdin)",
    )
    .argument(
      "<dst>",
      "destination: the same kinds, or - (stdout); a missing file is created, an existing one ends at the source's size",
    )
    .addOption(
      new Option("-w, --workers <n>", `parallel workers (connections to a daemon), 1 to ${MAX_COPY_WORKERS}`)
        .argParser(parseWorkers)
        .default(DEFAULT_COPY_WORKERS),
    )
    .addOption(
      new Option(
        "-b, --buffer-size <size>",
        `bytes per read and write per worker (K, M, G suffixes; ${formatSize(REMOTE_BUFFER_SIZE).replace(".00 ", " ")} when a daemon is SRC or DST)`,
      )
        .argParser(parseBufferSize)
        .default(DEFAULT_BUFFER_SIZE, formatSize(DEFAULT_BUFFER_SIZE).replace(".00 ", " ")),
    )
    .addOption(
      new Option(
        "--src-format <format>",
        "auto: a local file's header decides (qcow2 is read through qemu-nbd); a device, URL or - is raw",
      )
        .choices(FORMAT_CHOICES)
        .default("auto"),
    )
    .addOption(
      new Option(
        "--dst-format <format>",
        "auto: an existing file's header decides, a new *.qcow2 is qcow2; raw also overwrites an image of another format",
      )
        .choices(FORMAT_CHOICES)
        .default("auto"),
    )
    .addOption(new Option("--ca-file <file>", "CA bundle that signed the daemon's certificate (default: the system's)"))
    .addOption(new Option("--insecure", "do not verify the daemon's certificate (testing only)").conflicts("caFile"))
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
      new Option(
        "--progress <mode>",
        'auto: a bar on a terminal; json: one JSON object per line on stdout, the last {"phase":"done",…}',
      )
        .choices(["auto", "bar", "json", "none"])
        .default("auto"),
    )
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  imageio copy /var/tmp/disk.raw /dev/vg0/lv-disk",
        "  imageio copy disk.raw https://host:54322/images/TICKET --ca-file ca.pem     # upload",
        "  imageio copy https://host:54322/images/TICKET disk.raw --ca-file ca.pem     # download",
        "  imageio copy disk.qcow2 https://host:54322/images/TICKET --ca-file ca.pem   # upload the guest data",
        "  imageio copy https://host:54322/images/TICKET out.qcow2 --ca-file ca.pem    # download as qcow2",
        "  imageio copy nbd:unix:/run/vdsm/nbd/ID.sock disk.raw",
        "  imageio copy https://host:54322/images/TICKET - | gzip > disk.raw.gz",
        "  zcat disk.raw.gz | imageio copy - https://host:54322/images/TICKET",
        "",
        "A regular-file DST ends exactly the source's size: a larger existing file is truncated",
        "(the summary says so). A block device or a daemon's image keeps its size; the source",
        "must fit, and bytes past its end are left as they are. A block device that is mounted or",
        "held (device-mapper, swap, an exclusive opener) is never written.",
        "",
        "A qcow2 (or other non-raw) file is read and written as the guest sees it, through a",
        "qemu-nbd that copy starts on a private socket and stops; a new DST named *.qcow2 (or with",
        "--dst-format qcow2) is created as qcow2 of the source's size. Raw bytes never go over an",
        "existing image of another format: only --dst-format raw overwrites it with raw bytes.",
        "An nbd: URL is an export's guest data; the copy opens at most --workers connections to it.",
        "",
        "Exit status: 0 copied, 1 failed, 2 usage error or refused, 130 interrupted (Ctrl-C).",
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

/**
 * The qemu-nbd module, loaded only for images that are not raw: a raw copy starts without
 * node:child_process and node:net (issue 14: start-up is most of a small copy's time).
 */
const loadQemuNbd = () => import("../io/qemu-nbd.js");

function sameImage(a: Stats, b: Stats): boolean {
  // Two device nodes (/dev/vg/lv and /dev/dm-3) name one device when their rdev matches.
  if (a.isBlockDevice() && b.isBlockDevice()) return a.rdev === b.rdev;
  return a.dev === b.dev && a.ino === b.ino;
}

/**
 * Whether this copy will run calls on a native thread (src/io/native-threads.ts): mapping the
 * data of a raw file that has some (a file without allocated blocks is mapped by one lseek on
 * the main thread), or zeroing a raw destination that may hold data (a device, an existing
 * file with blocks). Images behind qemu-nbd, daemons and streams need none.
 */
function needsNativeThread(
  srcStat: Stats | undefined,
  srcFormat: ImageFormat,
  dstStat: Stats | undefined,
  dstFormat: ImageFormat,
): boolean {
  const holdsData = (info: Stats | undefined, format: ImageFormat) =>
    info !== undefined && format === "raw" && (info.isBlockDevice() || info.blocks > 0);
  return holdsData(srcStat, srcFormat) || holdsData(dstStat, dstFormat);
}

/** Creates DST as an empty regular file; false when it already existed. */
async function createIfMissing(target: Endpoint & { kind: "local" }): Promise<boolean> {
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

/** What the summary and the final JSON record report. */
interface Outcome {
  result: CopyResult;
  copySeconds: number;
  verifySeconds: number;
  /** The size of a regular-file destination before the copy shrank it. */
  truncatedFrom?: number;
  /** Bytes of a fixed-size destination past the source's end, left as they were. */
  untouched: number;
}

/** The `imageio copy` action; sets process.exitCode rather than exiting, so output flushes. */
export async function runCopy(
  srcArg: string,
  dstArg: string,
  options: CopyCommandOptions,
  command?: Command,
): Promise<void> {
  const say = (text: string) => {
    if (!options.quiet) process.stderr.write(`${text}\n`);
  };
  const opened: Backend[] = [];
  const servers: QemuNbdServer[] = [];
  const interrupt = new Interrupt();
  let reporter: ProgressReporter | undefined;
  let created: string | undefined;
  let claim: DeviceClaim | undefined;
  let endpoints: Endpoint[] = [];
  let input: ByteSource | undefined;
  let output: ByteSink | undefined;
  try {
    const src = parseEndpoint(srcArg, "source");
    const dst = parseEndpoint(dstArg, "destination");
    endpoints = [src, dst];
    if (src.kind === "stdio" && dst.kind === "stdio")
      throw new UsageError("Copying standard input to standard output: use cat");
    if (dst.kind === "stdio" && options.progress === "json") {
      throw new UsageError("--progress json writes to standard output, which is the destination here");
    }
    if (options.verify && (src.kind === "stdio" || dst.kind === "stdio")) {
      throw new UsageError("--verify needs to read both images again: not possible with standard input or output");
    }
    const srcStat = await statEndpoint(src);
    const dstStat = await statEndpoint(dst);
    if ((srcStat !== undefined && dstStat !== undefined && sameImage(srcStat, dstStat)) || sameNbdExport(src, dst)) {
      throw new UsageError(`${src.label} and ${dst.label} are the same image`);
    }
    const srcFormat = await checkSourceFormat(src, srcStat, options.srcFormat);
    const dstFormat = await checkDestinationFormat(dst, dstStat, options.dstFormat);
    if (dst.kind === "local" && dstStat?.isBlockDevice()) claim = await claimBlockDevice(dst.path, dst.label);
    const preallocateLocal = dst.kind === "local" && dstFormat.format === "raw" && (options.preallocate ?? false);
    if (needsNativeThread(srcStat, srcFormat, dstStat, dstFormat.format) || preallocateLocal) {
      // Booted while the images open, so the first extents walk or zeroing need not wait for it.
      (await import("../io/native-threads.js")).warmNativeThreads();
    }

    const onDirectFallback = (reason: string) => say(`imageio copy: warning: ${reason}`);
    const remoteOptions = {
      ...(options.insecure ? { insecure: true } : {}),
      ...(await caFileOption(options, [src, dst])),
    };
    const openEndpoint = async (
      endpoint: Exclude<Endpoint, { kind: "stdio" }>,
      readonly: boolean,
      format: ImageFormat,
    ) => {
      let backend: Backend;
      if (endpoint.kind === "local" && format !== "raw") {
        // The guest's data, through a qemu-nbd of our own that admits one client per worker.
        const { startQemuNbd } = await loadQemuNbd();
        const server = await startQemuNbd({ path: endpoint.path, format, readonly, connections: options.workers });
        servers.push(server);
        backend = lendFirstClone(await openBackend(server.url, { readonly, maxConnections: options.workers }));
      } else if (endpoint.kind === "nbd") {
        // A server admits a fixed number of clients: the copy must not need one more than its workers.
        backend = lendFirstClone(await openBackend(endpoint.url, { readonly }));
      } else {
        backend = await openBackend(endpoint.url, { readonly, onDirectFallback, ...remoteOptions });
      }
      opened.push(backend);
      return backend;
    };

    // Standard input or output first: a terminal there is a usage error, found before any open.
    const stdio = async <T>(open: () => Promise<T>): Promise<T> =>
      open().catch((error: unknown) => {
        throw error instanceof InvalidArgumentError ? new UsageError(error.message) : error;
      });
    if (src.kind === "stdio") input = await stdio(openStdin);
    if (dst.kind === "stdio") output = await stdio(openStdout);
    const srcBackend = src.kind === "stdio" ? undefined : await openEndpoint(src, true, srcFormat);
    if (dst.kind === "local" && dstFormat.create) {
      // A new qcow2 of the source's size; a stream of unknown size cannot be given one.
      if (srcBackend === undefined) {
        throw new UsageError(
          `Creating ${dst.label} as qcow2 needs the source's size, and standard input has none: create it first ` +
            `(qemu-img create -f qcow2 ${dst.label} SIZE), or pass --dst-format raw`,
        );
      }
      const { createQcow2 } = await loadQemuNbd();
      await createQcow2(dst.path, await srcBackend.size());
      created = dst.label;
    } else if (dst.kind === "local" && dstStat === undefined && (await createIfMissing(dst))) created = dst.label;
    const dstOpened = dst.kind === "stdio" ? undefined : await openEndpoint(dst, false, dstFormat.format);
    // A daemon allowing fewer writers than workers (a file ticket allows one), or an NBD
    // export allowing one (no CAN_MULTI_CONN), still gets one writing connection, while the
    // other workers read ahead.
    const writers = dstOpened?.caps.maxWriters ?? 0;
    const throughNbd = dst.kind === "nbd" || (dst.kind === "local" && dstFormat.format !== "raw");
    const dstBackend =
      dstOpened !== undefined && ((dst.kind === "remote" && writers < options.workers) || (throughNbd && writers === 1))
        ? shareWriter(dstOpened, options.workers)
        : dstOpened;
    const dstSizeBefore = dstBackend === undefined ? 0 : await dstBackend.size();

    reporter = await makeReporter(options);
    const progress = reporter;
    interrupt.onFirst = () => {
      progress.stop();
      say("imageio copy: stopping after the chunks in flight (Ctrl-C again to exit at once)");
    };
    interrupt.install();
    const remote = src.kind === "remote" || dst.kind === "remote";
    const bufferSize =
      remote && command?.getOptionValueSource("bufferSize") !== "cli" ? REMOTE_BUFFER_SIZE : options.bufferSize;
    const streamOptions: StreamCopyOptions = {
      workers: options.workers,
      bufferSize,
      sparse: !options.preallocate,
      targetIsZero: created !== undefined || (options.targetIsZero ?? false),
      detectZeroes: options.detectZeroes ?? true,
      signal: interrupt.signal,
      onProgress: (p) => progress.update(p),
      srcName: src.label,
      dstName: dst.label,
    };

    const started = monotonicSeconds();
    let result: CopyResult;
    let untouched = 0;
    if (input !== undefined && dstBackend !== undefined) {
      const streamed = await copyFromSource(input, dstBackend, streamOptions);
      result = streamed;
      untouched = streamed.untouchedBytes;
    } else if (srcBackend !== undefined && output !== undefined) {
      result = await copyToSink(srcBackend, output, streamOptions);
    } else if (srcBackend !== undefined && dstBackend !== undefined) {
      const size = await srcBackend.size();
      // A new file reads as zeros, so zero ranges need no work; preallocating it first with one
      // fallocate keeps that true while making every block allocated.
      if (created !== undefined && options.preallocate) await dstBackend.zero(0, size, { punchHole: false });
      result = await copy(srcBackend, dstBackend, { ...streamOptions, verify: false });
      if (!dstBackend.growable) untouched = Math.max(0, dstSizeBefore - size);
    } else {
      throw new UsageError("Copying standard input to standard output: use cat");
    }
    const copySeconds = monotonicSeconds() - started;
    const outcome: Outcome = { result, copySeconds, verifySeconds: 0, untouched };
    if (dstBackend?.growable && created === undefined && dstSizeBefore > result.size) {
      outcome.truncatedFrom = dstSizeBefore;
    }
    if (options.verify && srcBackend !== undefined && dstBackend !== undefined) {
      const verifyStarted = monotonicSeconds();
      result.checksum = await verify(srcBackend, dstBackend, result.size, src, dst, interrupt.signal, (p) =>
        progress.update(p),
      );
      outcome.verifySeconds = monotonicSeconds() - verifyStarted;
    }
    reporter.stop();
    reporter.done?.(doneRecord(outcome));
    say(summary(src, dst, outcome));
    process.exitCode = 0;
  } catch (error) {
    reporter?.stop();
    process.exitCode = failureStatus(error, interrupt);
    process.stderr.write(`imageio copy: ${describeFailure(error, endpoints)}\n`);
    if (process.exitCode === 2) process.stderr.write("(run 'imageio copy --help' for usage)\n");
    else if (created !== undefined)
      process.stderr.write(`imageio copy: ${created} was created by this copy and is incomplete\n`);
  } finally {
    interrupt.uninstall();
    await Promise.allSettled([...opened.map((backend) => backend.close()), input?.close(), output?.close()]);
    // After the backends: qemu-nbd writes its qcow2 metadata back once its clients are gone.
    await Promise.allSettled(servers.map((server) => server.stop()));
    await claim?.release();
  }
}

/** --ca-file, or the system's bundle when a daemon is involved and no file was named. */
async function caFileOption(options: CopyCommandOptions, endpoints: Endpoint[]): Promise<{ caFile?: string }> {
  if (options.caFile !== undefined) return { caFile: options.caFile };
  if (options.insecure || !endpoints.some((endpoint) => endpoint.kind === "remote")) return {};
  const system = await systemCaFile();
  return system === undefined ? {} : { caFile: system };
}

/**
 * Compares block checksums of both images. A daemon computes its own (GET …/checksum), so
 * verifying an upload or download does not move the data again.
 */
async function verify(
  src: Backend,
  dst: Backend,
  size: number,
  srcEndpoint: Endpoint,
  dstEndpoint: Endpoint,
  signal: AbortSignal,
  onProgress: (progress: CopyProgress) => void,
): Promise<ChecksumResult> {
  try {
    if ((src.checksum !== undefined || dst.checksum !== undefined) && (await dst.size()) === size) {
      const { blkhash, DEFAULT_CHECKSUM_ALGORITHM, DEFAULT_CHECKSUM_BLOCK_SIZE } = await import("../io/blkhash.js");
      const hashed = [0, 0];
      const sum = async (backend: Backend, side: 0 | 1): Promise<ChecksumResult> => {
        if (backend.checksum !== undefined) {
          const remote = await backend.checksum(DEFAULT_CHECKSUM_ALGORITHM, DEFAULT_CHECKSUM_BLOCK_SIZE);
          hashed[side] = size;
          onProgress({ phase: "verify", done: (hashed[0] ?? 0) + (hashed[1] ?? 0), total: 2 * size });
          return remote;
        }
        return blkhash(backend, {
          signal,
          onProgress: (bytes) => {
            hashed[side] = bytes;
            onProgress({ phase: "verify", done: (hashed[0] ?? 0) + (hashed[1] ?? 0), total: 2 * size });
          },
        });
      };
      const [srcSum, dstSum] = await Promise.all([sum(src, 0), sum(dst, 1)]);
      if (srcSum.checksum !== dstSum.checksum) {
        const { VerifyError } = await import("../errors.js");
        throw new VerifyError(
          `Verification failed: ${dstEndpoint.label} differs from ${srcEndpoint.label} ` +
            `(${srcSum.algorithm} block checksum ${srcSum.checksum} != ${dstSum.checksum})`,
        );
      }
      return srcSum;
    }
    return await verifyCopy(src, dst, size, {
      signal,
      onProgress: (done) => onProgress({ phase: "verify", done, total: 2 * size }),
      srcName: srcEndpoint.label,
      dstName: dstEndpoint.label,
    });
  } catch (error) {
    if (!(error instanceof CancelledError)) throw error;
    throw new CopyCancelledError(
      `Copy completed (${formatSize(size)}, flushed) but verification was interrupted`,
      size,
      size,
      size,
    );
  }
}

function failureStatus(error: unknown, interrupt: Interrupt): number {
  if (error instanceof CancelledError && interrupt.signalNumber !== undefined) return 128 + interrupt.signalNumber;
  return error instanceof UsageError || error instanceof UnsupportedUrlError ? 2 : 1;
}

function summary(src: Endpoint, dst: Endpoint, outcome: Outcome): string {
  const { result, copySeconds } = outcome;
  // The rate is the copy's own: verification reads both images again and is timed apart.
  const rate = copySeconds > 0 ? result.size / copySeconds : 0;
  const lines = [
    `Copied ${src.label} to ${dst.label}: ${formatSize(result.size)} in ${copySeconds.toFixed(2)} s ` +
      `(${formatSize(rate)}/s); ${formatSize(result.dataBytes)} data, ${formatSize(result.zeroedBytes)} zeroed, ` +
      `${formatSize(result.skippedBytes)} skipped`,
  ];
  if (outcome.truncatedFrom !== undefined) {
    lines.push(`${dst.label} truncated from ${formatSize(outcome.truncatedFrom)} to ${formatSize(result.size)}`);
  }
  if (outcome.untouched > 0) {
    lines.push(
      `The last ${formatSize(outcome.untouched)} of ${dst.label}, past the source's end, were left as they were`,
    );
  }
  if (result.checksum !== undefined) {
    lines.push(
      `Verified: both have ${result.checksum.algorithm} block checksum ${result.checksum.checksum} ` +
        `(${outcome.verifySeconds.toFixed(2)} s)`,
    );
  }
  return lines.join("\n");
}

/** The last JSON progress record: what was done, in bytes and seconds. */
function doneRecord(outcome: Outcome): Record<string, unknown> {
  const { result } = outcome;
  return {
    phase: "done",
    size: result.size,
    copied: result.dataBytes,
    zeroed: result.zeroedBytes,
    skipped: result.skippedBytes,
    elapsed: round(outcome.copySeconds + outcome.verifySeconds),
    copy_seconds: round(outcome.copySeconds),
    workers: result.workers,
    rate: outcome.copySeconds > 0 ? Math.round(result.size / outcome.copySeconds) : 0,
    ...(outcome.truncatedFrom === undefined ? {} : { truncated_from: outcome.truncatedFrom }),
    ...(result.checksum === undefined
      ? {}
      : { verify_seconds: round(outcome.verifySeconds), checksum: result.checksum }),
  };
}

const round = (seconds: number) => Math.round(seconds * 1000) / 1000;

/**
 * Seconds on a monotonic clock. Not performance.now(): the global loads node:perf_hooks on
 * first use, milliseconds of an empty image's copy (issue 14); the progress output, which
 * runs longer, may use it.
 */
const monotonicSeconds = () => Number(process.hrtime.bigint()) / 1e9;

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
  /** Writes the final record of a successful copy (JSON progress only). */
  done?(record: Record<string, unknown>): void;
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

  done(record: Record<string, unknown>): void {
    this.write(JSON.stringify(record));
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
