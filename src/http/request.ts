/**
 * One request as handlers see it: decoded path, query, CORS headers to add, and the body
 * readers with their limits.
 */
import { parseJsonLikePython } from "../pyformat.js";
import type { ClientConnection } from "./connection.js";
import { type HeaderList, HttpError } from "./errors.js";
import type { IncomingRequest, OutgoingResponse } from "./exchange.js";

/** JSON bodies (PATCH, control API) are small; anything larger is refused (spec §3.3). */
export const MAX_JSON_BODY = 64 * 1024;

export class RequestContext {
  /** Extra headers every response to this request carries (CORS). */
  readonly extraHeaders: HeaderList = [];
  /** Close the connection after the response (`?close=y`, errors with unread bodies…). */
  closeAfter = false;
  /** Set once the request body has been read to its end. */
  bodyRead = false;
  /** The client sent `Expect: 100-continue` and waits for it before sending the body. */
  expectsContinue = false;
  /** For the connection's statistics: the operation when the route alone does not tell (zero, flush). */
  operation: string | undefined;
  /** For the connection's statistics: image bytes read, written or zeroed by this request. */
  bytesMoved = 0;

  constructor(
    readonly req: IncomingRequest,
    readonly res: OutgoingResponse,
    readonly connection: ClientConnection,
    readonly path: string,
    readonly query: ReadonlyMap<string, string>,
  ) {
    if (!this.hasBody) this.bodyRead = true;
  }

  get method(): string {
    return this.req.method;
  }

  /** True when the request is framed with a body (chunked, or a non-zero Content-Length). */
  get hasBody(): boolean {
    const length = this.req.header("content-length");
    return this.req.header("transfer-encoding") !== undefined || (length !== undefined && length !== "0");
  }

  /** The body has not been read to its end, so the connection cannot be reused. */
  get bodyUnread(): boolean {
    return !this.bodyRead && !this.req.complete;
  }

  /**
   * The body's chunks. Leaving the loop early does not destroy the request, so an error
   * response can still be sent before the connection closes.
   */
  bodyChunks(): AsyncIterable<Buffer> {
    this.askForBody();
    return this.req.body().iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>;
  }

  /**
   * The request got this far (validated, authorized, the remote ready when relaying): a client
   * that sent `Expect: 100-continue` gets its 100 now and sends the body (spec §3.5).
   */
  askForBody(): void {
    if (this.expectsContinue) {
      this.expectsContinue = false;
      this.res.writeContinue();
    }
  }

  header(name: string): string | undefined {
    return this.req.header(name);
  }

  /**
   * Reads a JSON object body completely (any framing), up to MAX_JSON_BODY bytes. Numbers
   * written with a fraction or exponent come back as PythonFloat.
   * @throws HttpError 413 for a larger body; 400 `<invalidPrefix> <reason>` for bad JSON or
   *   a value that is not an object.
   */
  async readJsonObject(invalidPrefix: string): Promise<Record<string, unknown>> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of this.bodyChunks()) {
      size += chunk.length;
      if (size > MAX_JSON_BODY)
        throw new HttpError(413, `Request body exceeds ${MAX_JSON_BODY} bytes`, { close: true });
      chunks.push(chunk);
    }
    this.bodyRead = true;
    let value: unknown;
    try {
      // `4096.0` stays a float, as upstream sees it: integer fields refuse it.
      value = parseJsonLikePython(Buffer.concat(chunks).toString("utf8"));
    } catch (error) {
      throw new HttpError(400, `${invalidPrefix} ${(error as Error).message}`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new HttpError(400, `${invalidPrefix} expecting a JSON object, got ${JSON.stringify(value)}`);
    }
    return value as Record<string, unknown>;
  }
}

/** Percent-decodes a path; invalid escapes stay as they are, bytes decode as UTF-8. */
export function decodePath(raw: string): string {
  if (!raw.includes("%")) return raw;
  const bytes: number[] = [];
  const text = Buffer.from(raw, "utf8");
  for (let i = 0; i < text.length; i++) {
    const byte = text[i] as number;
    const hex = byte === 0x25 ? text.subarray(i + 1, i + 3).toString("latin1") : "";
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(byte);
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

/**
 * The origin form (`/path?query`) of a request target. RFC 9112 §3.2.2: a server must accept
 * the absolute form (`https://host/path?query`) too; its scheme and authority name nothing here.
 */
export function originForm(target: string): string {
  const prefix = /^https?:\/\/[^/?#]*/i.exec(target)?.[0];
  if (prefix === undefined) return target;
  const rest = target.slice(prefix.length);
  return rest.startsWith("/") ? rest : `/${rest}`;
}

/**
 * Splits a request target (origin or absolute form) into decoded path and query (form pairs,
 * last duplicate wins).
 */
export function splitTarget(rawTarget: string): { path: string; query: Map<string, string> } {
  const target = originForm(rawTarget);
  const at = target.indexOf("?");
  const rawPath = at === -1 ? target : target.slice(0, at);
  const query = new Map<string, string>();
  if (at !== -1) {
    for (const [key, value] of new URLSearchParams(target.slice(at + 1))) query.set(key, value);
  }
  return { path: decodePath(rawPath), query };
}
