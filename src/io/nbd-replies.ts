/**
 * The reply side of NBD transmission: a state machine that consumes socket reads as they come
 * (simple replies, structured chunks of any interleaving), copies READ payloads into their
 * destinations, collects block status, and tells its owner when a request's reply is
 * complete. It consumes each read synchronously, so the socket's read buffer can be reused.
 */
import {
  CHUNK_ERROR_BIT,
  CHUNK_FLAG_DONE,
  Chunk,
  Cmd,
  commandName,
  decodeBlockStatusChunk,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeHoleChunk,
  decodeSimpleReply,
  readU64,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  type StatusExtent,
} from "./nbd-protocol.js";

/** Per-context extents of one BLOCK_STATUS reply, by context id. */
export type BlockStatus = Map<number, StatusExtent[]>;

/** READ payloads at least this large are read straight into the caller's buffer. */
const DIRECT_READ_MIN = 64 * 1024;
/** Non-data chunks (status, errors) are buffered whole; 2^20 extents is the spec's maximum. */
const MAX_METADATA_CHUNK = 4 + 8 * 2 ** 20;

export interface PendingRequest {
  readonly cookie: number;
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  /** Bytes charged against the in-flight byte bound. */
  readonly bytes: number;
  /** READ destination: exactly `length` bytes. */
  readonly dest: Buffer | undefined;
  /** READ: content chunks received, as sorted [start, end) pairs relative to `offset`. */
  covered: [number, number][];
  status: BlockStatus | undefined;
  error: Error | undefined;
  resolve(value: BlockStatus | undefined): void;
  reject(error: Error): void;
}

/** Where the reply parser is: reading a header, an OFFSET_DATA offset, data, or a whole payload. */
type ParseState =
  | { kind: "header" }
  | { kind: "data-offset"; req: PendingRequest; flags: number; remaining: number; offset: Buffer; filled: number }
  | { kind: "data"; req: PendingRequest; flags: number; at: number; remaining: number }
  | { kind: "payload"; req: PendingRequest; flags: number; type: number; buffer: Buffer; filled: number };

/** What the parser needs from the connection that owns it. */
export interface ReplySink {
  /** The pending request of a cookie; reports a protocol error and returns undefined if none. */
  lookup(cookieHigh: number, cookie: number): PendingRequest | undefined;
  /** The request's reply is complete (successful or not). */
  complete(request: PendingRequest): void;
  /** The server broke the protocol: the connection is lost. */
  protocolError(message: string): void;
  /** The server answered the request with an NBD error value and message. */
  serverError(request: PendingRequest, error: number, message: string): void;
  requestError(request: PendingRequest, problem: string, errno: string): Error;
  /** The connection has failed: consume nothing more. */
  failed(): boolean;
}

export class ReplyParser {
  private state: ParseState = { kind: "header" };
  private readonly header = Buffer.alloc(STRUCTURED_HEADER_SIZE);
  private headerFill = 0;

  constructor(
    private readonly sink: ReplySink,
    private readonly structuredReplies: boolean,
    /** Ids of the negotiated metadata contexts. */
    private readonly contextIds: readonly number[],
  ) {}

  /**
   * The rest of the READ payload being received, when it is large enough to be worth a read
   * of its own; undefined to read into the shared buffer.
   */
  directReadTarget(): Buffer | undefined {
    const state = this.state;
    if (state.kind !== "data" || state.remaining < DIRECT_READ_MIN || this.sink.failed()) return undefined;
    return state.req.dest?.subarray(state.at, state.at + state.remaining);
  }

  /** `length` bytes of the streaming READ payload arrived in place (see directReadTarget). */
  receivedInPlace(length: number): void {
    const state = this.state;
    if (state.kind !== "data" || this.sink.failed()) return;
    state.at += length;
    state.remaining -= length;
    if (state.remaining === 0) this.endChunk(state.req, state.flags);
  }

