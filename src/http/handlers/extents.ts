/** `GET /images/{id}/extents` (spec §5.7, partial requests [D8]). Not an operation. */
import type { ByteRange } from "../../io/backend.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";
import { sendJson } from "../response.js";
import { requireId } from "../router.js";
import { checkChoice, clientTag, onTicket, openForTicket, stopIfCancelled } from "./common.js";

function rangeParam(ctx: RequestContext, name: string): number | undefined {
  const raw = ctx.query.get(name);
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value))
    throw new HttpError(400, `Invalid value for '${name}': '${raw}'`);
  return value;
}

export async function extents(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const { ticket, context } = await openForTicket(ctx, app, id, "read");
  const contextName = checkChoice("context", ctx.query.get("context") ?? "zero", ["zero", "dirty"]);
  const start = rangeParam(ctx, "start");
  const length = rangeParam(ctx, "length");
  const backend = context.backend;
  const size = await onTicket(ticket, "read", () => backend.size());
  if (length === 0) throw new HttpError(400, `Invalid value for 'length': '${ctx.query.get("length")}'`);
  if (start !== undefined && start >= size)
    throw new HttpError(400, `Invalid value for 'start': '${ctx.query.get("start")}'`);
  let range: ByteRange | undefined;
  if (start !== undefined || length !== undefined) {
    const from = start ?? 0;
    range = { start: from, length: Math.min(length ?? size - from, size - from) };
  }
  if (contextName === "dirty" && !ticket.fields.dirty)
    throw new HttpError(404, "Ticket does not support dirty extents");
  app.log.info(`${clientTag(ctx)} EXTENTS`, { transfer: ticket.label, context: contextName });
  const list = await ctx.connection.whileBusy(() =>
    onTicket(ticket, "read", async () => {
      const result: object[] = [];
      const iterable = contextName === "dirty" ? backend.extents("dirty", range) : backend.extents("zero", range);
      for await (const extent of iterable) {
        stopIfCancelled(ticket, "read");
        result.push(extent);
      }
      return result;
    }),
  );
  sendJson(ctx, 200, list);
}
