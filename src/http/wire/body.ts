/**
 * One request's body as it arrives on the connection: Content-Length or chunked framing
 * decoded, its bytes placed in the caller's buffers in bulk. While a fill is waiting and no
 * bytes are staged, reads go straight into the caller's buffer (see directRegion): an upload's
 * bytes then land in the aligned buffers with no copy of ours at all.
 */
import { Readable } from "node:stream";
import { ChunkedFraming, ChunkedFramingError } from "../../io/chunked-framing.js";
import { HttpError } from "../errors.js";
import type { BodyFraming } from "./head.js";

/** The bytes the connection has received and not yet consumed. */
export interface Staged {
  /** The staged bytes (a view, valid until the next consume or read). */
  bytes(): Buffer;
  /** How many bytes are staged (without making a view). */
  stagedLength(): number;
  consume(count: number): void;
  /** Nothing is staged and nothing more will come (the client half-closed or left). */
  exhausted(): boolean;
}

interface PendingFill {
  dest: Buffer;
  filled: number;
  signal: AbortSignal | undefined;
  resolve: (count: number) => void;
  reject: (error: unknown) => void;
}

export class BodyReader {
  /** Bytes of the body (or of the current chunk) still to come. */
  private remaining: number;
  /** The framing of a chunked body (the shared strict decoder); undefined for Content-Length. */
  private readonly chunked: ChunkedFraming | undefined;
  private pending: PendingFill | undefined;
  private failure: unknown;
  /** The last byte of the body was read. */
  ended = false;
  private view: BodyStream | undefined;

  constructor(
    framing: BodyFraming,
    private readonly staged: Staged,
    /** The body can never complete: its sender stopped sending before its end. */
    private readonly onTruncated: () => void,
    /** A fill given up while a read could still go straight into its buffer. */
    private readonly onAbandoned: () => void,
  ) {
    this.chunked = framing.kind === "chunked" ? new ChunkedFraming() : undefined;
    this.remaining = framing.kind === "length" ? framing.length : 0;
    if (this.chunked === undefined && this.remaining === 0) this.ended = true;
  }

