/**
 * Request heads, strictly (spec §3, RFC 9112 §2–§6): a request line and header lines ending
 * in CRLF, within Node's former limits, answered exactly as the daemon always answered them.
 * What makes a head unreadable (framing) is answered here; what a readable head asks for that
 * we do not serve (versions, lengths of the line, header counts, methods) is the dispatcher's.
 */
import { hasControl, TOKEN_CHAR } from "../../io/http-syntax.js";
import { rawErrorResponse } from "../response.js";

/** Most bytes a head may have (request line and header lines), as Node's maxHeaderSize was. */
export const MAX_HEAD_BYTES = 64 * 1024;

/** How the body that follows a head is framed. */
export type BodyFraming = { kind: "length"; length: number } | { kind: "chunked" };

export interface RequestHead {
  readonly method: string;
  readonly target: string;
  readonly versionMajor: number;
  readonly versionMinor: number;
  /** Lowercase names; repeated fields joined with ", " (or the first kept, as Node did). */
  readonly headers: ReadonlyMap<string, string>;
  readonly headerLines: number;
  readonly framing: BodyFraming;
  /** Bytes of the head, CRLF CRLF included (leading empty lines too). */
  readonly size: number;
}

export type HeadResult =
  | { kind: "incomplete" }
  | { kind: "head"; head: RequestHead }
  /** The complete raw answer; the connection closes after it. */
  | { kind: "refused"; response: string };

/** Fields whose repetitions Node dropped instead of joining (kept so handlers see the same values). */
const FIRST_WINS = new Set([
  "age",
  "authorization",
  "content-length",
  "content-type",
  "etag",
  "expires",
  "from",
  "host",
  "if-modified-since",
  "if-unmodified-since",
  "last-modified",
  "location",
  "max-forwards",
  "proxy-authorization",
  "referer",
  "retry-after",
  "server",
  "user-agent",
]);

const TOKEN = new RegExp(`^${TOKEN_CHAR}+$`);
const VERSION = /^HTTP\/(\d)\.(\d)$/;

const badRequest = (message: string): HeadResult => ({
  kind: "refused",
  response: rawErrorResponse(400, "Bad Request", `Invalid request: ${message}`),
});

/**
 * How far an incomplete head was examined: a head arriving a byte at a time is then scanned
 * once in all, not once per read (which let one client cost a second of CPU per head).
 * Offsets count from the start of the staged bytes, which do not move while a head is awaited.
 */
export interface HeadScan {
  /** Bytes of empty lines before the request line. */
  blank: number;
  /** Bytes known to hold neither the head's end nor a bare LF. */
  checked: number;
}

/** A scan of a head none of whose bytes were examined yet. */
export const freshScan = (): HeadScan => ({ blank: 0, checked: 0 });

/**
 * Parses the head at the start of `data`.
 * @param scan what earlier calls examined of the same head (updated); a fresh one by default.
 * @returns incomplete while more bytes may complete it, the head, or the answer refusing it.
 */
export function parseHead(data: Buffer, scan: HeadScan = freshScan()): HeadResult {
  let at = scan.blank;
  // RFC 9112 §2.2: empty lines before a request line are ignored (left after a body by some clients).
  while (data[at] === 0x0d && data[at + 1] === 0x0a) at += 2;
  scan.blank = at;
  const checked = Math.max(at, scan.checked);
  // The end may straddle what was checked and what is new.
  const end = data.indexOf("\r\n\r\n", Math.max(at, checked - 3));
  if (end === -1 || end + 4 - at > MAX_HEAD_BYTES) {
    // Not complete yet (or too long): only a line ended by a bare LF can be refused already.
    for (
      let lf = data.indexOf(0x0a, checked);
      lf !== -1 && lf - at <= MAX_HEAD_BYTES;
      lf = data.indexOf(0x0a, lf + 1)
    ) {
      if (data[lf - 1] !== 0x0d) return badRequest("line not ended by CRLF");
    }
    if (end === -1 && data.length - at <= MAX_HEAD_BYTES) {
      scan.checked = data.length;
      return { kind: "incomplete" };
    }
    const firstLf = data.indexOf(0x0a, at);
    return overflow(firstLf === -1 || firstLf - at > MAX_HEAD_BYTES);
  }
  const lines: string[] = [];
  let lineStart = at;
  for (;;) {
    const lf = data.indexOf(0x0a, lineStart);
    if (data[lf - 1] !== 0x0d || lf === lineStart) return badRequest("line not ended by CRLF");
    const line = data.toString("latin1", lineStart, lf - 1);
    lineStart = lf + 1;
    if (line === "") break;
    lines.push(line);
  }
  return readHead(lines, lineStart);
}

