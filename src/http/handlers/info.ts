/** `GET /info/` (remote service only): the engine's connectivity test. */
import { VERSION } from "../../version.js";
import type { RequestContext } from "../request.js";
import { sendJson } from "../response.js";

export async function info(ctx: RequestContext): Promise<void> {
  sendJson(ctx, 200, { version: VERSION });
}