  /**
   * Fills `dest` with the body's next bytes.
   * @returns the count: `dest.length`, or fewer at the body's end (0 once ended). A body that
   *   fails after some bytes arrived resolves with those first.
   * @param signal once aborted, the fill ends with what it has as soon as more bytes arrive
   *   (a cancelled transfer stops at its client's next bytes, not at the end of a buffer);
   *   `dest` is the caller's again.
   * @throws the failure (the sender went away, bad chunked framing) when nothing arrived before it.
   */
  fill(dest: Buffer, signal?: AbortSignal): Promise<number> {
    if (this.pending !== undefined) return Promise.reject(new Error("a body read is already waiting"));
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended || dest.length === 0 || signal?.aborted) return Promise.resolve(0);
    return new Promise((resolve, reject) => {
      this.pending = { dest, filled: 0, resolve, reject, signal };
      this.pump();
    });
  }

  /**
   * Where the next read may go directly: the waiting fill's free part, bounded by the body
   * (or chunk) so that no byte of what follows lands in it. Undefined while bytes are staged.
   */
  directRegion(most: number): Buffer | undefined {
    const pending = this.pending;
    if (pending === undefined || this.failure !== undefined || this.ended) return undefined;
    if (this.chunked !== undefined && !this.chunked.inData) return undefined;
    if (this.staged.stagedLength() > 0) return undefined;
    const size = Math.min(pending.dest.length - pending.filled, this.remaining, most);
    return size > 0 ? pending.dest.subarray(pending.filled, pending.filled + size) : undefined;
  }

  /** `count` bytes were read into the region directRegion() gave last. */
  directRead(count: number): void {
    const pending = this.pending as PendingFill;
    pending.filled += count;
    this.took(count);
    if (this.abandonIfAborted(pending)) return;
    this.pump();
  }

  /**
   * Ends a fill whose signal was aborted, with what it has. The socket may still hold a view of
   * its buffer for the next read: `onAbandoned` takes it back.
   */
  private abandonIfAborted(pending: PendingFill): boolean {
    if (pending.signal?.aborted !== true || this.ended) return false;
    this.pending = undefined;
    this.onAbandoned();
    pending.resolve(pending.filled);
    return true;
  }

  /** New bytes were staged. */
  wake(): void {
    if (this.pending !== undefined && this.abandonIfAborted(this.pending)) return;
    this.pump();
  }

  /** The body can never complete (the sender left, the connection failed). */
  fail(error: unknown): void {
    if (this.ended || this.failure !== undefined) return;
    this.failure = error;
    this.settle();
  }

  /** The body as a stream, for consumers that relay it (created on first use). */
  stream(): BodyStream {
    this.view ??= new BodyStream(this);
    return this.view;
  }

  private pump(): void {
    try {
      while (this.pending !== undefined && !this.ended && this.failure === undefined) {
        if (this.step()) continue;
        if (this.pending === undefined || this.ended || !this.staged.exhausted()) break;
        this.failure = new Error("the sending side closed before the end of the data");
        this.onTruncated();
      }
    } catch (error) {
      this.failure = error;
    }
    this.settle();
  }

  /** Consumes what it can of the staged bytes; false when it must wait for more. */
  private step(): boolean {
    const pending = this.pending as PendingFill;
    if (pending.filled === pending.dest.length) {
      this.settle(true);
      return false;
    }
    const chunked = this.chunked;
    if (chunked === undefined || chunked.inData) {
      if (this.remaining === 0) {
        // The Content-Length body is complete (a chunk's data hands over to its framing at its end).
        this.ended = true;
        return false;
      }
      const take = Math.min(this.remaining, pending.dest.length - pending.filled, this.staged.stagedLength());
      if (take === 0) return false;
      this.staged.bytes().copy(pending.dest, pending.filled, 0, take);
      this.staged.consume(take);
      pending.filled += take;
      this.took(take);
      return true;
    }
    let used: number;
    try {
      used = chunked.read(this.staged.bytes());
    } catch (error) {
      throw error instanceof ChunkedFramingError ? chunkError(error.message) : error;
    }
    if (used === 0) return false;
    this.staged.consume(used);
    if (chunked.done) this.ended = true;
    else if (chunked.inData) this.remaining = chunked.dataLeft;
    return true;
  }

  /** `count` bytes of the body (of the current chunk's data) were placed in the fill's buffer. */
  private took(count: number): void {
    this.remaining -= count;
    this.chunked?.tookData(count);
  }

  /** Resolves or rejects the waiting fill when it is done: full, at the end, or failed. */
  private settle(full = false): void {
    const pending = this.pending;
    if (pending === undefined) return;
    if (!full && !this.ended && this.failure === undefined && pending.filled < pending.dest.length) return;
    this.pending = undefined;
    if (this.failure !== undefined && pending.filled === 0) pending.reject(this.failure);
    else pending.resolve(pending.filled);
  }
}

function chunkError(reason: string): HttpError {
  return new HttpError(400, `Invalid chunked body: ${reason}`, { close: true });
}

/** Pieces a relaying consumer reads at a time. */
const STREAM_PIECE = 64 * 1024;

/**
 * The body as a Readable (relaying backends, JSON bodies), built on the same fills; `fill`
 * stays available for consumers that read into their own buffers instead.
 */
export class BodyStream extends Readable {
  constructor(private readonly reader: BodyReader) {
    super({ highWaterMark: STREAM_PIECE });
    // A relay that gave up on the body (the remote answered first, the relay failed) stops
    // listening, but a read it started still ends when the client leaves: that failure is no
    // news to anyone, and an 'error' nobody listens to would take the whole process down.
    // Consumers that listen still get it.
    this.on("error", () => undefined);
  }

  fill(dest: Buffer, signal?: AbortSignal): Promise<number> {
    return this.reader.fill(dest, signal);
  }

  override _read(): void {
    const piece = Buffer.allocUnsafe(STREAM_PIECE);
    this.reader.fill(piece).then(
      (count) => this.push(count === 0 ? null : piece.subarray(0, count)),
      // Consumers still listening get the failure; the constructor's listener keeps one that
      // let go from taking the process down.
      (error: unknown) => this.destroy(error instanceof Error ? error : new Error(String(error))),
    );
  }
}
