/**
 * Writing responses the way upstream does (spec §3.1): lowercase headers, `server` and `date`
 * first, always a `content-length`, never chunked; JSON like Python's json.dumps plus "\n";
 * errors as text/plain.
 */
import { pythonJson } from "../pyformat.js";
import { VERSION } from "../version.js";
import type { HeaderList, HttpError } from "./errors.js";
import type { OutgoingResponse } from "./exchange.js";
import type { RequestContext } from "./request.js";

export const SERVER_HEADER = `imageio/${VERSION}`;

/** Starts a response with a body of `length` bytes to be written by the caller. */
export function writeHead(ctx: RequestContext, status: number, length: number, headers: HeaderList = []): void {
  const flat: string[] = ["server", SERVER_HEADER, "date", new Date().toUTCString()];
  for (const [name, value] of headers) flat.push(name, value);
  flat.push("content-length", String(length));
  for (const [name, value] of ctx.extraHeaders) flat.push(name, value);
  // A client still waiting for its 100 Continue may send the body after this answer or never:
  // no byte after it can be taken for the body or for the next request (node:http closes too).
  if (ctx.expectsContinue && ctx.bodyUnread) ctx.closeAfter = true;
  // Keep-alive is HTTP/1.1's default: only a closing response says anything.
  if (ctx.closeAfter) flat.push("connection", "close");
  ctx.res.writeHead(status, flat);
}

/** Sends a complete response. */
export function send(ctx: RequestContext, status: number, body?: Buffer | string, headers: HeaderList = []): void {
  const data = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body, "utf8");
  writeHead(ctx, status, data?.length ?? 0, headers);
  ctx.res.end(ctx.method === "HEAD" ? undefined : data);
}

export function sendJson(ctx: RequestContext, status: number, value: unknown, headers: HeaderList = []): void {
  send(ctx, status, `${pythonJson(value)}\n`, [...headers, ["content-type", "application/json"]]);
}

export function sendError(ctx: RequestContext, error: HttpError): void {
  if (error.close || ctx.bodyUnread) ctx.closeAfter = true;
  send(ctx, error.status, `${error.message}\n`, [...error.headers, ["content-type", "text/plain; charset=UTF-8"]]);
}

/** A complete raw response for errors found before a request exists (a head that cannot be read). */
export function rawErrorResponse(status: number, reason: string, message: string): string {
  const body = `${message}\n`;
  return (
    `HTTP/1.1 ${status} ${reason}\r\n` +
    `server: ${SERVER_HEADER}\r\n` +
    `date: ${new Date().toUTCString()}\r\n` +
    "content-type: text/plain; charset=UTF-8\r\n" +
    `content-length: ${Buffer.byteLength(body)}\r\n` +
    "connection: close\r\n\r\n" +
    body
  );
}

/** Writes a chunk and resolves once the socket has taken it (so the buffer may be reused). */
export function writeChunk(res: OutgoingResponse, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onClose = () => reject(new Error("client disconnected during the response"));
    res.once("close", onClose);
    res.write(chunk, (error) => {
      res.off("close", onClose);
      if (error) reject(error);
      else resolve();
    });
  });
}
