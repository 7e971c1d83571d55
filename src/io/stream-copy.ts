/**
 * Copies between an image and a sequential byte stream (standard input or output): the
 * stream side has no size, no extents and no seeking, so this is not copy()'s extent walk.
 *
 * To a stream: the image's data extents are read ahead by up to N handles at once and written
 * in order; zero extents become zeros on the stream without reading them.
 * From a stream: the input is cut into buffer-size chunks; each chunk's runs of zero 4 KiB
 * blocks are zeroed (or skipped when the destination reads as zeros), merged across chunks,
 * and its data runs are written by up to N handles at once. Memory is N buffers either way.
 */

import { OutOfRangeError } from "../errors.js";
import { formatSize } from "../units.js";
import type { Backend, ZeroExtent } from "./backend.js";
import { BUFFER_ALIGNMENT, DEFAULT_BUFFER_SIZE } from "./buffers.js";
import { CopyCancelledError, type CopyProgress, type CopyResult, DEFAULT_COPY_WORKERS } from "./copy.js";
import { allocAligned } from "./native.js";
import type { ByteSink, ByteSource } from "./stdio.js";

export interface StreamCopyOptions {
  /** Handles working at once (default 4); capped by the backend's max readers or writers. */
  workers?: number;
  /** Bytes per chunk, a multiple of 4096 (default 8 MiB). */
  bufferSize?: number;
  /** Deallocate zeroed ranges of the destination (default true). */
  sparse?: boolean;
  /** The destination already reads as zeros: zero runs are skipped (default false). */
  targetIsZero?: boolean;
  /** Zero, rather than write, 4 KiB blocks that read as zeros (default true). */
  detectZeroes?: boolean;
  signal?: AbortSignal;
  /** `total` is the image size, or 0 while a stream's size is unknown. */
  onProgress?: (progress: CopyProgress) => void;
  srcName?: string;
  dstName?: string;
}

export interface StreamCopyResult extends CopyResult {
  /** Bytes of a fixed-size destination past the end of the input, left as they were. */
  untouchedBytes: number;
}

const GRANULE = BUFFER_ALIGNMENT;
/** Zeros written for zero extents, shared and never modified, so writes of it may overlap. */
const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * Writes the image behind `src` to `sink`, in order.
 * @throws the backend's and sink's errors; CopyCancelledError when `signal` aborts.
 */