  receive(bytes: Buffer): void {
    let at = 0;
    while (at < bytes.length && !this.sink.failed()) {
      const state = this.state;
      switch (state.kind) {
        case "header":
          at = this.receiveHeader(bytes, at);
          break;
        case "data-offset":
        case "payload":
          at = this.receivePayload(state, bytes, at);
          break;
        case "data": {
          const take = Math.min(state.remaining, bytes.length - at);
          state.req.dest?.set(bytes.subarray(at, at + take), state.at);
          state.at += take;
          state.remaining -= take;
          at += take;
          if (state.remaining === 0) this.endChunk(state.req, state.flags);
          break;
        }
      }
    }
  }

  private receiveHeader(bytes: Buffer, at: number): number {
    const magic = this.headerFill >= 4 ? this.header.readUInt32BE(0) : undefined;
    const need = magic === undefined ? 4 : magic === SIMPLE_REPLY_MAGIC ? SIMPLE_REPLY_SIZE : STRUCTURED_HEADER_SIZE;
    const take = Math.min(need - this.headerFill, bytes.length - at);
    bytes.copy(this.header, this.headerFill, at, at + take);
    this.headerFill += take;
    if (this.headerFill < need) return at + take;
    if (magic === undefined) {
      const got = this.header.readUInt32BE(0);
      if (got !== SIMPLE_REPLY_MAGIC && got !== STRUCTURED_REPLY_MAGIC) {
        this.sink.protocolError(`unknown reply magic 0x${got.toString(16)}`);
      }
      return at + take;
    }
    this.headerFill = 0;
    if (magic === SIMPLE_REPLY_MAGIC) this.onSimpleReply();
    else this.onChunkHeader();
    return at + take;
  }

  private onSimpleReply(): void {
    const reply = decodeSimpleReply(this.header);
    const req = this.sink.lookup(reply.cookieHigh, reply.cookie);
    if (req === undefined) return;
    if (reply.error !== 0) {
      this.sink.serverError(req, reply.error, "");
      this.sink.complete(req);
      return;
    }
    if (req.type === Cmd.READ && req.length > 0) {
      // A simple reply has no length: the pending READ says how many bytes follow.
      req.covered.push([0, req.length]);
      // A simple reply is complete once its data is in: treat it as a chunk marked DONE.
      this.state = { kind: "data", req, flags: CHUNK_FLAG_DONE, at: 0, remaining: req.length };
      return;
    }
    if (req.type === Cmd.READ) req.covered.push([0, 0]);
    this.sink.complete(req);
  }

  private onChunkHeader(): void {
    const chunk = decodeChunkHeader(this.header);
    if (!this.structuredReplies) {
      this.sink.protocolError("structured reply without negotiation");
      return;
    }
    const req = this.sink.lookup(chunk.cookieHigh, chunk.cookie);
    if (req === undefined) return;
    if (chunk.type === Chunk.OFFSET_DATA) {
      if (req.type !== Cmd.READ) {
        this.sink.protocolError(`OFFSET_DATA chunk for ${commandName(req.type)}`);
        return;
      }
      if (chunk.length < 9 || chunk.length - 8 > req.length) {
        this.sink.protocolError(`OFFSET_DATA chunk of ${chunk.length} bytes for a ${req.length}-byte READ`);
        return;
      }
      this.state = {
        kind: "data-offset",
        req,
        flags: chunk.flags,
        remaining: chunk.length - 8,
        offset: Buffer.alloc(8),
        filled: 0,
      };
      return;
    }
    if (chunk.type === Chunk.NONE) {
      if (chunk.length !== 0 || (chunk.flags & CHUNK_FLAG_DONE) === 0) {
        this.sink.protocolError("NONE chunk with a payload or without DONE");
        return;
      }
      this.endChunk(req, chunk.flags);
      return;
    }
    if (chunk.length > MAX_METADATA_CHUNK) {
      this.sink.protocolError(`chunk of type ${chunk.type} with ${chunk.length} bytes`);
      return;
    }
    this.state = {
      kind: "payload",
      req,
      flags: chunk.flags,
      type: chunk.type,
      buffer: Buffer.allocUnsafe(chunk.length),
      filled: 0,
    };
    if (chunk.length === 0) this.onPayload(this.state);
  }

