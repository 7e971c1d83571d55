/**
 * Moves bytes from one stream to another with backpressure both ways, for the proxy's
 * streaming (spec [B6]): the source pauses while the sink is full; either side ending early
 * stops the other. Memory stays bounded by the streams' own buffers (and `highWaterMark`).
 */
import type { Readable, Writable } from "node:stream";

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
