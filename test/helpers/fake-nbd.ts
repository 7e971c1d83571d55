/**
 * A scripted NBD server on a unix socket, for what real servers never do on purpose:
 * replies out of order or split in odd chunks, unknown cookies, short or overshooting block
 * status, a handshake that never ends. It speaks just enough of the protocol for the client.
 */
import net from "node:net";
import { join } from "node:path";

export interface FakeRequest {
  flags: number;
  type: number;
  /** The 8 cookie bytes, to echo. */
  cookie: Buffer;
  offset: number;
  length: number;
  payload: Buffer | undefined;
}

export interface FakeOptions {
  size: number;
  /** Transmission flags (default: HAS_FLAGS, SEND_FLUSH, SEND_WRITE_ZEROES). */
  flags?: number;
  structured?: boolean;
  /** Contexts granted by SET_META_CONTEXT, by name → id. */
  contexts?: Record<string, number>;
  /** Never send the greeting (a busy server). */
  silent?: boolean;
  onRequest?(request: FakeRequest, reply: FakeReplies, socket: net.Socket): void;
}

/** Reply builders over the connection. */
export interface FakeReplies {
  simple(cookie: Buffer, error?: number): void;
  chunk(cookie: Buffer, type: number, payload: Buffer, done: boolean): void;
  data(cookie: Buffer, offset: number, bytes: Buffer, done: boolean): void;
  status(cookie: Buffer, contextId: number, extents: [number, number][], done: boolean): void;
  error(cookie: Buffer, error: number, message: string, done?: boolean): void;
  raw(bytes: Buffer): void;
}

export interface FakeServer {
  socket: string;
  url: string;
  connections: net.Socket[];
  close(): Promise<void>;
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}

function u64(value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  return b;
}

function u16(value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  return b;
}

const OPT_REPLY_MAGIC = Buffer.from("0003e889045565a9", "hex");

export async function startFakeNbd(dir: string, options: FakeOptions): Promise<FakeServer> {
  const socketPath = join(dir, `fake-${Math.random().toString(36).slice(2, 8)}.sock`);
  const connections: net.Socket[] = [];
  const server = net.createServer((socket) => {
    connections.push(socket);
    socket.on("error", () => {});
    if (options.silent) return;
    let buffered = Buffer.alloc(0);
    let phase: "flags" | "options" | "transmission" = "flags";
    const send = (bytes: Buffer) => {
      if (!socket.destroyed) socket.write(bytes);
    };
    const optionReply = (option: number, type: number, data: Buffer = Buffer.alloc(0)) =>
      send(Buffer.concat([OPT_REPLY_MAGIC, u32(option), u32(type), u32(data.length), data]));
    const replies: FakeReplies = {
      simple: (cookie, error = 0) => send(Buffer.concat([u32(0x67446698), u32(error), cookie])),
      chunk: (cookie, type, payload, done) =>
        send(Buffer.concat([u32(0x668e33ef), u16(done ? 1 : 0), u16(type), cookie, u32(payload.length), payload])),
      data: (cookie, offset, bytes, done) => replies.chunk(cookie, 1, Buffer.concat([u64(offset), bytes]), done),
      status: (cookie, contextId, extents, done) =>
        replies.chunk(
          cookie,
          5,
          Buffer.concat([u32(contextId), ...extents.flatMap(([length, flags]) => [u32(length), u32(flags)])]),
          done,
        ),
      error: (cookie, error, message, done = true) => {
        const text = Buffer.from(message);
        replies.chunk(cookie, 0x8001, Buffer.concat([u32(error), u16(text.length), text]), done);
      },
      raw: send,
    };
    socket.on("data", (data: Buffer) => {
      buffered = Buffer.concat([buffered, data]);
      for (;;) {
        if (phase === "flags") {
          if (buffered.length < 4) return;
          buffered = buffered.subarray(4);
          phase = "options";
        } else if (phase === "options") {
          if (buffered.length < 16) return;
          const option = buffered.readUInt32BE(8);
          const length = buffered.readUInt32BE(12);
          if (buffered.length < 16 + length) return;
          buffered = buffered.subarray(16 + length);
          if (option === 8) optionReply(8, options.structured === false ? 0x80000001 : 1);
          else if (option === 10) {
            for (const [name, id] of Object.entries(options.contexts ?? {}))
              optionReply(10, 4, Buffer.concat([u32(id), Buffer.from(name)]));
            optionReply(10, 1);
          } else if (option === 9) optionReply(9, 1);
          else if (option === 7) {
            optionReply(7, 3, Buffer.concat([u16(0), u64(options.size), u16(options.flags ?? 0x45)]));
            optionReply(7, 1);
            phase = "transmission";
          } else if (option === 2) {
            socket.end();
            return;
          } else optionReply(option, 0x80000001);
        } else {
          if (buffered.length < 28) return;
          const type = buffered.readUInt16BE(6);
          const length = buffered.readUInt32BE(24);
          const payloadLength = type === 1 ? length : 0;
          if (buffered.length < 28 + payloadLength) return;
          const request: FakeRequest = {
            flags: buffered.readUInt16BE(4),
            type,
            cookie: Buffer.from(buffered.subarray(8, 16)),
            offset: Number(buffered.readBigUInt64BE(16)),
            length,
            payload: type === 1 ? Buffer.from(buffered.subarray(28, 28 + length)) : undefined,
          };
          buffered = buffered.subarray(28 + payloadLength);
          if (type === 2) {
            socket.end();
            return;
          }
          options.onRequest?.(request, replies, socket);
        }
      }
    });
    if (!options.silent) send(Buffer.concat([Buffer.from("NBDMAGICIHAVEOPT"), u16(3)]));
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    socket: socketPath,
    url: `nbd:unix:${socketPath}`,
    connections,
    close: async () => {
      for (const socket of connections) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