export async function copyToSink(src: Backend, sink: ByteSink, options: StreamCopyOptions = {}): Promise<CopyResult> {
  const bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
  const size = await src.size();
  const workers = Math.max(1, Math.min(options.workers ?? DEFAULT_COPY_WORKERS, src.caps.maxReaders));
  const result: CopyResult = { size, dataBytes: 0, zeroedBytes: 0, skippedBytes: 0, workers };
  let done = 0;
  const report = () => options.onProgress?.({ phase: "copy", done, total: size });
  report();

  const handles: Backend[] = [];
  type Reader = { handle: Backend; buffer: Buffer };
  /** Reads in flight, in stream order; each holds its reader until written. */
  const queue: { length: number; zero: boolean; read?: Promise<Buffer>; reader?: Reader }[] = [];
  try {
    for (let i = 0; i < workers; i++) handles.push(await src.clone());
    const free: Reader[] = handles.map((handle) => ({ handle, buffer: allocAligned(bufferSize, BUFFER_ALIGNMENT) }));

    const writeHead = async () => {
      const head = queue.shift();
      if (head === undefined) return;
      if (head.zero) {
        for (let left = head.length; left > 0; left -= ZEROS.length) {
          await sink.write(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
        }
        result.zeroedBytes += head.length;
      } else {
        await sink.write(await (head.read as Promise<Buffer>));
        result.dataBytes += head.length;
        free.push(head.reader as Reader);
      }
      done += head.length;
      report();
    };

    const extents: AsyncIterable<ZeroExtent> | ZeroExtent[] = src.caps.extents
      ? src.extents("zero")
      : [{ start: 0, length: size, zero: false, hole: false }];
    for await (const extent of extents) {
      const end = Math.min(extent.start + extent.length, size);
      if (extent.zero) {
        queue.push({ length: end - extent.start, zero: true });
        continue;
      }
      for (let start = extent.start; start < end; start += bufferSize) {
        if (options.signal?.aborted) throw cancelled(done, size, options);
        while (free.length === 0) await writeHead();
        const reader = free.pop() as Reader;
        const length = Math.min(bufferSize, end - start);
        const read = readExactly(reader.handle, reader.buffer.subarray(0, length), start, options.srcName);
        read.catch(() => undefined); // awaited in order by writeHead
        queue.push({ length, zero: false, read, reader });
      }
    }
    while (queue.length > 0) {
      if (options.signal?.aborted) throw cancelled(done, size, options);
      await writeHead();
    }
  } catch (error) {
    // Reads still in flight settle before their handles close.
    await Promise.allSettled(queue.map((entry) => entry.read));
    throw error;
  } finally {
    await Promise.allSettled(handles.map((handle) => handle.close()));
  }
  return result;
}

async function readExactly(src: Backend, buf: Buffer, offset: number, name = "source"): Promise<Buffer> {
  const got = await src.read(buf, offset);
  if (got !== buf.length) {
    throw new OutOfRangeError(`${name} ended early: read ${got} of ${buf.length} bytes at offset ${offset}`);
  }
  return buf;
}

function cancelled(done: number, total: number, options: StreamCopyOptions): CopyCancelledError {
  return new CopyCancelledError(
    `Copy interrupted after ${formatSize(done)}${total > 0 ? ` of ${formatSize(total)}` : ""}; ` +
      `the first ${done} bytes of ${options.dstName ?? "the destination"} are copied`,
    done,
    total,
    done,
  );
}

/** One chunk's work: data runs to write from `buffer`, and zero ranges. */
interface ChunkOps {
  buffer: Buffer;
  offset: number;
  writes: [start: number, end: number][];
  zeros: [offset: number, length: number][];
}

/**
 * Writes everything `source` yields to `dst` from offset 0. A growable destination (a regular
 * file) ends exactly the input's size; a fixed one (a device, a remote ticket) must hold the
 * input, and keeps what lies past it.
 * @throws OutOfRangeError when the input is larger than a fixed destination (what fitted is
 *   written and flushed); the source's and backend's errors; CopyCancelledError.
 */
export async function copyFromSource(
  source: ByteSource,
  dst: Backend,
  options: StreamCopyOptions = {},
): Promise<StreamCopyResult> {
  const bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
  const detectZeroes = options.detectZeroes ?? true;
  const targetIsZero = options.targetIsZero ?? false;
  const sparse = options.sparse ?? true;
  const dstSize = await dst.size();
  const writers = dst.growable ? (options.workers ?? DEFAULT_COPY_WORKERS) : dst.caps.maxWriters;
  const workers = Math.max(1, Math.min(options.workers ?? DEFAULT_COPY_WORKERS, writers));
  const stats = { dataBytes: 0, zeroedBytes: 0, skippedBytes: 0 };
  let total = 0;
  let done = 0;
  // A fixed-size destination bounds the input; a growing file's final size is unknown.
  const report = () => options.onProgress?.({ phase: "copy", done, total: dst.growable ? 0 : dstSize });

  const handles: Backend[] = [];
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  /** Rethrows the first failure of a write job (jobs record it; the loop checks here). */
  const checkFailure = (): void => {
    if (failure !== undefined) throw failure.error;
  };
  /** A zero range not dispatched yet, extended by the next chunks' leading zeros. */
  let pendingZero: [number, number] | undefined;

  try {
    // A growable destination is written from an empty file: writes past its end grow it, so
    // concurrent writers need it at its final size first, unknown here; one writer then.
    for (let i = 0; i < (dst.growable ? 1 : workers); i++) handles.push(await dst.clone());
    const idle = handles.map((handle) => ({ handle, buffer: allocAligned(bufferSize, BUFFER_ALIGNMENT) }));
    const waitIdle = async () => {
      while (idle.length === 0) await Promise.race(inFlight);
      checkFailure();
    };

    const run = (worker: (typeof idle)[number], ops: ChunkOps) => {
      const job = (async () => {
        for (const [offset, length] of ops.zeros) {
          if (targetIsZero) stats.skippedBytes += length;
          else {
            await worker.handle.zero(offset, length, { punchHole: sparse });
            stats.zeroedBytes += length;
          }
        }
        for (const [start, end] of ops.writes) {
          await worker.handle.write(ops.buffer.subarray(start, end), ops.offset + start);
          stats.dataBytes += end - start;
        }
      })().then(
        () => {
          done = Math.max(done, ops.offset + ops.buffer.length);
          report();
        },
        (error: unknown) => {
          failure ??= { error };
        },
      );
      const tracked = job.finally(() => {
        inFlight.delete(tracked);
        idle.push(worker);
      });
      inFlight.add(tracked);
    };

    report();
    for (;;) {
      if (options.signal?.aborted) break;
      await waitIdle();
      const worker = idle.pop() as (typeof idle)[number];
      const got = await source.read(worker.buffer);
      if (got === 0) {
        idle.push(worker);
        break;
      }
      const offset = total;
      total += got;
      if (!dst.growable && total > dstSize) {
        idle.push(worker);
        throw new OutOfRangeError(
          `${options.srcName ?? "the input"} holds more than the ${dstSize} bytes (${formatSize(dstSize)}) ` +
            `of ${options.dstName ?? "the destination"}; the first ${offset} bytes were copied`,
        );
      }
      const ops: ChunkOps = { buffer: worker.buffer.subarray(0, got), offset, writes: [], zeros: [] };
      for (const [start, end, zero] of runs(ops.buffer, detectZeroes && (dst.caps.zero || targetIsZero))) {
        if (!zero) {
          if (pendingZero !== undefined) ops.zeros.push(pendingZero);
          pendingZero = undefined;
          ops.writes.push([start, end]);
        } else if (pendingZero !== undefined) {
          pendingZero[1] += end - start;
        } else {
          pendingZero = [offset + start, end - start];
        }
      }
      run(worker, ops);
    }
    await Promise.all(inFlight);
    checkFailure();
    if (pendingZero !== undefined) {
      // A trailing zero run of a growing file is its new size, set below: holes either way.
      const [offset, length] = pendingZero;
      const worker = idle.pop() as (typeof idle)[number];
      if (dst.growable && targetIsZero) stats.skippedBytes += length;
      else run(worker, { buffer: Buffer.alloc(0), offset: offset + length, writes: [], zeros: [pendingZero] });
      await Promise.all(inFlight);
      checkFailure();
      done = total;
    }
    if (dst.growable && (await dst.size()) !== total) await dst.resize(total);
    await dst.flush();
  } catch (error) {
    await Promise.allSettled(inFlight);
    throw error;
  } finally {
    await Promise.allSettled(handles.map((handle) => handle.close()));
  }
  if (options.signal?.aborted) throw cancelled(done, 0, options);
  report();
  return {
    size: total,
    ...stats,
    workers: handles.length,
    untouchedBytes: dst.growable ? 0 : dstSize - total,
  };
}

const zeroGranule = Buffer.alloc(GRANULE);

/** Runs of `buf`, as [start, end, zero]: alternate data and all-zero 4 KiB blocks. */
function* runs(buf: Buffer, detect: boolean): Generator<[number, number, boolean]> {
  if (!detect || buf.length === 0) {
    if (buf.length > 0) yield [0, buf.length, false];
    return;
  }
  const isZero = (at: number) => {
    const end = Math.min(at + GRANULE, buf.length);
    return buf[at] === 0 && zeroGranule.compare(buf, at, end, 0, end - at) === 0;
  };
  let runStart = 0;
  let runZero = isZero(0);
  for (let at = GRANULE; at < buf.length; at += GRANULE) {
    const zero = isZero(at);
    if (zero === runZero) continue;
    yield [runStart, at, runZero];
    runStart = at;
    runZero = zero;
  }
  yield [runStart, buf.length, runZero];
}
