/** `GET /images/{id}/checksum` and `/checksum/algorithms` (spec §5.8). */
import {
  checksumAlgorithms,
  DEFAULT_CHECKSUM_ALGORITHM,
  DEFAULT_CHECKSUM_BLOCK_SIZE,
  imageChecksum,
  validateChecksumParams,
} from "../../io/blkhash.js";
import type { App } from "../app.js";
import { HttpError } from "../errors.js";
import type { RequestContext } from "../request.js";
import { sendJson } from "../response.js";
import { requireId } from "../router.js";
import { clientTag, openForTicket } from "./common.js";

export async function algorithms(ctx: RequestContext): Promise<void> {
  sendJson(ctx, 200, { algorithms: checksumAlgorithms });
}

export async function checksum(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  const algorithm = ctx.query.get("algorithm") ?? DEFAULT_CHECKSUM_ALGORITHM;
  const rawBlockSize = ctx.query.get("block_size");
  const blockSize = rawBlockSize === undefined ? DEFAULT_CHECKSUM_BLOCK_SIZE : Number(rawBlockSize);
  // Any integer is one (negative or huge): only its range is wrong, and the range check says so.
  if (rawBlockSize !== undefined && !/^[+-]?\d+$/.test(rawBlockSize)) {
    throw new HttpError(400, `Invalid block size: '${rawBlockSize}'`);
  }
  // Parameters are validated before authorization (spec §5.8).
  validateChecksumParams(algorithm, blockSize);
  const { ticket, context } = await openForTicket(ctx, app, id, "read", false);
  app.log.info(`${clientTag(ctx)} CHECKSUM`, { algorithm, block_size: blockSize, transfer: ticket.label });
  const operation = ticket.begin(0);
  try {
    const result = await ctx.connection.whileBusy(() =>
      imageChecksum(context.backend, {
        algorithm,
        blockSize,
        signal: operation.signal,
        onProgress: (bytes) => {
          operation.done = bytes;
        },
      }),
    );
    ticket.end(operation);
    sendJson(ctx, 200, result);
  } finally {
    ticket.end(operation);
  }
}
