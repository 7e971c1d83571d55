/**
 * Streaming, one data path for every backend (spec [B6]): a download reads a range into a
 * sink, an upload writes a source at an offset. Backends that relay to a remote (http)
 * override readTo/writeFrom; every other backend gets the default here, built on read/write
 * and two aligned buffers, so handlers and backends such as nbd need nothing more.
 */
import type { Readable, Writable } from "node:stream";
import { InvalidArgumentError } from "../errors.js";
import type { Backend } from "./backend.js";
import { BUFFER_ALIGNMENT } from "./buffers.js";

/** Where a download's bytes go. */
export interface ByteSink {
  /** Called once, right before the first byte: until then a failure can still be reported whole. */
  start(): void;
  /** The stream the bytes are written to (not ended here). */
  readonly stream: Writable;
}

export interface StreamOptions {
  /**
   * Two aligned buffers of equal size, held by the caller for the whole call; asked for only
   * by the default path (a relay needs none).
   */
  buffers: () => Promise<readonly [Buffer, Buffer]>;
  /**
   * Called with the bytes done so far, before each chunk is handed on; may throw to stop
   * (a cancelled transfer).
   */
  onProgress?: (bytes: number) => void;
}

export interface UploadOptions extends StreamOptions {
  /**
   * The caller will flush after the upload: a relaying backend asks its remote to flush with
   * the write instead and reports it in `flushed`. The default ignores it.
   */
  flush: boolean;
  /** At most this many bytes are written; a longer source reports overflow. */
  limit: number;
  /** Called once the backend is ready for the body (a remote accepted the upload). */
  onReady?: () => void;
  /** Aborted when the transfer is cancelled: a filling source stops at its next bytes. */
  signal?: AbortSignal;
}

/**
 * A source that places its bytes straight into the caller's buffers (an HTTP body read by
 * imageio's own framing): the default upload fills the aligned buffers with it, in bulk,
 * instead of copying chunk after chunk out of 'data' events.
 */
export interface FillingSource {
  /**
   * Fills `dest` with the next bytes: resolves with `dest.length`, or fewer at the end (0 once
   * ended); a source that fails after some bytes arrived resolves with those first.
   * @param signal once aborted, resolves with what it has when the next bytes arrive.
   * @throws the source's failure when nothing arrived before it.
   */
  fill(dest: Buffer, signal?: AbortSignal): Promise<number>;
}

export function isFillingSource(source: Readable): source is Readable & FillingSource {
  return typeof (source as Partial<FillingSource>).fill === "function";
}

export interface UploadResult {
  /** Bytes received and written. */
  bytes: number;
  /** The source had more than `limit` bytes; nothing past the limit was written. */
  overflow: boolean;
  /** The data was already made durable (a relaying backend flushed with the write). */
  flushed: boolean;
}

/**
 * Sends `[offset, offset + length)` of `backend` to `sink`, with backpressure.
 * @throws InvalidArgumentError when the image ends before the range does; the backend's and
 *   the sink's errors; whatever onProgress throws.
 */
export function readTo(
  backend: Backend,
  offset: number,
  length: number,
  sink: ByteSink,
  options: StreamOptions,
): Promise<void> {
  if (backend.readTo !== undefined) return backend.readTo(offset, length, sink, options);
  return readThroughBuffers(backend, offset, length, sink, options);
}

/**
 * Writes `source` at `offset`: `length` bytes, or up to its end when undefined (chunked).
 * A source that ends early has what did arrive written before its error is thrown, so a
 * client that retries the rest loses nothing.
 * @throws the source's error (after writing what arrived); the backend's errors; whatever
 *   onProgress throws.
 */
export function writeFrom(
  backend: Backend,
  source: Readable,
  offset: number,
  length: number | undefined,
  options: UploadOptions,
): Promise<UploadResult> {
  if (backend.writeFrom !== undefined) return backend.writeFrom(source, offset, length, options);
  return writeThroughBuffers(backend, source, offset, options);
}

/**
 * Defaults that an overriding backend may fall back to for the cases it does not relay
 * (the http backend sends a chunked body as one PUT per buffer).
 */
export { readThroughBuffers, writeThroughBuffers };

/**
 * The default download: the next chunk is read while the previous one is on its way, and a
 * buffer is reused only once the sink took its chunk. Data sits in a buffer at the same
 * offset modulo 4096 as in the image, so aligned middles go to O_DIRECT without a copy.
 */
