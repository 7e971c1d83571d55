/**
 * Decoding of `transfer-encoding: chunked` bodies, which servers built on node:http or other
 * frameworks send for short answers (errors, JSON) whose length they did not set. Data ranges
 * always carry content-length; this path copies, and is meant for small bodies. The framing is
 * read by the decoder the images services read request bodies with, as strictly.
 */

import { ChunkedFraming } from "../chunked-framing.js";

const NO_BYTES = Buffer.alloc(0);

export class ChunkedDecoder {
  private readonly framing = new ChunkedFraming();
  /** The start of a framing line that the next bytes complete. */
  private partial: Buffer = NO_BYTES;

  /** The body is complete (the last chunk and the trailers arrived). */
  get done(): boolean {
    return this.framing.done;
  }

  /**
   * Feeds bytes of the body's encoding; `onData` gets the decoded pieces (views of `bytes`).
   * @returns how many bytes of `bytes` belonged to the body (the rest follows it).
   * @throws ChunkedFramingError on a malformed encoding.
   */
  feed(bytes: Buffer, onData: (data: Buffer) => void): number {
    let at = 0;
    while (at < bytes.length && !this.framing.done) {
      if (this.framing.inData) {
        const take = Math.min(this.framing.dataLeft, bytes.length - at);
        onData(bytes.subarray(at, at + take));
        at += take;
        this.framing.tookData(take);
        continue;
      }
      const rest = bytes.subarray(at);
      const framing = this.partial.length === 0 ? rest : Buffer.concat([this.partial, rest]);
      const used = this.framing.read(framing);
      if (used === 0) {
        // Kept (a copy: `bytes` is the connection's to reuse) until the line is complete.
        this.partial = Buffer.from(framing);
        return bytes.length;
      }
      // The line ends in these bytes: what came before them was kept from earlier feeds.
      at += used - this.partial.length;
      this.partial = NO_BYTES;
    }
    return at;
  }
}
