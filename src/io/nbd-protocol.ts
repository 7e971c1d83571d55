/**
 * The NBD wire format as a client needs it (NetworkBlockDevice/nbd doc/proto.md): constants,
 * and pure encoders and decoders of handshake and transmission messages. Nothing here touches
 * a socket, so every layout is tested on byte fixtures. Compact (32-bit length) headers only:
 * the servers we meet (qemu 7.2, nbdkit 1.32) refuse extended headers.
 *
 * All values are big-endian and read unsigned: option error types are ≥ 2^31.
 */

/** "NBDMAGIC", the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle greeting, and the prefix of every option the client sends. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 0x1;
export const FLAG_NO_ZEROES = 0x2;
export const FLAG_C_FIXED_NEWSTYLE = 0x1;
export const FLAG_C_NO_ZEROES = 0x2;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
} as const;

/** Option reply types with bit 31 set are errors. */
export const REP_ERROR_BIT = 0x80000000;
export const RepError = {
  UNSUP: 0x80000001,
  POLICY: 0x80000002,
  INVALID: 0x80000003,
  PLATFORM: 0x80000004,
  TLS_REQD: 0x80000005,
  UNKNOWN: 0x80000006,
  SHUTDOWN: 0x80000007,
  BLOCK_SIZE_REQD: 0x80000008,
  TOO_BIG: 0x80000009,
  EXT_HEADER_REQD: 0x8000000a,
} as const;

const REP_ERROR_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(RepError).map(([name, value]) => [value, `ERR_${name}`]),
);

/** A readable name of an option reply error type, for messages. */
export function optionErrorName(type: number): string {
  return REP_ERROR_NAMES[type] ?? `ERR_0x${type.toString(16)}`;
}

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags, by bit. */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;
export type CmdType = (typeof Cmd)[keyof typeof Cmd];

const CMD_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Cmd).map(([k, v]) => [v, k]));

export function commandName(type: number): string {
  return CMD_NAMES[type] ?? `command ${type}`;
}

/** Command flags. */
export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

/** Structured reply chunk flag: the last chunk of its reply. */
export const CHUNK_FLAG_DONE = 0x1;

export const Chunk = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
/** Chunk types with bit 15 set are errors; unknown ones fail only their request. */
export const CHUNK_ERROR_BIT = 0x8000;

/** base:allocation flags. */
export const STATE_HOLE = 0x1;
export const STATE_ZERO = 0x2;
/** qemu:dirty-bitmap:NAME flag. */
export const STATE_DIRTY = 0x1;

export const CONTEXT_BASE_ALLOCATION = "base:allocation";
export const CONTEXT_ALLOCATION_DEPTH = "qemu:allocation-depth";
export const CONTEXT_DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:";

/** NBD error values and their errno names (spec §Error values); unknown values read as EINVAL. */
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  5: "EIO",
  12: "ENOMEM",
  22: "EINVAL",
  28: "ENOSPC",
  75: "EOVERFLOW",
  95: "ENOTSUP",
  108: "ESHUTDOWN",
};
export const ESHUTDOWN = 108;

export function errnoName(error: number): string {
  return ERRNO_NAMES[error] ?? "EINVAL";
}

/** Sizes of fixed parts. */
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Export names and error messages are at most 4096 bytes (spec §Conventions). */
export const MAX_STRING = 4096;

// ---------------------------------------------------------------------------------------------
// Handshake

export interface Greeting {
  handshakeFlags: number;
}

