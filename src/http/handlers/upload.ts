/**
 * `PUT /images/{id}` (upload, spec §5.5, chunked [D4]). The body is copied from the socket's
 * chunks into two aligned buffers; a full buffer is written at its offset while the other one
 * fills, and the request is paused only while both are busy. No body is ever held whole.
 */
import { RemoteError } from "../../errors.js";
import type { Backend } from "../../io/backend.js";
import { BUFFER_ALIGNMENT } from "../../io/buffers.js";
import type { Operation, Ticket } from "../../tickets/ticket.js";
import type { App } from "../app.js";
import type { BackendContext } from "../connection.js";
import { HttpError } from "../errors.js";
import { pump } from "../pump.js";
import { parseContentRange } from "../range.js";
import type { RequestContext } from "../request.js";
import { send } from "../response.js";
import { requireId } from "../router.js";
import { choiceParam, clientTag, honourCloseParam, openForTicket } from "./common.js";

function pastTicket(ticketSize: number): HttpError {
  return new HttpError(416, "Requested range out of allowed range", {
    headers: [["content-range", `bytes */${ticketSize}`]],
    close: true,
  });
}

export async function put(ctx: RequestContext, app: App, id: string): Promise<void> {
  requireId(id);
  honourCloseParam(ctx);
  const chunked = ctx.header("transfer-encoding") !== undefined;
  const lengthHeader = ctx.header("content-length");
  if (!chunked && lengthHeader === undefined) throw new HttpError(400, "Content-Length header is required");
  const length = chunked ? undefined : Number(lengthHeader);
  const contentRange = ctx.header("content-range");
  const offset = contentRange === undefined ? 0 : parseContentRange(contentRange);
  const flush = choiceParam(ctx, "flush", ["y", "n"], "y") === "y";
  const { ticket, context } = await openForTicket(ctx, app, id, "write");
  const ticketSize = ticket.fields.size;
  if (length !== undefined ? offset + length > ticketSize : offset > ticketSize) throw pastTicket(ticketSize);

  app.log.info(`${clientTag(ctx)} WRITE`, {
    size: length ?? "chunked",
    offset,
    flush: flush ? "y" : "n",
    close: ctx.closeAfter ? "y" : "n",
    transfer: ticket.label,
  });
  const operation = ticket.begin(offset);
  try {
    // A remote takes one PUT of the whole range when the length is known; a chunked body goes
    // through the buffers instead, one PUT with content-length per buffer (spec §6.4), since
    // older daemons refuse chunked uploads.
    if (context.backend.writeStream && length !== undefined) {
      await relay(ctx, context, operation, offset, length, flush);
      send(ctx, 200);
      return;
    }
    const received = await receive(ctx, context, operation, ticket, offset, ticketSize - offset);
    if (length !== undefined && received < length) {
      throw new HttpError(400, `Requested ${length} bytes, available ${received} bytes`);
    }
    if (flush) await ctx.connection.whileBusy(() => context.backend.flush());
  } finally {
    ticket.end(operation);
  }
  send(ctx, 200);
}

/**
 * Proxy upload: the client's body of known length streams into one remote PUT of the same
 * range, with backpressure both ways (spec [B6]).
 */
async function relay(
  ctx: RequestContext,
  context: BackendContext,
  operation: Operation,
  offset: number,
  length: number,
  flush: boolean,
): Promise<void> {
  const upload = (context.backend.writeStream as NonNullable<typeof context.backend.writeStream>)(
    offset,
    length,
    flush,
  );
  try {
    await upload.ready;
  } catch (error) {
    upload.abort();
    throw error;
  }
  // The remote accepted the upload: now the client may send the body.
  ctx.askForBody();
  let result: { bytes: number };
  try {
    result = await pump(ctx.req, upload.body, {
      onProgress: (done) => {
        operation.checkCancelled();
        operation.done = done;
      },
    });
  } catch (error) {
    // The remote may have refused the upload early (416, 403) and closed, which is what
    // broke the relay: its answer, when it came, explains the failure better.
    const verdict = await Promise.race([
      upload.done.then(
        () => undefined,
        (remote: unknown) => remote,
      ),
      new Promise((resolve) => setTimeout(resolve, REMOTE_VERDICT_WAIT_MS)),
    ]);
    upload.abort();
    throw verdict instanceof RemoteError ? verdict : error;
  }
  ctx.bodyRead = true;
  upload.body.end();
  await upload.done;
  if (result.bytes < length) throw new HttpError(400, `Requested ${length} bytes, available ${result.bytes} bytes`);
}

