/** The control API, `/tickets/{id}` (spec §5.11): add, show, extend and remove tickets. */
import type { Config } from "../../config.js";
import { UnsupportedUrlError } from "../../errors.js";
import { parseImageUrl, supportedSchemes } from "../../io/open.js";
import { pythonRepr } from "../../pyformat.js";
import { parseTicket, shortId, TICKET_URL_SCHEMES, type TicketFields } from "../../tickets/ticket.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";
import { send, sendJson } from "../response.js";
import { redactPath, requireId } from "../router.js";

/** What `OPTIONS *` lists for the control service (RFC 9110 §9.3.7): the methods it serves. */
const CONTROL_METHODS = "OPTIONS,PUT,GET,PATCH,DELETE";

/** `OPTIONS *` on the control service: a question about the server, not a ticket. */
export async function controlOptions(ctx: RequestContext): Promise<void> {
  send(ctx, 200, undefined, [["allow", CONTROL_METHODS]]);
}

export async function addTicket(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const body = await ctx.readJsonObject("Ticket is not in a json format:");
  const fields = acceptTicket(body, app.config);
  const ticket = app.authorizer.add(fields);
  await app.authorizer.settled();
  app.log.info("ADD", {
    transfer: ticket.label,
    ops: fields.ops.join(","),
    size: fields.size,
    timeout: fields.timeout,
    sparse: fields.sparse,
  });
  send(ctx, 200);
}

/**
 * Validates a ticket from a manager (control API or `--ticket FILE`): its fields, and a URL
 * that a backend of this build serves. A scheme joins the accepted ones when its backend
 * registers in io/open.ts.
 * @throws InvalidArgumentError `Invalid ticket: …` for its fields, HttpError 400 `Invalid ticket:
 *   …` for its URL (the log shows a remote ticket id in it shortened).
 */
export function acceptTicket(body: unknown, config: Readonly<Config>): TicketFields {
  const fields = parseTicket(body, config.daemon.inactivity_timeout);
  // The client sent the URL and sees it whole; a remote daemon's ticket id in it is a
  // credential, shortened in the log line.
  const invalidUrl = (reason: string) => {
    const message = (url: string) => `Invalid ticket: Invalid value for 'url': ${pythonRepr(url)}: ${reason}`;
    return new HttpError(400, message(fields.url), { logMessage: message(redactUrlPath(fields.url)) });
  };
  // parseTicket accepted the scheme as one tickets may name; is there a backend for it?
  const scheme = fields.url.slice(0, fields.url.indexOf(":")).toLowerCase();
  const served: string[] = TICKET_URL_SCHEMES.filter((name) => supportedSchemes().includes(name));
  if (!served.includes(scheme)) {
    throw invalidUrl(
      `Unsupported url scheme: ${scheme}: this daemon has no backend for it (serving ${served.join(", ")})`,
    );
  }
  try {
    parseImageUrl(fields.url);
  } catch (error) {
    if (!(error instanceof UnsupportedUrlError)) throw error;
    throw invalidUrl(error.message);
  }
  return fields;
}

/** `scheme://authority/path…` with the ticket ids in its path shortened for logs. */
function redactUrlPath(url: string): string {
  return url.replace(
    /^([a-z][a-z0-9+.-]*:\/\/[^/]*)(\/[^?#]*)/i,
    (_, origin: string, path: string) => origin + redactPath(path),
  );
}

export async function getTicket(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  sendJson(ctx, 200, app.authorizer.get(id).status());
}

export async function extendTicket(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const body = await ctx.readJsonObject("Invalid JSON message");
  const timeout = body.timeout;
  if (timeout === undefined) throw new HttpError(400, "Missing required value for 'timeout'");
  if (typeof timeout !== "number" || !Number.isSafeInteger(timeout) || timeout < 0) {
    throw new HttpError(400, `Invalid value for 'timeout': ${pythonRepr(timeout)}: expecting an integer >= 0`);
  }
  const ticket = app.authorizer.find(id);
  if (ticket === undefined)
    throw new HttpError(404, `No such ticket: ${id}`, { logMessage: `No such ticket: ${shortId(id)}` });
  ticket.extend(timeout);
  app.log.info("EXTEND", { transfer: ticket.label, timeout });
  send(ctx, 200);
}

export async function removeTicket(ctx: RequestContext, app: App, id: string): Promise<void> {
  if (id === "") {
    app.authorizer.clear();
    await app.authorizer.settled();
    app.log.info("REMOVE all tickets");
    send(ctx, 204);
    return;
  }
  const ticket = await app.authorizer.remove(id, app.config.control.remove_timeout);
  await app.authorizer.settled();
  if (ticket !== undefined) app.log.info("REMOVE", { transfer: ticket.label });
  send(ctx, 204);
}
