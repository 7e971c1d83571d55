/**
 * Per-connection state: the client's name for logs, the inactivity timeout (spec §3.4), and
 * the backend contexts opened for tickets on this connection (spec §6.1).
 */
import type { Socket } from "node:net";
import type { Writable } from "node:stream";
import type { Backend } from "../io/backend.js";
import { BUFFER_ALIGNMENT, type BufferLease, type BufferPool } from "../io/buffers.js";
import type { Logger } from "../log.js";
import { MAX_TIMER_MS, type Ticket, type TicketContext } from "../tickets/ticket.js";
import { ConnectionStats } from "./stats.js";

/** Timeout of a connection that has not opened a backend for a ticket. */
export const UNAUTHENTICATED_TIMEOUT_MS = 60_000;

/**
 * The last connection id given, in shared memory: with data-plane threads ([daemon] workers)
 * they all count on one counter, so ids in the log stay unique across threads.
 */
// 64 bits: an Int32 would turn negative after 2^31 connections (a health check a second for
// a few years, or a busy host sooner), where ids used to grow for ever.
let connectionIds = new BigInt64Array(new SharedArrayBuffer(8));

/** The counter, for the threads that serve connections to share it. */
export function connectionIdCounter(): SharedArrayBuffer {
  return connectionIds.buffer as SharedArrayBuffer;
}

/** Counts on `counter` from now on (a data-plane worker, at start). */
export function shareConnectionIds(counter: SharedArrayBuffer): void {
  connectionIds = new BigInt64Array(counter);
}

/** A ticket's backend held open by one connection. */
export class BackendContext implements TicketContext {
  closed = false;

  constructor(
    readonly ticket: Ticket,
    readonly backend: Backend,
    readonly bufferSize: number,
    private readonly onClose: (context: BackendContext) => void,
  ) {}

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ticket.removeContext(this);
    this.onClose(this);
    await this.backend.close();
  }
}

export type BackendOpener = (ticket: Ticket) => Promise<{ backend: Backend; bufferSize: number }>;

export class ClientConnection {
  readonly id = Number(Atomics.add(connectionIds, 0, 1n)) + 1;
  /** What this connection's requests did, logged on CLOSE. */
  readonly stats = new ConnectionStats();
  private readonly contexts = new Map<string, BackendContext>();
  private timeoutMs = UNAUTHENTICATED_TIMEOUT_MS;
  private busy = 0;
  /** Settles when the last request queued on this connection has been answered in full. */
  private turn: Promise<void> = Promise.resolve();
  /** A response said `connection: close`: nothing pipelined after it runs. */
  private closing = false;
  /** Backends being opened, per ticket: a second request waits for the same open. */
  private readonly opening = new Map<string, Promise<BackendContext>>();

  /** The I/O buffer the running request leased, returned when its response is sent. */
  private lease: BufferLease | undefined;
  /** Aborted when the socket closes: a request waiting for a buffer gives up. */
  private readonly gone = new AbortController();

  constructor(
    readonly socket: Socket,
    /** "local" for unix sockets, else the peer address. */
    readonly client: string,
    private readonly log: Logger,
    private readonly pool: BufferPool,
    /**
     * node:http queues every request of a connection as soon as it is parsed, so a FIN ends
     * our side after the last queued one; imageio's own framing reads heads one at a time and
     * ends the connection itself.
     */
    endOnClientFin = true,
  ) {
    socket.setTimeout(this.timeoutMs);
    socket.on("timeout", () => {
      this.log.info("TIMEOUT", { connection: this.id, client: this.client, seconds: this.timeoutMs / 1000 });
      socket.destroy();
    });
    // The client half-closed: every request it sent was already queued, so once they are
    // answered our side ends too. (A FIN before a body is complete is a parser error instead.)
    if (endOnClientFin) {
      socket.once("end", () => {
        this.turn = this.turn.then(() => {
          if (!socket.destroyed) socket.end();
        });
      });
    }
    socket.once("close", () => {
      this.gone.abort(new Error("client disconnected"));
      // The request running now may still write what its client sent before it went away
      // (a short body): its backends close once it has finished.
      void this.turn.then(() => this.closeContexts());
    });
  }

  private async closeContexts(): Promise<void> {
    await Promise.all(
      [...this.contexts.values()].map((context) =>
        context
          .close()
          .catch((error: unknown) => this.log.error("CLOSE backend failed", { connection: this.id }, error)),
      ),
    );
  }

