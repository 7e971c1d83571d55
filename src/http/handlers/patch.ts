/** `PATCH /images/{id}`: zero a range or flush (spec §5.6). */
import { pythonRepr } from "../../pyformat.js";
import { MiB } from "../../units.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";
import { send } from "../response.js";
import { requireId } from "../router.js";
import { checkChoice, clientTag, openForTicket } from "./common.js";

/** Zeroing runs in steps so cancellation and progress are checked regularly (spec §6.5). */
const ZERO_STEP = 128 * MiB;

function integerValue(body: Record<string, unknown>, name: string, fallback?: number): number {
  const value = body[name] ?? fallback;
  if (value === undefined) throw new HttpError(400, `Missing required value for '${name}'`);
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new HttpError(400, `Integer required for '${name}': ${pythonRepr(value)}`);
  }
  if (value < 0) throw new HttpError(400, `Invalid value ${value} < 0`);
  if (!Number.isSafeInteger(value)) throw new HttpError(400, `Invalid value for '${name}': ${value} > 2^53-1`);
  return value;
}

function booleanValue(body: Record<string, unknown>, name: string): boolean {
  const value = body[name] ?? false;
  if (typeof value !== "boolean") throw new HttpError(400, `Boolean required for '${name}': ${pythonRepr(value)}`);
  return value;
}

export async function patch(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const body = await ctx.readJsonObject("Invalid JSON message");
  if (body.op === undefined) throw new HttpError(400, "Missing required value for 'op'");
  const op = checkChoice("op", body.op, ["zero", "flush"]);
  if (op === "flush") {
    const { ticket, context } = await openForTicket(ctx, app, id, "write");
    app.log.info(`${clientTag(ctx)} FLUSH`, { transfer: ticket.label });
    ctx.operation = "flush";
    const operation = ticket.begin(0);
    try {
      await ctx.connection.whileBusy(() => context.backend.flush());
    } finally {
      ticket.end(operation);
    }
    send(ctx, 200);
    return;
  }
  // Validation comes before the ticket lookup: bad input on an unknown ticket is a 400.
  const size = integerValue(body, "size");
  const offset = integerValue(body, "offset", 0);
  const flush = booleanValue(body, "flush");
  const { ticket, context } = await openForTicket(ctx, app, id, "write");
  if (offset + size > ticket.fields.size) {
    throw new HttpError(416, "Requested range out of allowed range", {
      headers: [["content-range", `bytes */${ticket.fields.size}`]],
    });
  }
  app.log.info(`${clientTag(ctx)} ZERO`, { size, offset, flush: flush ? "y" : "n", transfer: ticket.label });
  ctx.operation = "zero";
  const operation = ticket.begin(offset);
  try {
    await ctx.connection.whileBusy(async () => {
      for (let done = 0; done < size; done += ZERO_STEP) {
        operation.checkCancelled();
        const step = Math.min(ZERO_STEP, size - done);
        await context.backend.zero(offset + done, step, { punchHole: ticket.fields.sparse });
        operation.done = done + step;
      }
      if (flush) await context.backend.flush();
    });
    ctx.bytesMoved = size;
  } finally {
    ticket.end(operation);
  }
  send(ctx, 200);
}
