/** Temporary directories on the real filesystem (ext4 here), removed after the test file. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TempDir {
  path: string;
  file(name: string): string;
  remove(): Promise<void>;
}

export async function makeTempDir(prefix = "imageio-test-", parent = tmpdir()): Promise<TempDir> {
  const path = await mkdtemp(join(parent, prefix));
  return {
    path,
    file: (name) => join(path, name),
    remove: () => rm(path, { recursive: true, force: true }),
  };
}
