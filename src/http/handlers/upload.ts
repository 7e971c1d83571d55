/**
 * `PUT /images/{id}` (upload, spec §5.5, chunked [D4]). The body streams into the backend
 * (src/io/streaming.ts): through the request's two aligned buffers, one written while the
 * other fills, or relayed by a backend in front of a remote. No body is ever held whole.
 */
import { writeFrom } from "../../io/streaming.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import { parseContentRange } from "../range.js";
import type { RequestContext } from "../request.js";
import { send } from "../response.js";
import { requireId } from "../router.js";
import { choiceParam, clientTag, honourCloseParam, openForTicket } from "./common.js";

function pastTicket(ticketSize: number): HttpError {
  return new HttpError(416, "Requested range out of allowed range", {
    headers: [["content-range", `bytes */${ticketSize}`]],
    close: true,
  });
}

export async function put(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  honourCloseParam(ctx);
  const chunked = ctx.header("transfer-encoding") !== undefined;
  const lengthHeader = ctx.header("content-length");
  if (!chunked && lengthHeader === undefined) throw new HttpError(400, "Content-Length header is required");
  const length = chunked ? undefined : Number(lengthHeader);
  const contentRange = ctx.header("content-range");
  const offset = contentRange === undefined ? 0 : parseContentRange(contentRange);
  const flush = choiceParam(ctx, "flush", ["y", "n"], "y") === "y";
  const { ticket, context } = await openForTicket(ctx, app, id, "write");
  const ticketSize = ticket.fields.size;
  if (length !== undefined ? offset + length > ticketSize : offset > ticketSize) throw pastTicket(ticketSize);

  app.log.info(`${clientTag(ctx)} WRITE`, {
    size: length ?? "chunked",
    offset,
    flush: flush ? "y" : "n",
    close: ctx.closeAfter ? "y" : "n",
    transfer: ticket.label,
  });
  const operation = ticket.begin(offset);
  try {
    const result = await writeFrom(context.backend, ctx.req.body(), offset, length, {
      buffers: () => ctx.connection.ioBuffers(context.bufferSize),
      flush,
      limit: ticketSize - offset,
      // Validated, authorized and the backend ready: now the client may send the body.
      onReady: () => ctx.askForBody(),
      signal: operation.signal,
      onProgress: (done) => {
        operation.checkCancelled();
        operation.done = done;
      },
    });
    if (result.overflow) throw pastTicket(ticketSize);
    ctx.bodyRead = true;
    if (length !== undefined && result.bytes < length) {
      throw new HttpError(400, `Requested ${length} bytes, available ${result.bytes} bytes`);
    }
    ctx.bytesMoved = result.bytes;
    if (flush && !result.flushed) await ctx.connection.whileBusy(() => context.backend.flush());
  } finally {
    ticket.end(operation);
  }
  send(ctx, 200);
}