function overflow(inRequestLine: boolean): HeadResult {
  return {
    kind: "refused",
    response: inRequestLine
      ? rawErrorResponse(414, "URI Too Long", "Request line too long")
      : rawErrorResponse(431, "Request Header Fields Too Large", "Request header fields too large"),
  };
}

function readHead(lines: string[], size: number): HeadResult {
  const [requestLine = "", ...fieldLines] = lines;
  const parts = requestLine.split(" ");
  const [method = "", target = "", version] = parts;
  // RFC 9112 §3: the method is a token. Anything else is a request line we cannot read (400,
  // not echoed); a token naming no method we serve is the dispatcher's 405 (spec §3.2).
  if (!TOKEN.test(method)) return badRequest("invalid method");
  if (parts.length > 3 || target === "" || hasControl(target)) return badRequest("invalid request target");
  // A line without a version is HTTP/0.9: read, so that the dispatcher refuses it as such.
  let versionMajor = 0;
  let versionMinor = 9;
  if (version !== undefined) {
    const match = VERSION.exec(version);
    if (match === null) return badRequest("invalid HTTP version");
    versionMajor = Number(match[1]);
    versionMinor = Number(match[2]);
  }
  const headers = new Map<string, string>();
  const lengths: string[] = [];
  const codings: string[] = [];
  for (const line of fieldLines) {
    // obs-fold (RFC 9112 §5.2): a server may refuse it, and we do.
    if (line.startsWith(" ") || line.startsWith("\t")) return badRequest("folded header line");
    const colon = line.indexOf(":");
    const name = colon === -1 ? "" : line.slice(0, colon).toLowerCase();
    if (!TOKEN.test(name)) return badRequest("invalid header line");
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (hasControl(value)) return badRequest("invalid character in header value");
    if (name === "content-length") lengths.push(value);
    if (name === "transfer-encoding") codings.push(value);
    const earlier = headers.get(name);
    if (earlier === undefined) headers.set(name, value);
    else if (!FIRST_WINS.has(name)) headers.set(name, `${earlier}, ${value}`);
  }
  const framing = bodyFraming(lengths, codings);
  if (typeof framing === "string") return { kind: "refused", response: framing };
  return {
    kind: "head",
    head: { method, target, versionMajor, versionMinor, headers, headerLines: fieldLines.length, framing, size },
  };
}

/** The body's framing (RFC 9112 §6.1–§6.3), or the raw answer refusing the head. */
function bodyFraming(lengths: string[], codings: string[]): BodyFraming | string {
  if (codings.length > 0 && lengths.length > 0) {
    return rawErrorResponse(400, "Bad Request", "Content-Length and Transfer-Encoding must not be used together");
  }
  if (codings.length > 0) {
    const coding = codings.join(", ");
    // A coding we cannot decode makes the body unreadable.
    if (coding.toLowerCase() !== "chunked") {
      return rawErrorResponse(501, "Not Implemented", `Unsupported Transfer-Encoding: '${coding}'`);
    }
    return { kind: "chunked" };
  }
  if (lengths.length > 1) return rawErrorResponse(400, "Bad Request", "Multiple Content-Length headers");
  const value = lengths[0];
  if (value === undefined) return { kind: "length", length: 0 };
  const length = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(length)) {
    const message = /^-\d+$/.test(value) ? `Negative Content-Length: ${value}` : `Invalid Content-Length: '${value}'`;
    return rawErrorResponse(400, "Bad Request", message);
  }
  return { kind: "length", length };
}
