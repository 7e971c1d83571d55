/**
 * One connection served by imageio's own HTTP/1.1 framing: heads read one at a time, each
 * request handed to the dispatcher and answered before the next head is read (pipelined
 * bytes wait in the staging area), the body read by the request's consumer or, when it did
 * not, discarded before the next head. The connection ends when a response closes it, when
 * the client half-closed and every request it sent was answered, or on a framing error
 * (answered, then closed: see refuse).
 */
import type { Socket } from "node:net";
import type { Readable } from "node:stream";
import type { Logger } from "../../log.js";
import type { IncomingRequest } from "../exchange.js";
import { BodyReader } from "./body.js";
import { freshScan, parseHead, type RequestHead } from "./head.js";
import { Inbound } from "./inbound.js";
import { WireResponse } from "./response.js";

/** Runs one request; resolves once its response was sent in full (or the connection went away). */
export type ServeRequest = (request: IncomingRequest, response: WireResponse) => Promise<void>;

export interface WireOptions {
  /** Absolute deadline for a request head, from its first byte (spec §3.4). */
  deadlineMs: number;
  log: Logger;
  /** The client's name for logs. */
  client: string;
  /** True once the service is stopping: a connection ends after its running request. */
  stopping: () => boolean;
}

/** Bytes read and dropped at a time when a handler left a body unread. */
const DISCARD_PIECE = 64 * 1024;

/**
 * How long a connection whose head was refused still reads (and drops) what its client sends
 * once the answer went out: closing a socket with unread bytes resets it, and a reset can
 * destroy the answer before the client read it. Bounded, so the descriptor comes back soon.
 */
const REFUSED_LINGER_MS = 1000;

export class WireConnection {
  private readonly inbound: Inbound;
  private body: BodyReader | undefined;
  /** Waiting for a head (no request running). */
  private awaitingHead = false;
  private eof = false;
  private headTimer: NodeJS.Timeout | undefined;
  private finished = false;
  /** What was examined of the head being awaited. */
  private headScan = freshScan();
  /** A refused head was answered: whatever the client still sends is dropped until we close. */
  private draining = false;

  constructor(
    private readonly socket: Socket,
    private readonly serve: ServeRequest,
    private readonly options: WireOptions,
  ) {
    this.inbound = new Inbound(socket, {
      directRegion: (most) => this.body?.directRegion(most),
      directRead: (count) => this.body?.directRead(count),
      wake: () => this.wake(),
    });
    socket.once("end", () => {
      this.eof = true;
      this.inbound.markEnded();
      this.wake();
    });
    socket.once("close", () => {
      this.finished = true;
      this.clearHeadTimer();
      this.inbound.markEnded();
      // Bytes staged before the client left are still the request's; then its body fails.
      this.body?.wake();
    });
  }

  /** Starts reading. @throws when this Node cannot read into user buffers. */
  start(): void {
    this.awaitingHead = true;
    this.inbound.begin();
    this.wake();
  }

  /** True between requests with nothing received of the next one: the connection may be closed. */
  get idle(): boolean {
    return this.awaitingHead && this.inbound.stagedLength() === 0;
  }

  private wake(): void {
    if (this.draining) this.drain();
    else if (!this.awaitingHead) this.body?.wake();
    else if (!this.finished) this.readHead();
  }

  private readHead(): void {
    const staged = this.inbound.bytes();
    if (staged.length === 0) {
      // The client half-closed after its last request, which was answered: our side ends too.
      if (this.eof) this.end();
      return;
    }
    const result = parseHead(staged, this.headScan);
    if (result.kind === "incomplete") {
      if (this.eof) {
        // A head cut short by the client's FIN: nothing to answer.
        this.socket.destroy();
        return;
      }
      this.startHeadTimer();
      return;
    }
    this.clearHeadTimer();
    this.headScan = freshScan();
    if (result.kind === "refused") {
      this.awaitingHead = false;
      this.refuse(result.response);
      return;
    }
    this.inbound.consume(result.head.size);
    this.awaitingHead = false;
    void this.run(result.head);
  }

