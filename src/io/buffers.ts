/**
 * Aligned I/O buffers: a bounded pool so memory is limited by the pool, never by image size,
 * and helpers for zero detection.
 */
import { InvalidArgumentError } from "../errors.js";
import { MiB } from "../units.js";
import { allocAligned } from "./native.js";

/** Default I/O buffer size (spec: backend buffer_size, 8 MiB). */
export const DEFAULT_BUFFER_SIZE = 8 * MiB;

/** Alignment of every buffer we allocate: enough for 4096-byte sector devices. */
export const BUFFER_ALIGNMENT = 4096;

/**
 * A pool of at most `capacity` aligned buffers of `bufferSize` bytes. Buffers are allocated
 * lazily, reused after release, and acquire() waits while all of them are in use.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: ((buf: Buffer) => void)[] = [];
  private allocated = 0;

  constructor(
    readonly bufferSize: number = DEFAULT_BUFFER_SIZE,
    readonly capacity = 1,
  ) {
    if (!Number.isSafeInteger(bufferSize) || bufferSize <= 0 || bufferSize % BUFFER_ALIGNMENT !== 0) {
      throw new InvalidArgumentError(`Invalid buffer size: ${bufferSize} (expected a positive multiple of 4096)`);
    }
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new InvalidArgumentError(`Invalid buffer pool capacity: ${capacity}`);
    }
  }

  /** Bytes of buffer memory this pool holds now. */
  get memory(): number {
    return this.allocated * this.bufferSize;
  }

  /** A buffer for exclusive use until release(); waits when `capacity` buffers are out. */
  acquire(): Promise<Buffer> {
    const buf = this.free.pop();
    if (buf !== undefined) return Promise.resolve(buf);
    if (this.allocated < this.capacity) {
      this.allocated++;
      return Promise.resolve(allocAligned(this.bufferSize, BUFFER_ALIGNMENT));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Returns a buffer from acquire() to the pool. */
  release(buf: Buffer): void {
    const waiter = this.waiters.shift();
    if (waiter !== undefined) waiter(buf);
    else this.free.push(buf);
  }

  /** Runs `use` with a buffer from the pool and releases it afterwards. */
  async with<T>(use: (buf: Buffer) => Promise<T>): Promise<T> {
    const buf = await this.acquire();
    try {
      return await use(buf);
    } finally {
      this.release(buf);
    }
  }
}

const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/** True when every byte of `buf` is zero (memcmp against a zero page, 64 KiB at a time). */
export function isZero(buf: Buffer): boolean {
  for (let offset = 0; offset < buf.length; offset += ZERO_CHUNK.length) {
    const chunk = buf.subarray(offset, offset + ZERO_CHUNK.length);
    if (!chunk.equals(ZERO_CHUNK.subarray(0, chunk.length))) return false;
  }
  return true;
}

let sharedZeroes: Buffer | undefined;

/**
 * A read-only aligned buffer of 1 MiB of zeros for writing zeros where a device cannot zero
 * any other way (spec: buffer ≤ 1 MiB). Callers must never write into it.
 */
export function zeroBuffer(): Buffer {
  sharedZeroes ??= allocAligned(MiB, BUFFER_ALIGNMENT).fill(0);
  return sharedZeroes;
}
