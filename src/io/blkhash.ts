/**
 * Block-hash checksums (spec §5.8): hash every block of B bytes with H, then hash the
 * concatenated block digests with H. Zero blocks are known from extents and use a
 * precomputed digest without reading, so sparse images hash at the speed of their data.
 */
import { createHash, getHashes } from "node:crypto";
import { createBLAKE2b } from "hash-wasm";
import { CancelledError, InvalidArgumentError, OutOfRangeError } from "../errors.js";
import { MiB } from "../units.js";
import type { Backend, ChecksumResult } from "./backend.js";
import { BUFFER_ALIGNMENT, isZero, zeroBuffer } from "./buffers.js";
import { allocAligned } from "./native.js";

/** Spec defaults and limits for `block_size`. */
export const DEFAULT_CHECKSUM_BLOCK_SIZE = 4 * MiB;
export const MIN_CHECKSUM_BLOCK_SIZE = MiB;
export const MAX_CHECKSUM_BLOCK_SIZE = 16 * MiB;
export const DEFAULT_CHECKSUM_ALGORITHM = "blake2b";

/** A resettable incremental hash. */
interface Hasher {
  update(data: Uint8Array): void;
  digest(): Buffer;
  reset(): void;
}

type HasherFactory = () => Promise<Hasher>;

/** Python hashlib names (what clients send) → Node's names, for Node's own algorithms. */
const nodeNames: Record<string, string> = {
  blake2s: "blake2s256",
  md5: "md5",
  sha1: "sha1",
  sha224: "sha224",
  sha256: "sha256",
  sha384: "sha384",
  sha512: "sha512",
  sha512_224: "sha512-224",
  sha512_256: "sha512-256",
  sha3_224: "sha3-224",
  sha3_256: "sha3-256",
  sha3_384: "sha3-384",
  sha3_512: "sha3-512",
};

function nodeHasher(name: string): HasherFactory {
  return async () => {
    let hash = createHash(name);
    return {
      update: (data) => hash.update(data),
      digest: () => hash.digest(),
      reset: () => {
        hash = createHash(name);
      },
    };
  };
}

/** BLAKE2b with a 32-byte digest: its own function, not truncated BLAKE2b-512, so not in Node. */
const blake2b256: HasherFactory = async () => {
  const hash = await createBLAKE2b(256);
  return {
    update: (data) => hash.update(data),
    digest: () => Buffer.from(hash.digest("binary")),
    reset: () => hash.init(),
  };
};

const available = new Set(getHashes());
const factories = new Map<string, HasherFactory>([
  ["blake2b", blake2b256],
  ...Object.entries(nodeNames)
    .filter(([, nodeName]) => available.has(nodeName))
    .map(([name, nodeName]): [string, HasherFactory] => [name, nodeHasher(nodeName)]),
]);

/** Every algorithm blkhash computes, sorted, in Python hashlib spelling. */
export const checksumAlgorithms: readonly string[] = [...factories.keys()].sort();

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
 * Computes the block hash of the whole image behind `backend`.
 * @throws InvalidArgumentError for an unknown algorithm or bad block size; CancelledError
 *   when `signal` aborts; the backend's errors.
 */
export async function blkhash(backend: Backend, options: BlkhashOptions = {}): Promise<BlkhashResult> {
  const algorithm = options.algorithm ?? DEFAULT_CHECKSUM_ALGORITHM;
  const blockSize = options.blockSize ?? DEFAULT_CHECKSUM_BLOCK_SIZE;
  validateChecksumParams(algorithm, blockSize);
  const factory = factories.get(algorithm) as HasherFactory;
  const [blockHasher, outer] = await Promise.all([factory(), factory()]);
  const zeroDigests = new ZeroDigests(blockHasher, blockSize);
  const outerInput = new DigestBatch(outer);
  const size = await backend.size();

  // Two buffers: the next data block is read while the current one is hashed.
  const free = [allocAligned(blockSize, BUFFER_ALIGNMENT), allocAligned(blockSize, BUFFER_ALIGNMENT)];
  const queue: { task: Task; buf?: Buffer; read?: Promise<void> }[] = [];
  let hashed = 0;

  const consume = async (): Promise<void> => {
    const item = queue.shift() as (typeof queue)[number];
    const { start, end } = item.task;
    if (item.buf === undefined || item.read === undefined) {
      outerInput.addZeroRun(zeroDigests, end - start);
    } else {
      await item.read;
      const block = item.buf.subarray(0, end - start);
      outerInput.add(isZero(block) ? zeroDigests.digest(block.length) : hashBlock(blockHasher, block));
      free.push(item.buf);
    }
    hashed = end;
    options.onProgress?.(hashed);
  };

  for await (const task of planBlocks(backend, size, blockSize)) {
    if (options.signal?.aborted) throw new CancelledError(`Checksum cancelled after ${hashed} of ${size} bytes`);
    if (task.zero) {
      queue.push({ task });
    } else {
      while (free.length === 0) await consume();
      const buf = free.pop() as Buffer;
      const read = readExact(backend, buf.subarray(0, task.end - task.start), task.start);
      read.catch(() => undefined); // awaited in consume(); avoid an unhandled rejection meanwhile
      queue.push({ task, buf, read });
    }
    // Zero runs at the head are cheap: settle them now, keep data reads in flight.
    while (queue[0] !== undefined && queue[0].read === undefined) await consume();
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

function hashBlock(hasher: Hasher, data: Uint8Array): Buffer {
  hasher.reset();
  hasher.update(data);
  return hasher.digest();
}

/** H(zeros(n)), computed once per length: the full block and at most one short last block. */
class ZeroDigests {
  private readonly cache = new Map<number, Buffer>();

  constructor(
    private readonly hasher: Hasher,
    readonly blockSize: number,
  ) {}

  digest(length: number): Buffer {
    let digest = this.cache.get(length);
    if (digest === undefined) {
      const zeros = zeroBuffer();
      this.hasher.reset();
      for (let done = 0; done < length; done += zeros.length) {
        this.hasher.update(zeros.subarray(0, Math.min(zeros.length, length - done)));
      }
      digest = this.hasher.digest();
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

  /** Adds the digests of a run of zero blocks: whole blocks, then a short last one. */
  addZeroRun(zeroDigests: ZeroDigests, length: number): void {
    const whole = Math.floor(length / zeroDigests.blockSize);
    if (whole > 0) {
      const digest = zeroDigests.digest(zeroDigests.blockSize);
      for (let i = 0; i < whole; i++) this.add(digest);
    }
    const rest = length - whole * zeroDigests.blockSize;
    if (rest > 0) this.add(zeroDigests.digest(rest));
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