async function readThroughBuffers(
  backend: Backend,
  first: number,
  length: number,
  sink: ByteSink,
  options: StreamOptions,
): Promise<void> {
  const end = first + length;
  const buffers = await options.buffers();
  const readChunk = async (buf: Buffer, at: number): Promise<Buffer> => {
    const skew = at % BUFFER_ALIGNMENT;
    const view = buf.subarray(skew, skew + Math.min(end - at, buf.length - skew));
    const got = await backend.read(view, at);
    if (got < view.length) throw new InvalidArgumentError(`Requested ${view.length} bytes, available ${got} bytes`);
    return view;
  };
  let position = first;
  let index = 0;
  let pending: Promise<Buffer> | undefined = readChunk(buffers[0], position);
  let started = false;
  try {
    while (position < end) {
      const chunk: Buffer = await (pending as Promise<Buffer>);
      pending = undefined;
      const next = position + chunk.length;
      options.onProgress?.(next - first);
      if (!started) {
        sink.start();
        started = true;
      }
      index ^= 1;
      if (next < end) {
        pending = readChunk(buffers[index as 0 | 1], next);
        pending.catch(() => undefined); // awaited next round; not unhandled meanwhile
      }
      await writeChunk(sink.stream, chunk);
      position = next;
    }
  } finally {
    // The caller may reuse the buffers once we return: no read may still be filling one.
    await pending?.catch(() => undefined);
  }
}

/** Writes a chunk and resolves once the stream took it (so its buffer may be reused). */
export function writeChunk(stream: Writable, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onClose = () => reject(new Error("the receiving side closed during the transfer"));
    stream.once("close", onClose);
    stream.write(chunk, (error) => {
      stream.off("close", onClose);
      if (error) reject(error);
      else resolve();
    });
  });
}

/**
 * The default upload: the source's chunks are copied into the two buffers in turn, straight
 * from its `data` events. A TLS socket delivers at most 16 KiB per chunk, so the per-chunk
 * path stays synchronous (no async iterator, no promise per chunk): the source pauses only
 * while both buffers are on their way to the backend.
 */
async function writeThroughBuffers(
  backend: Backend,
  source: Readable,
  offset: number,
  options: UploadOptions,
): Promise<UploadResult> {
  if (isFillingSource(source)) return writeByFilling(backend, source, offset, options);
  const writer = new DoubleBufferedWriter(backendWrites(backend), await options.buffers(), offset, options.onProgress);
  options.onReady?.();
  let received = 0;
  let overflow = false;
  try {
    await new Promise<void>((resolve, reject) => {
      /** Bytes counted but not yet copied: they arrived while both buffers were busy. */
      const waiting: Buffer[] = [];
      let blocked = false;
      let ended = false;
      /** The body is over (ended, failed or past the limit): buffered bytes are being written. */
      let finishing = false;
      let settled = false;
      const detach = () => {
        source.off("data", onData);
        source.off("end", onEnd);
        source.off("error", onError);
        source.off("close", onClose);
      };
      const stop = (error?: unknown) => {
        if (settled) return;
        settled = true;
        detach();
        source.pause();
        if (error === undefined) resolve();
        else reject(error);
      };
      /** Writes every byte that arrived, then settles with `error` (or a write's own failure). */
      const finishThen = (error?: unknown) => {
        if (settled || finishing) return;
        finishing = true;
        detach();
        const writeRest = async () => {
          for (let chunk of waiting.splice(0)) {
            while (chunk.length > 0) {
              await writer.free();
              chunk = chunk.subarray(writer.copyIn(chunk));
            }
          }
          await writer.finish();
        };
        writeRest().then(
          () => stop(error),
          (writeError: unknown) => stop(writeError),
        );
      };
      /** Counts a chunk against the limit; the part past it is dropped and marks overflow. */
      const admit = (data: Buffer): Buffer => {
        let chunk = data;
        if (received + chunk.length > options.limit) {
          chunk = chunk.subarray(0, options.limit - received);
          overflow = true;
        }
        received += chunk.length;
        return chunk;
      };
      /** After a chunk: a cancelled transfer stops here, even when no write completed. */
      const progressed = (): boolean => {
        try {
          options.onProgress?.(writer.done);
          return true;
        } catch (error) {
          detach();
          void writer.settle().then(() => stop(error));
          return false;
        }
      };
      // Once finishing, the path that writes the rest meets the same failure and reports it.
      const failedWhileBlocked = (error: unknown) => {
        if (!finishing) stop(error);
      };
      const block = () => {
        blocked = true;
        source.pause();
        writer.free().then(unblock, failedWhileBlocked);
      };
      const unblock = () => {
        if (finishing || settled) return;
        try {
          while (waiting.length > 0) {
            const chunk = waiting[0] as Buffer;
            const used = writer.copyIn(chunk);
            if (used < chunk.length) {
              waiting[0] = chunk.subarray(used);
              writer.free().then(unblock, failedWhileBlocked);
              return;
            }
            waiting.shift();
          }
        } catch (error) {
          stop(error);
          return;
        }
        blocked = false;
        if (!progressed()) return;
        if (overflow || ended) finishThen();
        else source.resume();
      };
      const onData = (data: Buffer) => {
        const chunk = admit(data);
        if (blocked) {
          // Emitted before the pause took effect: copied once a buffer is free.
          waiting.push(chunk);
          return;
        }
        let used: number;
        try {
          used = writer.copyIn(chunk);
        } catch (error) {
          stop(error);
          return;
        }
        if (used < chunk.length) {
          waiting.push(chunk.subarray(used));
          block();
          return;
        }
        if (progressed() && overflow) finishThen();
      };
      const onEnd = () => {
        ended = true;
        if (!blocked) finishThen();
      };
      // The sender went away mid-body: what did arrive is written first.
      const onError = (error: Error) => finishThen(error);
      const onClose = () => {
        if (!ended) finishThen(new Error("the sending side closed before the end of the data"));
      };
      if (source.readableEnded) return finishThen();
      if (source.destroyed) return onClose();
      source.on("data", onData);
      source.once("end", onEnd);
      source.once("error", onError);
      source.once("close", onClose);
      source.resume();
    });
  } catch (error) {
    await writer.settle();
    throw error;
  }
  return { bytes: received, overflow, flushed: false };
}

