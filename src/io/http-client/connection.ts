/**
 * One keep-alive connection to a remote images service, reading its responses with user
 * buffers (`onread`): body bytes land where the receiver wants them (the relay's large
 * buffers, a caller's buffer) instead of a new Buffer per socket read pushed through stream
 * machinery, which is most of a relay's CPU. One request at a time; the owner (HttpClient)
 * queues them.
 */

import type { Socket } from "node:net";
import { RemoteError, RemoteTimeoutError, RemoteUnavailableError } from "../../errors.js";
import { ChunkedDecoder } from "./chunked.js";
import {
  findHeadEnd,
  parseResponseHead,
  RESPONSE_HEAD_LIMIT,
  ResponseFramingError,
  type ResponseHead,
} from "./response-head.js";

/** Where a response body goes. */
export interface BodyReceiver {
  /**
   * A buffer for the next read, 1 to `limit` bytes long, which the receiver does not touch
   * until received() (the read may come much later).
   */
  space(limit: number): Buffer;
  /**
   * `bytes` (the start of the last space()) arrived. Returning false stops reading until
   * resume(); a few more bytes may still arrive (TLS records already decrypted).
   */
  received(bytes: Buffer): boolean;
}

/**
 * What `onread` needs, created before the socket since Node takes it at connect time. Node
 * asks `buffer()` once at the start and after each `callback`, and reads into that buffer
 * until the next callback: a buffer handed out before a receiver came is not the receiver's.
 */
export interface ReadHooks {
  buffer: () => Buffer;
  callback: (length: number, buffer: Buffer) => boolean;
}

/**
 * Most interim (1xx) answers one request may get: a 100 Continue and a few hints are all an
 * images service sends. Each one is fresh activity for the read timeout, so without a bound a
 * remote answering 102 for ever would hold the request (and its caller) for ever.
 */
const MAX_INTERIM_ANSWERS = 10;

interface Exchange {
  method: string;
  /** Interim answers received so far. */
  interim: number;
  onHead: (head: ResponseHead) => void;
  onContinue: () => void;
  onFailure: (error: Error) => void;
}

interface Body {
  /** Bytes still to come; Infinity: until the remote closes or the last chunk. */
  remaining: number;
  /** Decodes a chunked body, which is read into the head buffer and copied to the receiver. */
  chunked: ChunkedDecoder | undefined;
  received: number;
  expected: number | undefined;
  receiver: BodyReceiver | undefined;
  done: (error?: Error) => void;
}

/** A body read before its receiver came (bytes after the head in the same read). */
const NO_BYTES = Buffer.alloc(0);

export class ClientConnection {
  private socket: Socket | undefined;
  private readonly head = Buffer.allocUnsafe(RESPONSE_HEAD_LIMIT);
  private headLength = 0;
  private exchange: Exchange | undefined;
  private body: Body | undefined;
  private early: Buffer = NO_BYTES;
  /** Who owns the buffer Node reads into now: a receiver, or undefined for the head buffer. */
  private readOwner: BodyReceiver | undefined;
  private failure: Error | undefined;
  /** The remote ended the connection (rather than an error or us). */
  private closedByRemote = false;
  /** The remote may take another request on this connection. */
  private reusable = true;
  /** We gave up on the connection (destroy()): bytes already read go nowhere. */
  private abandoned = false;
  /** The read timeout while we wait for the remote's bytes (0: none). */
  private readTimeoutMs = 0;
  /** Reading is stopped on our side (a receiver is not there yet, or holds): no timeout runs. */
  private held = false;

  constructor(
    /** For messages: host:port or the unix socket. */
    readonly where: string,
  ) {}

  /** The `onread` option for the socket this connection will own. */
  readonly hooks: ReadHooks = {
    buffer: () => this.nextBuffer(),
    callback: (length, buffer) => {
      const more = this.onRead(buffer.subarray(0, length));
      if (!more) this.hold();
      return more;
    },
  };

  /** Takes ownership of the socket made with `hooks`. */
  attach(socket: Socket): void {
    this.socket = socket;
    socket.on("error", (error) => this.fail(error));
    socket.on("timeout", () =>
      socket.destroy(
        new RemoteTimeoutError(`Remote ${this.where} did not answer ${this.exchange?.method ?? ""} in time`),
      ),
    );
    socket.on("end", () => this.onEnd());
    socket.on("close", () => this.fail(new Error("the connection closed")));
  }

  /** Free for another request: connected, idle, and the remote did not say it closes. */
  get idle(): boolean {
    return this.reusable && this.failure === undefined && this.exchange === undefined && this.body === undefined;
  }

  get writable(): Socket {
    if (this.socket === undefined) throw new Error("connection has no socket");
    return this.socket;
  }

  /** Sends a request head; the callbacks hear the response head, 100 Continue, or the failure. */
  start(method: string, head: string, exchange: Omit<Exchange, "method" | "interim">, readTimeoutMs: number): void {
    const socket = this.writable;
    if (!this.idle) throw new Error(`connection to ${this.where} is busy`);
    this.exchange = { ...exchange, method, interim: 0 };
    this.readTimeoutMs = readTimeoutMs;
    socket.write(head, "latin1");
    this.readOn();
  }