  private receivePayload(
    state: Extract<ParseState, { kind: "data-offset" } | { kind: "payload" }>,
    bytes: Buffer,
    at: number,
  ): number {
    if (state.kind === "payload") {
      const take = Math.min(state.buffer.length - state.filled, bytes.length - at);
      bytes.copy(state.buffer, state.filled, at, at + take);
      state.filled += take;
      if (state.filled === state.buffer.length) this.onPayload(state);
      return at + take;
    }
    const take = Math.min(8 - state.filled, bytes.length - at);
    bytes.copy(state.offset, state.filled, at, at + take);
    state.filled += take;
    if (state.filled === 8) {
      const req = state.req;
      const start = readU64(state.offset, 0) - req.offset;
      const end = start + state.remaining;
      if (!this.cover(req, start, end)) {
        this.sink.protocolError(`OFFSET_DATA chunk ${start}-${end} outside or overlapping its READ`);
        return at + take;
      }
      this.state = { kind: "data", req, flags: state.flags, at: start, remaining: state.remaining };
    }
    return at + take;
  }

  /** Records content `[start, end)` of a READ; false when outside the request or overlapping. */
  private cover(req: PendingRequest, start: number, end: number): boolean {
    if (!(start >= 0 && end <= req.length && start < end)) return false;
    const ranges = req.covered;
    let i = 0;
    while (i < ranges.length && (ranges[i] as [number, number])[1] <= start) i++;
    if (i < ranges.length && (ranges[i] as [number, number])[0] < end) return false;
    ranges.splice(i, 0, [start, end]);
    return true;
  }

  private onPayload(state: Extract<ParseState, { kind: "payload" }>): void {
    const { req, type, buffer } = state;
    try {
      if (type === Chunk.OFFSET_HOLE) {
        if (req.type !== Cmd.READ) throw new Error(`OFFSET_HOLE chunk for ${commandName(req.type)}`);
        const hole = decodeHoleChunk(buffer);
        const start = hole.offset - req.offset;
        if (!this.cover(req, start, start + hole.size)) throw new Error("OFFSET_HOLE outside or overlapping its READ");
        req.dest?.fill(0, start, start + hole.size);
      } else if (type === Chunk.BLOCK_STATUS) {
        if (req.type !== Cmd.BLOCK_STATUS) throw new Error(`BLOCK_STATUS chunk for ${commandName(req.type)}`);
        const status = decodeBlockStatusChunk(buffer);
        if (!this.contextIds.includes(status.contextId))
          throw new Error(`BLOCK_STATUS for context ${status.contextId}, which was not negotiated`);
        if (req.status?.has(status.contextId))
          throw new Error(`two BLOCK_STATUS chunks for context ${status.contextId}`);
        req.status?.set(status.contextId, status.extents);
      } else if (type === Chunk.ERROR || type === Chunk.ERROR_OFFSET) {
        const error = decodeErrorChunk(type, buffer);
        this.sink.serverError(req, error.error, error.message);
      } else if ((type & CHUNK_ERROR_BIT) !== 0) {
        // An unknown error type fails only its request (spec: the message length fits).
        req.error ??= this.sink.requestError(req, `unknown error chunk type 0x${type.toString(16)}`, "EIO");
      } else {
        throw new Error(`unknown chunk type ${type}`);
      }
    } catch (error) {
      this.sink.protocolError(error instanceof Error ? error.message : String(error));
      return;
    }
    this.endChunk(req, state.flags);
  }

  private endChunk(req: PendingRequest, flags: number): void {
    this.state = { kind: "header" };
    if ((flags & CHUNK_FLAG_DONE) !== 0) this.sink.complete(req);
  }
}
