/**
 * The reference backend: a growable byte array in memory. Tests use it as the model the other
 * backends must match; it is never selected by a ticket URL.
 */
import { ClosedError, NotSupportedError } from "../errors.js";
import {
  type Backend,
  type ByteRange,
  type Capabilities,
  checkByteCount,
  checkRange,
  clipRange,
  type DirtyExtent,
  mergeExtents,
  sameZeroExtent,
  type ZeroExtent,
} from "./backend.js";
import { isZero } from "./buffers.js";

/** Zero extents are reported at this granularity: a granule of zeros is a zero extent. */
const EXTENT_GRANULE = 4096;

/** The bytes behind one memory image, shared by all its handles. */
let nextImage = 1;

class MemoryImage {
  data: Buffer;
  size: number;
  readonly key = `memory:${nextImage++}`;

  constructor(initial: Buffer) {
    this.data = Buffer.from(initial);
    this.size = initial.length;
  }

  /** Grows or shrinks to `size`; bytes past the old end read as zeros. */
  resize(size: number): void {
    if (size > this.data.length) {
      const grown = Buffer.alloc(Math.max(size, this.data.length * 2));
      this.data.copy(grown, 0, 0, this.size);
      this.data = grown;
    } else if (size < this.size) {
      this.data.fill(0, size, this.size);
    }
    this.size = size;
  }
}

export interface MemoryBackendOptions {
  readonly?: boolean;
  /** Initial contents (copied). */
  data?: Buffer;
}

export class MemoryBackend implements Backend {
  readonly name = "memory";
  readonly blockSize = 1;
  readonly directIo = false;
  readonly growable = true;
  readonly caps: Capabilities = {
    zero: true,
    flush: true,
    extents: true,
    dirty: false,
    maxReaders: 8,
    maxWriters: 1,
  };
  readonly readonly: boolean;
  private closed = false;

  /** Clones share the image, so they share its key. */
  get imageKey(): string {
    return this.image.key;
  }

  private constructor(
    private readonly image: MemoryImage,
    readonly_: boolean,
  ) {
    this.readonly = readonly_;
  }

  /** Opens a new image holding a copy of `options.data` (empty by default). */
  static create(options: MemoryBackendOptions = {}): MemoryBackend {
    return new MemoryBackend(new MemoryImage(options.data ?? Buffer.alloc(0)), options.readonly ?? false);
  }

  /** A copy of the image's bytes, for assertions. */
  contents(): Buffer {
    return Buffer.from(this.image.data.subarray(0, this.image.size));
  }

  async size(): Promise<number> {
    this.checkOpen();
    return this.image.size;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    this.checkOpen();
    checkRange(offset, buf.length);
    const end = Math.min(offset + buf.length, this.image.size);
    if (end <= offset) return 0;
    return this.image.data.copy(buf, 0, offset, end);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.checkWritable();
    checkRange(offset, buf.length);
    const end = offset + buf.length;
    if (end > this.image.size) this.image.resize(end);
    buf.copy(this.image.data, offset);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRange(offset, length);
    const end = offset + length;
    if (end > this.image.size) this.image.resize(end);
    this.image.data.fill(0, offset, end);
  }

  async flush(): Promise<void> {
    this.checkOpen();
  }

  async resize(size: number): Promise<void> {
    this.checkWritable();
    checkByteCount("size", size);
    this.image.resize(size);
  }

  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    this.checkOpen();
    if (context === "dirty") throw new NotSupportedError("Backend memory does not support dirty extents");
    const [start, end] = clipRange(range, this.image.size);
    return mergeExtents(this.scanZeroes(start, end), sameZeroExtent);
  }

  private *scanZeroes(start: number, end: number): Generator<ZeroExtent> {
    const data = this.image.data;
    for (let offset = start; offset < end; ) {
      const next = Math.min(end, offset - (offset % EXTENT_GRANULE) + EXTENT_GRANULE);
      const zero = isZero(data.subarray(offset, next));
      yield { start: offset, length: next - offset, zero, hole: false };
      offset = next;
    }
  }

  async clone(): Promise<MemoryBackend> {
    this.checkOpen();
    return new MemoryBackend(this.image, this.readonly);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError("Backend memory is closed");
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readonly) throw new NotSupportedError("Backend memory is opened read-only");
  }
}
