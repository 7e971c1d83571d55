/**
 * The NBD fixed-newstyle handshake, from the greeting to the transmission phase: structured
 * replies, metadata contexts (base:allocation, qemu:allocation-depth and, for dirty tickets,
 * the export's single dirty bitmap), then GO with block sizes, falling back to EXPORT_NAME for
 * servers without GO. It runs over two small callbacks so the state machine stays
 * independent of sockets and timers.
 */
import { BackendOpenError } from "../errors.js";
import { MiB } from "../units.js";
import {
  CONTEXT_ALLOCATION_DEPTH,
  CONTEXT_BASE_ALLOCATION,
  CONTEXT_DIRTY_BITMAP_PREFIX,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  Info,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  optionErrorName,
  REP_ERROR_BIT,
  Rep,
  RepError,
} from "./nbd-protocol.js";

/** What the handshake learned; immutable for the life of the connection. */
export interface ExportInfo {
  readonly exportName: string;
  readonly size: number;
  /** Transmission flags (TxFlag bits). */
  readonly flags: number;
  /** Every request's offset and length must be a multiple of this. */
  readonly minimumBlock: number;
  readonly preferredBlock: number;
  /** Largest READ or WRITE payload we send: the server's maximum, capped at 32 MiB. */
  readonly maximumPayload: number;
  readonly structuredReplies: boolean;
  /** Granted metadata contexts, by name → the server's id for it. */
  readonly contexts: ReadonlyMap<string, number>;
  /** The `qemu:dirty-bitmap:NAME` context granted, if any. */
  readonly dirtyContext: string | undefined;
}

export interface HandshakeIo {
  /** Resolves with exactly `length` bytes, or rejects when the connection ends first. */
  read(length: number): Promise<Buffer>;
  write(bytes: Buffer): void;
}

export interface HandshakeOptions {
  exportName: string;
  /** Ask for the export's dirty bitmap (used only when it exports exactly one). */
  wantDirty: boolean;
  /** Names the server in messages. */
  where: string;
}

/** qemu refuses reads and writes above 32 MiB (NBD_MAX_BUFFER_SIZE); nbdkit allows 64 MiB. */
export const MAX_PAYLOAD = 32 * MiB;
/** Block size defaults when the server sends no INFO_BLOCK_SIZE (spec §Size constraints). */
const DEFAULT_MINIMUM = 1;
const DEFAULT_PREFERRED = 4096;
/** Option replies carry names and messages of at most 4 KiB; anything far larger is not NBD. */
const MAX_OPTION_REPLY = 64 * 1024;

interface OptionReply {
  type: number;
  data: Buffer;
}