  /** Changes the read timeout while a response is pending (0: the remote is computing). */
  setTimeout(ms: number): void {
    this.readTimeoutMs = ms;
    if (!this.held) this.socket?.setTimeout(ms);
  }

  /**
   * Reads the body of the response whose head was delivered into `receiver`.
   * @returns the body's length, once it all arrived.
   * @throws RemoteError when the remote closed before the end of it.
   */
  receive(receiver: BodyReceiver): Promise<number> {
    const body = this.body;
    if (body === undefined) return Promise.resolve(0);
    return new Promise<number>((resolve, reject) => {
      body.done = (error) => (error === undefined ? resolve(body.received) : reject(error));
      body.receiver = receiver;
      const early = this.early;
      this.early = NO_BYTES;
      this.consume(body, early);
      // Complete already (read with its head): the idle connection goes on reading all the same,
      // to notice the remote closing it or sending what nobody asked for.
      if (this.body !== body && !this.reusable) return;
      if (this.failure !== undefined) {
        if (this.body === body) this.settleAfterFailure(body);
      } else this.readOn();
    });
  }

  /** Reading went on hold (backpressure): go on. */
  resume(): void {
    this.readOn();
  }

  /**
   * Reading stops on our side (a receiver holds, or is not there yet): the read timeout
   * measures the remote's silence while we wait for its bytes, so it does not run meanwhile.
   */
  private hold(): void {
    this.held = true;
    this.socket?.setTimeout(0);
  }

  /** Reading goes on: the read timeout runs again while a response is awaited. */
  private readOn(): void {
    const socket = this.socket;
    if (socket === undefined) return;
    this.held = false;
    // An idle kept connection reads too (to notice the remote closing it), without a timeout.
    const awaited = this.exchange !== undefined || this.body !== undefined;
    socket.setTimeout(awaited ? this.readTimeoutMs : 0);
    socket.resume();
  }

  destroy(error?: Error): void {
    this.reusable = false;
    this.abandoned = true;
    this.socket?.destroy(error);
  }

  private nextBuffer(): Buffer {
    const body = this.body;
    // Node asks even after the last read of a destroyed socket: no receiver is asked then.
    if (
      body?.receiver !== undefined &&
      body.chunked === undefined &&
      body.remaining > 0 &&
      this.socket?.destroyed !== true
    ) {
      this.readOwner = body.receiver;
      return body.receiver.space(Math.min(body.remaining, 4 * 1024 * 1024));
    }
    // A head, or bytes nobody asked for yet (kept in `early`): the head buffer has room for both.
    this.readOwner = undefined;
    if (this.headLength === RESPONSE_HEAD_LIMIT) this.headLength = 0;
    return this.head.subarray(this.headLength);
  }

  private onRead(bytes: Buffer): boolean {
    if (this.failure !== undefined) return false;
    const body = this.body;
    if (body?.receiver !== undefined) {
      if (this.readOwner === body.receiver) return this.deliver(body, bytes);
      // Read into the head buffer: chunked, or handed out before the receiver came.
      this.consume(body, bytes);
      this.headLength = 0;
      return this.failure === undefined;
    }
    if (body !== undefined) {
      // The receiver is not there yet: keep the bytes and stop reading until it comes.
      this.early = Buffer.concat([this.early, bytes]);
      this.headLength = 0;
      return false;
    }
    if (this.exchange === undefined) {
      this.protocolError(new ResponseFramingError("sent data nobody asked for"));
      return false;
    }
    return this.onHeadBytes(bytes.length);
  }

  private onHeadBytes(length: number): boolean {
    const from = this.headLength;
    this.headLength += length;
    const end = findHeadEnd(this.head.subarray(0, this.headLength), from);
    const headBytes = end === -1 ? this.headLength : end;
    for (let lf = this.head.indexOf(10, from); lf !== -1 && lf < headBytes; lf = this.head.indexOf(10, lf + 1)) {
      if (this.head[lf - 1] !== 13) {
        this.protocolError(new ResponseFramingError("response head has a line ending in a bare LF"));
        return false;
      }
    }
    if (end === -1) {
      if (this.headLength === RESPONSE_HEAD_LIMIT) {
        this.protocolError(new ResponseFramingError(`response head exceeds ${RESPONSE_HEAD_LIMIT} bytes`));
        return false;
      }
      return true;
    }
    const exchange = this.exchange as Exchange;
    let head: ResponseHead;
    try {
      head = parseResponseHead(this.head.subarray(0, end), exchange.method);
    } catch (error) {
      this.protocolError(error as Error);
      return false;
    }
    const rest = Buffer.from(this.head.subarray(end, this.headLength));
    this.headLength = 0;
    if (head.status < 200) {
      if (++exchange.interim > MAX_INTERIM_ANSWERS) {
        this.protocolError(new ResponseFramingError(`sent more than ${MAX_INTERIM_ANSWERS} interim (1xx) answers`));
        return false;
      }
      if (head.status === 100) exchange.onContinue();
      // Other interim answers (102, 103) carry nothing for us.
      if (rest.length === 0) return true;
      rest.copy(this.head);
      return this.onHeadBytes(rest.length);
    }
    this.exchange = undefined;
    // A refused upload leaves unknown how much of its body the remote read: framing is lost.
    this.reusable &&= head.keepAlive && (exchange.method !== "PUT" || head.status < 300);
    const expected = head.contentLength;
    this.body = {
      remaining: expected ?? Number.POSITIVE_INFINITY,
      chunked: head.chunked ? new ChunkedDecoder() : undefined,
      received: 0,
      expected,
      receiver: undefined,
      done: () => undefined,
    };
    this.early = rest;
    if (expected === 0 && rest.length === 0) {
      exchange.onHead(head);
      // After onHead, which sets the read timeout for a body: an idle connection has none.
      this.endBody(this.body);
      // Nothing more to read for this answer: an idle kept connection goes on reading, so that
      // the remote closing it (its idle timeout) is noticed before the next request, which
      // would otherwise be sent on it and fail (uploads cannot be sent again).
      return this.reusable;
    }
    exchange.onHead(head);
    return false;
  }

