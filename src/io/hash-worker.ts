/**
 * The thread where blkhash.ts hashes blocks, so that hashing a large image (about 4 ms per
 * 4 MiB block) never takes the event loop. A block arrives as its moved ArrayBuffer and goes
 * back with the digest, so no byte is copied either way.
 */
import { factories, type Hasher } from "./hashers.js";
import { serveTasks } from "./worker-pool.js";
import { isZero } from "./zeros.js";

export type HashTask =
  /** H(block): `buffer` holds the block at [offset, offset + length) and is moved back. */
  | { op: "block"; algorithm: string; buffer: ArrayBuffer; offset: number; length: number }
  /** H(zeros(length)), for runs of zero blocks that are never read. */
  | { op: "zeros"; algorithm: string; length: number };

export interface HashResult {
  digest: Uint8Array;
  /** The block's buffer, moved back for reuse ("block" only). */
  buffer?: ArrayBuffer;
}

const hashers = new Map<string, Promise<Hasher>>();
/** Digests of all-zero blocks by algorithm and length: an empty image region costs no hashing. */
const zeroDigests = new Map<string, Buffer>();

function hasher(algorithm: string): Promise<Hasher> {
  let made = hashers.get(algorithm);
  if (made === undefined) {
    const factory = factories.get(algorithm);
    if (factory === undefined) throw new Error(`Unsupported checksum algorithm '${algorithm}'`);
    made = factory();
    hashers.set(algorithm, made);
  }
  return made;
}

async function digestOf(algorithm: string, data: Uint8Array): Promise<Buffer> {
  const hash = await hasher(algorithm);
  hash.reset();
  hash.update(data);
  return hash.digest();
}

async function zeroDigest(algorithm: string, length: number): Promise<Buffer> {
  const key = `${algorithm}/${length}`;
  let digest = zeroDigests.get(key);
  if (digest === undefined) {
    digest = await digestOf(algorithm, Buffer.alloc(length));
    zeroDigests.set(key, digest);
  }
  return digest;
}

serveTasks(async (task: HashTask) => {
  if (task.op === "zeros") return { value: { digest: await zeroDigest(task.algorithm, task.length) } };
  const block = Buffer.from(task.buffer, task.offset, task.length);
  const digest = isZero(block) ? await zeroDigest(task.algorithm, block.length) : await digestOf(task.algorithm, block);
  return { value: { digest, buffer: task.buffer } satisfies HashResult, transfer: [task.buffer] };
});
