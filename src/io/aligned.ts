/**
 * Lets callers use any offset, length and buffer with a backend that needs aligned I/O
 * (O_DIRECT). Aligned parts in aligned memory go straight through; everything else moves
 * through a bounce buffer, and a partial block is written by read-modify-write of the whole
 * block. Kept apart from the backends, like nbdkit's blocksize filter, so file.ts only ever
 * sees aligned requests.
 */

import { InvalidArgumentError, NotSupportedError, OutOfRangeError } from "../errors.js";
import { MiB } from "../units.js";
import { alignDown, alignUp, type Backend, checkRange, type ZeroOptions } from "./backend.js";
import { withBlockLocks, withSizeLock } from "./block-locks.js";
import { BUFFER_ALIGNMENT, zeroBuffer } from "./buffers.js";
import { BackendFilter } from "./filter.js";
import { allocAligned, isAligned } from "./native.js";

let nextPrivateKey = 1;

/** Default bounce buffer: large enough to copy unaligned buffers without many small calls. */
const DEFAULT_BOUNCE_SIZE = MiB;

export class AlignedBackend extends BackendFilter {
  private bounceBuffer: Buffer | undefined;
  /** Names the image for block locks shared with other handles on it. */
  private readonly lockKey: string;
  /** Serializes use of the bounce buffer; aligned I/O does not wait for it. */
  private bounceLock: Promise<unknown> = Promise.resolve();

  /**
   * @param inner the backend that needs aligned requests.
   * @param alignment block size to align to (a power of two ≤ 4096); default `inner.blockSize`.
   * @param bounceSize bounce buffer size in bytes, a multiple of `alignment`.
   */
  constructor(
    inner: Backend,
    readonly alignment: number = inner.blockSize,
    private readonly bounceSize: number = DEFAULT_BOUNCE_SIZE,
  ) {
    super(inner);
    const powerOfTwo = alignment > 0 && (alignment & (alignment - 1)) === 0;
    if (!powerOfTwo || alignment > BUFFER_ALIGNMENT || bounceSize % alignment !== 0 || bounceSize < alignment) {
      throw new InvalidArgumentError(`Invalid alignment ${alignment} or bounce buffer size ${bounceSize}`);
    }
    // Locks of data-plane threads are kept on the main thread: a private key names its thread,
    // or two threads' unrelated images (NBD exports have no image key) would share one lock.
    // node:worker_threads only for images without a key (NBD exports): a file's copy starts
    // without loading it (issue 14).
    this.lockKey =
      inner.imageKey ?? `aligned:${process.getBuiltinModule("node:worker_threads").threadId}:${nextPrivateKey++}`;
  }

  /** Any offset, length and memory will do above this filter. */
  override get blockSize(): number {
    return 1;
  }
  override get imageKey(): string {
    return this.lockKey;
  }

  override async read(buf: Buffer, offset: number): Promise<number> {
    this.checkAlignable(offset, buf.length);
    const a = this.alignment;
    let done = 0;
    while (done < buf.length) {
      const position = offset + done;
      const target = buf.subarray(done);
      if (position % a === 0 && target.length >= a && isAligned(target, a)) {
        const length = alignDown(target.length, a);
        const got = await this.inner.read(target.subarray(0, length), position);
        done += got;
        if (got < length) break;
        continue;
      }
      const copied = await this.withBounce(async (bounce) => {
        const start = alignDown(position, a);
        const skip = position - start;
        const window = Math.min(bounce.length, alignUp(skip + target.length, a));
        const got = await this.inner.read(bounce.subarray(0, window), start);
        const length = Math.max(0, Math.min(got - skip, target.length));
        bounce.copy(target, 0, skip, skip + length);
        return { length, atEnd: got < window };
      });
      done += copied.length;
      if (copied.atEnd) break;
    }
    return done;
  }

  override async write(buf: Buffer, offset: number): Promise<void> {
    this.checkAlignable(offset, buf.length);
    await this.checkWritable(offset, buf.length);
    const a = this.alignment;
    let done = 0;
    while (done < buf.length) {
      const position = offset + done;
      const source = buf.subarray(done);
      if (position % a === 0 && source.length >= a && isAligned(source, a)) {
        const length = alignDown(source.length, a);
        await this.guardSize(position + length, [], () => this.inner.write(source.subarray(0, length), position));
        done += length;
        continue;
      }
      done += await this.withBounce(async (bounce) => {
        const start = alignDown(position, a);
        const skip = position - start;
        const window = Math.min(bounce.length, alignUp(skip + source.length, a));
        const length = Math.min(source.length, window - skip);
        const tailBlock = alignDown(skip + length, a);
        const partialTail = (skip + length) % a !== 0;
        // Blocks this write covers only in part: read, patched and written back whole.
        const partial = [...(skip > 0 ? [0] : []), ...(partialTail ? [tailBlock] : [])];
        return this.guardSize(
          start + window,
          partial.map((at) => start + at),
          async () => {
            // Sampled under the size lock (growable images): no one else changes it meanwhile.
            const sizeBefore = partialTail && this.inner.growable ? await this.inner.size() : undefined;
            for (const at of new Set(partial)) await this.readBlock(bounce, at, start + at);
            source.copy(bounce, skip, 0, length);
            await this.inner.write(bounce.subarray(0, window), start);
            // Rewriting the last block of a growing file made it reach the block end: give it
            // the size it had, or this write's end when further.
            const blockEnd = start + window;
            const size = Math.max(sizeBefore ?? blockEnd, position + length);
            if (blockEnd > size) await this.inner.resize(size);
            return length;
          },
        );
      });
    }
  }

