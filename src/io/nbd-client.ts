/**
 * An NBD client connection: it connects, runs the handshake under a timeout, then pipelines
 * requests. Many requests are in flight at once (bounded by count and by bytes), replies are
 * matched by cookie in whatever order they come, read payloads are copied straight into the
 * caller's buffer as they arrive, and any connection-level failure (EOF, a protocol error, a
 * socket error) fails every pending request at once, so no caller ever hangs on a dead server.
 */
import net from "node:net";
import { BackendIoError, BackendOpenError, ClosedError } from "../errors.js";
import { MiB } from "../units.js";
import { ByteQueue, type ExportInfo, negotiate } from "./nbd-handshake.js";
import {
  CHUNK_ERROR_BIT,
  CHUNK_FLAG_DONE,
  Chunk,
  Cmd,
  CmdFlag,
  commandName,
  decodeBlockStatusChunk,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeHoleChunk,
  decodeSimpleReply,
  ESHUTDOWN,
  encodeOption,
  encodeRequest,
  errnoName,
  Opt,
  REQUEST_HEADER_SIZE,
  readU64,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  type StatusExtent,
  TxFlag,
} from "./nbd-protocol.js";
import { describeAddress, type NbdTarget } from "./nbd-url.js";

export interface NbdClientOptions {
  /** Negotiate the export's dirty bitmap (a ticket with `"dirty": true`). */
  wantDirty?: boolean;
  /** Connect and handshake must finish within this (default 10 s): a busy `--shared` server never greets. */
  handshakeTimeoutMs?: number;
  /** Requests in flight at most (default 16). */
  maxRequests?: number;
  /** READ and WRITE payload bytes in flight at most (default 16 MiB). */
  maxBytes?: number;
  /** close() waits this long for pending requests before dropping the connection (default 30 s). */
  drainTimeoutMs?: number;
}

export const NBD_DEFAULTS = {
  handshakeTimeoutMs: 10_000,
  maxRequests: 16,
  maxBytes: 16 * MiB,
  drainTimeoutMs: 30_000,
} as const;

/** How long DISC waits for the server to close before the socket is destroyed. */
const DISCONNECT_GRACE_MS = 2000;
/** Socket read buffer, reused for every read (no allocation per chunk). */
const READ_BUFFER_SIZE = 256 * 1024;
/** READ payloads at least this large are read straight into the caller's buffer. */
const DIRECT_READ_MIN = 64 * 1024;
/** Non-data chunks (status, errors) are buffered whole; 2^20 extents is the spec's maximum. */
const MAX_METADATA_CHUNK = 4 + 8 * 2 ** 20;

/** Per-context extents of one BLOCK_STATUS reply, by context id. */
export type BlockStatus = Map<number, StatusExtent[]>;

interface Request {
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
  | { kind: "data-offset"; req: Request; flags: number; remaining: number; offset: Buffer; filled: number }
  | { kind: "data"; req: Request; flags: number; at: number; remaining: number }
  | { kind: "payload"; req: Request; flags: number; type: number; buffer: Buffer; filled: number };

export class NbdClient {
  private readonly pending = new Map<number, Request>();
  private nextCookie = 1;
  /** Admitted requests (sent or about to be) and their payload bytes, for the in-flight bounds. */
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Requests waiting for room in flight, FIFO. */
  private readonly admissions: { bytes: number; resolve(): void; reject(e: Error): void }[] = [];
  /** WRITE and WRITE_ZEROES replies a FLUSH must wait for. */
  private readonly writes = new Set<Promise<unknown>>();
  private idleWaiters: (() => void)[] = [];
  private state: ParseState = { kind: "header" };
  private readonly header = Buffer.alloc(STRUCTURED_HEADER_SIZE);
  private headerFill = 0;
  private failure: Error | undefined;
  private closing = false;
  private closed: Promise<void> | undefined;
  private readonly maxRequests: number;
  private readonly maxBytes: number;
  private readonly drainTimeoutMs: number;

