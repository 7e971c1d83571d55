/**
 * Exact route tables [D1]: `{id}` is one path segment (anything but `/`, possibly empty);
 * everything else is 404. Method checks follow upstream's order (spec §3.2).
 */

import { shortId } from "../tickets/ticket.js";
import type { App } from "./app.js";
import { HttpError } from "./errors.js";
import type { RequestContext } from "./request.js";

export type Handler = (ctx: RequestContext, app: App, id: string) => Promise<void>;

export interface Route {
  readonly pattern: string;
  readonly methods: Readonly<Record<string, Handler>>;
  /** CORS applies to these methods on this route (spec §5.10). */
  readonly cors?: readonly string[];
}

/** Methods the server knows at all; anything else is `405 Invalid method`. */
export const KNOWN_METHODS = new Set(["GET", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "HEAD"]);

export interface RouteMatch {
  route: Route;
  handler: Handler;
  id: string;
}

/**
 * Finds the route and handler for a request.
 * @throws HttpError 405 for unknown methods (closing), 404 for unknown paths, 405 for a
 *   method the route does not define.
 */
export function matchRoute(routes: readonly Route[], method: string, path: string): RouteMatch {
  if (!KNOWN_METHODS.has(method)) throw new HttpError(405, `Invalid method '${method}'`, { close: true });
  const segments = path.split("/");
  for (const route of routes) {
    const id = matchPattern(route.pattern, segments);
    if (id === undefined) continue;
    const handler = route.methods[method];
    if (handler === undefined) {
      const message = (shown: string) => `Method '${method}' not defined for '${shown}'`;
      throw new HttpError(405, message(path), { logMessage: message(redactPath(path)) });
    }
    return { route, handler, id };
  }
  const message = (shown: string) => `No handler for '${shown}'`;
  throw new HttpError(404, message(path), { logMessage: message(redactPath(path)) });
}

/**
 * A request path as logs may show it: every segment after an `images` or `tickets` segment is
 * a ticket id and is shortened ([D11]), whether or not a route matched. The client, who sent
 * the id, still gets the full path in its message.
 */
export function redactPath(path: string): string {
  const segments = path.split("/");
  return segments
    .map((segment, i) => (i > 0 && ID_PARENTS.has(segments[i - 1] as string) ? shortId(segment) : segment))
    .join("/");
}

const ID_PARENTS = new Set(["images", "tickets"]);

function matchPattern(pattern: string, segments: string[]): string | undefined {
  const parts = pattern.split("/");
  if (parts.length !== segments.length) return undefined;
  let id = "";
  for (const [i, part] of parts.entries()) {
    const segment = segments[i] as string;
    if (part === "{id}") id = segment;
    else if (part !== segment) return undefined;
  }
  return id;
}

/** @throws HttpError 400 `Ticket id is required` for an empty id. */
export function requireId(id: string): void {
  if (id === "") throw new HttpError(400, "Ticket id is required");
}
