/**
 * The hash functions of block-hash checksums, by their Python hashlib names (what clients
 * send): used by blkhash.ts for the outer hash and by hash-worker.ts for the blocks.
 */
import { createHash, getHashes } from "node:crypto";
import { createBLAKE2b } from "hash-wasm";

/** A resettable incremental hash. */
export interface Hasher {
  update(data: Uint8Array): void;
  digest(): Buffer;
  reset(): void;
}

export type HasherFactory = () => Promise<Hasher>;

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
export const factories = new Map<string, HasherFactory>([
  ["blake2b", blake2b256],
  ...Object.entries(nodeNames)
    .filter(([, nodeName]) => available.has(nodeName))
    .map(([name, nodeName]): [string, HasherFactory] => [name, nodeHasher(nodeName)]),
]);

/** Every algorithm blkhash computes, sorted, in Python hashlib spelling. */
export const checksumAlgorithms: readonly string[] = [...factories.keys()].sort();
