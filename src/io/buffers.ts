/**
 * I/O buffer sizes and alignment, and zero detection. Buffers themselves are owned and reused
 * by their user (a connection's backend context, a copy worker), so memory is bounded by
 * connections and workers, never by image size.
 */
import { MiB } from "../units.js";
import { allocAligned, populatePages, releasePages } from "./native.js";

export { isZero } from "./zeros.js";

/** Default I/O buffer size (spec: backend buffer_size, 8 MiB). */
export const DEFAULT_BUFFER_SIZE = 8 * MiB;

/** Alignment of every buffer we allocate: enough for 4096-byte sector devices. */
export const BUFFER_ALIGNMENT = 4096;

let sharedZeroes: Buffer | undefined;

/**
 * A read-only aligned buffer of 1 MiB of zeros for writing zeros where a device cannot zero
 * any other way (spec: buffer ≤ 1 MiB). Callers must never write into it.
 */
export function zeroBuffer(): Buffer {
  sharedZeroes ??= allocAligned(MiB, BUFFER_ALIGNMENT).fill(0);
  return sharedZeroes;
}

/** A buffer lent by a BufferPool; give it back exactly once with release(). */
export interface BufferLease {
  readonly buffer: Buffer;
  release(): void;
}

interface IdleBuffer {
  buffer: Buffer;
  /** Seen idle by a sweep: the next sweep gives its pages back. */
  seen: boolean;
  /** Its pages were given back; they return as zeros on first use. */
  released: boolean;
}

/**
 * The I/O buffers of a whole daemon: at most `maxBuffers` are lent at once, so memory stays
 * bounded however many connections are mid-request; a request beyond that waits for one.
 * Released buffers are kept for reuse (up to `keepIdle` per size, all by default): V8 frees a
 * dropped buffer only at its next full collection, which an idle daemon may not run for a long
 * time. A buffer left idle for between `idleMs` and twice that has its pages given back to the
 * kernel (releasePages), so the daemon's resident memory falls back once a burst is over.
 * A new buffer, or one whose pages were given back, has its pages faulted in on a native
 * thread before it is lent (populatePages): its first writer never waits on the kernel.
 */
export class BufferPool {
  private leased = 0;
  private readonly idle = new Map<number, IdleBuffer[]>();
  private readonly waiting: (() => void)[] = [];
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    readonly maxBuffers: number,
    private readonly keepIdle = maxBuffers,
    private readonly idleMs = 2_000,
  ) {
    if (!Number.isSafeInteger(maxBuffers) || maxBuffers < 1)
      throw new RangeError(`Invalid buffer limit: ${maxBuffers}`);
  }

  /** Buffers lent out now. */
  get inUse(): number {
    return this.leased;
  }

  /** Idle buffers whose memory is still resident. */
  get residentIdle(): number {
    let count = 0;
    for (const kept of this.idle.values()) count += kept.filter((entry) => !entry.released).length;
    return count;
  }

  /**
   * Lends an aligned buffer of `size` bytes, waiting while `maxBuffers` are lent out.
   * @throws the signal's reason when it aborts while waiting.
   */
  async lease(size: number, signal?: AbortSignal): Promise<BufferLease> {
    while (this.leased >= this.maxBuffers) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          const at = this.waiting.indexOf(wake);
          if (at !== -1) this.waiting.splice(at, 1);
          reject(signal?.reason);
        };
        const wake = () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        };
        this.waiting.push(wake);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
    this.leased++;
    const kept = this.idle.get(size)?.pop();
    const buffer = kept?.buffer ?? allocAligned(size, BUFFER_ALIGNMENT);
    if (kept === undefined || kept.released) await residentPages(buffer);
    let released = false;
    return {
      buffer,
      release: () => {
        if (released) return;
        released = true;
        this.leased--;
        const kept = this.idle.get(size) ?? [];
        if (kept.length < this.keepIdle) {
          kept.push({ buffer, seen: false, released: false });
          this.idle.set(size, kept);
          this.scheduleSweep();
        }
        this.waiting.shift()?.();
      },
    };
  }

  private scheduleSweep(): void {
    if (this.sweeper !== undefined) return;
    this.sweeper = setTimeout(() => {
      this.sweeper = undefined;
      this.sweep();
    }, this.idleMs);
    this.sweeper.unref();
  }

  /** Gives back the pages of buffers idle since the last sweep, one per turn of the event loop. */
  private sweep(): void {
    const due: IdleBuffer[] = [];
    let pending = false;
    for (const kept of this.idle.values()) {
      for (const entry of kept) {
        if (entry.released) continue;
        if (entry.seen) due.push(entry);
        else {
          entry.seen = true;
          pending = true;
        }
      }
    }
    const releaseNext = (): void => {
      const entry = due.shift();
      if (entry === undefined) return;
      // Leased again meanwhile: it is in use, its pages stay.
      if ([...this.idle.values()].some((kept) => kept.includes(entry))) {
        releasePages(entry.buffer);
        entry.released = true;
      }
      setImmediate(releaseNext).unref();
    };
    releaseNext();
    if (pending) this.scheduleSweep();
  }
}

/**
 * The longest a lease waits for its buffer's pages (a thread's boot included, about 40 ms): a
 * native thread that hangs while it starts, or in the kernel while it faults the pages in on
 * a host short of memory, must not hold the buffer's user with it.
 */
const POPULATE_WAIT_MS = 1_000;

/**
 * Faults a buffer's pages in off the event loop, waiting at most POPULATE_WAIT_MS; a failure
 * or a late answer only leaves them to fault in on first use (populating changes no byte, so
 * a lent buffer's writer racing a late populate loses nothing).
 */
async function residentPages(buffer: Buffer): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  // Best effort (the native thread could not start, or the kernel refused): usable as before.
  const populating = populatePages(buffer).catch(() => false);
  try {
    await Promise.race([
      populating,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, POPULATE_WAIT_MS);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  // The native thread touches the buffer by address: keep its memory mapped until
  // it is done, even where the lease ended and the pool dropped the buffer meanwhile.
  void populating.then(() => buffer.length);
}
