/**
 * Reading a live socket into our own buffers: Node's `onread` mode, switched on for a socket
 * Node created (a TLS socket after its handshake, an accepted or adopted plain socket).
 *
 * Why: in Node's usual path every read becomes a new Buffer pushed through the stream
 * machinery ('data' events), which is most of an upload's CPU. In `onread` mode the handle
 * reads into the buffer we name and calls us back with the count: the bytes are copied by the
 * kernel (or OpenSSL) once, into memory we own. `new net.Socket({ onread })` offers it, but
 * `new tls.TLSSocket(socket, { onread })` ignores the option, so the mode is switched on here
 * with the same three fields Node's constructor sets (lib/net.js, internal/stream_base_commons.js:
 * identical on Node 20 and 24). This module is the only place that knows them; `userBufferSupport`
 * checks they are still there, and the images services refuse to start without them.
 */
import net, { type Socket } from "node:net";

/** What reads into a socket's user buffers. */
export interface UserBufferReader {
  /** Bytes the socket had buffered before the switch: they come before any read. */
  early(chunk: Buffer): void;
  /** The buffer the next read fills: never empty (bytes are never dropped). */
  next(): Buffer;
  /** `count` bytes were read to the start of the buffer `next()` returned last; false pauses reading. */
  read(count: number): boolean;
}

interface Internals {
  buffer: symbol;
  generator: symbol;
  callback: symbol;
}

let internals: Internals | undefined | null = null;

/** Node's field symbols, found by description on a throwaway socket built with `onread`. */
function findInternals(): Internals | undefined {
  // The option is Node's (since 12) though @types/node 20 does not declare it.
  const options = { onread: { buffer: Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts;
  const probe = new net.Socket(options);
  try {
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((symbol) => [symbol.description, symbol]));
    const buffer = byName.get("kBuffer");
    const generator = byName.get("kBufferGen");
    const callback = byName.get("kBufferCb");
    const fields = probe as unknown as Record<symbol, unknown>;
    if (buffer === undefined || generator === undefined || callback === undefined) return undefined;
    if (!(fields[buffer] instanceof Uint8Array) || typeof fields[callback] !== "function") return undefined;
    return { buffer, generator, callback };
  } finally {
    probe.destroy();
  }
}

function cachedInternals(): Internals | undefined {
  if (internals === null) internals = findInternals();
  return internals;
}

/**
 * Undefined when this Node can read sockets into user buffers; otherwise why not (the images
 * services cannot run on it).
 */
export function userBufferSupport(): string | undefined {
  if (cachedInternals() === undefined) {
    return `Node ${process.version} no longer exposes the socket onread fields (kBuffer, kBufferGen, kBufferCb) imageio's HTTP framing reads with`;
  }
  return undefined;
}

interface UserBufferHandle {
  useUserBuffer?: (buffer: Uint8Array) => void;
}

/**
 * Switches `socket` to user-buffer reads for good: from now on every byte it receives goes
 * to `reader` (the end of the stream still comes as 'end', failures as 'error'); bytes the
 * socket had already buffered go to `reader.early` first.
 * @throws Error when the mechanism is missing (see userBufferSupport) or the socket has no handle.
 */
export function readIntoUserBuffers(socket: Socket, reader: UserBufferReader): void {
  const fields = cachedInternals();
  if (fields === undefined) throw new Error(userBufferSupport());
  const handle = (socket as unknown as { _handle: UserBufferHandle | null })._handle;
  if (handle === null || typeof handle.useUserBuffer !== "function") {
    throw new Error("the socket has no stream handle to read into user buffers");
  }
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
    reader.early(chunk);
  }
  const target = socket as unknown as Record<symbol, unknown>;
  // A generator: Node asks it for the next buffer after every read (kBuffer true = "use it").
  target[fields.buffer] = true;
  target[fields.generator] = () => reader.next();
  target[fields.callback] = (count: number) => reader.read(count);
  const first = reader.next();
  target[fields.buffer] = first;
  handle.useUserBuffer(first);
}

/**
 * Makes the next read of a socket already in user-buffer mode go to `buffer` instead of the
 * buffer its generator gave last: that one is no longer ours to fill (a body read abandoned
 * mid-way). Node keeps one listener per call until the socket is destroyed: for rare use.
 */
export function redirectNextRead(socket: Socket, buffer: Buffer): void {
  const fields = cachedInternals();
  const handle = (socket as unknown as { _handle: UserBufferHandle | null })._handle;
  if (fields === undefined || handle === null || typeof handle.useUserBuffer !== "function") return;
  (socket as unknown as Record<symbol, unknown>)[fields.buffer] = buffer;
  handle.useUserBuffer(buffer);
}