  override async zero(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkAlignable(offset, length);
    await this.checkWritable(offset, length);
    const a = this.alignment;
    const end = offset + length;
    const bodyStart = Math.min(alignUp(offset, a), end);
    const bodyEnd = Math.max(alignDown(end, a), bodyStart);
    // Partial blocks at the edges are zeroed by writing zeros (spec §6.2).
    if (bodyStart > offset) await this.write(zeroBuffer().subarray(0, bodyStart - offset), offset);
    if (bodyEnd > bodyStart) {
      await this.guardSize(bodyEnd, [], () => this.inner.zero(bodyStart, bodyEnd - bodyStart, options));
    }
    if (end > bodyEnd) await this.write(zeroBuffer().subarray(0, end - bodyEnd), bodyEnd);
  }

  override resize(size: number): Promise<void> {
    if (!this.inner.growable) return this.inner.resize(size);
    return withSizeLock(this.lockKey, () => this.inner.resize(size));
  }

  async clone(): Promise<AlignedBackend> {
    return new AlignedBackend(await this.inner.clone(), this.alignment, this.bounceSize);
  }

  /**
   * Validates a range, including that its end rounded up to a block stays below 2^53: the
   * aligned requests below must be representable too.
   * @throws InvalidArgumentError for bad numbers; OutOfRangeError past the largest offset.
   */
  private checkAlignable(offset: number, length: number): void {
    checkRange(offset, length);
    if (alignUp(offset + length, this.alignment) > Number.MAX_SAFE_INTEGER) {
      throw new OutOfRangeError(
        `Range ${offset}-${offset + length} reaches past the largest supported offset ${alignDown(Number.MAX_SAFE_INTEGER, this.alignment)}`,
      );
    }
  }

  /** Reads the block at `offset` into `bounce[at, at + alignment)`, zero-filling past the end of the image. */
  private async readBlock(bounce: Buffer, at: number, offset: number): Promise<void> {
    const block = bounce.subarray(at, at + this.alignment);
    const got = await this.inner.read(block, offset);
    block.fill(0, got);
  }

  /**
   * Rejects a write before any part of it is done: a write split into several inner writes
   * must not leave a prefix behind when its end lies past a device that cannot grow.
   */
  private async checkWritable(offset: number, length: number): Promise<void> {
    if (this.inner.readonly) throw new NotSupportedError(`Backend ${this.inner.name} is opened read-only`);
    if (this.inner.growable) return;
    const size = await this.inner.size();
    if (offset + length > size) {
      throw new OutOfRangeError(
        `Cannot write ${length} bytes at offset ${offset}: range ends at ${offset + length}, past the image size ${size}`,
      );
    }
  }

  /**
   * Runs an inner write or zero reaching to `reach` that rewrites the partial `blocks` whole.
   * On a device (fixed size) only the partial blocks are locked, so writers of distinct ranges
   * sharing a block do not put back each other's stale bytes. On a growable image the kernel
   * grows the file to whole blocks and the last one is cut back after, so every step that has
   * partial blocks or may grow the image holds the image's size lock: a cut never removes what
   * another writer appended. Steps inside the image and aligned run without locks.
   */
  private async guardSize<T>(reach: number, blocks: number[], work: () => Promise<T>): Promise<T> {
    if (!this.inner.growable) return withBlockLocks(this.lockKey, blocks, work);
    // Only a holder of the size lock shrinks the image, and only within its own partial last
    // block; a step that is aligned and inside cannot lie there without overlapping that writer.
    if (blocks.length === 0 && reach <= (await this.inner.size())) return work();
    return withSizeLock(this.lockKey, work);
  }

  private withBounce<T>(use: (bounce: Buffer) => Promise<T>): Promise<T> {
    const run = this.bounceLock.then(() => {
      this.bounceBuffer ??= allocAligned(this.bounceSize, BUFFER_ALIGNMENT);
      return use(this.bounceBuffer);
    });
    this.bounceLock = run.catch(() => undefined);
    return run;
  }
}
