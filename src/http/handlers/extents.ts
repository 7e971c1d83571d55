/** `GET /images/{id}/extents` (spec §5.7, partial requests [D8]). Not an operation. */
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import type { ByteRange } from "../../io/backend.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";
import { writeChunk, writeHead } from "../response.js";
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
  await ctx.connection.whileBusy(() =>
    onTicket(ticket, "read", async () => {
      const list = new ExtentList(contextName === "dirty" ? ["dirty", "zero"] : ["zero", "hole"]);
      const iterable = contextName === "dirty" ? backend.extents("dirty", range) : backend.extents("zero", range);
      for await (const extent of iterable) {
        stopIfCancelled(ticket, "read");
        list.add(extent as unknown as Record<string, number | boolean>);
      }
      // Spec §3.1: a content-length, never chunked; the JSON goes out in pieces as the socket
      // takes them, never built whole (400 000 extents are 55 MB of JSON).
      writeHead(ctx, 200, await list.jsonLength(), [["content-type", "application/json"]]);
      for (const piece of list.json()) {
        await writeChunk(ctx.res, piece);
        stopIfCancelled(ticket, "read");
      }
      ctx.res.end();
    }),
  );
}

/** Answer size at which JSON is handed to the socket. */
const JSON_PIECE = 64 * 1024;

/**
 * Extents kept compactly (three numbers each, not objects) and written as the JSON list the
 * spec shows: `[{"start": 0, "length": 65536, "zero": false, "hole": false}, ...]\n`.
 */
class ExtentList {
  private readonly numbers: number[] = [];

  /** @param flags the two boolean keys of the context, in the order they are written. */
  constructor(private readonly flags: readonly [string, string]) {}

  add(extent: Record<string, number | boolean>): void {
    const [a, b] = this.flags;
    this.numbers.push(extent.start as number, extent.length as number, (extent[a] ? 1 : 0) | (extent[b] ? 2 : 0));
  }

  /** Byte length of the whole answer (ASCII); other clients get the event loop between batches. */
  async jsonLength(): Promise<number> {
    let length = 3; // "[", "]" and "\n"
    for (let i = 0; i < this.numbers.length; i += 3) {
      if (i % (3 * 8192) === 0 && i > 0) await yieldToEventLoop();
      length += this.item(i).length + (i > 0 ? 2 : 0);
    }
    return length;
  }

  /** The answer in pieces of about JSON_PIECE bytes. */
  *json(): Generator<Buffer> {
    let text = "[";
    for (let i = 0; i < this.numbers.length; i += 3) {
      text += (i > 0 ? ", " : "") + this.item(i);
      if (text.length >= JSON_PIECE) {
        yield Buffer.from(text, "latin1");
        text = "";
      }
    }
    yield Buffer.from(`${text}]\n`, "latin1");
  }

  private item(i: number): string {
    const [a, b] = this.flags;
    const bits = this.numbers[i + 2] as number;
    return `{"start": ${this.numbers[i]}, "length": ${this.numbers[i + 1]}, "${a}": ${(bits & 1) === 1}, "${b}": ${(bits & 2) === 2}}`;
  }
}
