/**
 * Block-hash checksums (spec §5.8): hash every block of B bytes with H, then hash the
 * concatenated block digests with H. Zero blocks are known from extents and use a
 * precomputed digest without reading, so sparse images hash at the speed of their data.
 */
import { availableParallelism } from "node:os";
import { CancelledError, InvalidArgumentError, OutOfRangeError } from "../errors.js";
import { MiB } from "../units.js";
import type { Backend, ChecksumResult } from "./backend.js";
import { BUFFER_ALIGNMENT } from "./buffers.js";
import type { HashResult, HashTask } from "./hash-worker.js";
import { checksumAlgorithms, factories, type Hasher } from "./hashers.js";
import { allocAligned } from "./native.js";
import { WorkerPool } from "./worker-pool.js";

export { checksumAlgorithms };

/** Spec defaults and limits for `block_size`. */
export const DEFAULT_CHECKSUM_BLOCK_SIZE = 4 * MiB;
export const MIN_CHECKSUM_BLOCK_SIZE = MiB;
export const MAX_CHECKSUM_BLOCK_SIZE = 16 * MiB;
export const DEFAULT_CHECKSUM_ALGORITHM = "blake2b";

export interface BlkhashOptions {
  algorithm?: string;
  /** Bytes per block, a multiple of 4096 from 1 to 16 MiB. */
  blockSize?: number;
  signal?: AbortSignal;
  /** Called after each block with the number of bytes hashed so far. */
  onProgress?: (bytes: number) => void;
}

export type BlkhashResult = ChecksumResult;

/** Checks an algorithm name and block size, with the spec's error messages (§5.8). */
export function validateChecksumParams(algorithm: string, blockSize: number): void {
  if (!factories.has(algorithm)) {
    const names = checksumAlgorithms.map((name) => `'${name}'`).join(", ");
    throw new InvalidArgumentError(`Unsupported value '${algorithm}' for 'algorithm', expecting one of [${names}]`);
  }
  if (blockSize < MIN_CHECKSUM_BLOCK_SIZE || blockSize > MAX_CHECKSUM_BLOCK_SIZE) {
    throw new InvalidArgumentError(
      `Block size out of allowed range: ${MIN_CHECKSUM_BLOCK_SIZE}-${MAX_CHECKSUM_BLOCK_SIZE}`,
    );
  }
  if (blockSize % BUFFER_ALIGNMENT !== 0) throw new InvalidArgumentError("Block size is not aligned to 4096");
}

/** One step of the walk: a data block to read, or a run of zero blocks not to read. */
interface Task {
  start: number;
  end: number;
  zero: boolean;
}

/**
 * Threads that hash blocks, shared by every checksum in this process: a 100 GiB checksum
 * costs the event loop nothing but the reads' completions. At most two, so checksums leave
 * cores to the transfers; more checksums at once queue for them.
 */
const hashThreads = new WorkerPool<HashTask, HashResult>("hash-worker", Math.min(2, availableParallelism()));

/** Blocks of one checksum in flight: one hashing on each thread, and the next one being read. */
const BLOCKS_IN_FLIGHT = hashThreads.maxWorkers + 1;

/**
 * Hashes `block` (the first bytes of `buf`) on a hash thread. `buf`'s memory is moved there
 * and back without a copy; it is unusable until this resolves with the buffer to reuse.
 */
async function hashOnThread(algorithm: string, buf: Buffer, length: number): Promise<{ digest: Buffer; buf: Buffer }> {
  // Read before the move: a moved buffer's views read as empty.
  const { byteOffset, length: capacity } = buf;
  const memory = buf.buffer as ArrayBuffer;
  const task: HashTask = { op: "block", algorithm, buffer: memory, offset: byteOffset, length };
  const result = await hashThreads.run(task, [memory]);
  return {
    digest: Buffer.from(result.digest.buffer, result.digest.byteOffset, result.digest.length),
    buf: Buffer.from(result.buffer as ArrayBuffer, byteOffset, capacity),
  };
}

/**
 * Computes the block hash of the whole image behind `backend`, hashing blocks on worker
 * threads while the next ones are read.
 * @throws InvalidArgumentError for an unknown algorithm or bad block size; CancelledError
 *   when `signal` aborts; the backend's errors.
 */
