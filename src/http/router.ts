/**
 * Exact route tables [D1]: `{id}` is one path segment (anything but `/`, possibly empty);
 * everything else is 404. Method checks follow upstream's order (spec §3.2).
 */
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
    if (handler === undefined) throw new HttpError(405, `Method '${method}' not defined for '${path}'`);
    return { route, handler, id };
  }
  throw new HttpError(404, `No handler for '${path}'`);
}

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