/** Runs the handshake; on failure the caller sends ABORT (when the error says so) and closes. */
export async function negotiate(io: HandshakeIo, options: HandshakeOptions): Promise<ExportInfo> {
  const { exportName, where } = options;
  const fail = (message: string): BackendOpenError => new BackendOpenError(`NBD server at ${where}: ${message}`);

  let greeting: ReturnType<typeof decodeGreeting>;
  try {
    greeting = decodeGreeting(await io.read(18));
  } catch (error) {
    throw wrap(fail, error);
  }
  if ((greeting.handshakeFlags & FLAG_FIXED_NEWSTYLE) === 0)
    throw fail("the server does not support fixed newstyle negotiation");
  const noZeroes = (greeting.handshakeFlags & FLAG_NO_ZEROES) !== 0;
  io.write(encodeClientFlags(FLAG_C_FIXED_NEWSTYLE | (noZeroes ? FLAG_C_NO_ZEROES : 0)));

  const request = async (option: number, data?: Buffer): Promise<OptionReply> => {
    io.write(encodeOption(option, data));
    return readReply(io, option, fail);
  };
  /** Follows an option's replies up to its final one: the ACK or an error. */
  const collect = async (option: number, data: Buffer, each: (reply: OptionReply) => void): Promise<OptionReply> => {
    io.write(encodeOption(option, data));
    for (;;) {
      const reply = await readReply(io, option, fail);
      if (reply.type === Rep.ACK || (reply.type & REP_ERROR_BIT) !== 0) return reply;
      each(reply);
    }
  };
  const refuse = (what: string, reply: OptionReply): BackendOpenError => {
    const message = reply.data.length > 0 ? `: ${reply.data.toString("utf8")}` : "";
    if (reply.type === RepError.TLS_REQD) return fail("the server requires TLS (nbds), which is not supported");
    if (reply.type === RepError.UNKNOWN) return fail(`no export named '${exportName}'${message}`);
    if (reply.type === RepError.SHUTDOWN) return fail(`the server is shutting down${message}`);
    return fail(`${what} refused with ${optionErrorName(reply.type)}${message}`);
  };

  const structured = await request(Opt.STRUCTURED_REPLY);
  if (structured.type === RepError.TLS_REQD || structured.type === RepError.SHUTDOWN)
    throw refuse("STRUCTURED_REPLY", structured);
  // Any other refusal is legal: carry on with simple replies and without block status.
  const structuredReplies = structured.type === Rep.ACK;

  const contexts = new Map<string, number>();
  let dirtyContext: string | undefined;
  if (structuredReplies) {
    let bitmap: string | undefined;
    if (options.wantDirty) {
      const bitmaps: string[] = [];
      const end = await collect(
        Opt.LIST_META_CONTEXT,
        encodeMetaContextData(exportName, [CONTEXT_DIRTY_BITMAP_PREFIX]),
        (reply) => {
          if (reply.type !== Rep.META_CONTEXT) return;
          const name = decodeContext(fail, reply).name;
          if (name.startsWith(CONTEXT_DIRTY_BITMAP_PREFIX)) bitmaps.push(name);
        },
      );
      if (end.type === RepError.UNKNOWN || end.type === RepError.TLS_REQD) throw refuse("LIST_META_CONTEXT", end);
      // Which bitmap to back up is ambiguous unless there is exactly one (spec §6.3).
      if (end.type === Rep.ACK && bitmaps.length === 1) bitmap = bitmaps[0];
    }
    const queries = [CONTEXT_BASE_ALLOCATION, CONTEXT_ALLOCATION_DEPTH, ...(bitmap === undefined ? [] : [bitmap])];
    const end = await collect(Opt.SET_META_CONTEXT, encodeMetaContextData(exportName, queries), (reply) => {
      if (reply.type !== Rep.META_CONTEXT) return;
      const { id, name } = decodeContext(fail, reply);
      // Servers ignore names they do not know and still ACK: keep only what we asked for.
      if (queries.includes(name)) contexts.set(name, id);
    });
    if (end.type === RepError.UNKNOWN || end.type === RepError.TLS_REQD) throw refuse("SET_META_CONTEXT", end);
    if (end.type !== Rep.ACK) contexts.clear();
    if (bitmap !== undefined && contexts.has(bitmap)) dirtyContext = bitmap;
  }

  let size: bigint | undefined;
  let flags = 0;
  let blockSizes: { minimum: number; preferred: number; maximum: number } | undefined;
  const go = await collect(Opt.GO, encodeGoData(exportName, [Info.BLOCK_SIZE]), (reply) => {
    if (reply.type !== Rep.INFO) return;
    let info: ReturnType<typeof decodeInfoReply>;
    try {
      info = decodeInfoReply(reply.data);
    } catch (error) {
      throw wrap(fail, error);
    }
    if (info.type === "export") {
      size = info.size;
      flags = info.flags;
    } else if (info.type === "block-size") {
      blockSizes = info;
    }
  });
  if (go.type === RepError.UNSUP) {
    // A server from before GO (nbd < 3.10 era): EXPORT_NAME has no error path; a missing
    // export just closes the connection.
    io.write(encodeOption(Opt.EXPORT_NAME, Buffer.from(exportName, "utf8")));
    let reply: Buffer;
    try {
      reply = await io.read(noZeroes ? 10 : 134);
    } catch (error) {
      throw wrap((message) => fail(`no export named '${exportName}' (${message})`), error);
    }
    ({ size, flags } = decodeExportNameReply(reply));
  } else if (go.type !== Rep.ACK) {
    throw refuse("GO", go);
  }
  if (size === undefined) throw fail("GO succeeded without INFO_EXPORT");
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`export size ${size} exceeds 2^53-1`);

  const minimum = blockSizes?.minimum ?? DEFAULT_MINIMUM;
  const preferred = blockSizes?.preferred ?? DEFAULT_PREFERRED;
  const maximum = Math.min(blockSizes?.maximum ?? MAX_PAYLOAD, MAX_PAYLOAD);
  const powerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!powerOfTwo(minimum) || minimum > 65536 || maximum < minimum)
    throw fail(`invalid block sizes: minimum ${minimum}, preferred ${preferred}, maximum ${maximum}`);

  return {
    exportName,
    size: Number(size),
    flags,
    minimumBlock: minimum,
    preferredBlock: preferred,
    // Whole minimum blocks, so split requests stay aligned.
    maximumPayload: maximum - (maximum % minimum),
    structuredReplies,
    contexts,
    dirtyContext,
  };
}

async function readReply(
  io: HandshakeIo,
  option: number,
  fail: (message: string) => BackendOpenError,
): Promise<OptionReply> {
  try {
    const header = decodeOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_SIZE));
    if (header.option !== option) throw new Error(`reply to option ${header.option} while waiting for ${option}`);
    if (header.length > MAX_OPTION_REPLY) throw new Error(`option reply of ${header.length} bytes`);
    const data = header.length === 0 ? Buffer.alloc(0) : await io.read(header.length);
    return { type: header.type, data };
  } catch (error) {
    throw wrap(fail, error);
  }
}

function decodeContext(
  fail: (message: string) => BackendOpenError,
  reply: OptionReply,
): ReturnType<typeof decodeMetaContextReply> {
  try {
    return decodeMetaContextReply(reply.data);
  } catch (error) {
    throw wrap(fail, error);
  }
}

function wrap(fail: (message: string) => BackendOpenError, error: unknown): BackendOpenError {
  if (error instanceof BackendOpenError) return error;
  const result = fail(error instanceof Error ? error.message : String(error));
  (result as { cause?: unknown }).cause = error;
  return result;
}

/** Bytes received during the handshake, handed out in exact amounts. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiter: { length: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;

  push(bytes: Buffer): void {
    this.chunks.push(bytes);
    this.size += bytes.length;
    this.wake();
  }

  fail(error: Error): void {
    this.failure ??= error;
    const waiter = this.waiter;
    if (waiter !== undefined && this.size < waiter.length) {
      this.waiter = undefined;
      waiter.reject(error);
    }
  }

  read(length: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { length, resolve, reject };
      this.wake();
      if (this.waiter !== undefined && this.failure !== undefined) this.fail(this.failure);
    });
  }

  /** Everything not consumed yet (bytes that arrived after GO's ACK belong to transmission). */
  rest(): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.size = 0;
    return all;
  }

  private wake(): void {
    const waiter = this.waiter;
    if (waiter === undefined || this.size < waiter.length) return;
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = all.length > waiter.length ? [all.subarray(waiter.length)] : [];
    this.size -= waiter.length;
    waiter.resolve(all.subarray(0, waiter.length));
  }
}