export async function blkhash(backend: Backend, options: BlkhashOptions = {}): Promise<BlkhashResult> {
  const algorithm = options.algorithm ?? DEFAULT_CHECKSUM_ALGORITHM;
  const blockSize = options.blockSize ?? DEFAULT_CHECKSUM_BLOCK_SIZE;
  validateChecksumParams(algorithm, blockSize);
  const outer = await (factories.get(algorithm) as () => Promise<Hasher>)();
  const zeroDigests = new ZeroDigests(algorithm);
  const outerInput = new DigestBatch(outer);
  const size = await backend.size();

  const free = Array.from({ length: BLOCKS_IN_FLIGHT }, () => allocAligned(blockSize, BUFFER_ALIGNMENT));
  // In image order: runs of zero blocks (no digest promise) and data blocks being read and hashed.
  const queue: { task: Task; digest?: Promise<Buffer> }[] = [];
  let hashed = 0;

  const checkCancelled = (): void => {
    if (options.signal?.aborted) throw new CancelledError(`Checksum cancelled after ${hashed} of ${size} bytes`);
  };
  const consume = async (): Promise<void> => {
    checkCancelled();
    const item = queue.shift() as (typeof queue)[number];
    const { start, end } = item.task;
    if (item.digest === undefined) {
      const whole = Math.floor((end - start) / blockSize);
      if (whole > 0) outerInput.addRepeated(await zeroDigests.digest(blockSize), whole);
      const rest = end - start - whole * blockSize;
      if (rest > 0) outerInput.add(await zeroDigests.digest(rest));
    } else {
      outerInput.add(await item.digest);
    }
    hashed = end;
    options.onProgress?.(hashed);
  };

  for await (const task of planBlocks(backend, size, blockSize)) {
    checkCancelled();
    if (task.zero) {
      queue.push({ task });
    } else {
      while (free.length === 0) await consume();
      const buf = free.pop() as Buffer;
      const length = task.end - task.start;
      const digest = readExact(backend, buf.subarray(0, length), task.start).then(
        async () => {
          const hashedBlock = await hashOnThread(algorithm, buf, length);
          free.push(hashedBlock.buf);
          return hashedBlock.digest;
        },
        (error: unknown) => {
          free.push(buf);
          throw error;
        },
      );
      digest.catch(() => undefined); // awaited in consume(); avoid an unhandled rejection meanwhile
      queue.push({ task, digest });
    }
    // Zero runs at the head are cheap: settle them now, keep data blocks in flight.
    while (queue[0] !== undefined && queue[0].digest === undefined) await consume();
  }
  while (queue.length > 0) await consume();

  // An empty image has no blocks, so the outer hash saw no input: the checksum is H("").
  return { algorithm, block_size: blockSize, checksum: outerInput.finish().toString("hex") };
}

/**
 * The checksum of an image as the images API reports it: computed by the remote when the
 * backend is in front of one (no data crosses the network), else hashed here.
 * @throws as blkhash() does; the remote's errors.
 */
export async function imageChecksum(
  backend: Backend,
  options: BlkhashOptions & { algorithm: string; blockSize: number },
): Promise<BlkhashResult> {
  if (backend.checksum === undefined) return blkhash(backend, options);
  const result = await backend.checksum(options.algorithm, options.blockSize);
  options.onProgress?.(await backend.size());
  return result;
}

/**
 * Walks the extents and yields data blocks to read and runs of whole zero blocks. A block
 * that mixes data and zeros is read as data; the digest is the same either way.
 */
async function* planBlocks(backend: Backend, size: number, blockSize: number): AsyncGenerator<Task> {
  let position = 0; // start of the next block to plan; always a block boundary
  const extents = backend.caps.extents
    ? backend.extents("zero")
    : [{ start: 0, length: size, zero: false, hole: false }];
  for await (const extent of extents) {
    const extentEnd = Math.min(extent.start + extent.length, size);
    while (position < extentEnd) {
      const blockEnd = Math.min(position + blockSize, size);
      if (extent.zero && blockEnd <= extentEnd) {
        // All whole blocks inside this zero extent, plus a short last block at image end.
        const runEnd =
          extentEnd === size ? size : position + Math.floor((extentEnd - position) / blockSize) * blockSize;
        yield { start: position, end: runEnd, zero: true };
        position = runEnd;
      } else {
        yield { start: position, end: blockEnd, zero: false };
        position = blockEnd;
      }
    }
  }
  // Extents must cover the image; if a backend reported less, read the rest.
  for (; position < size; position = Math.min(position + blockSize, size)) {
    yield { start: position, end: Math.min(position + blockSize, size), zero: false };
  }
}

async function readExact(backend: Backend, buf: Buffer, offset: number): Promise<void> {
  const got = await backend.read(buf, offset);
  if (got !== buf.length) {
    throw new OutOfRangeError(`Requested ${buf.length} bytes at offset ${offset}, available ${got} bytes`);
  }
}

/** H(zeros(n)), computed once per checksum and length, on a hash thread. */
class ZeroDigests {
  private readonly cache = new Map<number, Promise<Buffer>>();

  constructor(private readonly algorithm: string) {}

  digest(length: number): Promise<Buffer> {
    let digest = this.cache.get(length);
    if (digest === undefined) {
      digest = hashThreads
        .run({ op: "zeros", algorithm: this.algorithm, length })
        .then((result) => Buffer.from(result.digest.buffer, result.digest.byteOffset, result.digest.length));
      this.cache.set(length, digest);
    }
    return digest;
  }
}

/** Feeds block digests to the outer hash in batches, so millions of blocks cost few calls. */
class DigestBatch {
  private readonly batch = Buffer.alloc(64 * 1024);
  private used = 0;

  constructor(private readonly outer: Hasher) {
    outer.reset();
  }

  add(digest: Buffer): void {
    if (this.used + digest.length > this.batch.length) this.drain();
    digest.copy(this.batch, this.used);
    this.used += digest.length;
  }

  /** Adds `digest` `count` times: a run of equal blocks. */
  addRepeated(digest: Buffer, count: number): void {
    for (let i = 0; i < count; i++) this.add(digest);
  }

  finish(): Buffer {
    this.drain();
    return this.outer.digest();
  }

  private drain(): void {
    if (this.used > 0) this.outer.update(this.batch.subarray(0, this.used));
    this.used = 0;
  }
}
