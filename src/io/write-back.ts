/**
 * Write-back failures remembered per image. With buffered I/O a write is acknowledged once it
 * is in the page cache; when the kernel later fails to write it back (ENOSPC, EIO), fsync
 * reports it once per open file and then succeeds again (Linux errseq), although the data is
 * gone. A later flush, on the same or a new connection, must not answer 200 for bytes that
 * never reached the disk: the failure sticks to the image until it is written again in full.
 */

interface Failure {
  /** What the failed flush reported. */
  reason: string;
  code: string | undefined;
  /** Bytes `[0, size)` must be written again before flushes may succeed. */
  size: number;
  /** Ranges written since the failure, sorted and merged. */
  rewritten: [number, number][];
}

const failures = new Map<string, Failure>();

/**
 * The other threads writing images ([daemon] workers): every change here is passed on, so a
 * failure one thread saw makes flushes fail on all of them.
 */
export interface WriteBackPeers {
  recorded(key: string, reason: string, code: string | undefined, size: number): void;
  rewritten(key: string, offset: number, length: number): void;
}

let peers: WriteBackPeers | undefined;

/** Passes this thread's changes to `next` (the main thread, and each data-plane worker). */
export function useWriteBackPeers(next: WriteBackPeers | undefined): void {
  peers = next;
}

/** Records a failed flush of the image `key`, whose size was `size` bytes at the time. */
export function recordWriteBackFailure(key: string, reason: string, code: string | undefined, size: number): void {
  applyWriteBackFailure(key, reason, code, size);
  peers?.recorded(key, reason, code, size);
}

/** Records a failure another thread passed on (without passing it back). */
export function applyWriteBackFailure(key: string, reason: string, code: string | undefined, size: number): void {
  failures.set(key, { reason, code, size, rewritten: [] });
}

/** The earlier failure that still makes flushes of `key` fail, if any. */
export function writeBackFailure(key: string): { reason: string; code: string | undefined } | undefined {
  return failures.get(key);
}

/** Notes that `[offset, offset + length)` of `key` was written again; clears a failure once all is. */
export function noteRewritten(key: string, offset: number, length: number): void {
  // Only while a failure stands: writes cost no message otherwise.
  if (!failures.has(key) || length === 0) return;
  applyRewritten(key, offset, length);
  peers?.rewritten(key, offset, length);
}

/** Notes a rewrite another thread passed on (without passing it back). */
export function applyRewritten(key: string, offset: number, length: number): void {
  const failure = failures.get(key);
  if (failure === undefined || length === 0) return;
  const merged: [number, number][] = [];
  let start = offset;
  let end = offset + length;
  for (const [a, b] of failure.rewritten) {
    if (b < start || a > end) merged.push([a, b]);
    else {
      start = Math.min(start, a);
      end = Math.max(end, b);
    }
  }
  merged.push([start, end]);
  merged.sort((x, y) => x[0] - y[0]);
  failure.rewritten = merged;
  const first = merged[0];
  if (first !== undefined && first[0] <= 0 && first[1] >= failure.size) failures.delete(key);
}
