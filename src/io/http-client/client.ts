/**
 * The relay's HTTP/1.1 client toward one remote: one keep-alive connection, one request at a
 * time (later ones wait their turn, as with a one-socket agent), responses read with user
 * buffers (see ClientConnection).
 */

import type { Writable } from "node:stream";
import { ClosedError, RemoteError, RemoteTimeoutError } from "../../errors.js";
import { type Endpoint, openConnection } from "./connect.js";
import type { BodyReceiver, ClientConnection } from "./connection.js";
import type { ResponseHead } from "./response-head.js";

export interface ClientTimeouts {
  connectMs: number;
  /** Waiting for a response, and any stall within it. */
  readMs: number;
}

export interface RequestOptions {
  /** Header names as sent; `host` is added. */
  headers?: Record<string, string | number>;
  /** Ask the remote to refuse before the body is sent (`continued` settles on its answer). */
  expectContinue?: boolean;
  /** The remote computes before answering (checksums, zeroing): no read timeout for the head. */
  busy?: boolean;
  /** A small body sent with the head. */
  body?: string;
}

export interface ClientResponse extends ResponseHead {
  /** Reads the body into `receiver`; resolves with its length. The connection is free after. */
  receive(receiver: BodyReceiver): Promise<number>;
  /** The body as text, at most `limit` bytes (more: RemoteError). */
  text(limit: number): Promise<string>;
  /** Gives up the body (or the rest of it): the connection is closed, receive() rejects with `error`. */
  abort(error: Error): void;
  /** Receiving was held (a receiver returned false): go on. */
  resume(): void;
}

export interface ClientExchange {
  /** Where the request body goes (`content-length` bytes, not ended: the connection stays open). */
  body: Writable;
  /**
   * Settles on 100 Continue (true), on a final answer that came without it (false: the body
   * was not asked for, the response says what the remote made of the request) or on a failure
   * (rejecting).
   */
  continued: Promise<boolean>;
  response: Promise<ClientResponse>;
  /** Abandons the exchange: the connection is closed, the next request opens another. */
  abort(): void;
}

