/**
 * Moves bytes from one stream to another with backpressure both ways, for the proxy's
 * streaming (spec [B6]): the source pauses while the sink is full; either side ending early
 * stops the other. Memory stays bounded by the streams' own buffers (and `highWaterMark`).
 */
import type { Readable, Writable } from "node:stream";
import { DoubleBufferedWriter, fillInTurns } from "./streaming.js";

export interface PumpOptions {
  /** Called after each chunk with the bytes moved so far; may throw to stop (cancellation). */
  onProgress?: (bytes: number) => void;
  /** Stop after this many bytes; the rest of the source is left unread. */
  limit?: number;
  /**
   * Bytes the sink may hold before the source pauses, when more than the sink's own
   * highWaterMark (16 KiB for sockets): a relay whose chunks exceed that would otherwise
   * pause and resume its source on every chunk, and write every chunk on its own.
   */
  highWaterMark?: number;
  /**
   * Hand the sink the chunks of one event-loop turn in one write (cork, uncork in
   * setImmediate): a TLS source emits one 16 KiB record per event, several per socket read,
   * and a socket sink would otherwise make a system call for each (proxied PUT: 64k writes
   * per GiB, 6k with this; proxy and daemon CPU per GiB down about a quarter). Not for 64 KiB
   * sources into a TLS sink: TLS copies a batch into one buffer before encrypting, no gain.
   * (process.nextTick would uncork between the records of one read: measured, no batching.)
   */
  coalesce?: boolean;
}

export interface PumpResult {
  bytes: number;
  /** True when the source had more than `limit` bytes. */
  overflow: boolean;
}

/**
 * Copies `source` into `sink` (without ending the sink).
 * @throws the first error of either stream, or an Error when one closes before the source ends.
 */
export function pump(source: Readable, sink: Writable, options: PumpOptions = {}): Promise<PumpResult> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    let settled = false;
    let corked = false;
    const uncork = () => {
      corked = false;
      sink.uncork();
    };
    const finish = (error: unknown, overflow = false) => {
      if (settled) return;
      settled = true;
      source.off("data", onData);
      source.off("end", onEnd);
      source.off("error", onError);
      source.off("close", onSourceClose);
      sink.off("drain", onDrain);
      sink.off("error", onError);
      sink.off("close", onSinkClose);
      if (error === undefined) resolve({ bytes, overflow });
      else {
        source.pause();
        reject(error);
      }
    };
    const onData = (chunk: Buffer) => {
      let data = chunk;
      const limit = options.limit;
      const overflow = limit !== undefined && bytes + data.length > limit;
      if (overflow) data = data.subarray(0, limit - bytes);
      bytes += data.length;
      try {
        options.onProgress?.(bytes);
      } catch (error) {
        finish(error);
        return;
      }
      if (options.coalesce && !corked) {
        corked = true;
        sink.cork();
        setImmediate(uncork);
      }
      const more = sink.write(data) || (options.highWaterMark ?? 0) > sink.writableLength;
      if (overflow) {
        source.pause();
        finish(undefined, true);
      } else if (!more) {
        source.pause();
      }
    };
    const onDrain = () => source.resume();
    const onEnd = () => finish(undefined);
    const onError = (error: Error) => finish(error);
    const onSourceClose = () => finish(new Error("the sending side closed before the end of the data"));
    const onSinkClose = () => finish(new Error("the receiving side closed before the end of the data"));
    source.on("data", onData);
    source.once("end", onEnd);
    source.once("error", onError);
    source.once("close", onSourceClose);
    sink.on("drain", onDrain);
    sink.once("error", onError);
    sink.once("close", onSinkClose);
    source.resume();
  });
}

/** A source that reads into the caller's buffers (see FillingSource in streaming.ts). */
export interface Filler {
  fill(dest: Buffer, signal?: AbortSignal): Promise<number>;
}

export interface RelayByFillingOptions {
  /** Called after each piece with the bytes moved so far; may throw to stop (cancellation). */
  onProgress?: (bytes: number) => void;
  /** Once aborted, the relay stops at the source's next bytes (a cancelled transfer). */
  signal?: AbortSignal;
  /** Bytes per piece (two pieces are used in turn). */
  pieceSize: number;
}

/**
 * Copies `length` bytes of `source` into `sink` (without ending it) through two buffers used
 * in turn (fillInTurns, as uploads to a backend do): one fills while the other is on its way,
 * and a buffer is filled again only once the sink took it. Against pump() over the source's
 * stream view, no Buffer is made per chunk and the sink gets one write per piece (proxied
 * uploads: the client's TLS records land in the piece as they arrive).
 * @returns the bytes moved (fewer than `length` when the source ended early); never overflow.
 * @throws the source's or the sink's error, an Error when the sink closes first, or what
 *   onProgress throws.
 */
export async function relayByFilling(
  source: Filler,
  sink: Writable,
  length: number,
  options: RelayByFillingOptions,
): Promise<PumpResult> {
  // A sink that fails while the source is still filling stops the fill at its next bytes.
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let sinkFailure: Error | undefined;
  // A destroyed sink may never call back the write it was given: its writes end with it.
  let sinkGone!: (error: Error) => void;
  const gone = new Promise<never>((_resolve, reject) => {
    sinkGone = reject;
  });
  gone.catch(() => undefined);
  const onSinkFailure = (error?: Error) => {
    sinkFailure ??= error ?? new Error("the receiving side closed before the end of the data");
    sinkGone(sinkFailure);
    stop.abort();
  };
  const size = Math.max(1, Math.min(options.pieceSize, length));
  const writer = new DoubleBufferedWriter(
    (piece) =>
      Promise.race([
        new Promise<void>((resolve, reject) => sink.write(piece, (error) => (error ? reject(error) : resolve()))),
        gone,
      ]),
    [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)],
    0,
    undefined,
  );
  const onSinkClose = () => onSinkFailure();
  sink.once("error", onSinkFailure);
  sink.once("close", onSinkClose);
  try {
    const { bytes } = await fillInTurns(source, writer, {
      limit: length,
      probePastLimit: false,
      signal: stop.signal,
      onFilled: (received) => {
        if (sinkFailure !== undefined) throw sinkFailure;
        options.onProgress?.(received);
      },
    });
    if (sinkFailure !== undefined) throw sinkFailure;
    return { bytes, overflow: false };
  } catch (error) {
    // A write that failed because the sink did says less than the sink's own failure.
    throw sinkFailure ?? error;
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    sink.off("error", onSinkFailure);
    sink.off("close", onSinkClose);
  }
}
