/**
 * Copies one image to another over the Backend interface: file→file and device copies today,
 * uploads and downloads once an http backend exists, with no change here.
 *
 * The source's zero extents are never read: the destination range is zeroed (punched when
 * sparse) or left alone when the destination is known to read as zeros. Data extents are read
 * and written in buffer-size chunks by N workers, each with its own source and destination
 * handle and one aligned buffer, so memory is bounded by workers × buffer size whatever the
 * image size, and reads of one chunk overlap writes of another. Data that reads as zeros is
 * zeroed instead of written, 4 KiB at a time, like `qemu-img convert -S 4k`.
 */

import { CancelledError, InvalidArgumentError, NotSupportedError, OutOfRangeError, VerifyError } from "../errors.js";
import { formatSize, GiB } from "../units.js";
import {
  alignDown,
  alignUp,
  type Backend,
  type ByteRange,
  checkByteCount,
  type DirtyExtent,
  type ZeroExtent,
} from "./backend.js";
import type { BlkhashResult } from "./blkhash.js";
import { BUFFER_ALIGNMENT, DEFAULT_BUFFER_SIZE } from "./buffers.js";
import { BackendFilter } from "./filter.js";
import { allocAligned } from "./native.js";

export const DEFAULT_COPY_WORKERS = 4;
export const MAX_COPY_WORKERS = 64;
/** Largest buffer we accept: workers × this is the copy's memory. */
export const MAX_COPY_BUFFER_SIZE = GiB;

/**
 * Every task starts at a multiple of this, so no two workers ever touch the same block of a
 * device with sectors up to 4096 bytes (the aligned wrapper would read-modify-write it), and
 * zero detection works on whole 4 KiB blocks like `qemu-img convert -S 4k`.
 */
const GRANULE = BUFFER_ALIGNMENT;

/**
 * Zero extents are zeroed in pieces of at most this much, so progress moves and Ctrl-C is
 * honoured while a large device range is zeroed (BLKZEROOUT may write the zeros for real).
 */
const ZERO_STEP = GiB;

export interface CopyProgress {
  /** "copy" while data moves; "verify" while checksums are computed (total is then 2 × size). */
  phase: "copy" | "verify";
  /** Bytes handled so far: copied, zeroed or skipped; in "verify", bytes hashed on both sides. */
  done: number;
  total: number;
}

export interface CopyOptions {
  /** Parallel workers, each with its own backend handles and buffer (default 4, at most 64). */
  workers?: number;
  /** Bytes per read and write, a multiple of 4096 (default 8 MiB). */
  bufferSize?: number;
  /** Zero the destination by deallocating (punching holes) where it can (default true). */
  sparse?: boolean;
  /** The destination already reads as zeros: zero ranges are not touched at all (default false). */
  targetIsZero?: boolean;
  /** Zero, rather than write, 4 KiB blocks of data that read as zeros (default true). */
  detectZeroes?: boolean;
  /** Flush the destination at the end, and after an interruption (default true). */
  flush?: boolean;
  /** Compare block-hash checksums of both images after the copy (default false). */
  verify?: boolean;
  /** Stops the copy at the next chunk: what was written is flushed, then CopyCancelledError. */
  signal?: AbortSignal;
  /** Called after each chunk; cheap calls, so callers throttle their own output. */
  onProgress?: (progress: CopyProgress) => void;
  /** How messages name the images (a path or URL); default "source" and "destination". */
  srcName?: string;
  dstName?: string;
}

export interface CopyResult {
  /** Bytes copied: the source's size. */
  size: number;
  /** Bytes read from the source and written to the destination. */
  dataBytes: number;
  /** Bytes zeroed on the destination (zero extents and data detected as zeros). */
  zeroedBytes: number;
  /** Bytes left alone because the destination already read as zeros. */
  skippedBytes: number;
  /** Workers that ran (the requested number, capped by what the backends allow). */
  workers: number;
  /** The source's checksum, equal to the destination's, when verify was asked for. */
  checksum?: BlkhashResult;
}

