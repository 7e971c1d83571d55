/**
 * Locks on single blocks of an image, shared by every handle on it in this process. Two
 * connections writing distinct byte ranges that share a block would otherwise both
 * read-modify-write it and the later write would put back stale bytes of the other's range.
 */

/**
 * Where the locks live when several threads write images ([daemon] workers): a worker asks the
 * main thread, which holds them with the functions below, so threads exclude each other as
 * connections of one thread do. `blocks` "size" means the image's size lock.
 */
export interface LockBroker {
  hold<T>(key: string, blocks: number[] | "size", work: () => Promise<T>): Promise<T>;
}

let broker: LockBroker | undefined;

/** Makes this thread's locks the broker's (a data-plane worker, at start). */
export function useLockBroker(next: LockBroker): void {
  broker = next;
}

/** Tail of the queue of holders per block; a block without an entry is free. */
type BlockQueues = Map<number, Promise<void>>;

const images = new Map<string, BlockQueues>();

/**
 * Runs `work` holding the locks of `blocks` (block offsets in bytes) of the image `key`.
 * Locks are taken in ascending order, so two holders never wait for each other.
 */
export async function withBlockLocks<T>(key: string, blocks: number[], work: () => Promise<T>): Promise<T> {
  if (blocks.length === 0) return work();
  if (broker !== undefined) return broker.hold(key, blocks, work);
  let queues = images.get(key);
  if (queues === undefined) {
    queues = new Map();
    images.set(key, queues);
  }
  const sorted = [...new Set(blocks)].sort((a, b) => a - b);
  const releases: (() => void)[] = [];
  try {
    for (const block of sorted) releases.push(await acquire(queues, block));
    return await work();
  } finally {
    for (const release of releases) release();
    if (queues.size === 0) images.delete(key);
  }
}

async function acquire(queues: BlockQueues, block: number): Promise<() => void> {
  const previous = queues.get(block);
  let release: () => void = () => undefined;
  const mine = new Promise<void>((resolve) => {
    release = resolve;
  });
  const tail = (previous ?? Promise.resolve()).then(() => mine);
  queues.set(block, tail);
  await previous;
  return () => {
    release();
    // The last holder leaves no entry behind.
    if (queues.get(block) === tail) queues.delete(block);
  };
}

/** Tail of the queue of holders of each image's size lock. */
const sizeLocks = new Map<string, Promise<void>>();

/**
 * Runs `work` holding the size lock of the image `key`: one holder at a time. Every operation
 * that may change a growable image's size (a write or zero past its end, a resize, the size
 * fix-up after rewriting a partial last block) holds it, so a size sampled under the lock stays
 * true until the holder is done and no fix-up ever cuts off bytes another writer appended.
 */
export async function withSizeLock<T>(key: string, work: () => Promise<T>): Promise<T> {
  if (broker !== undefined) return broker.hold(key, "size", work);
  const previous = sizeLocks.get(key) ?? Promise.resolve();
  let release: () => void = () => undefined;
  const mine = new Promise<void>((resolve) => {
    release = resolve;
  });
  const tail = previous.then(() => mine);
  sizeLocks.set(key, tail);
  await previous;
  try {
    return await work();
  } finally {
    release();
    if (sizeLocks.get(key) === tail) sizeLocks.delete(key);
  }
}
