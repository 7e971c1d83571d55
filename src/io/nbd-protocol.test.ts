import { describe, expect, it } from "vitest";
import {
  Chunk,
  Cmd,
  CmdFlag,
  decodeBlockStatusChunk,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeGreeting,
  decodeHoleChunk,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeSimpleReply,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
  encodeRequest,
  errnoName,
  Info,
  Opt,
  optionErrorName,
  readU64,
} from "./nbd-protocol.js";

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ""), "hex");

describe("NBD wire format", () => {
  it("11.2: decodes the fixed newstyle greeting qemu-nbd sends and refuses oldstyle", () => {
    expect(decodeGreeting(hex("4e42444d41474943 49484156454f5054 0003"))).toEqual({ handshakeFlags: 3 });
    expect(() => decodeGreeting(hex("4e42444d41474943 00420281861253 00 0003"))).toThrow(/oldstyle/);
    expect(() => decodeGreeting(hex("0000000000000000 49484156454f5054 0003"))).toThrow(/bad magic/);
  });

  it("11.2: encodes options: GO with block sizes, SET_META_CONTEXT with queries", () => {
    expect(encodeOption(Opt.STRUCTURED_REPLY)).toEqual(hex("49484156454f5054 00000008 00000000"));
    expect(encodeGoData("sda", [Info.BLOCK_SIZE])).toEqual(hex("00000003 736461 0001 0003"));
    expect(encodeOption(Opt.GO, encodeGoData("", [Info.BLOCK_SIZE]))).toEqual(
      hex("49484156454f5054 00000007 00000008 00000000 0001 0003"),
    );
    expect(encodeMetaContextData("", ["base:allocation", "qemu:allocation-depth"])).toEqual(
      Buffer.concat([
        hex("00000000 00000002 0000000f"),
        Buffer.from("base:allocation"),
        hex("00000015"),
        Buffer.from("qemu:allocation-depth"),
      ]),
    );
  });

  it("11.2: decodes option replies: headers, INFO_EXPORT, INFO_BLOCK_SIZE, META_CONTEXT, errors ≥ 2^31", () => {
    expect(decodeOptionReplyHeader(hex("0003e889045565a9 00000007 80000006 00000019"))).toEqual({
      option: 7,
      type: 0x80000006,
      length: 25,
    });
    expect(optionErrorName(0x80000006)).toBe("ERR_UNKNOWN");
    expect(optionErrorName(0x800000ff)).toBe("ERR_0x800000ff");
    // qemu-nbd qcow2 --shared=8: 1 MiB, flags 0x0ded.
    expect(decodeInfoReply(hex("0000 0000000000100000 0ded"))).toEqual({
      type: "export",
      size: 1048576n,
      flags: 0x0ded,
    });
    expect(decodeInfoReply(hex("0003 00000001 00001000 02000000"))).toEqual({
      type: "block-size",
      minimum: 1,
      preferred: 4096,
      maximum: 32 * 1024 * 1024,
    });
    expect(decodeInfoReply(hex("0001 616263"))).toEqual({ type: "other", info: 1 });
    expect(() => decodeInfoReply(hex("0000 00"))).toThrow(/12 bytes/);
    expect(decodeMetaContextReply(Buffer.concat([hex("00000002"), Buffer.from("qemu:dirty-bitmap:b0")]))).toEqual({
      id: 2,
      name: "qemu:dirty-bitmap:b0",
    });
  });

  it("11.2: encodes a 28-byte request with a u64 offset beyond 2^32", () => {
    expect(encodeRequest(Cmd.WRITE_ZEROES, CmdFlag.NO_HOLE, 7, 5 * 2 ** 32 + 4096, 65536)).toEqual(
      hex("25609513 0002 0006 00000000 00000007 00000005 00001000 00010000"),
    );
    expect(encodeRequest(Cmd.DISC, 0, 0, 0, 0)).toEqual(
      hex("25609513 0000 0002 0000000000000000 0000000000000000 00000000"),
    );
  });

  it("11.2: decodes simple replies and structured chunk headers unsigned", () => {
    expect(decodeSimpleReply(hex("67446698 00000005 00000000 0000002a"))).toEqual({
      kind: "simple",
      error: 5,
      cookieHigh: 0,
      cookie: 42,
    });
    expect(decodeChunkHeader(hex("668e33ef 0001 8001 00000000 ffffffff 0000000a"))).toEqual({
      kind: "structured",
      flags: 1,
      type: Chunk.ERROR,
      cookieHigh: 0,
      cookie: 0xffffffff,
      length: 10,
    });
  });

  it("11.2: decodes error, hole and block status chunks and rejects inconsistent ones", () => {
    const message = Buffer.from("operation past EOF");
    expect(decodeErrorChunk(Chunk.ERROR, Buffer.concat([hex("00000016 0012"), message]))).toEqual({
      error: 22,
      message: "operation past EOF",
      offset: undefined,
    });
    expect(decodeErrorChunk(Chunk.ERROR_OFFSET, hex("00000005 0000 0000000000002000"))).toEqual({
      error: 5,
      message: "",
      offset: 8192,
    });
    expect(() => decodeErrorChunk(Chunk.ERROR, hex("00000005 0005 41"))).toThrow(/does not match/);
    expect(() => decodeErrorChunk(Chunk.ERROR, hex("00000000 0000"))).toThrow(/error value 0/);
    expect(decodeHoleChunk(hex("0000000000100000 00800000"))).toEqual({ offset: 1048576, size: 8 * 1024 * 1024 });
    expect(() => decodeHoleChunk(hex("0000000000100000 00000000"))).toThrow(/size 0/);
    expect(decodeBlockStatusChunk(hex("00000001 00010000 00000000 001f0000 00000003"))).toEqual({
      contextId: 1,
      extents: [
        { length: 65536, flags: 0 },
        { length: 0x1f0000, flags: 3 },
      ],
    });
    expect(() => decodeBlockStatusChunk(hex("00000001 00000000 00000000"))).toThrow(/length 0/);
    expect(() => decodeBlockStatusChunk(hex("00000001 0000"))).toThrow(/4 \+ 8n/);
  });

  it("11.2: errno names, unknown values read as EINVAL; u64 beyond 2^53 is not a number we use", () => {
    expect([1, 5, 12, 22, 28, 75, 95, 108, 999].map(errnoName)).toEqual([
      "EPERM",
      "EIO",
      "ENOMEM",
      "EINVAL",
      "ENOSPC",
      "EOVERFLOW",
      "ENOTSUP",
      "ESHUTDOWN",
      "EINVAL",
    ]);
    expect(readU64(hex("0000000100000002"), 0)).toBe(2 ** 32 + 2);
    expect(readU64(hex("ffffffff00000000"), 0)).toBe(Number.POSITIVE_INFINITY);
  });
});
