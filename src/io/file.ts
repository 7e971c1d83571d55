/**
 * The file backend: regular files and block devices with true O_DIRECT (spec §6.2, [D7],
 * [D10]). It only accepts requests aligned to its block size, in aligned memory; wrap it in
 * AlignedBackend (open.ts does) for arbitrary offsets.
 */
import { constants as fsConstants } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";
import {
  BackendIoError,
  BackendOpenError,
  ClosedError,
  InvalidArgumentError,
  NotSupportedError,
  OutOfRangeError,
  systemErrorCode,
} from "../errors.js";
import { GiB, MiB } from "../units.js";
import {
  alignDown,
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
  type ZeroOptions,
} from "./backend.js";
import { BUFFER_ALIGNMENT, zeroBuffer } from "./buffers.js";
import {
  allocAligned,
  blockDeviceSectorSize,
  blockDeviceSize,
  blockDeviceZeroOut,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  isAligned,
  noDataFrom,
  type SparseMap,
  sparseMap,
} from "./native.js";
import { noteRewritten, recordWriteBackFailure, writeBackFailure } from "./write-back.js";

export type DirectMode = "auto" | "always" | "never";

/**
 * Finds the alignment O_DIRECT needs on an open regular file, or null when direct reads do
 * not work at all. Injectable so tests can simulate filesystems that reject O_DIRECT.
 */
export type DirectProbe = (handle: FileHandle) => Promise<number | null>;

export interface FileBackendOptions {
  readonly?: boolean;
  /** [backend_file] direct: auto (default) falls back to buffered I/O, always never does. */
  direct?: DirectMode;
  /** daemon.max_connections, advertised as max_readers (and max_writers on devices). */
  maxConnections?: number;
  probeDirect?: DirectProbe;
  /** Told once when `direct = auto` falls back to buffered I/O, with the reason. */
  onDirectFallback?: (reason: string) => void;
}

/** errno codes meaning "this method is not available here": the zero chain moves on. */
const NOT_SUPPORTED = new Set(["EOPNOTSUPP", "ENOTSUP", "ENODEV", "ENOTTY", "ENOSYS"]);

/**
 * Zeroing calls run on native.ts's worker threads, never on the event loop, in steps: between
 * two steps a close() (a ticket removed, a connection gone) stops the zero, so it never holds
 * the descriptor for long. A file's fallocate only changes metadata; a device without
 * write-zeroes offload writes the zeros for real (about 0.3 s per 64 MiB at 200 MB/s).
 */
const FILE_ZERO_STEP = 4 * GiB;
const DEVICE_ZERO_STEP = 64 * MiB;

/**
 * lseek calls of one run of an extents walk, made on a worker thread while the handle is held;
 * between runs the walk holds nothing, so a consumer that pauses never pins the descriptor.
 * Small enough that handing one run's extents to the consumer takes the event loop for a few
 * milliseconds at most (a run of 4096 took 12 to 30 ms).
 */
const SEEKS_PER_RUN = 512;

type ZeroMethod = "zeroRange" | "punchHole" | "allocate" | "zeroOut";

interface OpenState {
  path: string;
  /** Device and inode: one key for every handle on this file or device. */
  imageKey: string;
  blockDevice: boolean;
  direct: boolean;
  blockSize: number;
  options: FileBackendOptions;
  unsupported: Set<ZeroMethod>;
}

export class FileBackend implements Backend {
  readonly name = "file";
  readonly blockSize: number;
  readonly directIo: boolean;
  readonly readonly: boolean;
  readonly growable: boolean;
  readonly caps: Capabilities;
  readonly path: string;
  readonly isBlockDevice: boolean;
  readonly imageKey: string;
  private handle: FileHandle | undefined;
  /** Calls running on the handle: close() waits for them, so no call ever sees a closed fd. */
  private calls = 0;
  private closing: Promise<void> | undefined;
  private wakeClose: (() => void) | undefined;

  private constructor(
    handle: FileHandle,
    private readonly state: OpenState,
  ) {
    this.handle = handle;
    this.path = state.path;
    this.imageKey = state.imageKey;
    this.isBlockDevice = state.blockDevice;
    this.blockSize = state.blockSize;
    this.directIo = state.direct;
    this.readonly = state.options.readonly ?? false;
    this.growable = !state.blockDevice;
    const maxConnections = state.options.maxConnections ?? 8;
    this.caps = {
      zero: true,
      flush: true,
      extents: !state.blockDevice,
      dirty: false,
      maxReaders: maxConnections,
      // A growing regular file assumes one writer (spec §6.2).
      maxWriters: state.blockDevice ? maxConnections : 1,
    };
  }

