/**
 * The worker threads that run native.ts's calls that can block for long (fallocate,
 * BLKZEROOUT, BLKDISCARD, lseek runs), in a module of their own so that a thread can be
 * started before native.ts and koffi are loaded.
 */
import type { NativeCallResult, NativeTask } from "./native-worker.js";
import { WorkerPool } from "./worker-pool.js";

/** A few threads, so zeroing several images at once does not queue behind one device. */
export const nativeThreads = new WorkerPool<NativeTask, NativeCallResult>("native-worker", 4);

/**
 * Starts a native thread ahead of its first call (an extents walk, fallocate): a thread takes
 * about 30-40 ms to boot, most of the time an empty image's copy takes, and started first it
 * boots while the command line, the copy modules and the images are still being loaded.
 */
export function warmNativeThreads(): void {
  nativeThreads.warm();
}
