/**
 * The nbd backend (spec §6.3): an NBD export (qemu-nbd started by Vdsm, nbdkit) as a Backend.
 * One backend call becomes many pipelined NBD requests over slices of the caller's buffer, so
 * one 8 MiB HTTP buffer keeps the server busy with 32 × 256 KiB requests instead of one.
 * Extents come from `base:allocation` (zero), `qemu:allocation-depth` (hole = depth 0, never
 * NBD_STATE_HOLE, which qemu also sets on qcow2 zero clusters) and the export's dirty bitmap.
 */
import { BackendIoError, BackendOpenError, ClosedError, NotSupportedError, OutOfRangeError } from "../errors.js";
import { GiB, KiB } from "../units.js";
import {
  type Backend,
  type ByteRange,
  type Capabilities,
  checkByteCount,
  checkRange,
  clipRange,
  type DirtyExtent,
  mergeExtents,
  sameZeroExtent,
  type ZeroExtent,
} from "./backend.js";
import { NbdClient, type NbdClientOptions } from "./nbd-client.js";
import {
  CONTEXT_ALLOCATION_DEPTH,
  CONTEXT_BASE_ALLOCATION,
  STATE_DIRTY,
  STATE_ZERO,
  type StatusExtent,
  TxFlag,
} from "./nbd-protocol.js";
import { type NbdTarget, parseNbdUrl } from "./nbd-url.js";

/** Tuning of the NBD transmission; every field has a measured default. */
export interface NbdTuning extends Omit<NbdClientOptions, "wantDirty"> {
  /** READ and WRITE requests are at most this big (default 256 KiB, capped by the export's maximum). */
  requestSize?: number;
}

export interface NbdBackendOptions {
  readonly?: boolean;
  /** Negotiate the export's dirty bitmap so extents("dirty") works (a ticket with `"dirty": true`). */
  dirty?: boolean;
  /** Advertised max_readers/max_writers (daemon.max_connections, default 8). */
  maxConnections?: number;
  nbd?: NbdTuning;
}

export const DEFAULT_REQUEST_SIZE = 256 * KiB;
/** WRITE_ZEROES steps: large enough to be cheap, small enough not to starve other requests. */
const ZERO_STEP = GiB;
/** BLOCK_STATUS steps: lengths are u32, and an unaligned 2^32 − 1 comes back as one odd extent. */
const STATUS_STEP = 2 * GiB;
const DEFAULT_MAX_CONNECTIONS = 8;

/** A run of the export with each queried context's flags over all of it. */
interface StatusRun {
  start: number;
  length: number;
  /** Flags per context, in the order asked; undefined where the context is not granted. */
  flags: (number | undefined)[];
}

const sameDirtyExtent = (a: DirtyExtent, b: DirtyExtent): boolean => a.dirty === b.dirty && a.zero === b.zero;

export class NbdBackend implements Backend {
  readonly name = "nbd";
  readonly directIo = false;
  readonly growable = false;
  readonly blockSize: number;
  readonly caps: Capabilities;
  readonly readonly: boolean;
  /** Handles on one export share block locks for partial-block writes (AlignedBackend). */
  readonly imageKey: string;
  private readonly requestSize: number;
  private closed = false;
  private closing: Promise<void> | undefined;
  private calls = 0;
  private idle: (() => void)[] = [];

  private constructor(
    private readonly client: NbdClient,
    private readonly target: NbdTarget,
    private readonly options: NbdBackendOptions,
  ) {
    const info = client.info;
    this.readonly = options.readonly ?? false;
    this.blockSize = info.minimumBlock;
    this.imageKey = `nbd:${client.where}:${info.exportName}`;
    const connections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    // Writes through several connections are consistent only with CAN_MULTI_CONN (a flush on
    // one connection covers the others); without it, one writer.
    const multiConn = client.has(TxFlag.CAN_MULTI_CONN) || client.has(TxFlag.READ_ONLY) || this.readonly;
    this.caps = {
      zero: client.has(TxFlag.SEND_WRITE_ZEROES),
      flush: true,
      extents: info.contexts.has(CONTEXT_BASE_ALLOCATION),
      dirty: info.dirtyContext !== undefined,
      maxReaders: connections,
      maxWriters: multiConn ? connections : 1,
    };
    const wanted = options.nbd?.requestSize ?? DEFAULT_REQUEST_SIZE;
    const clamped = Math.min(Math.max(wanted, info.minimumBlock), info.maximumPayload);
    this.requestSize = clamped - (clamped % info.minimumBlock);
  }