  /**
   * Opens a regular file or block device.
   * @throws BackendOpenError naming the path and the reason (missing, directory, permission,
   *   not a file or device, direct I/O refused with `direct = always`).
   */
  static async open(path: string, options: FileBackendOptions = {}): Promise<FileBackend> {
    const mode = options.direct ?? "auto";
    const access = options.readonly ? "reading" : "writing";
    let info: Awaited<ReturnType<typeof stat>>;
    try {
      info = await stat(path);
    } catch (error) {
      throw openError(path, access, error);
    }
    if (info.isDirectory()) throw new BackendOpenError(`Cannot open '${path}' for ${access}: it is a directory`);
    const blockDevice = info.isBlockDevice();
    if (!blockDevice && !info.isFile()) {
      throw new BackendOpenError(`Cannot open '${path}' for ${access}: not a regular file or block device`);
    }
    const imageKey = `file:${info.dev}:${blockDevice ? `rdev:${info.rdev}` : info.ino}`;
    const state: OpenState = {
      path,
      imageKey,
      blockDevice,
      direct: false,
      blockSize: 1,
      options,
      unsupported: new Set(),
    };
    if (mode !== "never") {
      const direct = await openDirect(path, options, blockDevice);
      if (direct.handle !== undefined) {
        return new FileBackend(direct.handle, { ...state, direct: true, blockSize: direct.blockSize });
      }
      if (mode === "always") {
        throw new BackendOpenError(`Cannot open '${path}' for ${access} with direct I/O: ${direct.reason}`);
      }
      options.onDirectFallback?.(`direct I/O not usable on '${path}': ${direct.reason}; using buffered I/O`);
    }
    return new FileBackend(await openHandle(path, options, 0), state);
  }

  /** Zeroing methods found unsupported on this handle, for diagnostics. */
  get unsupportedZeroMethods(): ZeroMethod[] {
    return [...this.state.unsupported];
  }

  size(): Promise<number> {
    return this.use((handle) => this.sizeOf(handle));
  }

  private async sizeOf(handle: FileHandle): Promise<number> {
    if (this.isBlockDevice) return blockDeviceSize(handle.fd);
    return (await handle.stat()).size;
  }

  read(buf: Buffer, offset: number): Promise<number> {
    return this.use((handle) => this.readAt(handle, buf, offset));
  }

  private async readAt(handle: FileHandle, buf: Buffer, offset: number): Promise<number> {
    this.checkAligned("read", offset, buf);
    if (this.isBlockDevice) await this.checkInside(handle, "read", offset, buf.length);
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesRead } = await handle.read(buf, done, buf.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (error) {
      throw this.ioError(`read ${buf.length} bytes at offset ${offset} from`, error);
    }
    return done;
  }

  write(buf: Buffer, offset: number): Promise<void> {
    return this.useWritable(async (handle) => {
      this.checkAligned("write", offset, buf);
      if (this.isBlockDevice) await this.checkInside(handle, "write", offset, buf.length);
      await this.writeAll(handle, buf, offset);
      noteRewritten(this.imageKey, offset, buf.length);
    });
  }

  zero(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    return this.useWritable(async (handle) => {
      await this.zeroRange(handle, offset, length, options);
      noteRewritten(this.imageKey, offset, length);
    });
  }

  private async zeroRange(handle: FileHandle, offset: number, length: number, options: ZeroOptions): Promise<void> {
    checkRange(offset, length);
    if (offset % this.blockSize !== 0 || length % this.blockSize !== 0) {
      throw new InvalidArgumentError(
        `Unaligned zero on '${this.path}': offset ${offset} and length ${length} must be multiples of ${this.blockSize}`,
      );
    }
    if (length === 0) return;
    if (this.isBlockDevice) {
      await this.checkInside(handle, "zero", offset, length);
      await this.zeroDevice(handle, offset, length);
    } else if (options.punchHole) {
      await this.punchFile(handle, offset, length);
    } else {
      await this.zeroFile(handle, offset, length);
    }
  }

  flush(): Promise<void> {
    return this.use(async (handle) => {
      const earlier = await writeBackFailure(this.imageKey);
      if (earlier !== undefined) {
        throw new BackendIoError(
          `Cannot flush '${this.path}': an earlier write-back of this image failed (${earlier.reason}), so data ` +
            "acknowledged before it may be lost; flushes fail until the image is written again in full",
          earlier.code,
        );
      }
      try {
        // Buffered mode only needs the data on disk; with O_DIRECT, fsync also flushes the
        // metadata of a file that grew ([D10]).
        await (this.directIo ? handle.sync() : handle.datasync());
      } catch (error) {
        const failure = this.ioError("flush", error);
        const reason = error instanceof Error ? error.message : String(error);
        recordWriteBackFailure(this.imageKey, reason, failure.errno, await this.sizeOf(handle).catch(() => 0));
        throw failure;
      }
    });
  }