/** The copy stopped on request; `copiedUpTo` bytes from the start are known to be copied. */
export class CopyCancelledError extends CancelledError {
  constructor(
    message: string,
    readonly done: number,
    readonly total: number,
    readonly copiedUpTo: number,
  ) {
    super(message);
  }
}

/** One unit of work: read and write data, zero, or skip `[start, start + length)`. */
interface Task {
  start: number;
  length: number;
  kind: "data" | "zero" | "skip";
}

interface ResolvedOptions {
  workers: number;
  bufferSize: number;
  sparse: boolean;
  targetIsZero: boolean;
  detectZeroes: boolean;
  flush: boolean;
  srcName: string;
  dstName: string;
}

/**
 * Copies the image behind `src` to `dst`. A growable destination (a regular file) is given the
 * source's size; a fixed one (a block device) must be at least as large, and bytes past the
 * source's size are left as they are.
 * @throws InvalidArgumentError for bad options; OutOfRangeError when `dst` is too small or
 *   `src` shrinks while copied; NotSupportedError when `dst` is read-only; the backends'
 *   errors (BackendIoError names path, offset and errno); CopyCancelledError when `signal`
 *   aborts; VerifyError when `verify` finds different checksums.
 */
export async function copy(src: Backend, dst: Backend, options: CopyOptions = {}): Promise<CopyResult> {
  const opts = resolveOptions(options);
  if (dst.readonly) throw new NotSupportedError(`Cannot copy to ${opts.dstName}: it is opened read-only`);
  const size = await src.size();
  await prepareDestination(dst, size, opts);

  // A growable backend limits writers because concurrent writes past its end race on growth;
  // the destination now has its final size, so every write lands inside it.
  const writers = dst.growable ? MAX_COPY_WORKERS : dst.caps.maxWriters;
  const workerCount = Math.max(1, Math.min(opts.workers, src.caps.maxReaders, writers));

  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const progress = new ProgressTracker(size, options.onProgress);
  const stats = { dataBytes: 0, zeroedBytes: 0, skippedBytes: 0 };
  const tasks = planTasks(src, size, opts);
  let failure: { error: unknown } | undefined;

  try {
    if (options.signal?.aborted) stop.abort();
    progress.report();
    const workers: Worker[] = [];
    try {
      for (let i = 0; i < workerCount && !stop.signal.aborted; i++) workers.push(new Worker(src, dst, opts, stats));
      await Promise.all(
        workers.map(async (worker) => {
          try {
            while (!stop.signal.aborted) {
              const next = await tasks.next();
              if (next.done) return;
              progress.start(next.value);
              if (stop.signal.aborted) return;
              await worker.run(next.value);
              progress.finish(next.value);
            }
          } catch (error) {
            failure ??= { error };
            stop.abort();
          }
        }),
      );
    } catch (error) {
      failure ??= { error };
    } finally {
      await tasks.return(undefined);
      await Promise.allSettled(workers.map((worker) => worker.close()));
    }
    if (failure !== undefined) throw failure.error;
    // Interrupted or not, what was written is made durable before we report.
    if (opts.flush) await dst.flush();
    if (stop.signal.aborted) {
      const { done, copiedUpTo } = progress;
      throw new CopyCancelledError(
        `Copy interrupted after ${formatSize(done)} of ${formatSize(size)} (${percent(done, size)}); ` +
          `the first ${copiedUpTo} bytes of ${opts.dstName} are copied`,
        done,
        size,
        copiedUpTo,
      );
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
  }

  const result: CopyResult = { size, ...stats, workers: workerCount };
  if (options.verify) {
    const verifyOptions: VerifyOptions = { srcName: opts.srcName, dstName: opts.dstName };
    if (options.signal !== undefined) verifyOptions.signal = options.signal;
    const onProgress = options.onProgress;
    if (onProgress !== undefined) {
      verifyOptions.onProgress = (done) => onProgress({ phase: "verify", done, total: 2 * size });
    }
    try {
      result.checksum = await verifyCopy(src, dst, size, verifyOptions);
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
  return result;
}

export interface VerifyOptions {
  signal?: AbortSignal;
  /** Bytes hashed so far, both images together (0 to 2 × size). */
  onProgress?: (done: number) => void;
  srcName?: string;
  dstName?: string;
}

/**
 * Computes the block-hash checksums (src/io/blkhash) of the first `size` bytes of both images
 * at once and compares them.
 * @returns the checksum both share.
 * @throws VerifyError naming both checksums when they differ; the backends' errors;
 *   CancelledError when `signal` aborts.
 */
export async function verifyCopy(
  src: Backend,
  dst: Backend,
  size: number,
  options: VerifyOptions = {},
): Promise<BlkhashResult> {
  checkByteCount("size", size);
  const srcName = options.srcName ?? "source";
  const dstName = options.dstName ?? "destination";
  // Loaded on demand: the hash implementations are the slowest part of starting `imageio copy`.
  const { blkhash } = await import("./blkhash.js");
  const hashed = [0, 0];
  const hash = async (backend: Backend, side: 0 | 1): Promise<BlkhashResult> => {
    const view = (await backend.size()) === size ? backend : new SizeLimitedView(backend, size);
    return blkhash(view, {
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      onProgress: (bytes) => {
        hashed[side] = bytes;
        options.onProgress?.((hashed[0] ?? 0) + (hashed[1] ?? 0));
      },
    });
  };
  const [srcSum, dstSum] = await Promise.all([hash(src, 0), hash(dst, 1)]);
  if (srcSum.checksum !== dstSum.checksum) {
    throw new VerifyError(
      `Verification failed: ${dstName} differs from ${srcName} in the first ${size} bytes ` +
        `(${srcSum.algorithm} block checksum ${srcSum.checksum} != ${dstSum.checksum})`,
    );
  }
  return srcSum;
}

function resolveOptions(options: CopyOptions): ResolvedOptions {
  const workers = options.workers ?? DEFAULT_COPY_WORKERS;
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > MAX_COPY_WORKERS) {
    throw new InvalidArgumentError(`Invalid number of workers: ${workers} (expected 1 to ${MAX_COPY_WORKERS})`);
  }
  const bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (
    !Number.isSafeInteger(bufferSize) ||
    bufferSize < GRANULE ||
    bufferSize > MAX_COPY_BUFFER_SIZE ||
    bufferSize % GRANULE !== 0
  ) {
    throw new InvalidArgumentError(
      `Invalid buffer size: ${bufferSize} (expected a multiple of ${GRANULE} from ${formatSize(GRANULE)} to ${formatSize(MAX_COPY_BUFFER_SIZE)})`,
    );
  }
  return {
    workers,
    bufferSize,
    sparse: options.sparse ?? true,
    targetIsZero: options.targetIsZero ?? false,
    detectZeroes: options.detectZeroes ?? true,
    flush: options.flush ?? true,
    srcName: options.srcName ?? "source",
    dstName: options.dstName ?? "destination",
  };
}

async function prepareDestination(dst: Backend, size: number, opts: ResolvedOptions): Promise<void> {
  const dstSize = await dst.size();
  if (dstSize === size) return;
  if (dst.growable) {
    await dst.resize(size);
    return;
  }
  if (dstSize < size) {
    throw new OutOfRangeError(
      `${opts.dstName} is too small: it holds ${dstSize} bytes (${formatSize(dstSize)}), ` +
        `${opts.srcName} needs ${size} bytes (${formatSize(size)})`,
    );
  }
}

/**
 * Turns the source's extents into tasks. Every task starts on a GRANULE boundary: the parts of
 * a zero extent that do not cover whole granules are copied as data (they read as zeros, so
 * the result is the same). Data is cut at multiples of the buffer size, so a worker's buffer
 * always holds one whole task.
 */
async function* planTasks(src: Backend, size: number, opts: ResolvedOptions): AsyncGenerator<Task> {
  let dataStart = 0; // start of data not yet handed out; always a granule boundary
  let position = 0; // end of the extents seen so far

  function* dataUpTo(end: number): Generator<Task> {
    while (dataStart < end) {
      const chunkEnd = Math.min(end, alignDown(dataStart, opts.bufferSize) + opts.bufferSize);
      yield { start: dataStart, length: chunkEnd - dataStart, kind: "data" };
      dataStart = chunkEnd;
    }
  }

  const extents: AsyncIterable<ZeroExtent> | ZeroExtent[] = src.caps.extents
    ? src.extents("zero")
    : [{ start: 0, length: size, zero: false, hole: false }];
  for await (const extent of extents) {
    if (extent.start >= size) break;
    const end = Math.min(extent.start + extent.length, size);
    if (extent.start !== position) {
      throw new OutOfRangeError(
        `${opts.srcName} reported an extent at offset ${extent.start}, expected one at ${position}`,
      );
    }
    position = end;
    if (!extent.zero) continue;
    const zeroStart = alignUp(extent.start, GRANULE);
    const zeroEnd = end === size ? size : alignDown(end, GRANULE);
    if (zeroEnd <= zeroStart) continue;
    yield* dataUpTo(zeroStart);
    if (opts.targetIsZero) {
      yield { start: zeroStart, length: zeroEnd - zeroStart, kind: "skip" };
    } else {
      for (let start = zeroStart; start < zeroEnd; start += ZERO_STEP) {
        yield { start, length: Math.min(ZERO_STEP, zeroEnd - start), kind: "zero" };
      }
    }
    dataStart = zeroEnd;
  }
  // Extents must cover the image; whatever a backend left out is copied as data.
  yield* dataUpTo(size);
}

const zeroGranule = Buffer.alloc(GRANULE);

/**
 * One worker: its own handles on both images and one aligned buffer. The handles are cloned
 * at the first task that needs each (a zero task needs only the destination's), so a copy
 * whose tasks are all skipped, an empty image's, opens nothing more than the images.
 */
class Worker {
  /** Allocated at the first data task: copying an empty image costs no buffer memory. */
  private buffer: Buffer | undefined;
  /** The buffer as 32-bit words, for a cheap first look at each granule. */
  private words: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  private srcClone: Backend | undefined;
  private dstClone: Backend | undefined;

  constructor(
    private readonly srcImage: Backend,
    private readonly dstImage: Backend,
    private readonly opts: ResolvedOptions,
    private readonly stats: { dataBytes: number; zeroedBytes: number; skippedBytes: number },
  ) {}

  /** This worker's source handle; a worker runs one task at a time, so one clone is made. */
  private async src(): Promise<Backend> {
    this.srcClone ??= await this.srcImage.clone();
    return this.srcClone;
  }

  private async dst(): Promise<Backend> {
    this.dstClone ??= await this.dstImage.clone();
    return this.dstClone;
  }

  async run(task: Task): Promise<void> {
    const { start, length } = task;
    if (task.kind === "skip") {
      this.stats.skippedBytes += length;
    } else if (task.kind === "zero") {
      await (await this.dst()).zero(start, length, { punchHole: this.opts.sparse });
      this.stats.zeroedBytes += length;
    } else {
      if (this.buffer === undefined) {
        this.buffer = allocAligned(this.opts.bufferSize, BUFFER_ALIGNMENT);
        this.words = new Uint32Array(this.buffer.buffer, this.buffer.byteOffset, this.buffer.length >>> 2);
      }
      const buf = this.buffer.subarray(0, length);
      const got = await (await this.src()).read(buf, start);
      if (got !== length) {
        throw new OutOfRangeError(
          `${this.opts.srcName} ended early: read ${got} of ${length} bytes at offset ${start} (did it shrink during the copy?)`,
        );
      }
      await this.writeData(buf, start);
    }
  }

  /**
   * Writes a chunk, zeroing (or skipping) its runs of zero granules instead of writing them.
   * A destination whose zero() writes zeros anyway gets the whole chunk in one write.
   */
  private async writeData(buf: Buffer, offset: number): Promise<void> {
    const { opts } = this;
    const dst = await this.dst();
    if (!opts.detectZeroes || !(dst.caps.zero || opts.targetIsZero)) {
      await dst.write(buf, offset);
      this.stats.dataBytes += buf.length;
      return;
    }
    let runStart = 0;
    let runZero = this.zeroGranule(buf, 0);
    for (let at = GRANULE; at < buf.length; at += GRANULE) {
      const zero = this.zeroGranule(buf, at);
      if (zero === runZero) continue;
      await this.writeRun(dst, buf, offset, runStart, at, runZero);
      runStart = at;
      runZero = zero;
    }
    await this.writeRun(dst, buf, offset, runStart, buf.length, runZero);
  }

  /** True when the granule at `start` of the chunk in `buf` is all zeros; allocates nothing. */
  private zeroGranule(buf: Buffer, start: number): boolean {
    // Data almost always has a non-zero first word: that answers without a full compare.
    if (this.words[start >>> 2] !== 0) return false;
    const end = Math.min(start + GRANULE, buf.length);
    return zeroGranule.compare(buf, start, end, 0, end - start) === 0;
  }

  private async writeRun(
    dst: Backend,
    buf: Buffer,
    offset: number,
    start: number,
    end: number,
    zero: boolean,
  ): Promise<void> {
    const length = end - start;
    if (!zero) {
      await dst.write(buf.subarray(start, end), offset + start);
      this.stats.dataBytes += length;
    } else if (this.opts.targetIsZero) {
      this.stats.skippedBytes += length;
    } else {
      await dst.zero(offset + start, length, { punchHole: this.opts.sparse });
      this.stats.zeroedBytes += length;
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.srcClone?.close(), this.dstClone?.close()]);
  }
}

/**
 * Counts finished bytes and the low-water mark below which every task is finished: tasks are
 * handed out in order, so it is the start of the oldest unfinished one.
 */
class ProgressTracker {
  done = 0;
  private handedOut = 0;
  private readonly unfinished = new Set<number>();

  constructor(
    private readonly total: number,
    private readonly onProgress: ((progress: CopyProgress) => void) | undefined,
  ) {}

  get copiedUpTo(): number {
    let low = this.handedOut;
    for (const start of this.unfinished) low = Math.min(low, start);
    return low;
  }

  start(task: Task): void {
    this.unfinished.add(task.start);
    this.handedOut = task.start + task.length;
  }

  finish(task: Task): void {
    this.unfinished.delete(task.start);
    this.done += task.length;
    this.report();
  }

  report(): void {
    this.onProgress?.({ phase: "copy", done: this.done, total: this.total });
  }
}

function percent(done: number, total: number): string {
  return `${total === 0 ? 100 : Math.floor((done / total) * 1000) / 10}%`;
}

/**
 * A read-only view of the first `size` bytes of a larger image: verification hashes only what
 * was copied when the destination is a bigger block device.
 */
class SizeLimitedView extends BackendFilter {
  constructor(
    inner: Backend,
    private readonly limit: number,
  ) {
    super(inner);
  }

  override get readonly(): boolean {
    return true;
  }
  override get growable(): boolean {
    return false;
  }

  override async size(): Promise<number> {
    return Math.min(this.limit, await this.inner.size());
  }

  override read(buf: Buffer, offset: number): Promise<number> {
    const length = Math.max(0, Math.min(buf.length, this.limit - offset));
    return this.inner.read(buf.subarray(0, length), offset);
  }

  override async write(): Promise<void> {
    throw new NotSupportedError("A size-limited view is read-only");
  }

  override async zero(): Promise<void> {
    throw new NotSupportedError("A size-limited view is read-only");
  }

  override async resize(): Promise<void> {
    throw new NotSupportedError("A size-limited view is read-only");
  }

  override extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  override extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  override extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    const start = Math.min(range?.start ?? 0, this.limit);
    const end = Math.min(range === undefined ? this.limit : range.start + range.length, this.limit);
    const clipped = { start, length: end - start };
    return context === "dirty" ? this.inner.extents("dirty", clipped) : this.inner.extents("zero", clipped);
  }

  override async clone(): Promise<SizeLimitedView> {
    return new SizeLimitedView(await this.inner.clone(), this.limit);
  }
}