  /**
   * Connects to the export `url` names (`nbd:unix:/path[:exportname=NAME]`, `nbd:HOST:PORT…`,
   * `nbd://HOST:PORT/NAME`).
   * @throws UnsupportedUrlError for a malformed or TLS URL; BackendOpenError when the server is
   *   unreachable, has no such export, never finishes the handshake, or is read-only while
   *   write access is asked for.
   */
  static async open(url: string | NbdTarget, options: NbdBackendOptions = {}): Promise<NbdBackend> {
    const target = typeof url === "string" ? parseNbdUrl(url) : url;
    const client = await NbdClient.connect(target, { ...options.nbd, wantDirty: options.dirty ?? false });
    if (!(options.readonly ?? false) && client.has(TxFlag.READ_ONLY)) {
      await client.close();
      throw new BackendOpenError(
        `NBD export '${target.exportName}' at ${client.where} is read-only, but write access was asked for`,
      );
    }
    if (client.info.minimumBlock > 4096) {
      await client.close();
      throw new BackendOpenError(
        `NBD export at ${client.where} needs ${client.info.minimumBlock}-byte blocks; at most 4096 is supported`,
      );
    }
    return new NbdBackend(client, target, options);
  }

  /** The export as negotiated (size, flags, block sizes, contexts): for tests and diagnostics. */
  get exportInfo(): NbdClient["info"] {
    return this.client.info;
  }

  async size(): Promise<number> {
    this.checkOpen();
    return this.client.info.size;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    checkRange(offset, buf.length);
    this.checkInside("read", offset, buf.length);
    await this.call(() => this.pieces(buf, offset, (piece, at) => this.client.read(piece, at)));
    return buf.length;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.checkWritable();
    checkRange(offset, buf.length);
    this.checkInside("write", offset, buf.length);
    await this.call(() => this.pieces(buf, offset, (piece, at) => this.client.write(piece, at)));
  }

  async zero(offset: number, length: number, options: { punchHole?: boolean } = {}): Promise<void> {
    this.checkWritable();
    checkRange(offset, length);
    this.checkInside("zero", offset, length);
    await this.call(async () => {
      if (!this.caps.zero) {
        // An export without WRITE_ZEROES (nbdkit's nozero filter): send zeros, pipelined.
        const zeros = Buffer.alloc(Math.min(length, 4 * this.requestSize));
        for (let done = 0; done < length; done += zeros.length) {
          const step = Math.min(zeros.length, length - done);
          await this.pieces(zeros.subarray(0, step), offset + done, (piece, at) => this.client.write(piece, at));
        }
        return;
      }
      for (let done = 0; done < length; done += ZERO_STEP) {
        await this.client.zero(offset + done, Math.min(ZERO_STEP, length - done), options);
      }
    });
  }

  async flush(): Promise<void> {
    this.checkOpen();
    if (this.readonly || !this.client.has(TxFlag.SEND_FLUSH)) return;
    await this.call(() => this.client.flush());
  }

