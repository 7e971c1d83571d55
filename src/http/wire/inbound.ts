/**
 * The bytes a connection receives: read by the socket into a staging area this connection
 * owns, or straight into the buffer a body reader names. The staging area always has room
 * (a TLS socket may still deliver decrypted records after it was paused), and the socket is
 * paused while more than HIGH_WATER bytes wait in it.
 */
import type { Socket } from "node:net";
import type { Staged } from "./body.js";
import { MAX_HEAD_BYTES } from "./head.js";
import { readIntoUserBuffers, redirectNextRead } from "./user-buffer.js";

/** Staged bytes past which reading pauses: more than a whole head, so an overlong one is seen. */
const HIGH_WATER = MAX_HEAD_BYTES + 16 * 1024;
/**
 * Most bytes one read asks for. libuv reads again at once (up to 32 times) only after a read
 * filled its whole buffer, else it goes back to epoll: asking for the size a peer's writes
 * usually arrive in keeps one wake-up per batch of reads, where a 4 MiB region would cost a
 * wake-up per read (measured: 15 times the epoll calls, and more system time than node:http).
 */
const READ_SIZE = 64 * 1024;

/** A connection's staging area to start with (a head and a read); it grows only while more waits. */
const INITIAL_STAGING = READ_SIZE;

export interface InboundConsumer {
  /** The buffer (of at most `most` bytes) the next read may fill directly, or undefined for the staging area. */
  directRegion(most: number): Buffer | undefined;
  /** `count` bytes were read into the region directRegion() gave last. */
  directRead(count: number): void;
  /** Bytes were staged. */
  wake(): void;
}

export class Inbound implements Staged {
  private staging = Buffer.allocUnsafe(INITIAL_STAGING);
  private start = 0;
  private end = 0;
  /** The last buffer handed to the socket was a consumer's region. */
  private direct = false;
  private paused = false;
  private ended = false;
  /** Within the socket's read callback: it asks nextBuffer() for the next read right after. */
  private inReadCallback = false;

  constructor(
    private readonly socket: Socket,
    private readonly consumer: InboundConsumer,
  ) {}

  /** Starts reading: from now on the socket's bytes all come here. @throws when the mechanism is missing. */
  begin(): void {
    readIntoUserBuffers(this.socket, {
      early: (chunk) => this.stage(chunk),
      next: () => this.nextBuffer(),
      read: (count) => this.received(count),
    });
    this.socket.resume();
    if (this.end > this.start) this.consumer.wake();
  }

  /** Nothing more will be read (end of stream, or the socket closed). */
  markEnded(): void {
    this.ended = true;
  }

  exhausted(): boolean {
    return this.ended && this.start === this.end;
  }

  stagedLength(): number {
    return this.end - this.start;
  }

  bytes(): Buffer {
    return this.staging.subarray(this.start, this.end);
  }

  consume(count: number): void {
    // Positions move only in nextBuffer: the socket may hold a view past `end` until its next read.
    this.start += count;
    if (this.paused && this.end - this.start <= HIGH_WATER && !this.socket.destroyed) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /**
   * The region last given for a direct read is no longer the consumer's: the next read goes
   * to the staging area instead.
   */
  withdrawDirect(): void {
    // A fill is abandoned when bytes arrive, within the read callback: the buffer the socket
    // asks for next, as soon as that returns, is then the staging area anyway. Redirecting
    // there too would leave Node a stream listener per abandoned read, for the connection's life.
    if (!this.direct || this.inReadCallback || this.socket.destroyed) return;
    redirectNextRead(this.socket, this.nextBuffer());
  }

  /** Called by the socket after every read (and once at the start): nothing else holds a buffer now. */
  private nextBuffer(): Buffer {
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
      const region = this.consumer.directRegion(READ_SIZE);
      if (region !== undefined) {
        this.direct = true;
        return region;
      }
    }
    this.direct = false;
    const room = this.room();
    return room.length > READ_SIZE ? room.subarray(0, READ_SIZE) : room;
  }

  private received(count: number): boolean {
    this.inReadCallback = true;
    try {
      if (this.direct) {
        this.consumer.directRead(count);
      } else {
        this.end += count;
        this.consumer.wake();
      }
    } finally {
      this.inReadCallback = false;
    }
    if (this.end - this.start > HIGH_WATER) this.paused = true;
    return !this.paused;
  }

  /** Free space after the staged bytes: compacted, or grown when full. */
  private room(): Buffer {
    if (this.end === this.staging.length) {
      const backlog = this.end - this.start;
      const target = backlog * 2 > this.staging.length ? Buffer.allocUnsafe(this.staging.length * 2) : this.staging;
      this.staging.copy(target, 0, this.start, this.end);
      this.staging = target;
      this.start = 0;
      this.end = backlog;
    }
    return this.staging.subarray(this.end);
  }

  private stage(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      const room = this.room();
      const n = chunk.copy(room, 0, at);
      this.end += n;
      at += n;
    }
  }
}