/** How long a failed relay waits for the remote's own answer before giving up on it. */
const REMOTE_VERDICT_WAIT_MS = 2000;

/**
 * Reads the body into the context's buffers and writes it at `offset`, at most `limit` bytes.
 * @returns the number of bytes received and written.
 * @throws HttpError 416 when a chunked body passes the limit (nothing past it is written).
 */
async function receive(
  ctx: RequestContext,
  context: BackendContext,
  operation: Operation,
  ticket: Ticket,
  offset: number,
  limit: number,
): Promise<number> {
  const buffers = await ctx.connection.ioBuffers(context.bufferSize);
  const writer = new DoubleBufferedWriter(context.backend, buffers, offset, operation);
  let received = 0;
  let overflow = false;
  const body = ctx.bodyChunks()[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await body.next();
      } catch (error) {
        // The client went away mid-body: what did arrive is written before the request
        // fails, as the reference daemon does, so a client that retries the rest loses nothing.
        await writer.finish();
        throw error;
      }
      if (next.done) break;
      let data = next.value;
      if (received + data.length > limit) {
        data = data.subarray(0, limit - received);
        overflow = true;
      }
      received += data.length;
      await writer.add(data);
      operation.checkCancelled();
      if (overflow) break;
    }
    if (!overflow) ctx.bodyRead = true;
    await writer.finish();
  } catch (error) {
    await writer.settle();
    throw error;
  }
  if (overflow) throw pastTicket(ticket.fields.size);
  return received;
}

/**
 * Fills two aligned buffers in turn and keeps at most two writes in flight. The first buffer
 * holds data at the image offset's position modulo 4096, so every later write starts on a
 * 4096-byte boundary and the aligned parts go to O_DIRECT without copies.
 */
class DoubleBufferedWriter {
  private index = 0;
  private fill: number;
  private start: number;
  private position: number;
  /** Per buffer: its write in flight and where that write ends in the image. */
  private readonly inFlight: ({ write: Promise<void>; end: number } | undefined)[] = [undefined, undefined];
  private failure: unknown;

  constructor(
    private readonly backend: Backend,
    private readonly buffers: Buffer[],
    private readonly offset: number,
    private readonly operation: Operation,
  ) {
    this.fill = offset % BUFFER_ALIGNMENT;
    this.start = this.fill;
    this.position = offset;
  }

  async add(data: Buffer): Promise<void> {
    let used = 0;
    while (used < data.length) {
      const buf = this.buffers[this.index] as Buffer;
      const n = Math.min(data.length - used, buf.length - this.fill);
      data.copy(buf, this.fill, used, used + n);
      this.fill += n;
      used += n;
      if (this.fill === buf.length) await this.submit();
    }
  }

  /** Writes what is buffered and waits for every write. */
  async finish(): Promise<void> {
    if (this.fill > this.start) await this.submit();
    // Oldest first, so operation.done only grows.
    await this.wait(this.index);
    await this.wait(this.index ^ 1);
  }

  /** Waits for writes in flight without starting new ones (after an error). */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight.map((slot) => slot?.write));
  }

  private async submit(): Promise<void> {
    const buf = this.buffers[this.index] as Buffer;
    const data = buf.subarray(this.start, this.fill);
    const write = this.backend.write(data, this.position).catch((error: unknown) => {
      this.failure ??= error;
    });
    this.position += data.length;
    this.inFlight[this.index] = { write, end: this.position };
    this.index ^= 1;
    this.fill = 0;
    this.start = 0;
    // Reuse the other buffer only once its write is done: this is where the request waits.
    await this.wait(this.index);
  }

  /** Waits for the write of buffer `index`; writes complete in submission order for our purposes. */
  private async wait(index: number): Promise<void> {
    const slot = this.inFlight[index];
    this.inFlight[index] = undefined;
    if (slot !== undefined) {
      await slot.write;
      if (this.failure === undefined) this.operation.done = slot.end - this.offset;
    }
    if (this.failure !== undefined) throw this.failure;
  }
}