/**
 * The default upload from a source that fills buffers itself: each aligned buffer is filled
 * whole by one call (its reads land in it directly), then written while the other fills.
 */
async function writeByFilling(
  backend: Backend,
  source: FillingSource,
  offset: number,
  options: UploadOptions,
): Promise<UploadResult> {
  const writer = new DoubleBufferedWriter(backendWrites(backend), await options.buffers(), offset, options.onProgress);
  options.onReady?.();
  const { bytes, overflow } = await fillInTurns(source, writer, {
    limit: options.limit,
    probePastLimit: true,
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    onFilled: () => options.onProgress?.(writer.done),
  });
  return { bytes, overflow, flushed: false };
}

export interface FillInTurnsOptions {
  /** Most bytes taken from the source. */
  limit: number;
  /** At the limit, one more byte is asked for: whether the source goes on past it (overflow). */
  probePastLimit: boolean;
  /** Once aborted, the fill ends at the source's next bytes (a cancelled transfer, a failed sink). */
  signal?: AbortSignal;
  /** After each fill, with the bytes received so far; may throw to stop (cancellation). */
  onFilled?: (received: number) => void;
}

/**
 * The two-buffer loop of every copy from a filling source (uploads to a backend, relays to a
 * remote): the buffer `writer` has free is filled by `source` (its reads land in it
 * directly), written while the other one fills, and filled again only once that write
 * completed. A source that fails has what did arrive written before its failure is thrown;
 * once `signal` is aborted, the loop ends after the fill it cuts short (what it got is written).
 * @returns the bytes received, and whether the source had more than `limit` (when probed).
 * @throws the source's failure, a write's failure, or what onFilled throws; writes in flight
 *   have settled by then.
 */
export async function fillInTurns(
  source: FillingSource,
  writer: DoubleBufferedWriter,
  options: FillInTurnsOptions,
): Promise<{ bytes: number; overflow: boolean }> {
  let received = 0;
  let overflow = false;
  try {
    for (;;) {
      await writer.free();
      const want = Math.min(writer.room().length, options.limit - received);
      if (want === 0) {
        if (options.probePastLimit) overflow = (await source.fill(Buffer.allocUnsafe(1))) > 0;
        break;
      }
      let count: number;
      try {
        count = await source.fill(writer.room().subarray(0, want), options.signal);
      } catch (error) {
        // The sender went away mid-body: what did arrive is written first.
        await writer.finish();
        throw error;
      }
      received += count;
      writer.advance(count);
      // A cancelled transfer stops here (onFilled throws), also when the fill was cut short.
      options.onFilled?.(received);
      if (count === 0 || options.signal?.aborted) break;
    }
    await writer.finish();
  } catch (error) {
    await writer.settle();
    throw error;
  }
  return { bytes: received, overflow };
}

