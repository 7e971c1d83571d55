/**
 * Zero detection, in a module of its own so that worker threads (hash-worker.ts) can use it
 * without loading the native FFI that buffers.ts needs.
 */

const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/** True when every byte of `buf` is zero (memcmp against a zero page, 64 KiB at a time). */
export function isZero(buf: Buffer): boolean {
  for (let offset = 0; offset < buf.length; offset += ZERO_CHUNK.length) {
    const chunk = buf.subarray(offset, offset + ZERO_CHUNK.length);
    if (!chunk.equals(ZERO_CHUNK.subarray(0, chunk.length))) return false;
  }
  return true;
}