export class HttpClient {
  private connection: ClientConnection | undefined;
  private turn: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly endpoint: Endpoint,
    /** The Host header. */
    private readonly host: string,
    private readonly timeouts: ClientTimeouts,
  ) {}

  get where(): string {
    return this.endpoint.where;
  }

  /**
   * Sends a request once the previous one is done. A GET on a kept connection that the remote
   * closed meanwhile (its idle timeout) is sent again on a new connection.
   */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<ClientExchange> {
    const previous = this.turn;
    let release!: () => void;
    this.turn = new Promise((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      // Bytes a broken remote sent past the end of the last response may already wait in the
      // kernel: the socket reads them in the same poll turn, while nothing is asked, and the
      // connection refuses them. Sent now, the request would take them as its answer.
      if (this.connection?.idle === true) await new Promise((resolve) => setImmediate(resolve));
      for (let attempt = 0; ; attempt++) {
        let retryable = method === "GET" && attempt === 0 && this.connection?.idle === true;
        const connection = await this.connect();
        const exchange = this.send(connection, method, path, options, () => {
          if (!retryable) release();
        });
        if (!retryable) return exchange;
        try {
          await exchange.response;
          retryable = false;
          return exchange;
        } catch (error) {
          // Only a kept connection the remote closed meanwhile is worth a second try.
          if (error instanceof RemoteError || error instanceof RemoteTimeoutError) {
            release();
            throw error;
          }
        }
      }
    } catch (error) {
      release();
      throw error;
    }
  }

  close(): void {
    this.closed = true;
    this.connection?.destroy();
    this.connection = undefined;
  }

  private async connect(): Promise<ClientConnection> {
    if (this.closed) throw new ClosedError(`Backend http ${this.where} is closed`);
    if (this.connection?.idle === true) return this.connection;
    this.connection?.destroy();
    this.connection = undefined;
    const connection = await openConnection(this.endpoint, this.timeouts.connectMs);
    if (this.closed) {
      connection.destroy();
      throw new ClosedError(`Backend http ${this.where} is closed`);
    }
    this.connection = connection;
    return connection;
  }

  private send(
    connection: ClientConnection,
    method: string,
    path: string,
    options: RequestOptions,
    release: () => void,
  ): ClientExchange {
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${this.host}\r\n`;
    for (const [name, value] of Object.entries(options.headers ?? {})) head += `${name}: ${value}\r\n`;
    if (options.body !== undefined) head += `content-length: ${Buffer.byteLength(options.body)}\r\n`;
    if (options.expectContinue) head += "expect: 100-continue\r\n";
    head += `\r\n${options.body ?? ""}`;
    // A body the caller streams: the remote cannot take it before it had all of it.
    const streamed = options.body === undefined ? Number(options.headers?.["content-length"] ?? 0) : 0;
    const sentBefore = connection.writable.bytesWritten;
    const requestBytes = Buffer.byteLength(head, "latin1") + streamed;
    let settleContinued!: (continue_: boolean) => void;
    let onContinueFailure!: (error: Error) => void;
    const continued = new Promise<boolean>((resolve, reject) => {
      settleContinued = resolve;
      onContinueFailure = reject;
    });
    continued.catch(() => undefined);
    const response = new Promise<ClientResponse>((resolve, reject) => {
      connection.start(
        method,
        head,
        {
          onContinue: () => settleContinued(true),
          onHead: (answer) => {
            settleContinued(false);
            if (answer.status < 300 && connection.writable.bytesWritten - sentBefore < requestBytes) {
              // A success for bytes not even sent yet is no success, and the rest of the body
              // would go on down this connection while the next request is sent on it.
              const error = new RemoteError(
                `Remote ${this.where} answered ${answer.status} before it had the request's body`,
                502,
                undefined,
              );
              connection.destroy(error);
              release();
              reject(error);
              return;
            }
            connection.setTimeout(this.timeouts.readMs);
            resolve(this.response(connection, answer, release));
          },
          onFailure: (error) => {
            onContinueFailure(error);
            release();
            reject(error);
          },
        },
        options.busy ? 0 : this.timeouts.readMs,
      );
    });
    response.catch(() => undefined);
    return {
      body: connection.writable,
      continued,
      response,
      abort: () => {
        connection.destroy();
        release();
      },
    };
  }

  private response(connection: ClientConnection, head: ResponseHead, release: () => void): ClientResponse {
    const where = this.where;
    const receive = async (receiver: BodyReceiver): Promise<number> => {
      try {
        return await connection.receive(receiver);
      } finally {
        release();
      }
    };
    return {
      ...head,
      receive,
      abort: (error) => {
        connection.destroy(error);
        release();
      },
      resume: () => connection.resume(),
      text: async (limit: number) => {
        const collector = new TextCollector(limit, head.contentLength, () =>
          connection.destroy(new RemoteError(`Remote ${where} response exceeds ${limit} bytes`, 502, undefined)),
        );
        await receive(collector);
        return collector.text();
      },
    };
  }
}

/** Collects a small body (error messages, JSON); past `limit` bytes it gives up on the connection. */
class TextCollector implements BodyReceiver {
  private buffer: Buffer;
  private length = 0;

  constructor(
    private readonly limit: number,
    expected: number | undefined,
    private readonly onOverflow: () => void,
  ) {
    // One byte more than the limit, to notice a longer body.
    this.buffer = Buffer.allocUnsafe(Math.min(limit, expected ?? 4096) + 1);
  }

  space(limit: number): Buffer {
    if (this.length === this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.limit + 1, this.buffer.length * 2));
      this.buffer.copy(grown);
      this.buffer = grown;
    }
    return this.buffer.subarray(this.length, this.length + Math.min(limit, this.buffer.length - this.length));
  }

  received(bytes: Buffer): boolean {
    this.length += bytes.length;
    if (this.length <= this.limit) return true;
    this.onOverflow();
    return false;
  }

  text(): string {
    return this.buffer.toString("utf8", 0, this.length);
  }
}
