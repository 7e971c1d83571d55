/** `OPTIONS /images/{id}` (spec §5.2): what the server or this ticket allows. */
import type { App } from "../app.js";
import type { RequestContext } from "../request.js";
import { sendJson } from "../response.js";
import { requireId } from "../router.js";
import { clientTag, openForTicket } from "./common.js";

const ALL_FEATURES = ["checksum", "extents", "flush", "zero"];

/**
 * `OPTIONS *` (RFC 9110 §9.3.7): a question about the server rather than a resource, answered
 * as upstream answers its server-wide form of this API, `OPTIONS /images/*`.
 */
export function serverOptions(ctx: RequestContext, app: App): Promise<void> {
  return options(ctx, app, "*");
}

export async function options(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const info: Record<string, unknown> = {};
  if (app.localSocket !== undefined) info.unix_socket = app.localSocket;
  if (id === "*") {
    info.features = ALL_FEATURES;
    sendJson(ctx, 200, info, [["allow", "OPTIONS,GET,PUT,PATCH"]]);
    return;
  }
  const { ticket, context } = await openForTicket(ctx, app, id, "read");
  const backend = context.backend;
  const writable = ticket.mayWrite();
  const allow = ["OPTIONS", ...(ticket.mayRead() ? ["GET"] : []), ...(writable ? ["PUT", "PATCH"] : [])];
  info.features = writable ? ALL_FEATURES : ["checksum", "extents"];
  info.max_readers = backend.caps.maxReaders;
  info.max_writers = backend.caps.maxWriters;
  info.size = await backend.size();
  if (backend.name === "file") info.direct_io = backend.directIo;
  ticket.touch();
  app.log.info(`${clientTag(ctx)} OPTIONS`, { transfer: ticket.label });
  sendJson(ctx, 200, info, [["allow", allow.join(",")]]);
}
