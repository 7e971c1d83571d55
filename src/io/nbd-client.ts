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
  Cmd,
  CmdFlag,
  commandName,
  ESHUTDOWN,
  encodeOption,
  encodeRequest,
  errnoName,
  Opt,
  REQUEST_HEADER_SIZE,
  TxFlag,
} from "./nbd-protocol.js";
import { type BlockStatus, type PendingRequest, ReplyParser } from "./nbd-replies.js";
import { describeAddress, type NbdTarget } from "./nbd-url.js";

export type { BlockStatus } from "./nbd-replies.js";

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

export class NbdClient {
  private readonly pending = new Map<number, PendingRequest>();
  private nextCookie = 1;
  /** Admitted requests (sent or about to be) and their payload bytes, for the in-flight bounds. */
  private inFlight = 0;
  private inFlightBytes = 0;
  /** Requests waiting for room in flight, FIFO. */
  private readonly admissions: { bytes: number; resolve(): void; reject(e: Error): void }[] = [];
  /** WRITE and WRITE_ZEROES replies a FLUSH must wait for. */
  private readonly writes = new Set<Promise<unknown>>();
  private idleWaiters: (() => void)[] = [];
  private readonly parser: ReplyParser;
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
    this.parser = new ReplyParser(
      {
        lookup: (cookieHigh, cookie) => this.lookup(cookieHigh, cookie),
        complete: (request) => this.finish(request),
        protocolError: (message) => this.protocolError(message),
        serverError: (request, error, message) => this.serverError(request, error, message),
        requestError: (request, problem, errno) => this.requestError(request, problem, errno),
        failed: () => this.failure !== undefined,
      },
      info.structuredReplies,
      [...info.contexts.values()],
    );
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
        const target = client?.parser.directReadTarget();
        direct = target !== undefined;
        return target ?? readBuffer;
      },
      callback: (length: number, buffer: Uint8Array): boolean => {
        if (direct) {
          client?.parser.receivedInPlace(length);
          return true;
        }
        const bytes = Buffer.from(buffer.buffer, buffer.byteOffset, length);
        // The read buffer is reused at once: the handshake keeps a copy, the engine consumes now.
        if (client === undefined) queue.push(Buffer.from(bytes));
        else client.parser.receive(bytes);
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
      if (early.length > 0) client.parser.receive(early);
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
      const req: PendingRequest = {
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
  private finish(req: PendingRequest): void {
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

  private requestError(req: PendingRequest, problem: string, errno = "EPROTO"): BackendIoError {
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

  private lookup(cookieHigh: number, cookie: number): PendingRequest | undefined {
    const req = cookieHigh === 0 ? this.pending.get(cookie) : undefined;
    if (req === undefined) this.protocolError(`reply to unknown cookie ${cookieHigh * 2 ** 32 + cookie}`);
    return req;
  }

  private serverError(req: PendingRequest, error: number, message: string): void {
    const errno = errnoName(error);
    req.error ??= this.requestError(req, `${errno}${message === "" ? "" : ` (${message})`}`, errno);
    if (error === ESHUTDOWN) {
      // The server is going away: finish what is pending, then disconnect softly.
      this.closing = true;
      void this.close();
    }
  }
}