/** Decodes the 18-byte newstyle greeting. @throws Error naming what is wrong. */
export function decodeGreeting(bytes: Buffer): Greeting {
  if (bytes.length !== 18) throw new Error(`greeting must be 18 bytes, got ${bytes.length}`);
  if (bytes.readBigUInt64BE(0) !== NBD_MAGIC) throw new Error("not an NBD server (bad magic)");
  if (bytes.readBigUInt64BE(8) !== IHAVEOPT) throw new Error("server speaks oldstyle NBD, which is not supported");
  return { handshakeFlags: bytes.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(flags >>> 0);
  return buf;
}

/** An option: IHAVEOPT, u32 option, u32 length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(16 + data.length);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, 16);
  return buf;
}

function encodeName(name: string): Buffer {
  const bytes = Buffer.from(name, "utf8");
  if (bytes.length > MAX_STRING) throw new Error(`export name is longer than ${MAX_STRING} bytes`);
  return bytes;
}

/** GO or INFO data: u32 name length, name, u16 count, count × u16 info type. */
export function encodeGoData(exportName: string, infos: readonly number[]): Buffer {
  const name = encodeName(exportName);
  const buf = Buffer.alloc(4 + name.length + 2 + 2 * infos.length);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  buf.writeUInt16BE(infos.length, 4 + name.length);
  infos.forEach((info, i) => {
    buf.writeUInt16BE(info, 6 + name.length + 2 * i);
  });
  return buf;
}

/** LIST_META_CONTEXT / SET_META_CONTEXT data: u32 name length, name, u32 count, queries. */
export function encodeMetaContextData(exportName: string, queries: readonly string[]): Buffer {
  const name = encodeName(exportName);
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeUInt32BE(name.length);
  parts.push(head, name);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const query of queries) {
    const bytes = Buffer.from(query, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32BE(bytes.length);
    parts.push(len, bytes);
  }
  return Buffer.concat(parts);
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(bytes: Buffer): OptionReplyHeader {
  if (bytes.length !== OPTION_REPLY_HEADER_SIZE) throw new Error("option reply header must be 20 bytes");
  if (bytes.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error("bad option reply magic");
  return { option: bytes.readUInt32BE(8), type: bytes.readUInt32BE(12), length: bytes.readUInt32BE(16) };
}

export interface MetaContextReply {
  id: number;
  name: string;
}

export function decodeMetaContextReply(data: Buffer): MetaContextReply {
  if (data.length < 4) throw new Error(`META_CONTEXT reply of ${data.length} bytes is too short`);
  return { id: data.readUInt32BE(0), name: data.toString("utf8", 4) };
}

export type InfoReply =
  | { type: "export"; size: bigint; flags: number }
  | { type: "block-size"; minimum: number; preferred: number; maximum: number }
  | { type: "other"; info: number };

/** Decodes a REP_INFO payload; unknown info types are returned as "other" to be ignored. */
export function decodeInfoReply(data: Buffer): InfoReply {
  if (data.length < 2) throw new Error("INFO reply too short");
  const info = data.readUInt16BE(0);
  if (info === Info.EXPORT) {
    if (data.length !== 12) throw new Error(`INFO_EXPORT must be 12 bytes, got ${data.length}`);
    return { type: "export", size: data.readBigUInt64BE(2), flags: data.readUInt16BE(10) };
  }
  if (info === Info.BLOCK_SIZE) {
    if (data.length !== 14) throw new Error(`INFO_BLOCK_SIZE must be 14 bytes, got ${data.length}`);
    return {
      type: "block-size",
      minimum: data.readUInt32BE(2),
      preferred: data.readUInt32BE(6),
      maximum: data.readUInt32BE(10),
    };
  }
  return { type: "other", info };
}

/** The reply to EXPORT_NAME: u64 size, u16 flags (then 124 zero bytes unless NO_ZEROES). */
export function decodeExportNameReply(bytes: Buffer): { size: bigint; flags: number } {
  if (bytes.length < 10) throw new Error("EXPORT_NAME reply too short");
  return { size: bytes.readBigUInt64BE(0), flags: bytes.readUInt16BE(8) };
}

// ---------------------------------------------------------------------------------------------
// Transmission

/** Encodes a 28-byte request header. Cookies are u32 values in the low half of the u64. */
export function encodeRequest(
  type: number,
  flags: number,
  cookie: number,
  offset: number,
  length: number,
  into: Buffer = Buffer.alloc(REQUEST_HEADER_SIZE),
): Buffer {
  into.writeUInt32BE(REQUEST_MAGIC, 0);
  into.writeUInt16BE(flags, 4);
  into.writeUInt16BE(type, 6);
  into.writeUInt32BE(0, 8);
  into.writeUInt32BE(cookie >>> 0, 12);
  // Offsets are safe integers (< 2^53): write the two u32 halves.
  into.writeUInt32BE(Math.floor(offset / 2 ** 32), 16);
  into.writeUInt32BE(offset >>> 0, 20);
  into.writeUInt32BE(length >>> 0, 24);
  return into;
}

/** Reads a u64 at `at` as a number; values ≥ 2^53 come back as Infinity so callers reject them. */
export function readU64(bytes: Buffer, at: number): number {
  const high = bytes.readUInt32BE(at);
  const low = bytes.readUInt32BE(at + 4);
  if (high >= 2 ** 21) return Number.POSITIVE_INFINITY;
  return high * 2 ** 32 + low;
}

export interface SimpleReply {
  kind: "simple";
  error: number;
  cookieHigh: number;
  cookie: number;
}

export interface ChunkHeader {
  kind: "structured";
  flags: number;
  type: number;
  cookieHigh: number;
  cookie: number;
  length: number;
}

/** Decodes a simple reply header (16 bytes) after its magic was recognised. */
export function decodeSimpleReply(bytes: Buffer): SimpleReply {
  return {
    kind: "simple",
    error: bytes.readUInt32BE(4),
    cookieHigh: bytes.readUInt32BE(8),
    cookie: bytes.readUInt32BE(12),
  };
}

/** Decodes a structured chunk header (20 bytes) after its magic was recognised. */
export function decodeChunkHeader(bytes: Buffer): ChunkHeader {
  return {
    kind: "structured",
    flags: bytes.readUInt16BE(4),
    type: bytes.readUInt16BE(6),
    cookieHigh: bytes.readUInt32BE(8),
    cookie: bytes.readUInt32BE(12),
    length: bytes.readUInt32BE(16),
  };
}

export interface ErrorChunk {
  error: number;
  message: string;
  offset: number | undefined;
}

/** Decodes an ERROR or ERROR_OFFSET payload. @throws Error when inconsistent. */
export function decodeErrorChunk(type: number, payload: Buffer): ErrorChunk {
  if (payload.length < 6) throw new Error(`error chunk of ${payload.length} bytes is too short`);
  const error = payload.readUInt32BE(0);
  const messageLength = payload.readUInt16BE(4);
  const expected = 6 + messageLength + (type === Chunk.ERROR_OFFSET ? 8 : 0);
  if (payload.length !== expected || messageLength > MAX_STRING)
    throw new Error(`error chunk length ${payload.length} does not match its message length ${messageLength}`);
  if (error === 0) throw new Error("error chunk with error value 0");
  const message = payload.toString("utf8", 6, 6 + messageLength);
  const offset = type === Chunk.ERROR_OFFSET ? readU64(payload, 6 + messageLength) : undefined;
  return { error, message, offset };
}

export interface HoleChunk {
  offset: number;
  size: number;
}

export function decodeHoleChunk(payload: Buffer): HoleChunk {
  if (payload.length !== 12) throw new Error(`OFFSET_HOLE chunk must be 12 bytes, got ${payload.length}`);
  const size = payload.readUInt32BE(8);
  if (size === 0) throw new Error("OFFSET_HOLE chunk of size 0");
  return { offset: readU64(payload, 0), size };
}

/** One extent of a BLOCK_STATUS chunk. */
export interface StatusExtent {
  length: number;
  flags: number;
}

export interface BlockStatusChunk {
  contextId: number;
  extents: StatusExtent[];
}

export function decodeBlockStatusChunk(payload: Buffer): BlockStatusChunk {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0)
    throw new Error(`BLOCK_STATUS chunk of ${payload.length} bytes is not 4 + 8n (n ≥ 1)`);
  const extents: StatusExtent[] = [];
  for (let at = 4; at < payload.length; at += 8) {
    const length = payload.readUInt32BE(at);
    if (length === 0) throw new Error("BLOCK_STATUS extent of length 0");
    extents.push({ length, flags: payload.readUInt32BE(at + 4) });
  }
  return { contextId: payload.readUInt32BE(0), extents };
}
