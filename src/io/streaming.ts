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

/** The default upload: the source's chunks are copied into the two buffers in turn. */
async function writeThroughBuffers(
  backend: Backend,
  source: Readable,
  offset: number,
  options: UploadOptions,
): Promise<UploadResult> {
  const writer = new DoubleBufferedWriter(backend, await options.buffers(), offset, options.onProgress);
  options.onReady?.();
  let received = 0;
  let overflow = false;
  const chunks = source.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await chunks.next();
      } catch (error) {
        // The sender went away mid-body: what did arrive is written first.
        await writer.finish();
        throw error;
      }
      if (next.done) break;
      let data = next.value;
      if (received + data.length > options.limit) {
        data = data.subarray(0, options.limit - received);
        overflow = true;
      }
      received += data.length;
      await writer.add(data);
      // Between chunks even when no write completed: a cancelled transfer stops here.
      options.onProgress?.(writer.done);
      if (overflow) break;
    }
    await writer.finish();
  } catch (error) {
    await writer.settle();
    throw error;
  }
  return { bytes: received, overflow, flushed: false };
}

/**
 * Fills two aligned buffers in turn and keeps at most two writes in flight. The first buffer
 * holds data at the image offset's position modulo 4096, so every later write starts on a
 * 4096-byte boundary and the aligned parts go to O_DIRECT without copies.
 */
class DoubleBufferedWriter {
  private index = 0;
  private fill: number;
  private start: number;
  private position: number;
  /** Per buffer: its write in flight and where that write ends in the image. */
  private readonly inFlight: ({ write: Promise<void>; end: number } | undefined)[] = [undefined, undefined];
  private failure: unknown;
  /** Bytes from the start written so far. */
  done = 0;

  constructor(
    private readonly backend: Backend,
    private readonly buffers: readonly [Buffer, Buffer],
    private readonly offset: number,
    private readonly onProgress: ((bytes: number) => void) | undefined,
  ) {
    this.fill = offset % BUFFER_ALIGNMENT;
    this.start = this.fill;
    this.position = offset;
  }

  async add(data: Buffer): Promise<void> {
    let used = 0;
    while (used < data.length) {
      const buf = this.buffers[this.index as 0 | 1];
      const n = Math.min(data.length - used, buf.length - this.fill);
      data.copy(buf, this.fill, used, used + n);
      this.fill += n;
      used += n;
      if (this.fill === buf.length) await this.submit();
    }
  }

  /** Writes what is buffered and waits for every write. */
  async finish(): Promise<void> {
    if (this.fill > this.start) await this.submit();
    // Oldest first, so the progress only grows.
    await this.wait(this.index);
    await this.wait(this.index ^ 1);
  }

  /** Waits for writes in flight without starting new ones (after an error). */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight.map((slot) => slot?.write));
  }

  private async submit(): Promise<void> {
    const buf = this.buffers[this.index as 0 | 1];
    const data = buf.subarray(this.start, this.fill);
    const write = this.backend.write(data, this.position).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.position += data.length;
    this.inFlight[this.index] = { write, end: this.position };
    this.index ^= 1;
    this.fill = 0;
    this.start = 0;
    // Reuse the other buffer only once its write is done: this is where the upload waits.
    await this.wait(this.index);
  }

  private async wait(index: number): Promise<void> {
    const slot = this.inFlight[index];
    this.inFlight[index] = undefined;
    if (slot !== undefined) {
      await slot.write;
      if (this.failure === undefined) {
        this.done = slot.end - this.offset;
        this.onProgress?.(this.done);
      }
    }
    if (this.failure !== undefined) throw this.failure;
  }
}