  async resize(size: number): Promise<void> {
    this.checkWritable();
    checkByteCount("size", size);
    if (size !== this.client.info.size)
      throw new NotSupportedError(`Backend nbd cannot resize the export from ${this.client.info.size} to ${size}`);
  }

  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    this.checkOpen();
    const info = this.client.info;
    if (context === "dirty" && info.dirtyContext === undefined) {
      throw new NotSupportedError(
        this.options.dirty
          ? `Backend nbd found no single dirty bitmap on export '${info.exportName}'`
          : "Backend nbd was opened without dirty bitmap support",
      );
    }
    const [start, end] = clipRange(range, info.size);
    if (context === "dirty") {
      const runs = this.walk(start, end, [info.dirtyContext as string, CONTEXT_BASE_ALLOCATION]);
      return mergeExtents(this.tracked(dirtyExtents(runs)), sameDirtyExtent);
    }
    if (!this.caps.extents) {
      return mergeExtents([{ start, length: end - start, zero: false, hole: false }], sameZeroExtent);
    }
    const runs = this.walk(start, end, [CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH]);
    return mergeExtents(this.tracked(zeroExtents(runs)), sameZeroExtent);
  }

  async clone(): Promise<NbdBackend> {
    this.checkOpen();
    return NbdBackend.open(this.target, this.options);
  }

  /** Refuses new calls, waits for the calls in flight, then sends DISC and closes. */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= (async () => {
      if (this.calls > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
      await this.client.close();
    })();
    return this.closing;
  }

  /** Splits `[offset, offset + buf.length)` into pipelined requests over slices of `buf`. */
  private async pieces(buf: Buffer, offset: number, send: (piece: Buffer, at: number) => Promise<void>): Promise<void> {
    const sends: Promise<void>[] = [];
    for (let done = 0; done < buf.length; done += this.requestSize) {
      const end = Math.min(buf.length, done + this.requestSize);
      sends.push(send(buf.subarray(done, end), offset + done));
    }
    // Every piece must settle before the caller gets its buffer back, even when one failed.
    const results = await Promise.allSettled(sends);
    const failed = results.find((result) => result.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  }

  /** Walks BLOCK_STATUS over `[start, end)` and yields runs with the flags of every context. */
  private async *walk(start: number, end: number, names: string[]): AsyncGenerator<StatusRun> {
    const info = this.client.info;
    const ids = names.map((name) => info.contexts.get(name));
    const align = info.minimumBlock;
    let position = start;
    while (position < end) {
      const queryStart = position - (position % align);
      const queryEnd = Math.min(info.size, queryStart + STATUS_STEP, end + ((align - (end % align)) % align));
      const status = await this.client.blockStatus(queryStart, queryEnd - queryStart);
      const lists = ids.map((id) => (id === undefined ? undefined : (status.get(id) as StatusExtent[])));
      const runs = cutRuns(queryStart, queryEnd, lists);
      const reached =
        runs.length === 0 ? queryStart : (runs.at(-1) as StatusRun).start + (runs.at(-1) as StatusRun).length;
      if (reached <= position) {
        throw new BackendIoError(
          `NBD server at ${this.client.where} made no progress in block status at offset ${position}`,
          "EPROTO",
        );
      }
      for (const run of runs) {
        const runStart = Math.max(run.start, position);
        const runEnd = Math.min(run.start + run.length, end);
        if (runEnd > runStart) yield { ...run, start: runStart, length: runEnd - runStart };
      }
      position = reached;
    }
  }

  private async *tracked<T>(source: AsyncIterable<T>): AsyncGenerator<T> {
    this.enter();
    try {
      yield* source;
    } finally {
      this.leave();
    }
  }

  private async call<T>(operation: () => Promise<T>): Promise<T> {
    this.enter();
    try {
      return await operation();
    } finally {
      this.leave();
    }
  }

  private enter(): void {
    this.checkOpen();
    this.calls += 1;
  }

  private leave(): void {
    this.calls -= 1;
    if (this.calls === 0) for (const wake of this.idle.splice(0)) wake();
  }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError("Backend nbd is closed");
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readonly) throw new NotSupportedError("Backend nbd is opened read-only");
  }

  private checkInside(what: string, offset: number, length: number): void {
    const size = this.client.info.size;
    if (offset + length > size) {
      throw new OutOfRangeError(
        `Cannot ${what} ${length} bytes at offset ${offset}: past the end of the NBD export (size ${size})`,
      );
    }
  }
}

/**
 * Cuts the per-context extent lists of one BLOCK_STATUS reply into runs where every context's
 * flags are constant. Contexts may cover different lengths (spec), so runs stop where the
 * shortest ends; the caller re-queries from there. Extents past `end` are clipped.
 * @throws BackendIoError (EPROTO) on an extent list that is empty.
 */
export function cutRuns(start: number, end: number, lists: (StatusExtent[] | undefined)[]): StatusRun[] {
  const cursors = lists.map((list) => (list === undefined ? undefined : { list, index: 0, end: start }));
  for (const cursor of cursors) {
    if (cursor === undefined) continue;
    if (cursor.list.length === 0) throw new BackendIoError("BLOCK_STATUS reply with no extents", "EPROTO");
    cursor.end = start + (cursor.list[0] as StatusExtent).length;
  }
  const runs: StatusRun[] = [];
  let position = start;
  while (position < end) {
    let next = end;
    for (const cursor of cursors) if (cursor !== undefined) next = Math.min(next, cursor.end);
    runs.push({
      start: position,
      length: next - position,
      flags: cursors.map((cursor) =>
        cursor === undefined ? undefined : (cursor.list[cursor.index] as StatusExtent).flags,
      ),
    });
    position = next;
    let exhausted = false;
    for (const cursor of cursors) {
      if (cursor === undefined || cursor.end > position) continue;
      cursor.index += 1;
      if (cursor.index >= cursor.list.length) {
        exhausted = true;
        continue;
      }
      cursor.end += (cursor.list[cursor.index] as StatusExtent).length;
    }
    if (exhausted) break;
  }
  return runs;
}

/** zero = base:allocation STATE_ZERO; hole = allocation depth 0 (only with the depth context). */
async function* zeroExtents(runs: AsyncIterable<StatusRun>): AsyncGenerator<ZeroExtent> {
  for await (const run of runs) {
    const [base, depth] = run.flags;
    yield {
      start: run.start,
      length: run.length,
      zero: ((base ?? 0) & STATE_ZERO) !== 0,
      hole: depth !== undefined && depth === 0,
    };
  }
}

/** dirty = bitmap bit 0; zero = base:allocation STATE_ZERO. */
async function* dirtyExtents(runs: AsyncIterable<StatusRun>): AsyncGenerator<DirtyExtent> {
  for await (const run of runs) {
    const [bitmap, base] = run.flags;
    yield {
      start: run.start,
      length: run.length,
      dirty: ((bitmap ?? 0) & STATE_DIRTY) !== 0,
      zero: ((base ?? 0) & STATE_ZERO) !== 0,
    };
  }
}
