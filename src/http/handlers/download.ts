/**
 * `GET /images/{id}` (download, spec §5.3) and `HEAD /images/{id}` [D3]. The body streams from
 * two aligned buffers: the next chunk is read while the previous one is sent, and a chunk is
 * not reused before the socket took it (backpressure).
 */
import type { Readable } from "node:stream";
import { BUFFER_ALIGNMENT } from "../../io/buffers.js";
import type { Ticket } from "../../tickets/ticket.js";
import type { App } from "../app.js";
import type { BackendContext } from "../connection.js";
import { type HeaderList, HttpError } from "../errors.js";
import { pump } from "../pump.js";
import { type ByteRangeRequest, parseRange } from "../range.js";
import type { RequestContext } from "../request.js";
import { send, writeChunk, writeHead } from "../response.js";
import { requireId } from "../router.js";
import { clientTag, honourCloseParam, openForTicket } from "./common.js";

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
  const available = Math.min(ticket.fields.size, await context.backend.size());
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
  const available = Math.min(ticket.fields.size, await context.backend.size());
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
  const startResponse = () => writeHead(ctx, status, length, headers);
  if (context.backend.readStream) await relay(ctx, ticket, context, first, length, startResponse);
  else await stream(ctx, ticket, context, first, length, startResponse);
}

/**
 * Proxy download: one remote GET of the same range, relayed with backpressure both ways
 * (spec [B6]). Remote errors before the first byte keep their status; later ones cut the
 * response short, and a client that goes away aborts the remote request.
 */
async function relay(
  ctx: RequestContext,
  ticket: Ticket,
  context: BackendContext,
  first: number,
  length: number,
  startResponse: () => void,
): Promise<void> {
  const operation = ticket.begin(first);
  let upstream: Readable | undefined;
  try {
    upstream = await (context.backend.readStream as NonNullable<typeof context.backend.readStream>)(first, length);
    startResponse();
    const { bytes } = await pump(upstream, ctx.res, {
      onProgress: (done) => {
        operation.checkCancelled();
        operation.done = done;
      },
    });
    if (bytes !== length) throw new Error(`remote sent ${bytes} of ${length} bytes`);
    ticket.end(operation);
    ctx.res.end();
  } finally {
    upstream?.destroy();
    ticket.end(operation);
  }
}

async function stream(
  ctx: RequestContext,
  ticket: Ticket,
  context: BackendContext,
  first: number,
  length: number,
  startResponse: () => void,
): Promise<void> {
  const { backend } = context;
  const end = first + length;
  const buffers = await ctx.connection.ioBuffers(context.bufferSize);
  const operation = ticket.begin(first);
  try {
    // Data sits in the buffer at the same offset modulo 4096 as in the image, so the aligned
    // middle of every chunk goes straight to O_DIRECT without a bounce copy.
    const readChunk = async (buf: Buffer, at: number): Promise<Buffer> => {
      const skew = at % BUFFER_ALIGNMENT;
      const view = buf.subarray(skew, skew + Math.min(end - at, buf.length - skew));
      const got = await backend.read(view, at);
      if (got < view.length) {
        throw new HttpError(400, `Requested ${view.length} bytes, available ${got} bytes`);
      }
      return view;
    };
    let position = first;
    let index = 0;
    let pending = readChunk(buffers[0] as Buffer, position);
    let started = false;
    while (position < end) {
      const chunk = await pending;
      operation.checkCancelled();
      if (!started) {
        startResponse();
        started = true;
      }
      const next = position + chunk.length;
      index ^= 1;
      if (next < end) {
        pending = readChunk(buffers[index] as Buffer, next);
        pending.catch(() => undefined); // awaited next round; do not report it unhandled meanwhile
      }
      operation.done = next - first;
      // The ticket shows the finished transfer by the time the client has the last byte.
      if (next === end) ticket.end(operation);
      await writeChunk(ctx.res, chunk);
      position = next;
    }
    ctx.res.end();
  } finally {
    ticket.end(operation);
  }
}
