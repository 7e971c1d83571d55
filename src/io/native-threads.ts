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
 * about 30-40 ms to boot, and started as soon as a copy knows it will need one (an image with
 * data to map or zero) it boots while the images are still being opened. A copy that needs
 * none (an empty image's) never starts one: booting it would cost more than the whole copy.
 */
export function warmNativeThreads(): void {
  nativeThreads.warm();
}
