/**
 * What handlers use of a request and its response, whichever engine serves the connection:
 * imageio's own HTTP/1.1 framing (the images services, src/http/wire/) or node:http (the
 * control service). Handlers never see more than this.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Readable, Writable } from "node:stream";

export interface IncomingRequest {
  readonly method: string;
  /** The request target as sent (origin or absolute form). */
  readonly target: string;
  readonly versionMajor: number;
  readonly versionMinor: number;
  /** Header lines the head had. */
  readonly headerLines: number;
  /** The connection may carry another request after this one (HTTP/1.1, or 1.0 keep-alive; no `Connection: close`). */
  readonly keepAlive: boolean;
  /** The body was read to its end (true at once without a body). */
  readonly complete: boolean;
  /** A field's value; repeated fields joined with ", ". `name` is lowercase. */
  header(name: string): string | undefined;
  /** The body as a stream (created on first use). */
  body(): Readable;
}

export interface OutgoingResponse extends Writable {
  readonly headersSent: boolean;
  readonly statusCode: number;
  /** Starts the response with `headers`, a flat name, value list written as given. */
  writeHead(status: number, headers: string[]): this;
  writeContinue(): void;
}

/** A node:http request as handlers see requests. */
export function nodeRequest(req: IncomingMessage, res: ServerResponse): IncomingRequest {
  return {
    method: req.method ?? "",
    target: req.url ?? "/",
    versionMajor: req.httpVersionMajor,
    versionMinor: req.httpVersionMinor,
    headerLines: req.rawHeaders.length / 2,
    keepAlive: res.shouldKeepAlive,
    get complete() {
      return req.complete;
    },
    header(name: string): string | undefined {
      const value = req.headers[name];
      return Array.isArray(value) ? value.join(", ") : value;
    },
    body: () => req,
  };
}

/**
 * A node:http response as handlers see responses: no `date` or `connection` of Node's own
 * (the header list handlers write has them as upstream writes them).
 */
export function nodeResponse(res: ServerResponse): OutgoingResponse {
  res.sendDate = false;
  // Without this, Node adds a capitalized "Connection: keep-alive" to responses that keep the
  // connection; a response that closes it says `connection: close` in its own list.
  res.removeHeader("connection");
  return res as unknown as OutgoingResponse;
}