  /**
   * Queues a request: HTTP/1.1 requests on one connection are handled one after another
   * (RFC 9112 §9.3.2, spec §6.6), so `handle` starts only once every earlier response has been
   * sent in full, and never after a response that closes the connection. Pipelined requests
   * would otherwise share this connection's buffers and backends while they run.
   * @param handle answers the request; resolves true when the connection must close after it.
   * @returns settles once this request's turn is over (answered, or skipped).
   */
  serve(res: Writable, handle: () => Promise<boolean>): Promise<void> {
    const run = async () => {
      if (this.closing || this.socket.destroyed) return;
      try {
        if (await handle()) this.closing = true;
        await responseSent(res);
      } finally {
        this.lease?.release();
        this.lease = undefined;
      }
    };
    this.turn = this.turn.then(run).catch((error: unknown) => {
      this.log.error("ERROR request queue", { connection: this.id }, error);
      this.socket.destroy();
    });
    return this.turn;
  }

  /**
   * The running request's two aligned I/O buffers for a backend of `bufferSize`: each is half
   * of it, so a request holds buffer_size bytes (spec §6.1) while one half is on the wire and
   * the other on the disk. Leased from the daemon's pool on first use (waiting while all are
   * lent out) and returned once the response was sent.
   * @throws Error when the client disconnects while waiting.
   */
  async ioBuffers(bufferSize: number): Promise<[Buffer, Buffer]> {
    const half = Math.max(BUFFER_ALIGNMENT, Math.floor(bufferSize / 2 / BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT);
    if (this.lease !== undefined && this.lease.buffer.length !== 2 * half) {
      this.lease.release();
      this.lease = undefined;
    }
    this.lease ??= await this.pool.lease(2 * half, this.gone.signal);
    const { buffer } = this.lease;
    return [buffer.subarray(0, half), buffer.subarray(half)];
  }

  /**
   * Suspends the inactivity timeout while the server itself is busy (extents, checksum, zero),
   * so a long computation is not mistaken for an idle client.
   */
  async whileBusy<T>(work: () => Promise<T>): Promise<T> {
    if (this.busy++ === 0) this.socket.setTimeout(0);
    try {
      return await work();
    } finally {
      if (--this.busy === 0 && !this.socket.destroyed) this.socket.setTimeout(this.timeoutMs);
    }
  }

  /**
   * This connection's backend for `ticket`, opened on first use. Opening sets the
   * connection's timeout to the ticket's inactivity_timeout.
   */
  backendFor(ticket: Ticket, open: BackendOpener): Promise<BackendContext> {
    const pending = this.opening.get(ticket.uuid);
    if (pending !== undefined) return pending;
    const opening = this.openContext(ticket, open).finally(() => this.opening.delete(ticket.uuid));
    this.opening.set(ticket.uuid, opening);
    return opening;
  }

  private async openContext(ticket: Ticket, open: BackendOpener): Promise<BackendContext> {
    const existing = this.contexts.get(ticket.uuid);
    if (existing !== undefined && !existing.closed && existing.ticket === ticket) return existing;
    if (existing !== undefined) await existing.close();
    const { backend, bufferSize } = await open(ticket);
    const context = new BackendContext(ticket, backend, bufferSize, (closed) => {
      if (this.contexts.get(ticket.uuid) === closed) this.contexts.delete(ticket.uuid);
    });
    if (this.socket.destroyed) {
      await backend.close();
      throw new Error("client disconnected while the backend was opening");
    }
    this.contexts.set(ticket.uuid, context);
    ticket.addContext(context);
    this.timeoutMs = Math.min(ticket.fields.inactivity_timeout * 1000, MAX_TIMER_MS);
    if (this.busy === 0) this.socket.setTimeout(this.timeoutMs);
    return context;
  }

  /** Context counts and ids, for the CLOSE log line. */
  get openContexts(): number {
    return this.contexts.size;
  }
}

/** Resolves once `res` was handed to the socket in full, or the connection went away. */
function responseSent(res: Writable): Promise<void> {
  if (res.writableFinished || res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off("finish", done);
      res.off("close", done);
      resolve();
    };
    res.once("finish", done);
    res.once("close", done);
  });
}
