/**
 * Standard input and output as sequential byte streams for `imageio copy - DST` and
 * `imageio copy SRC -`: raw bytes in order, no seeking, no holes.
 *
 * Node makes fd 0 and 1 non-blocking once process.stdin/stdout are touched, and writes to a
 * pipe through process.stdout block the main thread. So a pipe is opened again through
 * /proc/self/fd (a new, blocking file description of the same pipe) and read or written on
 * the thread pool; a regular file is used through its descriptor at its current position
 * (regular files ignore O_NONBLOCK); anything else (a socket) goes through Node's stream with
 * backpressure. A terminal is refused: disk images are not typed or shown.
 */
import { read as fsRead, fstat, write as fsWrite } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { Readable, Writable } from "node:stream";
import { promisify } from "node:util";
import { BackendIoError, InvalidArgumentError, systemErrorCode } from "../errors.js";

const fstatAsync = promisify(fstat);

/** Bytes in order; read() fills as much of `buf` as it can and returns 0 only at the end. */
export interface ByteSource {
  read(buf: Buffer): Promise<number>;
  close(): Promise<void>;
}

/** Bytes in order; write() resolves when `buf` may be reused. */
export interface ByteSink {
  write(buf: Buffer): Promise<void>;
  close(): Promise<void>;
}

const STDIN = 0;
const STDOUT = 1;

/**
 * Standard input as a ByteSource.
 * @throws InvalidArgumentError when standard input is a terminal.
 */
export async function openStdin(stream: Readable = process.stdin): Promise<ByteSource> {
  const source = await rawStdin(stream);
  return {
    read: (buf) =>
      source.read(buf).catch((error: unknown) => Promise.reject(ioError("read from standard input", error))),
    close: () => source.close(),
  };
}

/**
 * Standard output as a ByteSink.
 * @throws InvalidArgumentError when standard output is a terminal.
 */
export async function openStdout(stream: Writable = process.stdout): Promise<ByteSink> {
  const sink = await rawStdout(stream);
  return {
    write: (buf) =>
      sink.write(buf).catch((error: unknown) => Promise.reject(ioError("write to standard output", error))),
    close: () => sink.close(),
  };
}

/** A system error as BackendIoError: "Cannot write to standard output: the reader closed the pipe (EPIPE)". */
function ioError(what: string, error: unknown): BackendIoError {
  const code = systemErrorCode(error);
  const reason =
    code === "EPIPE" ? "the reader closed the pipe" : error instanceof Error ? error.message : String(error);
  return new BackendIoError(`Cannot ${what}: ${reason}${code ? ` (${code})` : ""}`, code, { cause: error });
}

async function rawStdin(stream: Readable): Promise<ByteSource> {
  const info = await fstatAsync(STDIN);
  if (info.isCharacterDevice() && (await isTerminal(STDIN))) {
    throw new InvalidArgumentError("Standard input is a terminal: pipe or redirect an image into imageio copy -");
  }
  if (info.isFIFO()) return handleSource(await open("/proc/self/fd/0", "r"));
  if (info.isFile() || info.isBlockDevice()) return fdSource(STDIN);
  return streamSource(stream);
}

async function rawStdout(stream: Writable): Promise<ByteSink> {
  const info = await fstatAsync(STDOUT);
  if (info.isCharacterDevice() && (await isTerminal(STDOUT))) {
    throw new InvalidArgumentError(
      "Standard output is a terminal: redirect imageio copy SRC - to a file or a pipe (| gzip > disk.raw.gz)",
    );
  }
  if (info.isFIFO()) return handleSink(await open("/proc/self/fd/1", "w"));
  if (info.isFile() || info.isBlockDevice()) return fdSink(STDOUT);
  return streamSink(stream);
}

async function isTerminal(fd: number): Promise<boolean> {
  const { isatty } = await import("node:tty");
  return isatty(fd);
}

/** Fills `buf` from `readOnce` until it is full or the input ends. */
async function fill(buf: Buffer, readOnce: (buf: Buffer) => Promise<number>): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const got = await readOnce(buf.subarray(done));
    if (got === 0) break;
    done += got;
  }
  return done;
}

function handleSource(handle: FileHandle): ByteSource {
  return {
    read: (buf) => fill(buf, async (part) => (await handle.read(part, 0, part.length, null)).bytesRead),
    close: () => handle.close(),
  };
}

function handleSink(handle: FileHandle): ByteSink {
  return {
    write: async (buf) => {
      for (let done = 0; done < buf.length; ) {
        done += (await handle.write(buf, done, buf.length - done, null)).bytesWritten;
      }
    },
    close: () => handle.close(),
  };
}

/**
 * fd 0 or 1 of this process when it is a regular file (`< disk.raw`, `> disk.raw`): read or
 * written at the description's own position, so `>>` appends. These two descriptors live as
 * long as the process and are never closed here, so holding their numbers across awaits is safe.
 */
function fdSource(fd: number): ByteSource {
  const readOnce = promisify(fsRead);
  return {
    read: (buf) => fill(buf, (part) => readOnce(fd, part, 0, part.length, null).then((result) => result.bytesRead)),
    close: async () => undefined,
  };
}

function fdSink(fd: number): ByteSink {
  const writeOnce = promisify(fsWrite);
  return {
    write: async (buf) => {
      for (let done = 0; done < buf.length; ) {
        done += (await writeOnce(fd, buf, done, buf.length - done, null)).bytesWritten;
      }
    },
    close: async () => undefined,
  };
}

/** A Node stream (a socket on fd 0): chunks as they come, the remainder kept for the next read. */
function streamSource(stream: Readable): ByteSource {
  const chunks = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  let pending: Buffer | undefined;
  return {
    read: (buf) =>
      fill(buf, async (part) => {
        if (pending === undefined || pending.length === 0) {
          const next = await chunks.next();
          if (next.done) return 0;
          pending = next.value;
        }
        const taken = pending.copy(part, 0, 0, Math.min(part.length, pending.length));
        pending = pending.subarray(taken);
        return taken;
      }),
    close: async () => {
      await chunks.return?.();
    },
  };
}

/**
 * A Node stream (a socket on fd 1, as Node's own child processes get): each write waits for
 * its callback, so buffers can be reused. While the image goes out, the stream's other error
 * listeners are set aside: the command line's "reader went away, exit quietly" handler is
 * right for help text and wrong for an image, whose cut-off copy must fail. close() puts them back.
 */
function streamSink(stream: Writable): ByteSink {
  const others = stream.listeners("error") as ((error: Error) => void)[];
  stream.removeAllListeners("error");
  let failure: Error | undefined;
  const onError = (error: Error) => {
    failure ??= error;
  };
  stream.on("error", onError);
  return {
    write: (buf) =>
      new Promise<void>((resolve, reject) => {
        if (failure !== undefined) {
          reject(failure);
          return;
        }
        stream.write(buf, (error) => (error ? reject(error) : resolve()));
      }),
    close: async () => {
      stream.off("error", onError);
      for (const listener of others) stream.on("error", listener);
    },
  };
}
