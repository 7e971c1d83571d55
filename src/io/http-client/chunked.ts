/**
 * Decoding of `transfer-encoding: chunked` bodies, which servers built on node:http or other
 * frameworks send for short answers (errors, JSON) whose length they did not set. Data ranges
 * always carry content-length; this path copies, and is meant for small bodies.
 */

import { ResponseFramingError } from "./response-head.js";

/** Longest chunk-size line (with extensions) or trailer line accepted. */
const LINE_LIMIT = 4096;
const CHUNK_SIZE = /^([0-9a-fA-F]{1,12})(?:[\t ]*;.*)?$/;

type State = "size" | "data" | "data-end" | "trailer" | "done";

export class ChunkedDecoder {
  private state: State = "size";
  private line = "";
  private chunkLeft = 0;

  /** The body is complete (the last chunk and the trailers arrived). */
  get done(): boolean {
    return this.state === "done";
  }

  /**
   * Feeds bytes of the body's encoding; `onData` gets the decoded pieces (views of `bytes`).
   * @returns how many bytes of `bytes` belonged to the body (the rest follows it).
   * @throws ResponseFramingError on a malformed encoding.
   */
  feed(bytes: Buffer, onData: (data: Buffer) => void): number {
    let at = 0;
    while (at < bytes.length && this.state !== "done") {
      if (this.state === "data") {
        const take = Math.min(this.chunkLeft, bytes.length - at);
        onData(bytes.subarray(at, at + take));
        at += take;
        this.chunkLeft -= take;
        if (this.chunkLeft === 0) this.state = "data-end";
        continue;
      }
      const lf = bytes.indexOf(10, at);
      const end = lf === -1 ? bytes.length : lf + 1;
      this.line += bytes.toString("latin1", at, end);
      at = end;
      if (this.line.length > LINE_LIMIT) throw new ResponseFramingError("chunked encoding line too long");
      if (lf === -1) continue;
      if (!this.line.endsWith("\r\n")) throw new ResponseFramingError("chunked encoding line ends in a bare LF");
      const line = this.line.slice(0, -2);
      this.line = "";
      this.onLine(line);
    }
    return at;
  }

  private onLine(line: string): void {
    if (this.state === "data-end") {
      if (line !== "") throw new ResponseFramingError("chunk longer than its size");
      this.state = "size";
    } else if (this.state === "size") {
      const size = CHUNK_SIZE.exec(line);
      if (size === null) throw new ResponseFramingError(`malformed chunk size ${JSON.stringify(line.slice(0, 40))}`);
      this.chunkLeft = Number.parseInt(size[1] as string, 16);
      this.state = this.chunkLeft === 0 ? "trailer" : "data";
    } else if (this.state === "trailer" && line === "") {
      this.state = "done";
    }
  }
}
