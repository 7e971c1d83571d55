/**
 * One writing handle shared by many workers, one request at a time. A daemon that allows a
 * single writer (a regular-file ticket has `max_writers` 1) would otherwise get a copy with a
 * single worker, which reads a chunk, then sends it, then waits for the answer, then reads the
 * next: the source's disk and the network take turns. Behind this filter, the workers read in
 * parallel and take turns only to write, so the remote still sees one writer on one
 * connection while the next chunks are already read.
 */
import type { Backend, Capabilities, ChecksumResult, ZeroOptions } from "./backend.js";
import { BackendFilter } from "./filter.js";

/** Runs tasks one after another, in the order they were queued. */
class TurnTaker {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/**
 * Wraps `inner` so that up to `handles` workers may hold handles (clone() shares `inner`),
 * while its writes, zeroes and flushes run one at a time. Closing a clone does nothing; closing
 * the handle returned here closes `inner`.
 */
export function shareWriter(inner: Backend, handles: number): Backend {
  return new SharedWriter(inner, new TurnTaker(), handles, true);
}

class SharedWriter extends BackendFilter {
  private readonly sharedCaps: Capabilities;
  /** The remote's own checksum, when the wrapped backend has one (verification uses it). */
  readonly checksum?: (algorithm: string, blockSize: number) => Promise<ChecksumResult>;

  constructor(
    inner: Backend,
    private readonly turns: TurnTaker,
    private readonly handles: number,
    private readonly owner: boolean,
  ) {
    super(inner);
    this.sharedCaps = { ...inner.caps, maxWriters: Math.max(inner.caps.maxWriters, handles) };
    if (inner.checksum !== undefined) this.checksum = inner.checksum.bind(inner);
  }

  override get caps(): Capabilities {
    return this.sharedCaps;
  }

  override read(buf: Buffer, offset: number): Promise<number> {
    return this.turns.run(() => this.inner.read(buf, offset));
  }

  override write(buf: Buffer, offset: number): Promise<void> {
    return this.turns.run(() => this.inner.write(buf, offset));
  }

  override zero(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.turns.run(() => this.inner.zero(offset, length, options));
  }

  override flush(): Promise<void> {
    return this.turns.run(() => this.inner.flush());
  }

  override resize(size: number): Promise<void> {
    return this.turns.run(() => this.inner.resize(size));
  }

  override async clone(): Promise<Backend> {
    return new SharedWriter(this.inner, this.turns, this.handles, false);
  }

  override async close(): Promise<void> {
    if (this.owner) await this.inner.close();
  }
}
