/**
 * The contract every storage backend keeps (file, memory, and later nbd and http), and the
 * small range helpers they share. Handlers and copy talk only to this interface.
 */
import type { Readable } from "node:stream";
import { InvalidArgumentError } from "../errors.js";
import type { ByteSink, StreamOptions, UploadOptions, UploadResult } from "./streaming.js";

/** An extent in the `zero` context: `zero` reads as zeros; `hole` exposes a backing chain. */
export interface ZeroExtent {
  start: number;
  length: number;
  zero: boolean;
  hole: boolean;
}

/** An extent in the `dirty` context (changed blocks for incremental backup). */
export interface DirtyExtent {
  start: number;
  length: number;
  dirty: boolean;
  zero: boolean;
}

export type ExtentContext = "zero" | "dirty";

/** A block-hash checksum as the images API reports it. */
export interface ChecksumResult {
  algorithm: string;
  block_size: number;
  checksum: string;
}

/** A byte range `[start, start + length)`. */
export interface ByteRange {
  start: number;
  length: number;
}

/** What a backend can do; handlers build OPTIONS from this and never probe with try/catch. */
export interface Capabilities {
  /** zero() is efficient (no data transfer); false means it writes zeros. */
  readonly zero: boolean;
  readonly flush: boolean;
  /** extents("zero") reports real holes rather than one data extent. */
  readonly extents: boolean;
  readonly dirty: boolean;
  readonly maxReaders: number;
  readonly maxWriters: number;
}

export interface ZeroOptions {
  /** Deallocate the range where the storage can (a sparse ticket); it still reads as zeros. */
  punchHole?: boolean;
}

/**
 * One handle on an image. Concurrency contract: calls on distinct byte ranges may overlap on
 * one handle and on several handles of one image (file, memory, nbd; the aligned filter makes
 * partial blocks and size changes safe); calls on overlapping ranges never may, and callers
 * (one request at a time per connection, copy workers on disjoint chunks) never issue them.
 * close() refuses new calls at once and resolves after the calls in flight have ended.
 */
export interface Backend {
  /** "file", "memory", "nbd", "http". */
  readonly name: string;
  /** Offset, length and memory alignment that read/write/zero need; 1 when any will do. */
  readonly blockSize: number;
  readonly caps: Capabilities;
  /** True when data moves with O_DIRECT, bypassing the page cache. */
  readonly directIo: boolean;
  readonly readonly: boolean;
  /** Writes past the end grow the image (regular files, memory); otherwise they fail. */
  readonly growable: boolean;
  /**
   * The same for every handle on one image in this process (a file's device and inode), so
   * writers of partial blocks through different handles can coordinate; undefined when
   * handles cannot share an image.
   */
  readonly imageKey?: string | undefined;

  /** Size of the image in bytes. */
  size(): Promise<number>;
  /**
   * Reads up to `buf.length` bytes at `offset` into `buf`, like pread: returns the number of
   * bytes read, less than asked only at the end of the image.
   */
  read(buf: Buffer, offset: number): Promise<number>;
  /** Writes all of `buf` at `offset`; a regular file grows when the write passes its end. */
  write(buf: Buffer, offset: number): Promise<void>;
  /** Makes `[offset, offset + length)` read as zeros without sending zeros where possible. */
  zero(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /** Makes written data durable. */
  flush(): Promise<void>;
  /** Sets the image size (regular files and memory); block devices only accept their own size. */
  resize(size: number): Promise<void>;
  /**
   * Extents covering `range` (default: the whole image) contiguously and in order, with equal
   * neighbours merged. The last one ends at min(range end, image size).
   */
  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  /** Opens another independent handle on the same image: one per connection or worker. */
  clone(): Promise<Backend>;
  /**
   * Streaming (src/io/streaming.ts: call readTo/writeFrom there, never these directly). Every
   * backend streams through the default built on read/write and the caller's buffers; a
   * backend in front of a remote images service overrides them to relay one client request
   * as one remote request of the same range, with backpressure both ways (spec [B6]).
   */
  readTo?(offset: number, length: number, sink: ByteSink, options: StreamOptions): Promise<void>;
  writeFrom?(
    source: Readable,
    offset: number,
    length: number | undefined,
    options: UploadOptions,
  ): Promise<UploadResult>;
  /**
   * A remote that computes checksums itself (spec §5.8), so no data crosses the network;
   * call imageChecksum() (src/io/blkhash.ts), which hashes locally otherwise.
   */
  checksum?(algorithm: string, blockSize: number): Promise<ChecksumResult>;
  /** Releases the handle; idempotent. */
  close(): Promise<void>;
}

/** Rounds `value` down to a multiple of `alignment`. */
export function alignDown(value: number, alignment: number): number {
  return value - (value % alignment);
}

/** Rounds `value` up to a multiple of `alignment`. */
export function alignUp(value: number, alignment: number): number {
  const rest = value % alignment;
  return rest === 0 ? value : value + alignment - rest;
}

/**
 * Rejects offsets and lengths that can never be valid: negative, fractional, or beyond 2^53.
 * @throws InvalidArgumentError naming `what` and the value.
 */
export function checkByteCount(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(`Invalid ${what}: ${value} (expected an integer from 0 to 2^53-1)`);
  }
}

/** Validates an offset and length pair, including that their sum stays a safe integer. */
export function checkRange(offset: number, length: number): void {
  checkByteCount("offset", offset);
  checkByteCount("length", length);
  if (!Number.isSafeInteger(offset + length)) {
    throw new InvalidArgumentError(`Invalid range: offset ${offset} + length ${length} exceeds 2^53-1`);
  }
}

/**
 * Clips a requested extents range to the image, returning `[start, end)`.
 * @throws InvalidArgumentError for a negative or fractional range.
 */
export function clipRange(range: ByteRange | undefined, size: number): [number, number] {
  if (range === undefined) return [0, size];
  checkRange(range.start, range.length);
  const start = Math.min(range.start, size);
  return [start, Math.min(size, range.start + range.length)];
}

/**
 * Yields `source` with empty extents dropped and adjacent alike extents merged into one, so
 * every backend reports "consecutive equal extents merged" without doing it itself.
 */
export async function* mergeExtents<T extends ByteRange>(
  source: AsyncIterable<T> | Iterable<T>,
  same: (a: T, b: T) => boolean,
): AsyncGenerator<T> {
  let pending: T | undefined;
  for await (const extent of source) {
    if (extent.length === 0) continue;
    if (pending !== undefined && pending.start + pending.length === extent.start && same(pending, extent)) {
      pending = { ...pending, length: pending.length + extent.length };
      continue;
    }
    if (pending !== undefined) yield pending;
    pending = { ...extent };
  }
  if (pending !== undefined) yield pending;
}

export const sameZeroExtent = (a: ZeroExtent, b: ZeroExtent): boolean => a.zero === b.zero && a.hole === b.hole;
