/**
 * The head of an HTTP/1.1 response from a remote images service, parsed strictly: the relay
 * trusts its framing to cut the body, so anything ambiguous (two different lengths, a length
 * that is not a plain number, a length beside chunked encoding, bare LF line ends) is refused
 * instead of guessed at.
 */

import { TOKEN_CHAR } from "../http-syntax.js";

/** Longest response head accepted; images services send a few hundred bytes. */
export const RESPONSE_HEAD_LIMIT = 64 * 1024;

export interface ResponseHead {
  status: number;
  /** Header values by lower-case name; repeated headers joined with ", ". */
  headers: ReadonlyMap<string, string>;
  /** The body's length; undefined for 1xx answers, chunked bodies and bodies that end with the connection. */
  contentLength: number | undefined;
  /** The body comes in chunks (`transfer-encoding: chunked`). */
  chunked: boolean;
  /** The remote keeps the connection open after this response. */
  keepAlive: boolean;
}

/** The remote broke HTTP/1.1 framing: the connection cannot be trusted any more. */
export class ResponseFramingError extends Error {}

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-5]\d\d)(?: [\t\x20-\x7e\x80-\xff]*)?$/;
const HEADER_LINE = new RegExp(`^(${TOKEN_CHAR}+):[\\t ]*([\\t\\x20-\\x7e\\x80-\\xff]*?)[\\t ]*$`);
const DIGITS = /^\d{1,16}$/;

/** Where the head in `bytes` ends (just after its blank line), or -1 when it is not complete yet. */
export function findHeadEnd(bytes: Buffer, from: number): number {
  const at = bytes.indexOf("\r\n\r\n", Math.max(0, from - 3), "latin1");
  return at === -1 ? -1 : at + 4;
}

/**
 * Parses a complete head (status line, header lines, the blank line).
 * @throws ResponseFramingError naming what is wrong.
 */
export function parseResponseHead(head: Buffer, method: string): ResponseHead {
  const lines = head.toString("latin1", 0, head.length - 4).split("\r\n");
  const statusLine = STATUS_LINE.exec(lines[0] ?? "");
  if (statusLine === null) throw new ResponseFramingError(`malformed status line ${JSON.stringify(lines[0])}`);
  const status = Number(statusLine[2]);
  const headers = new Map<string, string>();
  const lengths = new Set<string>();
  for (const line of lines.slice(1)) {
    const header = HEADER_LINE.exec(line);
    if (header === null) throw new ResponseFramingError(`malformed header line ${JSON.stringify(line.slice(0, 80))}`);
    const name = (header[1] as string).toLowerCase();
    const value = header[2] as string;
    if (name === "content-length") for (const length of value.split(",")) lengths.add(length.trim());
    const previous = headers.get(name);
    headers.set(name, previous === undefined ? value : `${previous}, ${value}`);
  }
  const encoding = headers.get("transfer-encoding");
  if (encoding !== undefined && encoding.toLowerCase() !== "chunked") {
    throw new ResponseFramingError(`unsupported transfer-encoding ${JSON.stringify(encoding)}`);
  }
  if (encoding !== undefined && lengths.size > 0) {
    throw new ResponseFramingError("both transfer-encoding and content-length");
  }
  if (lengths.size > 1) throw new ResponseFramingError(`conflicting content-length ${[...lengths].join(", ")}`);
  const [length] = lengths;
  if (length !== undefined && !DIGITS.test(length)) {
    throw new ResponseFramingError(`invalid content-length ${JSON.stringify(length)}`);
  }
  const bodyless = status < 200 || status === 204 || status === 304 || method === "HEAD";
  const chunked = encoding !== undefined && !bodyless;
  let contentLength = bodyless ? 0 : length === undefined ? undefined : Number(length);
  if (contentLength !== undefined && !Number.isSafeInteger(contentLength)) {
    throw new ResponseFramingError(`content-length ${length} is too large`);
  }
  if (status < 200) contentLength = undefined;
  const connection = (headers.get("connection") ?? "").toLowerCase();
  const keepAlive =
    (contentLength !== undefined || chunked) &&
    (statusLine[1] === "1" ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection));
  return { status, headers, contentLength, chunked, keepAlive };
}
