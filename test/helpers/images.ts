/** Test images on disk. */
import { randomBytes } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";

/** Makes `path` a file of `size` bytes that is all hole (no block allocated). */
export async function emptySparseFile(path: string, size: number): Promise<void> {
  await writeFile(path, "");
  await truncate(path, size);
}

/**
 * Writes a sparse file of `size` bytes with random data in `runs` ([start, end)) and holes
 * elsewhere; returns the contents it should read back as.
 */
export async function writeSparseImage(path: string, size: number, runs: [number, number][]): Promise<Buffer> {
  const image = Buffer.alloc(size);
  await emptySparseFile(path, size);
  const handle = await open(path, "r+");
  try {
    for (const [start, end] of runs) {
      const data = randomBytes(end - start);
      data.copy(image, start);
      await handle.write(data, 0, data.length, start);
    }
  } finally {
    await handle.close();
  }
  return image;
}
