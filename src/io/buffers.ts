/**
 * I/O buffer sizes and alignment, and zero detection. Buffers themselves are owned and reused
 * by their user (a connection's backend context, a copy worker), so memory is bounded by
 * connections and workers, never by image size.
 */
import { MiB } from "../units.js";
import { allocAligned } from "./native.js";

/** Default I/O buffer size (spec: backend buffer_size, 8 MiB). */
export const DEFAULT_BUFFER_SIZE = 8 * MiB;

/** Alignment of every buffer we allocate: enough for 4096-byte sector devices. */
export const BUFFER_ALIGNMENT = 4096;

const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/** True when every byte of `buf` is zero (memcmp against a zero page, 64 KiB at a time). */
export function isZero(buf: Buffer): boolean {
  for (let offset = 0; offset < buf.length; offset += ZERO_CHUNK.length) {
    const chunk = buf.subarray(offset, offset + ZERO_CHUNK.length);
    if (!chunk.equals(ZERO_CHUNK.subarray(0, chunk.length))) return false;
  }
  return true;
}

let sharedZeroes: Buffer | undefined;

/**
 * A read-only aligned buffer of 1 MiB of zeros for writing zeros where a device cannot zero
 * any other way (spec: buffer ≤ 1 MiB). Callers must never write into it.
 */
export function zeroBuffer(): Buffer {
  sharedZeroes ??= allocAligned(MiB, BUFFER_ALIGNMENT).fill(0);
  return sharedZeroes;
}
