/**
 * Chunked transfer coding (RFC 9112 §7.1), read strictly: the one decoder of both sides of
 * imageio, the images services' request bodies (src/http/wire/body.ts) and the relay client's
 * responses (http-client/chunked.ts). It reads the framing (chunk-size lines, the CRLF after
 * each chunk's data, trailer lines); the data between is the caller's to move, so the images
 * services still read it straight into a request's buffers.
 */
import { FIELD_NAME_COLON, hasControl } from "./http-syntax.js";

/** Longest chunk-size or trailer line. */
export const MAX_CHUNKED_LINE = 4096;

/**
 * chunk-size [ chunk-ext ]: whitespace (BWS) may only precede an extension's ";"; after a bare
 * size it is framing a lenient peer might read otherwise. 13 hex digits stay below 2^53.
 */
const CHUNK_SIZE_LINE = /^([0-9a-fA-F]{1,13})(?:[ \t]*;.*)?$/;

/** The framing is broken: where the body ends can no longer be told. */
export class ChunkedFramingError extends Error {}

type State = "size" | "data" | "data-end" | "trailers" | "done";

export class ChunkedFraming {
  private state: State = "size";
  /** Bytes of the current chunk's data still to come. */
  dataLeft = 0;

  /** Chunk data comes next (dataLeft bytes of it). */
  get inData(): boolean {
    return this.state === "data";
  }

  /** The last chunk and the trailers were read: the body is complete. */
  get done(): boolean {
    return this.state === "done";
  }

  /** `count` bytes of the current chunk's data were taken by the caller. */
  tookData(count: number): void {
    this.dataLeft -= count;
    if (this.dataLeft === 0) this.state = "data-end";
  }

  /**
   * Reads the framing at the start of `bytes` (never while inData): one CRLF-ended line, or
   * the CRLF that ends a chunk's data.
   * @returns the bytes it used; 0 while they hold no complete piece of framing yet.
   * @throws ChunkedFramingError naming what is wrong.
   */
  read(bytes: Buffer): number {
    if (this.state === "data-end") {
      if (bytes.length < 2) return 0;
      if (bytes[0] !== 0x0d || bytes[1] !== 0x0a) throw new ChunkedFramingError("chunk data not followed by CRLF");
      this.state = "size";
      return 2;
    }
    const end = bytes.indexOf("\r\n");
    if (end === -1 ? bytes.length > MAX_CHUNKED_LINE : end > MAX_CHUNKED_LINE) {
      throw new ChunkedFramingError("chunk size or trailer line too long");
    }
    if (end === -1) return 0;
    const line = bytes.toString("latin1", 0, end);
    // A bare LF or CR (or any control byte) in these lines is where a lenient front end and
    // we would disagree on where the body ends: the rest of the connection is not trusted.
    if (hasControl(line)) throw new ChunkedFramingError("control character in a chunk size or trailer line");
    if (this.state === "trailers") {
      if (line === "") this.state = "done";
      else if (!FIELD_NAME_COLON.test(line)) {
        throw new ChunkedFramingError(`invalid trailer line '${line.slice(0, 40)}'`);
      }
      return end + 2;
    }
    const size = CHUNK_SIZE_LINE.exec(line);
    if (size === null) throw new ChunkedFramingError(`invalid chunk size line '${line.slice(0, 40)}'`);
    this.dataLeft = Number.parseInt(size[1] as string, 16);
    this.state = this.dataLeft === 0 ? "trailers" : "data";
    return end + 2;
  }
}
