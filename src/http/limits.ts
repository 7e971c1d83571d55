/**
 * What one client may hold of the daemon: an absolute deadline for a TLS handshake and for
 * each request head (so a byte every 40 s cannot keep a descriptor for ever), and a share of
 * the descriptor limit for the images services, so that when clients exhaust it the control
 * service (Vdsm's only way in) still accepts.
 */
import type { Socket } from "node:net";
import type { Logger } from "../log.js";

/** Absolute deadline for a TLS handshake and for a request head, from its first byte (spec §3.4). */
export const REQUEST_DEADLINE_MS = 60_000;

/**
 * Descriptors kept out of the images services' reach: the control service's connections,
 * log files, listeners, and Node's own (epoll, pipes, stdio).
 */
const RESERVED_DESCRIPTORS = 64;

/** Fewer image connections than this would break one normal copy (8 connections, each with a backend). */
const MIN_IMAGE_CONNECTIONS = 16;

/**
 * How many connections the images services may hold together under a descriptor limit of
 * `fdLimit`: each may hold its socket and an image descriptor, after the reserve.
 */
export function imageConnectionLimit(fdLimit: number): number {
  return Math.max(MIN_IMAGE_CONNECTIONS, Math.floor((fdLimit - RESERVED_DESCRIPTORS) / 2));
}

/** How often refusals are logged while they go on: the first, then one per this many. */
export const REFUSALS_PER_LOG_LINE = 1000;

/**
 * Connection slots shared by the remote and local services. A connection beyond them is
 * closed as soon as it is accepted, which frees its descriptor at once.
 */
export class ConnectionSlots {
  private used = 0;
  private refused = 0;

  constructor(
    readonly max: number,
    private readonly log: Logger,
  ) {}

  /**
   * Takes a slot for `socket` until it closes.
   * @returns false (and destroys the socket) when none is free.
   */
  admit(socket: Socket, service: string): boolean {
    if (!this.take(service, socket.remoteAddress ?? "local")) {
      socket.destroy();
      return false;
    }
    socket.once("close", () => this.release());
    return true;
  }

  /**
   * Takes a slot for a connection another thread will serve; `release()` it once that
   * connection closed. @returns false (logged) when none is free.
   */
  take(service: string, client: string): boolean {
    if (this.used >= this.max) {
      if (this.refused++ % REFUSALS_PER_LOG_LINE === 0) {
        this.log.warning("REFUSE too many connections", { service, client, limit: this.max, refused: this.refused });
      }
      return false;
    }
    this.used++;
    return true;
  }

  release(): void {
    this.used--;
  }
}