  private async run(head: RequestHead): Promise<void> {
    // A FIN in the middle of a body (RFC 9112 §9.6): the request cannot complete, and the
    // connection is cut, its handler writing what did arrive.
    const body = new BodyReader(
      head.framing,
      this.inbound,
      () => this.socket.destroy(),
      () => this.inbound.withdrawDirect(),
    );
    this.body = body;
    const response = new WireResponse(this.socket, head.method === "HEAD");
    await this.serve(wireRequest(head, body), response);
    if (this.finished || this.socket.destroyed) return;
    if (response.closesConnection || !response.writableFinished || this.options.stopping()) {
      this.end();
      return;
    }
    // A body its handler did not read (a GET with a body, a refusal that kept the connection):
    // read and dropped, so that the next head is found where it starts.
    if (!(await this.discard(body))) return;
    this.body = undefined;
    this.awaitingHead = true;
    this.wake();
  }

  /**
   * Answers a head we cannot read and closes the connection: FIN once the answer is written,
   * then the socket destroyed when the client closes its side or REFUSED_LINGER_MS later,
   * whichever comes first (it used to stay open until the inactivity timeout).
   */
  private refuse(response: string): void {
    this.finished = true;
    const socket = this.socket;
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    this.draining = true;
    this.drain();
    socket.end(response);
    socket.once("finish", () => {
      if (this.eof) {
        socket.destroy();
        return;
      }
      const linger = setTimeout(() => socket.destroy(), REFUSED_LINGER_MS);
      // The socket, not this timer, is what keeps a stopping daemon waiting.
      linger.unref();
      socket.once("close", () => clearTimeout(linger));
    });
  }

  /** Drops what a refused client sent; it closing its side after our answer went out ends the connection. */
  private drain(): void {
    this.inbound.consume(this.inbound.stagedLength());
    if (this.eof && this.socket.writableFinished) this.socket.destroy();
  }

  /** Reads `body` to its end, dropping it. @returns false when it cannot end (the connection is cut then). */
  private async discard(body: BodyReader): Promise<boolean> {
    if (body.ended) return true;
    const scratch = Buffer.allocUnsafe(DISCARD_PIECE);
    try {
      while ((await body.fill(scratch)) > 0) {}
      return true;
    } catch {
      // The client left, or the framing broke: nothing more can be read here.
      this.socket.destroy();
      return false;
    }
  }

  /**
   * Ends the connection once everything written has gone out, as node:http did: FIN, then
   * closed without waiting for the client's (whatever it still sends is not read).
   */
  private end(): void {
    this.finished = true;
    this.clearHeadTimer();
    const socket = this.socket;
    if (socket.destroyed) return;
    socket.end();
    if (socket.writableFinished) socket.destroy();
    else socket.once("finish", () => socket.destroy());
  }

  private startHeadTimer(): void {
    if (this.headTimer !== undefined) return;
    this.headTimer = setTimeout(() => {
      this.options.log.warning("TIMEOUT request head incomplete", { client: this.options.client });
      this.socket.destroy();
    }, this.options.deadlineMs);
    // The socket, not this timer, is what keeps a stopping daemon waiting.
    this.headTimer.unref();
  }

  private clearHeadTimer(): void {
    clearTimeout(this.headTimer);
    this.headTimer = undefined;
  }
}

/** A parsed head and its body as handlers see a request. */
function wireRequest(head: RequestHead, body: BodyReader): IncomingRequest {
  const connection = head.headers.get("connection")?.toLowerCase() ?? "";
  const tokens = connection.split(",").map((token) => token.trim());
  const http11 = head.versionMajor === 1 && head.versionMinor === 1;
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (a 1.0 proxy
  // in front may not have read it as chunked): served, then the connection closes.
  const keepAlive = http11
    ? !tokens.includes("close")
    : tokens.includes("keep-alive") && head.framing.kind !== "chunked";
  return {
    method: head.method,
    target: head.target,
    versionMajor: head.versionMajor,
    versionMinor: head.versionMinor,
    headerLines: head.headerLines,
    keepAlive,
    get complete() {
      return body.ended;
    },
    header: (name: string) => head.headers.get(name),
    body: (): Readable => body.stream(),
  };
}