/** Where a DoubleBufferedWriter's full buffers go: `data` belongs at `position` of the output. */
export type PositionedWrite = (data: Buffer, position: number) => Promise<void>;

function backendWrites(backend: Backend): PositionedWrite {
  return (data, position) => backend.write(data, position);
}

/** One buffer's write on its way to the backend. */
interface WriteInFlight {
  write: Promise<void>;
  /** Where the write ends in the image. */
  end: number;
  /** The write completed (or failed): the buffer may be filled again. */
  settled: boolean;
}

/**
 * Fills two buffers in turn and keeps at most two writes in flight. The first buffer holds
 * data at the offset's position modulo 4096, so every later write starts on a 4096-byte
 * boundary and, to an image, the aligned parts go to O_DIRECT without copies.
 */
export class DoubleBufferedWriter {
  private index = 0;
  private fill: number;
  private start: number;
  private position: number;
  private readonly inFlight: (WriteInFlight | undefined)[] = [undefined, undefined];
  private failure: unknown;
  /** Bytes from the start written so far. */
  done = 0;

  constructor(
    private readonly write: PositionedWrite,
    private readonly buffers: readonly [Buffer, Buffer],
    private readonly offset: number,
    private readonly onProgress: ((bytes: number) => void) | undefined,
  ) {
    this.fill = offset % BUFFER_ALIGNMENT;
    this.start = this.fill;
    this.position = offset;
  }

  /**
   * Copies as much of `data` as the buffers take, starting a write whenever one fills.
   * @returns the bytes taken: fewer than `data.length` when the next buffer is still being
   *   written (wait with free(), then copy the rest).
   * @throws the failure of an earlier write.
   */
  copyIn(data: Buffer): number {
    let used = 0;
    while (used < data.length && this.retireIfDone(this.index)) {
      const buf = this.buffers[this.index as 0 | 1];
      const n = Math.min(data.length - used, buf.length - this.fill);
      data.copy(buf, this.fill, used, used + n);
      this.fill += n;
      used += n;
      if (this.fill === buf.length) this.submit();
    }
    return used;
  }

  /** The free part of the buffer being filled; only after free() resolved. */
  room(): Buffer {
    this.retireIfDone(this.index);
    return (this.buffers[this.index as 0 | 1] as Buffer).subarray(this.fill);
  }

  /** `count` bytes were placed at the start of room(): a full buffer goes to the backend. */
  advance(count: number): void {
    this.fill += count;
    if (this.fill === this.buffers[this.index as 0 | 1].length) this.submit();
  }

  /** Resolves once the buffer to fill next is free. @throws a write's failure. */
  async free(): Promise<void> {
    await this.wait(this.index);
  }

  /** Writes what is buffered and waits for every write. */
  async finish(): Promise<void> {
    if (this.fill > this.start) this.submit();
    // Oldest first, so the progress only grows.
    await this.wait(this.index);
    await this.wait(this.index ^ 1);
  }

  /** Waits for writes in flight without starting new ones (after an error). */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight.map((slot) => slot?.write));
  }

  /** True when buffer `index` may be filled: its last write, if any, has completed. */
  private retireIfDone(index: number): boolean {
    const slot = this.inFlight[index];
    if (slot !== undefined) {
      if (!slot.settled) return false;
      this.inFlight[index] = undefined;
      if (this.failure === undefined) this.done = Math.max(this.done, slot.end - this.offset);
    }
    if (this.failure !== undefined) throw this.failure;
    return true;
  }

  private submit(): void {
    const buf = this.buffers[this.index as 0 | 1];
    const data = buf.subarray(this.start, this.fill);
    const end = this.position + data.length;
    const slot: WriteInFlight = { write: Promise.resolve(), end, settled: false };
    slot.write = this.write(data, this.position).then(
      () => {
        slot.settled = true;
      },
      (error: unknown) => {
        this.failure ??= error;
        slot.settled = true;
      },
    );
    this.position = end;
    this.inFlight[this.index] = slot;
    this.index ^= 1;
    this.fill = 0;
    this.start = 0;
  }

  private async wait(index: number): Promise<void> {
    const slot = this.inFlight[index];
    if (slot !== undefined) {
      await slot.write;
      // Two waiters may wait for one write (an upload finishing while it waited for a buffer).
      if (this.inFlight[index] === slot) this.inFlight[index] = undefined;
      if (this.failure === undefined) {
        this.done = Math.max(this.done, slot.end - this.offset);
        this.onProgress?.(this.done);
      }
    }
    if (this.failure !== undefined) throw this.failure;
  }
}
