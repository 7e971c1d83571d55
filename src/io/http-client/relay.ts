/**
 * Receivers of response bodies: the relay's (bytes land in large buffers that go to the
 * client's stream as they are, several reads per write) and a caller's buffer (bytes land in
 * it directly).
 */

import type { Writable } from "node:stream";
import { MiB } from "../../units.js";
import type { BodyReceiver } from "./connection.js";

/** Size of the relay's receive buffers: several socket reads (or TLS records) fill one. */
const POOL_SIZE = 2 * MiB;
/** A buffer with less room left than this is retired rather than read into in slivers; also the smallest one. */
const MIN_READ = 64 * 1024;
/** Bytes gathered before they are written at once, whatever the event loop does. */
const WRITE_SIZE = 512 * 1024;
/** Free buffers kept for the next ones. */
const POOLS_KEPT = 4;

interface Pool {
  bytes: Buffer;
  /** Writes of its bytes the sink has not finished. */
  writing: number;
}

export interface RelayOptions {
  /** Bytes the sink may hold before reading from the remote stops. */
  highWaterMark: number;
  /** Called with the bytes received so far; may throw to stop. */
  onProgress?: (bytes: number) => void;
  /** Stop the exchange (reading stopped for good: progress threw, the sink failed). */
  abort: (error: Error) => void;
  /** Reading from the remote may go on (the sink drained). */
  resume: () => void;
}

/**
 * Writes a response body to `sink` (not ended) in the order it arrives, one write per event
 * loop turn or per WRITE_SIZE bytes, with backpressure: reading stops while the sink holds
 * more than the high-water mark. Call `finish` once the body is complete.
 */
export class RelayReceiver implements BodyReceiver {
  /** Sized to what is left of the body when smaller, so short ranges take short buffers. */
  private pool: Pool = { bytes: Buffer.alloc(0), writing: 0 };
  private readonly free: Pool[] = [];
  /** Received bytes of `pool` not yet written: [pendingStart, fill). */
  private pendingStart = 0;
  private fill = 0;
  private total = 0;
  private flushScheduled = false;
  private stopped = false;
  private readonly onDrain = () => this.options.resume();
  private readonly onSinkError = (error: Error) => this.stop(error);
  private readonly onSinkClose = () => this.stop(new Error("the receiving side closed before the end of the data"));

  constructor(
    private readonly sink: Writable,
    private readonly options: RelayOptions,
  ) {
    sink.on("drain", this.onDrain);
    sink.once("error", this.onSinkError);
    sink.once("close", this.onSinkClose);
  }

  /** What stopped the relay on our side (sink failure, progress refusal), if anything. */
  stoppedBy: Error | undefined;

  space(limit: number): Buffer {
    if (this.pool.bytes.length - this.fill < Math.min(limit, MIN_READ)) this.nextPool(limit);
    return this.pool.bytes.subarray(this.fill, this.fill + limit);
  }

  received(bytes: Buffer): boolean {
    if (this.stopped) return false;
    this.fill += bytes.length;
    this.total += bytes.length;
    try {
      this.options.onProgress?.(this.total);
    } catch (error) {
      this.stop(error as Error);
      return false;
    }
    if (this.fill - this.pendingStart >= WRITE_SIZE) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
    // Hold only while a 'drain' is sure to come (a sink with a larger highWaterMark sends none).
    return !(
      this.sink.writableNeedDrain &&
      this.sink.writableLength + (this.fill - this.pendingStart) >= this.options.highWaterMark
    );
  }

  /** The body is complete: the rest goes out now, and the sink is left alone. */
  finish(): void {
    this.flush();
    this.detach();
  }

  /** The exchange ended without finishing: the sink is left alone. */
  detach(): void {
    this.stopped = true;
    this.sink.off("drain", this.onDrain);
    this.sink.off("error", this.onSinkError);
    this.sink.off("close", this.onSinkClose);
  }

  private stop(error: Error): void {
    if (this.stopped) return;
    this.stoppedBy = error;
    this.detach();
    this.options.abort(error);
  }

  private flush(): void {
    if (this.stopped || this.fill === this.pendingStart) return;
    const pool = this.pool;
    pool.writing++;
    this.sink.write(pool.bytes.subarray(this.pendingStart, this.fill), () => {
      pool.writing--;
      if (pool.writing === 0 && pool !== this.pool && this.free.length < POOLS_KEPT) this.free.push(pool);
    });
    this.pendingStart = this.fill;
  }

  private nextPool(wanted: number): void {
    this.flush();
    const old = this.pool;
    const size = Math.min(POOL_SIZE, Math.max(wanted, MIN_READ));
    const reused = this.free.findIndex((pool) => pool.bytes.length >= size);
    this.pool =
      reused === -1 ? { bytes: Buffer.allocUnsafeSlow(size), writing: 0 } : (this.free.splice(reused, 1)[0] as Pool);
    if (old.writing === 0 && old.bytes.length > 0 && this.free.length < POOLS_KEPT) this.free.push(old);
    this.pendingStart = 0;
    this.fill = 0;
  }
}

/** Receives a body of known length straight into `target`. */
export class BufferReceiver implements BodyReceiver {
  length = 0;

  constructor(private readonly target: Buffer) {}

  space(limit: number): Buffer {
    return this.target.subarray(this.length, this.length + Math.min(limit, this.target.length - this.length));
  }

  received(bytes: Buffer): boolean {
    this.length += bytes.length;
    return true;
  }
}
