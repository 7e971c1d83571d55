/**
 * Steps every image handler shares: authorizing the ticket, opening the connection's backend
 * for it, CORS, and the numbers in log lines.
 */
import { ClosedError, ForbiddenError } from "../../errors.js";
import { pythonRepr } from "../../pyformat.js";
import type { Ticket, TicketOp } from "../../tickets/ticket.js";
import type { App } from "../app.js";
import type { BackendContext } from "../connection.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";

/**
 * Authorizes `op` on ticket `id`.
 * @throws HttpError 403 (closing the connection when `close`, as image and extents routes do).
 */
export function authorize(app: App, id: string, op: TicketOp, close: boolean): Ticket {
  try {
    return app.authorizer.authorize(id, op);
  } catch (error) {
    if (error instanceof ForbiddenError) {
      throw new HttpError(403, error.message, { close, logMessage: error.logMessage, cause: error });
    }
    throw error;
  }
}

/**
 * Runs `work` on a ticket's backend. Cancelling the ticket (its removal) closes its backends
 * under running requests: such a request then ends as one on a cancelled ticket does, with
 * 403, instead of reporting the closed backend as a server failure.
 */
export async function onTicket<T>(ticket: Ticket, op: TicketOp, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof ClosedError && ticket.canceled) stopIfCancelled(ticket, op);
    throw error;
  }
}

/** @throws HttpError 403 (closing the connection) once `ticket` was cancelled. */
export function stopIfCancelled(ticket: Ticket, op: TicketOp): void {
  if (!ticket.canceled) return;
  try {
    ticket.authorize(op);
  } catch (error) {
    if (error instanceof ForbiddenError) {
      throw new HttpError(403, error.message, { close: true, logMessage: error.logMessage, cause: error });
    }
    throw error;
  }
}

/** Authorizes and returns the connection's backend context for the ticket (opened lazily). */
export async function openForTicket(
  ctx: RequestContext,
  app: App,
  id: string,
  op: TicketOp,
  closeOn403 = true,
): Promise<{ ticket: Ticket; context: BackendContext }> {
  const ticket = authorize(app, id, op, closeOn403);
  const context = await ctx.connection.backendFor(ticket, app.openBackend);
  if (ticket.canceled) {
    // Removed while the backend was opening: its contexts were closed before this one existed.
    await context.close();
    stopIfCancelled(ticket, op);
  }
  return { ticket, context };
}

/**
 * Adds CORS headers when the request asks for them (spec §5.10). They are set before the
 * request is handled so that error responses carry them too.
 */
export function applyCors(ctx: RequestContext): void {
  const headers = ctx.extraHeaders;
  if (ctx.header("origin") !== undefined) headers.push(["access-control-allow-origin", "*"]);
  if (ctx.header("access-control-request-headers") !== undefined) headers.push(["access-control-allow-headers", "*"]);
  if (ctx.header("access-control-request-method") !== undefined) {
    headers.push(["access-control-allow-methods", ctx.method === "OPTIONS" ? "OPTIONS,GET,PUT" : "*"]);
  }
  if (headers.length > 0) headers.push(["access-control-max-age", "86400"]);
}

/** Reads `?name=` as one of `choices`, with upstream's message for anything else. */
export function choiceParam(ctx: RequestContext, name: string, choices: readonly string[], fallback: string): string {
  return checkChoice(name, ctx.query.get(name) ?? fallback, choices);
}

/**
 * `value` when it is one of `choices` (a string: `["zero"]` or `{"toString": 1}` never is).
 * @throws HttpError 400 `Unsupported value 'x' for 'name', expecting one of [...]`.
 */
export function checkChoice(name: string, value: unknown, choices: readonly string[]): string {
  if (typeof value !== "string" || !choices.includes(value)) {
    const list = [...choices]
      .sort()
      .map((choice) => `'${choice}'`)
      .join(", ");
    throw new HttpError(400, `Unsupported value ${pythonRepr(value)} for '${name}', expecting one of [${list}]`);
  }
  return value;
}

/** `?close=y` asks to close the connection after the response (browsers); other values are ignored. */
export function honourCloseParam(ctx: RequestContext): void {
  if (ctx.query.get("close") === "y") ctx.closeAfter = true;
}

/** The client as logs name it: `[local]` or `[address]`. */
export function clientTag(ctx: RequestContext): string {
  return `[${ctx.connection.client}]`;
}
