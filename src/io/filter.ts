/**
 * The base of backend wrappers (like nbdkit's filters): every member delegates to the
 * backend below unless the filter overrides it. Streaming and checksums are deliberately not
 * delegated: a filter that changes what read/write do (alignment, limits) must stream
 * through its own read/write, which the default in src/io/streaming.ts does.
 */
import type {
  Backend,
  ByteRange,
  Capabilities,
  DirtyExtent,
  ExtentContext,
  ZeroExtent,
  ZeroOptions,
} from "./backend.js";

export abstract class BackendFilter implements Backend {
  constructor(readonly inner: Backend) {}

  get name(): string {
    return this.inner.name;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get caps(): Capabilities {
    return this.inner.caps;
  }
  get directIo(): boolean {
    return this.inner.directIo;
  }
  get readonly(): boolean {
    return this.inner.readonly;
  }
  get growable(): boolean {
    return this.inner.growable;
  }
  get imageKey(): string | undefined {
    return this.inner.imageKey;
  }

  size(): Promise<number> {
    return this.inner.size();
  }
  read(buf: Buffer, offset: number): Promise<number> {
    return this.inner.read(buf, offset);
  }
  write(buf: Buffer, offset: number): Promise<void> {
    return this.inner.write(buf, offset);
  }
  zero(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.inner.zero(offset, length, options);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  resize(size: number): Promise<void> {
    return this.inner.resize(size);
  }
  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(context: ExtentContext = "zero", range?: ByteRange): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    return context === "dirty" ? this.inner.extents("dirty", range) : this.inner.extents("zero", range);
  }
  /** The same filter over a clone of the backend below. */
  abstract clone(): Promise<Backend>;
  close(): Promise<void> {
    return this.inner.close();
  }
}
