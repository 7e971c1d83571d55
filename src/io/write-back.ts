/**
 * Write-back failures remembered per image. With buffered I/O a write is acknowledged once it
 * is in the page cache; when the kernel later fails to write it back (ENOSPC, EIO), fsync
 * reports it once per open file and then succeeds again (Linux errseq), although the data is
 * gone. A later flush, on the same or a new connection, must not answer 200 for bytes that
 * never reached the disk: the failure sticks to the image until it is written again in full.
 */

export interface Failure {
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
/** Changes made by any thread, in memory every thread shares (undefined with one thread). */
let changesMade: Int32Array | undefined;
/** Changes this thread knows of: its own and those passed on to it. */
let changesKnown = 0;
let catchingUp: { target: number; resolve: () => void }[] = [];

/** A flush waits at most this long for changes in flight from other threads (a lost one is a bug). */
const CATCH_UP_MS = 5_000;

/**
 * Passes this thread's changes to `next` (the main thread, and each data-plane worker), and
 * counts them on `counter`, shared by every thread, so a flush can tell that a change made
 * elsewhere is still on its way here.
 */
export function useWriteBackPeers(next: WriteBackPeers | undefined, counter?: SharedArrayBuffer): void {
  peers = next;
  changesMade = counter === undefined ? undefined : new Int32Array(counter);
  changesKnown = changesMade === undefined ? 0 : Atomics.load(changesMade, 0);
}

/** What a thread that starts late needs: every standing failure, and how many changes made them. */
export interface WriteBackState {
  failures: [string, Failure][];
  known: number;
}

export function writeBackState(): WriteBackState {
  return { failures: [...failures].map(([key, failure]) => [key, structuredClone(failure)]), known: changesKnown };
}

/** Takes over another thread's state (a data-plane thread, before it serves). */
export function restoreWriteBackState(state: WriteBackState): void {
  failures.clear();
  for (const [key, failure] of state.failures) failures.set(key, failure);
  changesKnown = state.known;
}

/** Memory for the change counter of useWriteBackPeers. */
export function writeBackCounter(): SharedArrayBuffer {
  return new SharedArrayBuffer(4);
}

/** Records a failed flush of the image `key`, whose size was `size` bytes at the time. */
export function recordWriteBackFailure(key: string, reason: string, code: string | undefined, size: number): void {
  setFailure(key, reason, code, size);
  if (peers === undefined) return;
  countOwnChange();
  peers.recorded(key, reason, code, size);
}

/** Records a failure another thread passed on (without passing it back). */
export function receiveWriteBackFailure(key: string, reason: string, code: string | undefined, size: number): void {
  setFailure(key, reason, code, size);
  countReceivedChange();
}

function setFailure(key: string, reason: string, code: string | undefined, size: number): void {
  failures.set(key, { reason, code, size, rewritten: [] });
}

/**
 * The earlier failure that still makes flushes of `key` fail, if any, once every change
 * another thread made before this call has arrived here.
 */
export async function writeBackFailure(key: string): Promise<{ reason: string; code: string | undefined } | undefined> {
  const target = changesMade === undefined ? 0 : Atomics.load(changesMade, 0);
  if (changesKnown < target) {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => catchingUp.push({ target, resolve })),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, CATCH_UP_MS);
      }),
    ]);
    clearTimeout(timer);
  }
  return failures.get(key);
}

/** Notes that `[offset, offset + length)` of `key` was written again; clears a failure once all is. */
export function noteRewritten(key: string, offset: number, length: number): void {
  // Only while a failure stands: writes cost no message otherwise.
  if (!failures.has(key) || length === 0) return;
  addRewritten(key, offset, length);
  if (peers === undefined) return;
  countOwnChange();
  peers.rewritten(key, offset, length);
}

/** Notes a rewrite another thread passed on (without passing it back). */
export function receiveRewritten(key: string, offset: number, length: number): void {
  addRewritten(key, offset, length);
  countReceivedChange();
}

function countOwnChange(): void {
  if (changesMade !== undefined) Atomics.add(changesMade, 0, 1);
  changesKnown++;
}

function countReceivedChange(): void {
  changesKnown++;
  const waiting = catchingUp;
  catchingUp = [];
  for (const waiter of waiting) {
    if (changesKnown >= waiter.target) waiter.resolve();
    else catchingUp.push(waiter);
  }
}

function addRewritten(key: string, offset: number, length: number): void {
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
