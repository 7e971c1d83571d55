/**
 * `GET /images/{id}` (download, spec §5.3) and `HEAD /images/{id}` [D3]. The body streams
 * from the backend with backpressure (src/io/streaming.ts): through the request's two
 * buffers, or relayed by a backend in front of a remote.
 */
import { readTo } from "../../io/streaming.js";
import type { Ticket } from "../../tickets/ticket.js";
import type { App } from "../app.js";
import { type HeaderList, HttpError } from "../errors.js";
import { type ByteRangeRequest, parseRange } from "../range.js";
import type { RequestContext } from "../request.js";
import { send, writeHead } from "../response.js";
import { requireId } from "../router.js";
import { clientTag, honourCloseParam, onTicket, openForTicket } from "./common.js";

function contentHeaders(ticket: Ticket): HeaderList {
  const filename = ticket.fields.filename;
  // The filename goes out as raw UTF-8 bytes (Node writes header strings as latin1).
  const disposition =
    filename === undefined ? "attachment" : `attachment; filename=${Buffer.from(filename, "utf8").toString("latin1")}`;
  return [
    ["content-type", "application/octet-stream"],
    ["content-disposition", disposition],
    ["accept-ranges", "bytes"],
  ];
}

function outOfTicket(ticketSize: number): HttpError {
  return new HttpError(416, "Requested range out of allowed range", {
    headers: [["content-range", `bytes */${ticketSize}`]],
  });
}

function moreThanAvailable(requested: number, available: number): HttpError {
  return new HttpError(416, `Requested more bytes than available: ${requested} > ${available}`, {
    headers: [["content-range", `bytes */${available}`]],
  });
}

/** The byte range to send: `[first, first + length)`, checked against ticket and image (spec §5.3 step 4). */
function resolveRange(range: ByteRangeRequest | undefined, ticketSize: number, available: number) {
  if (range === undefined) return { first: 0, length: available };
  const { first, last } = range;
  if (last !== undefined) {
    const length = last - first + 1;
    if (first + length > ticketSize) throw outOfTicket(ticketSize);
    if (first + length > available) throw moreThanAvailable(first + length, available);
    return { first, length };
  }
  if (first >= ticketSize) throw outOfTicket(ticketSize);
  if (first >= available) throw moreThanAvailable(first + 1, available);
  return { first, length: available - first };
}

export async function head(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const { ticket, context } = await openForTicket(ctx, app, id, "read");
  const available = Math.min(ticket.fields.size, await onTicket(ticket, "read", () => context.backend.size()));
  ticket.touch();
  writeHead(ctx, 200, available, contentHeaders(ticket));
  ctx.res.end();
}

export async function get(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  honourCloseParam(ctx);
  const rangeHeader = ctx.header("range");
  const range = rangeHeader === undefined ? undefined : parseRange(rangeHeader);
  const { ticket, context } = await openForTicket(ctx, app, id, "read");
  const available = Math.min(ticket.fields.size, await onTicket(ticket, "read", () => context.backend.size()));
  const { first, length } = resolveRange(range, ticket.fields.size, available);
  app.log.info(`${clientTag(ctx)} READ`, {
    size: length,
    offset: first,
    close: ctx.closeAfter ? "y" : "n",
    transfer: ticket.label,
  });
  const headers = contentHeaders(ticket);
  if (range !== undefined)
    headers.push(["content-range", `bytes ${first}-${first + length - 1}/${ticket.fields.size}`]);
  const status = range === undefined ? 200 : 206;
  if (length === 0) {
    send(ctx, status, undefined, headers);
    return;
  }
  const operation = ticket.begin(first);
  try {
    await readTo(
      context.backend,
      first,
      length,
      { start: () => writeHead(ctx, status, length, headers), stream: ctx.res },
      {
        buffers: () => ctx.connection.ioBuffers(context.bufferSize),
        onProgress: (done) => {
          operation.checkCancelled();
          operation.done = done;
          // The ticket shows the finished transfer by the time the client has the last byte.
          if (done === length) ticket.end(operation);
        },
      },
    );
    ctx.res.end();
    ctx.bytesMoved = length;
  } finally {
    ticket.end(operation);
  }
}
