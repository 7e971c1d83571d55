/**
 * Image formats: what a local file holds, judged from its header (and trailer) the way qemu
 * probes formats, so `imageio copy` never mistakes a container for a disk. A file that matches
 * no known container is raw.
 */
import { open } from "node:fs/promises";
import { systemErrorCode } from "../errors.js";

/** The formats qemu reads and writes that we can recognise; "raw" is everything else. */
export type ImageFormat =
  | "raw"
  | "qcow2"
  | "qcow"
  | "qed"
  | "vmdk"
  | "vdi"
  | "vhdx"
  | "vpc"
  | "luks"
  | "parallels"
  | "bochs"
  | "cloop"
  | "dmg";

/** Bytes read from the start of the file: every header signature lies within them. */
const HEADER_BYTES = 4096;
/** Bytes read from the end: VHD footers and DMG trailers are the last 512 bytes. */
const TRAILER_BYTES = 512;

interface Signature {
  format: ImageFormat;
  /** Offset of `magic` in the header. */
  at: number;
  magic: Buffer;
  /** Further check on the header, when the magic alone is shared (qcow versions). */
  also?: (header: Buffer) => boolean;
}

const ascii = (text: string) => Buffer.from(text, "latin1");
const qcowVersion = (header: Buffer) => (header.length >= 8 ? header.readUInt32BE(4) : 0);

/** Header signatures, from each format's specification (qemu's block/*.c probe functions). */
const headerSignatures: Signature[] = [
  { format: "qcow2", at: 0, magic: ascii("QFI\xfb"), also: (h) => qcowVersion(h) >= 2 },
  { format: "qcow", at: 0, magic: ascii("QFI\xfb"), also: (h) => qcowVersion(h) === 1 },
  { format: "qed", at: 0, magic: ascii("QED\0") },
  { format: "vmdk", at: 0, magic: ascii("KDMV") },
  { format: "vmdk", at: 0, magic: ascii("COWD") },
  { format: "vmdk", at: 0, magic: ascii("# Disk DescriptorFile") },
  // VirtualBox: the 0xbeda107f signature, little-endian, after a 64-byte text banner.
  { format: "vdi", at: 64, magic: Buffer.from([0x7f, 0x10, 0xda, 0xbe]) },
  { format: "vhdx", at: 0, magic: ascii("vhdxfile") },
  // Dynamic VHDs start with a copy of the footer.
  { format: "vpc", at: 0, magic: ascii("conectix") },
  { format: "luks", at: 0, magic: Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]) },
  { format: "parallels", at: 0, magic: ascii("WithoutFreeSpace") },
  { format: "parallels", at: 0, magic: ascii("WithouFreSpacExt") },
  { format: "bochs", at: 0, magic: ascii("Bochs Virtual HD Image") },
  { format: "cloop", at: 0, magic: ascii("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0") },
];

/**
 * Trailer signatures. qemu probes a fixed VHD as raw, but its last 512 bytes are the footer
 * that makes it a VHD: writing raw bytes over it would destroy it just the same.
 */
const trailerSignatures: Signature[] = [
  { format: "vpc", at: 0, magic: ascii("conectix") },
  { format: "dmg", at: 0, magic: ascii("koly") },
];

function matches(data: Buffer, signature: Signature): boolean {
  const end = signature.at + signature.magic.length;
  if (data.length < end) return false;
  if (!data.subarray(signature.at, end).equals(signature.magic)) return false;
  return signature.also === undefined || signature.also(data);
}

/**
 * The format of an image given its first bytes (up to 4 KiB) and its last 512 bytes (empty
 * when the image is no larger than its header).
 */
export function detectFormatFromBytes(header: Buffer, trailer: Buffer = Buffer.alloc(0)): ImageFormat {
  for (const signature of headerSignatures) if (matches(header, signature)) return signature.format;
  for (const signature of trailerSignatures) if (matches(trailer, signature)) return signature.format;
  return "raw";
}

/**
 * Reads the header and trailer of the file or block device at `path` and says what it holds.
 * Buffered reads of at most 4.5 KiB: cheap, and fine on files opened elsewhere with O_DIRECT.
 * @returns undefined when `path` does not exist.
 * @throws the system error for anything else (permission, I/O).
 */
export async function detectImageFormat(path: string): Promise<ImageFormat | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, "r");
  } catch (error) {
    if (systemErrorCode(error) === "ENOENT") return undefined;
    throw error;
  }
  try {
    const header = Buffer.alloc(HEADER_BYTES);
    const { bytesRead } = await handle.read(header, 0, HEADER_BYTES, 0);
    // A block device's stat size is 0: find its end by reading the header only (devices are
    // rarely VHD or DMG containers, and their size needs an ioctl).
    const size = (await handle.stat()).size;
    let trailer = Buffer.alloc(0);
    if (size >= HEADER_BYTES + TRAILER_BYTES) {
      trailer = Buffer.alloc(TRAILER_BYTES);
      const got = await handle.read(trailer, 0, TRAILER_BYTES, size - TRAILER_BYTES);
      trailer = trailer.subarray(0, got.bytesRead);
    }
    return detectFormatFromBytes(header.subarray(0, bytesRead), trailer);
  } finally {
    await handle.close();
  }
}

/** What a format is, for messages: "a qcow2 image", "a VMDK image". */
export function describeFormat(format: ImageFormat): string {
  const names: Record<ImageFormat, string> = {
    raw: "a raw image",
    qcow2: "a qcow2 image",
    qcow: "a qcow (version 1) image",
    qed: "a QED image",
    vmdk: "a VMDK image",
    vdi: "a VirtualBox VDI image",
    vhdx: "a VHDX image",
    vpc: "a VHD (vpc) image",
    luks: "a LUKS encrypted image",
    parallels: "a Parallels image",
    bochs: "a Bochs image",
    cloop: "a cloop image",
    dmg: "a DMG image",
  };
  return names[format];
}