  private constructor(
    private readonly socket: net.Socket,
    readonly info: ExportInfo,
    /** Names the server in messages: `unix:/path` or `host:port`. */
    readonly where: string,
    options: NbdClientOptions,
  ) {
    this.maxRequests = Math.max(1, options.maxRequests ?? NBD_DEFAULTS.maxRequests);
    // A request larger than maxBytes still goes out alone (see fits()).
    this.maxBytes = options.maxBytes ?? NBD_DEFAULTS.maxBytes;
    this.drainTimeoutMs = options.drainTimeoutMs ?? NBD_DEFAULTS.drainTimeoutMs;
  }

  /**
   * Connects to `target` and negotiates its export.
   * @throws BackendOpenError naming the server: unreachable, no such export, handshake timeout,
   *   or a server we cannot talk to.
   */
  static async connect(target: NbdTarget, options: NbdClientOptions = {}): Promise<NbdClient> {
    const where = describeAddress(target.address);
    const timeoutMs = options.handshakeTimeoutMs ?? NBD_DEFAULTS.handshakeTimeoutMs;
    const queue = new ByteQueue();
    let client: NbdClient | undefined;
    const readBuffer = Buffer.allocUnsafe(READ_BUFFER_SIZE);
    /** Whether the read in progress lands in a READ's destination rather than readBuffer. */
    let direct = false;
    const onread = {
      // Called before every socket read: while a large READ payload streams in, the kernel
      // copies it straight into the caller's buffer, saving a copy of every byte.
      buffer: (): Uint8Array => {
        const target = client?.directReadTarget();
        direct = target !== undefined;
        return target ?? readBuffer;
      },
      callback: (length: number, buffer: Uint8Array): boolean => {
        if (direct) {
          client?.receivedInPlace(length);
          return true;
        }
        const bytes = Buffer.from(buffer.buffer, buffer.byteOffset, length);
        // The read buffer is reused at once: the handshake keeps a copy, the engine consumes now.
        if (client === undefined) queue.push(Buffer.from(bytes));
        else client.receive(bytes);
        return true;
      },
    };
    const socket =
      "path" in target.address
        ? net.connect({ path: target.address.path, onread })
        : net.connect({ host: target.address.host, port: target.address.port, noDelay: true, onread });
    let connected = false;
    const onEarlyError = (error: Error) => {
      const code = (error as NodeJS.ErrnoException).code;
      queue.fail(
        new BackendOpenError(
          connected
            ? `NBD server at ${where} failed during the handshake: ${error.message}`
            : `Cannot connect to NBD server at ${where}: ${code ?? error.message}`,
          { cause: error },
        ),
      );
    };
    const onEarlyEnd = () =>
      queue.fail(new Error(connected ? "the server closed the connection" : "the connection closed"));
    socket.on("error", onEarlyError);
    socket.on("end", onEarlyEnd);
    socket.on("close", onEarlyEnd);
    socket.once("connect", () => {
      connected = true;
    });
    const timer = setTimeout(() => {
      queue.fail(
        new BackendOpenError(
          `NBD server at ${where} did not complete the handshake within ${timeoutMs / 1000} s (is it serving too many clients?)`,
        ),
      );
    }, timeoutMs);
    try {
      const info = await negotiate(
        { read: (length) => queue.read(length), write: (bytes) => socket.write(bytes) },
        { exportName: target.exportName, wantDirty: options.wantDirty ?? false, where },
      );
      client = new NbdClient(socket, info, where, options);
      socket.off("error", onEarlyError);
      socket.off("end", onEarlyEnd);
      socket.off("close", onEarlyEnd);
      client.attach();
      const early = queue.rest();
      if (early.length > 0) client.receive(early);
      return client;
    } catch (error) {
      // Soft disconnect where the server still listens; it may close without replying.
      if (connected && !socket.destroyed) {
        socket.write(encodeOption(Opt.ABORT));
        socket.end();
        setTimeout(() => socket.destroy(), DISCONNECT_GRACE_MS).unref();
      } else {
        socket.destroy();
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Transmission flags the server advertised. */
  has(flag: number): boolean {
    return (this.info.flags & flag) !== 0;
  }

  /** Requests waiting for replies (tests assert the table drains). */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Reads `dest.length` bytes at `offset` in one request (≤ maximumPayload), straight into
   * `dest`. The caller keeps `dest` untouched until this settles.
   */
  async read(dest: Buffer, offset: number): Promise<void> {
    await this.submit(Cmd.READ, 0, offset, dest.length, undefined, dest);
  }

  /** Writes `data` at `offset` in one request; `data` must stay untouched until this settles. */
  async write(data: Buffer, offset: number, options: { fua?: boolean } = {}): Promise<void> {
    const flags = options.fua && this.has(TxFlag.SEND_FUA) ? CmdFlag.FUA : 0;
    await this.tracked(this.submit(Cmd.WRITE, flags, offset, data.length, data));
  }

  /**
   * Zeroes `length` bytes (< 4 GiB) at `offset` with one WRITE_ZEROES. Without `punchHole`
   * the area stays allocated (NO_HOLE).
   */
  async zero(offset: number, length: number, options: { punchHole?: boolean } = {}): Promise<void> {
    const flags = options.punchHole ? 0 : CmdFlag.NO_HOLE;
    await this.tracked(this.submit(Cmd.WRITE_ZEROES, flags, offset, length));
  }

  /** Flushes every write whose reply arrived, after waiting for the writes sent before it. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.writes]);
    await this.submit(Cmd.FLUSH, 0, 0, 0);
  }

  /** One BLOCK_STATUS request (length < 4 GiB): extents per granted context id. */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    const status = await this.submit(Cmd.BLOCK_STATUS, 0, offset, length);
    return status ?? new Map();
  }

  /**
   * Waits for pending requests (up to the drain timeout), sends DISC and closes the socket.
   * New requests are refused from the first call; idempotent.
   */
  close(): Promise<void> {
    this.closing = true;
    this.closed ??= this.shutdown();
    return this.closed;
  }

  private async shutdown(): Promise<void> {
    if (this.inFlight > 0 || this.admissions.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          this.fail(
            new BackendIoError(
              `NBD server at ${this.where} did not answer ${this.pending.size} requests within ${this.drainTimeoutMs / 1000} s of close`,
              "ETIMEDOUT",
            ),
          );
          resolve();
        }, this.drainTimeoutMs);
      });
      await Promise.race([idle, timeout]);
      clearTimeout(timer);
    }
    const socket = this.socket;
    if (this.failure === undefined && !socket.destroyed) {
      this.failure = new ClosedError(`NBD connection to ${this.where} is closed`);
      socket.write(encodeRequest(Cmd.DISC, 0, 0, 0, 0));
      socket.end();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          socket.destroy();
          resolve();
        }, DISCONNECT_GRACE_MS);
        socket.once("close", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    } else {
      socket.destroy();
    }
  }

  private attach(): void {
    const socket = this.socket;
    socket.on("error", (error: NodeJS.ErrnoException) => {
      this.fail(
        new BackendIoError(`NBD connection to ${this.where} failed: ${error.message}`, error.code ?? "EIO", {
          cause: error,
        }),
      );
    });
    const onEnd = () => {
      this.fail(
        new BackendIoError(
          `NBD server at ${this.where} closed the connection${this.pending.size > 0 ? ` with ${this.pending.size} requests in flight` : ""}`,
          "ECONNRESET",
        ),
      );
    };
    socket.on("end", onEnd);
    socket.on("close", onEnd);
  }

  private tracked<T>(promise: Promise<T>): Promise<T> {
    this.writes.add(promise);
    const forget = () => this.writes.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  private usable(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.closing) throw new ClosedError(`NBD connection to ${this.where} is closing`);
  }

  private async submit(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Buffer,
    dest?: Buffer,
  ): Promise<BlockStatus | undefined> {
    this.usable();
    const bytes = type === Cmd.READ || type === Cmd.WRITE ? length : 0;
    await this.admit(bytes);
    // fail() may have run while we waited; it already reset the in-flight counters.
    if (this.failure !== undefined) throw this.failure;
    let cookie = this.nextCookie;
    while (this.pending.has(cookie)) cookie = (cookie + 1) >>> 0;
    this.nextCookie = (cookie + 1) >>> 0;
    return new Promise<BlockStatus | undefined>((resolve, reject) => {
      const req: Request = {
        cookie,
        type,
        offset,
        length,
        bytes,
        dest,
        covered: [],
        status: type === Cmd.BLOCK_STATUS ? new Map() : undefined,
        error: undefined,
        resolve,
        reject,
      };
      this.pending.set(cookie, req);
      // Header and payload leave in one step so payloads of concurrent writes never interleave.
      // Node does not copy: the payload belongs to the socket until the reply arrives. The
      // in-flight bounds cap what the socket may hold, so there is no separate drain wait.
      const socket = this.socket;
      socket.cork();
      socket.write(encodeRequest(type, flags, cookie, offset, length, Buffer.allocUnsafe(REQUEST_HEADER_SIZE)));
      if (payload !== undefined && payload.length > 0) socket.write(payload);
      socket.uncork();
    });
  }

  private admit(bytes: number): Promise<void> {
    if (this.admissions.length === 0 && this.fits(bytes)) {
      this.take(bytes);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      this.admissions.push({
        bytes,
        resolve: () => {
          this.take(bytes);
          resolve();
        },
        reject,
      });
    });
  }

  private fits(bytes: number): boolean {
    return this.inFlight === 0 || (this.inFlight < this.maxRequests && this.inFlightBytes + bytes <= this.maxBytes);
  }

  private take(bytes: number): void {
    this.inFlight += 1;
    this.inFlightBytes += bytes;
  }

  private release(bytes: number): void {
    this.inFlight -= 1;
    this.inFlightBytes -= bytes;
    while (this.admissions.length > 0 && this.fits((this.admissions[0] as { bytes: number }).bytes)) {
      (this.admissions.shift() as { resolve(): void }).resolve();
    }
    if (this.inFlight === 0 && this.admissions.length === 0) {
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** Settles `req` once its reply is complete. */
  private finish(req: Request): void {
    this.pending.delete(req.cookie);
    this.release(req.bytes);
    if (req.error === undefined && req.type === Cmd.READ) {
      const got = req.covered.reduce((sum, [start, end]) => sum + end - start, 0);
      if (got !== req.length) req.error = this.requestError(req, `the reply covered ${got} of ${req.length} bytes`);
    }
    if (req.error === undefined && req.type === Cmd.BLOCK_STATUS) {
      for (const id of this.info.contexts.values()) {
        if (!req.status?.has(id)) req.error = this.requestError(req, `the reply has no extents for context ${id}`);
      }
    }
    if (req.error !== undefined) req.reject(req.error);
    else req.resolve(req.status);
  }

  private requestError(req: Request, problem: string, errno = "EPROTO"): BackendIoError {
    return new BackendIoError(
      `NBD ${commandName(req.type)} of ${req.length} bytes at offset ${req.offset} on ${this.where} failed: ${problem}`,
      errno,
    );
  }

  /** Fails every pending and waiting request and drops the connection; the first cause wins. */
  private fail(error: Error): void {
    this.socket.destroy();
    if (this.failure !== undefined) return;
    this.failure = error;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const req of pending) req.reject(error);
    for (const waiter of this.admissions.splice(0)) waiter.reject(error);
    this.inFlight = 0;
    this.inFlightBytes = 0;
    for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private protocolError(message: string): void {
    this.fail(new BackendIoError(`NBD server at ${this.where} broke the protocol: ${message}`, "EPROTO"));
  }

  // -------------------------------------------------------------------------------------------
  // The reply parser: consumes each socket read synchronously, so the read buffer can be reused.

  /**
   * The rest of the READ payload being received, when it is large enough to be worth a read
   * of its own; undefined to read into the shared buffer.
   */
  private directReadTarget(): Buffer | undefined {
    const state = this.state;
    if (state.kind !== "data" || state.remaining < DIRECT_READ_MIN || this.failure !== undefined) return undefined;
    return state.req.dest?.subarray(state.at, state.at + state.remaining);
  }

  /** `length` bytes of the streaming READ payload arrived in place (see directReadTarget). */
  private receivedInPlace(length: number): void {
    const state = this.state;
    if (state.kind !== "data" || this.failure !== undefined) return;
    state.at += length;
    state.remaining -= length;
    if (state.remaining === 0) this.endChunk(state.req, state.flags);
  }

  private receive(bytes: Buffer): void {
    let at = 0;
    while (at < bytes.length && this.failure === undefined) {
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
        this.protocolError(`unknown reply magic 0x${got.toString(16)}`);
      }
      return at + take;
    }
    this.headerFill = 0;
    if (magic === SIMPLE_REPLY_MAGIC) this.onSimpleReply();
    else this.onChunkHeader();
    return at + take;
  }

  private lookup(cookieHigh: number, cookie: number): Request | undefined {
    const req = cookieHigh === 0 ? this.pending.get(cookie) : undefined;
    if (req === undefined) this.protocolError(`reply to unknown cookie ${cookieHigh * 2 ** 32 + cookie}`);
    return req;
  }

  private onSimpleReply(): void {
    const reply = decodeSimpleReply(this.header);
    const req = this.lookup(reply.cookieHigh, reply.cookie);
    if (req === undefined) return;
    if (reply.error !== 0) {
      this.serverError(req, reply.error, "");
      this.finish(req);
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
    this.finish(req);
  }

  private onChunkHeader(): void {
    const chunk = decodeChunkHeader(this.header);
    if (!this.info.structuredReplies) {
      this.protocolError("structured reply without negotiation");
      return;
    }
    const req = this.lookup(chunk.cookieHigh, chunk.cookie);
    if (req === undefined) return;
    if (chunk.type === Chunk.OFFSET_DATA) {
      if (req.type !== Cmd.READ) {
        this.protocolError(`OFFSET_DATA chunk for ${commandName(req.type)}`);
        return;
      }
      if (chunk.length < 9 || chunk.length - 8 > req.length) {
        this.protocolError(`OFFSET_DATA chunk of ${chunk.length} bytes for a ${req.length}-byte READ`);
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
        this.protocolError("NONE chunk with a payload or without DONE");
        return;
      }
      this.endChunk(req, chunk.flags);
      return;
    }
    if (chunk.length > MAX_METADATA_CHUNK) {
      this.protocolError(`chunk of type ${chunk.type} with ${chunk.length} bytes`);
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
        this.protocolError(`OFFSET_DATA chunk ${start}-${end} outside or overlapping its READ`);
        return at + take;
      }
      this.state = { kind: "data", req, flags: state.flags, at: start, remaining: state.remaining };
    }
    return at + take;
  }

  /** Records content `[start, end)` of a READ; false when outside the request or overlapping. */
  private cover(req: Request, start: number, end: number): boolean {
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
        if (![...this.info.contexts.values()].includes(status.contextId))
          throw new Error(`BLOCK_STATUS for context ${status.contextId}, which was not negotiated`);
        if (req.status?.has(status.contextId))
          throw new Error(`two BLOCK_STATUS chunks for context ${status.contextId}`);
        req.status?.set(status.contextId, status.extents);
      } else if (type === Chunk.ERROR || type === Chunk.ERROR_OFFSET) {
        const error = decodeErrorChunk(type, buffer);
        this.serverError(req, error.error, error.message);
      } else if ((type & CHUNK_ERROR_BIT) !== 0) {
        // An unknown error type fails only its request (spec: the message length fits).
        req.error ??= this.requestError(req, `unknown error chunk type 0x${type.toString(16)}`, "EIO");
      } else {
        throw new Error(`unknown chunk type ${type}`);
      }
    } catch (error) {
      this.protocolError(error instanceof Error ? error.message : String(error));
      return;
    }
    this.endChunk(req, state.flags);
  }

  private serverError(req: Request, error: number, message: string): void {
    const errno = errnoName(error);
    req.error ??= this.requestError(req, `${errno}${message === "" ? "" : ` (${message})`}`, errno);
    if (error === ESHUTDOWN) {
      // The server is going away: finish what is pending, then disconnect softly.
      this.closing = true;
      void this.close();
    }
  }

  private endChunk(req: Request, flags: number): void {
    this.state = { kind: "header" };
    if ((flags & CHUNK_FLAG_DONE) !== 0) this.finish(req);
  }
}