  /** Bytes read into the head buffer: decoded when chunked, then copied to the receiver. */
  private consume(body: Body, bytes: Buffer): void {
    const decoder = body.chunked;
    if (decoder === undefined) {
      this.deliverCopy(body, bytes);
      return;
    }
    let used: number;
    try {
      used = decoder.feed(bytes, (data) => this.deliverCopy(body, data));
    } catch (error) {
      this.protocolError(error as Error);
      return;
    }
    // Not done when the receiver gave up meanwhile: the failure settles the body.
    if (!decoder.done || this.abandoned) return;
    if (used < bytes.length) {
      this.protocolError(new ResponseFramingError("sent data nobody asked for after the body"));
      return;
    }
    this.endBody(body);
  }

  /** Hands bytes read elsewhere to the receiver, through its own buffers. */
  private deliverCopy(body: Body, bytes: Buffer): void {
    if (bytes.length > body.remaining) {
      this.protocolError(new ResponseFramingError("sent data nobody asked for after the body"));
      return;
    }
    const receiver = body.receiver as BodyReceiver;
    for (let at = 0; at < bytes.length; ) {
      // The receiver gave up (a text collector past its limit destroys the connection, and
      // has no room left): the rest of what was read goes nowhere.
      if (this.abandoned) return;
      const space = receiver.space(Math.min(body.remaining, bytes.length - at));
      const taken = bytes.copy(space, 0, at, at + space.length);
      at += taken;
      this.deliver(body, space.subarray(0, taken));
    }
  }

  private deliver(body: Body, bytes: Buffer): boolean {
    body.remaining -= bytes.length;
    body.received += bytes.length;
    const more = (body.receiver as BodyReceiver).received(bytes);
    if (body.remaining === 0) {
      this.endBody(body);
      // Go on reading an idle keep-alive connection, to notice when the remote closes it.
      return this.reusable;
    }
    return more;
  }

  private endBody(body: Body, error?: Error): void {
    if (this.body !== body) return;
    this.body = undefined;
    if (error !== undefined) this.reusable = false;
    if (this.failure === undefined) {
      if (this.reusable) this.socket?.setTimeout(0);
      else this.socket?.end();
    }
    body.done(error);
  }

  private onEnd(): void {
    this.closedByRemote = true;
    this.fail(new Error("the remote closed the connection"));
  }

  private protocolError(error: Error): void {
    this.destroy(new RemoteError(`Remote ${this.where} broke HTTP framing: ${error.message}`, 502, undefined));
  }

  /** The connection is unusable: whatever waits on it hears why. */
  private fail(error: Error): void {
    this.reusable = false;
    if (this.failure !== undefined) return;
    this.failure = error;
    const exchange = this.exchange;
    this.exchange = undefined;
    exchange?.onFailure(
      error instanceof RemoteError || error instanceof RemoteTimeoutError
        ? error
        : new RemoteUnavailableError(`Cannot reach remote ${this.where}: ${error.message}`, { cause: error }),
    );
    const body = this.body;
    // Without a receiver yet, receive() settles the body when it comes.
    if (body?.receiver !== undefined) this.settleAfterFailure(body);
  }

  /** A body that ends with the connection is complete when the remote closed; any other is cut (chunked too). */
  private settleAfterFailure(body: Body): void {
    if (body.expected === undefined && body.chunked === undefined && this.closedByRemote) this.endBody(body);
    else this.endBody(body, cutBody(this.where, body, this.failure as Error));
  }
}

function cutBody(where: string, body: Body, error: Error): Error {
  if (error instanceof RemoteError || error instanceof RemoteTimeoutError) return error;
  const of = body.expected === undefined ? "" : ` of ${body.expected}`;
  return new RemoteError(
    `Remote ${where} closed the connection after ${body.received}${of} bytes: ${error.message}`,
    502,
    undefined,
    { cause: error },
  );
}