  resize(size: number): Promise<void> {
    return this.useWritable((handle) => this.resizeTo(handle, size));
  }

  private async resizeTo(handle: FileHandle, size: number): Promise<void> {
    checkByteCount("size", size);
    if (this.isBlockDevice) {
      const deviceSize = blockDeviceSize(handle.fd);
      if (size === deviceSize) return;
      throw new NotSupportedError(`Cannot resize block device '${this.path}' from ${deviceSize} to ${size} bytes`);
    }
    try {
      await handle.truncate(size);
    } catch (error) {
      throw this.ioError(`resize to ${size} bytes`, error);
    }
  }

  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    this.open_();
    if (context === "dirty") throw new NotSupportedError("Backend file does not support dirty extents");
    return mergeExtents(this.zeroExtents(range), sameZeroExtent);
  }

  /**
   * Walks SEEK_DATA/SEEK_HOLE in bounded runs on a worker thread. Each run holds the handle
   * (so close() waits for it and no other image can get its descriptor number); between runs
   * nothing is held, and a closed backend ends the walk with ClosedError.
   */
  private async *zeroExtents(range: ByteRange | undefined): AsyncGenerator<ZeroExtent> {
    const [start, end] = clipRange(range, await this.size());
    if (this.isBlockDevice) {
      yield { start, length: end - start, zero: false, hole: false };
      return;
    }
    // [D7]: holes of a raw file read as zeros; hole: true is kept for layered formats.
    if (start < end && (await this.use((handle) => this.emptyFrom(handle, start)))) {
      yield { start, length: end - start, zero: true, hole: false };
      return;
    }
    for (let position = start; position < end; ) {
      const run = await this.use((handle) => this.mapRun(handle, position, end));
      if (run === "unsupported") {
        yield { start: position, length: end - position, zero: false, hole: false };
        return;
      }
      for (const extent of run.extents)
        yield { start: extent.start, length: extent.length, zero: !extent.data, hole: false };
      position = run.next;
    }
  }

  /**
   * True when the file has no data from `start` on, found without a native thread: a file
   * with no allocated blocks (a new sparse image) is one hole, and one lseek proves it. The
   * same first lseek the walk would make, so the extents are the walk's.
   */
  private async emptyFrom(handle: FileHandle, start: number): Promise<boolean> {
    const { blocks } = await handle.stat();
    return blocks === 0 && noDataFrom(handle.fd, start);
  }

  private async mapRun(handle: FileHandle, position: number, end: number): Promise<SparseMap | "unsupported"> {
    try {
      return await sparseMap(handle.fd, position, end, SEEKS_PER_RUN);
    } catch (error) {
      const code = systemErrorCode(error) ?? "";
      if (NOT_SUPPORTED.has(code) || code === "EINVAL") return "unsupported";
      throw this.ioError(`find extents at offset ${position} in`, error);
    }
  }

  clone(): Promise<FileBackend> {
    return this.use(async () => {
      const flags = this.directIo ? fsConstants.O_DIRECT : 0;
      const handle = await openHandle(this.path, this.state.options, flags);
      return new FileBackend(handle, { ...this.state, unsupported: new Set(this.state.unsupported) });
    });
  }

  /** Refuses new calls at once, waits for the calls in flight, then closes the descriptor. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.calls > 0) {
        await new Promise<void>((resolve) => {
          this.wakeClose = resolve;
        });
      }
      const handle = this.handle;
      this.handle = undefined;
      await handle?.close();
    })();
    return this.closing;
  }

  /**
   * Runs one call holding the handle: the descriptor stays open until it returns, however
   * many awaits it takes. @throws ClosedError once close() was called.
   */
  private async use<T>(call: (handle: FileHandle) => Promise<T>): Promise<T> {
    const handle = this.open_();
    this.calls++;
    try {
      return await call(handle);
    } finally {
      if (--this.calls === 0) this.wakeClose?.();
    }
  }

  private useWritable<T>(call: (handle: FileHandle) => Promise<T>): Promise<T> {
    return this.use((handle) => {
      if (this.readonly) throw new NotSupportedError(`Backend file '${this.path}' is opened read-only`);
      return call(handle);
    });
  }

  // Zeroing (spec §6.2): each method is tried once per handle; only "not supported" errors
  // move on to the next one, and the failure is remembered.

  // The zeroing calls below read `handle.fd` at each step: the handle is held open by use()
  // for the whole call, so the number always names this image.

  private async zeroDevice(handle: FileHandle, offset: number, length: number): Promise<void> {
    if (await this.tryZero("zeroRange", offset, length, (o, l) => fallocate(handle.fd, FALLOC_FL_ZERO_RANGE, o, l)))
      return;
    if (await this.tryZero("zeroOut", offset, length, (o, l) => blockDeviceZeroOut(handle.fd, o, l))) return;
    await this.writeZeros(handle, offset, length);
  }

  private async zeroFile(handle: FileHandle, offset: number, length: number): Promise<void> {
    // Without KEEP_SIZE, ZERO_RANGE also extends the file when the range passes its end.
    if (await this.tryZero("zeroRange", offset, length, (o, l) => fallocate(handle.fd, FALLOC_FL_ZERO_RANGE, o, l)))
      return;
    const size = await this.sizeOf(handle);
    const insideEnd = Math.min(offset + length, size);
    if (insideEnd > offset) {
      const inside = insideEnd - offset;
      const punched = await this.tryZero("punchHole", offset, inside, (o, l) =>
        fallocate(handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, l),
      );
      // Allocate the punched range again so a non-sparse image stays allocated.
      if (punched) await this.tryZero("allocate", offset, inside, (o, l) => fallocate(handle.fd, 0, o, l));
      else await this.writeZeros(handle, offset, inside);
    }
    const pastStart = Math.max(offset, size);
    const past = offset + length - pastStart;
    if (past > 0 && !(await this.tryZero("allocate", pastStart, past, (o, l) => fallocate(handle.fd, 0, o, l)))) {
      await this.writeZeros(handle, pastStart, past);
    }
  }

  private async punchFile(handle: FileHandle, offset: number, length: number): Promise<void> {
    const size = await this.sizeOf(handle);
    const end = offset + length;
    if (end > size) await this.growTo(handle, size, end);
    const insideEnd = Math.min(end, size);
    if (insideEnd <= offset) return;
    const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (await this.tryZero("punchHole", offset, insideEnd - offset, (o, l) => fallocate(handle.fd, mode, o, l))) return;
    await this.writeZeros(handle, offset, insideEnd - offset);
  }

  /** Runs a zeroing call over the range in steps; false when the method is not supported here. */
  /**
   * Makes a regular file at least `end` bytes long without ever shrinking it: fallocate of its
   * last byte lets the kernel grow i_size to max(size, end), so a writer appending past `end`
   * meanwhile keeps its bytes (ftruncate would cut them off). The block allocated there is
   * punched again with the rest of the range.
   */
  private async growTo(handle: FileHandle, size: number, end: number): Promise<void> {
    if (await this.tryZero("allocate", end - 1, 1, (o, l) => fallocate(handle.fd, 0, o, l))) {
      // Only bytes past the old end, which read as zeros anyway.
      const block = Math.max(size, alignDown(end - 1, BUFFER_ALIGNMENT));
      await this.tryZero("punchHole", block, end - block, (o, l) =>
        fallocate(handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, l),
      );
      return;
    }
    // No fallocate here: only ftruncate can grow the file sparsely. Callers that share the
    // image hold its size lock (AlignedBackend), so no writer grows it meanwhile.
    if ((await this.sizeOf(handle)) < end) await this.resizeTo(handle, end);
  }

  private async tryZero(
    method: ZeroMethod,
    offset: number,
    length: number,
    call: (offset: number, length: number) => Promise<void>,
  ): Promise<boolean> {
    if (this.state.unsupported.has(method)) return false;
    const step = this.isBlockDevice ? DEVICE_ZERO_STEP : FILE_ZERO_STEP;
    const end = offset + length;
    try {
      for (let position = offset; position < end; position += step) {
        if (position > offset && this.closing !== undefined) {
          throw new ClosedError(`Backend file '${this.path}' was closed while zeroing at offset ${position}`);
        }
        await call(position, Math.min(step, end - position));
      }
      return true;
    } catch (error) {
      if (error instanceof ClosedError) throw error;
      if (NOT_SUPPORTED.has(systemErrorCode(error) ?? "")) {
        this.state.unsupported.add(method);
        return false;
      }
      throw this.ioError(`zero ${length} bytes at offset ${offset} in`, error);
    }
  }

  private async writeZeros(handle: FileHandle, offset: number, length: number): Promise<void> {
    const zeros = zeroBuffer();
    for (let done = 0; done < length; done += zeros.length) {
      await this.writeAll(handle, zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
    }
  }

  private async writeAll(handle: FileHandle, buf: Buffer, offset: number): Promise<void> {
    try {
      for (let done = 0; done < buf.length; ) {
        const { bytesWritten } = await handle.write(buf, done, buf.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (error) {
      throw this.ioError(`write ${buf.length} bytes at offset ${offset} to`, error);
    }
  }

  private checkAligned(op: string, offset: number, buf: Buffer): void {
    checkRange(offset, buf.length);
    if (!this.directIo) return;
    const bs = this.blockSize;
    if (offset % bs !== 0 || buf.length % bs !== 0 || !isAligned(buf, bs)) {
      throw new InvalidArgumentError(
        `Unaligned direct ${op} on '${this.path}': offset ${offset}, length ${buf.length} and memory must be aligned to ${bs}`,
      );
    }
  }

  private async checkInside(handle: FileHandle, op: string, offset: number, length: number): Promise<void> {
    const size = await this.sizeOf(handle);
    if (offset + length > size) {
      throw new OutOfRangeError(
        `Cannot ${op} ${length} bytes at offset ${offset} on '${this.path}': range ends at ${offset + length}, past the device size ${size}`,
      );
    }
  }

  private open_(): FileHandle {
    if (this.handle === undefined || this.closing !== undefined) {
      throw new ClosedError(`Backend file '${this.path}' is closed`);
    }
    return this.handle;
  }

  private ioError(what: string, error: unknown): BackendIoError {
    const code = systemErrorCode(error);
    const reason = error instanceof Error ? error.message : String(error);
    return new BackendIoError(`Cannot ${what} '${this.path}': ${reason}`, code, { cause: error });
  }
}

function openError(path: string, access: string, error: unknown): BackendOpenError {
  const code = systemErrorCode(error);
  const reasons: Record<string, string> = {
    ENOENT: "no such file or directory",
    EACCES: "permission denied",
    EPERM: "operation not permitted",
    EROFS: "read-only file system",
    EISDIR: "it is a directory",
  };
  const reason = (code && reasons[code]) ?? (error instanceof Error ? error.message : String(error));
  return new BackendOpenError(`Cannot open '${path}' for ${access}: ${reason}${code ? ` (${code})` : ""}`, {
    cause: error,
  });
}

async function openHandle(path: string, options: FileBackendOptions, extraFlags: number): Promise<FileHandle> {
  const access = options.readonly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
  try {
    return await open(path, access | extraFlags);
  } catch (error) {
    throw openError(path, options.readonly ? "reading" : "writing", error);
  }
}

type DirectOpen = { handle: FileHandle; blockSize: number; reason?: never } | { handle?: never; reason: string };

async function openDirect(path: string, options: FileBackendOptions, blockDevice: boolean): Promise<DirectOpen> {
  let handle: FileHandle;
  try {
    handle = await openHandle(path, options, fsConstants.O_DIRECT);
  } catch (error) {
    // EINVAL from open(O_DIRECT) means the filesystem does not support it.
    if (error instanceof BackendOpenError && systemErrorCode(error.cause) === "EINVAL") {
      return { reason: "the filesystem rejects O_DIRECT (EINVAL)" };
    }
    throw error;
  }
  try {
    const blockSize = blockDevice
      ? blockDeviceSectorSize(handle.fd)
      : await (options.probeDirect ?? probeDirectBlockSize)(handle);
    if (blockSize !== null) return { handle, blockSize };
  } catch (error) {
    await handle.close();
    throw openError(path, options.readonly ? "reading" : "writing", error);
  }
  await handle.close();
  return { reason: "aligned direct reads of 1, 512 and 4096 bytes all failed" };
}

/**
 * The block size for O_DIRECT on a regular file (spec §6.2): try aligned direct reads of 1,
 * 512 and 4096 bytes at offset 0, moving on at EINVAL. One byte working means the filesystem
 * does not pass O_DIRECT down (NFS, or an empty file), and 4096 is safe everywhere.
 */
export async function probeDirectBlockSize(handle: FileHandle): Promise<number | null> {
  const buf = allocAligned(BUFFER_ALIGNMENT, BUFFER_ALIGNMENT);
  for (const size of [1, 512, 4096]) {
    try {
      await handle.read(buf, 0, size, 0);
      return size === 1 ? 4096 : size;
    } catch (error) {
      if (systemErrorCode(error) !== "EINVAL") throw error;
    }
  }
  return null;
}
