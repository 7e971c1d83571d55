/**
 * How the single executable finds a file to dlopen koffi's addon from (the SEA itself is
 * tested in test/package.test.ts). The addon here is the installed package's, loaded by path.
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { loadEmbeddedAddon } from "./koffi-loader.js";

const require = createRequire(import.meta.url);
const addonPath = join(
  dirname(createRequire(require.resolve("koffi")).resolve("@koromix/koffi-linux-x64")),
  "linux_x64/koffi.node",
);
const addon = readFileSync(addonPath);

let tmp: TempDir;
beforeEach(async () => {
  tmp = await makeTempDir("imageio-koffi-");
});
afterEach(async () => {
  await tmp.remove();
});

/** The addon files in `dir`. */
function copiesIn(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((name) => name.endsWith(".node")) : [];
}

function works(koffi: ReturnType<typeof loadEmbeddedAddon>): boolean {
  const libc = koffi.load("libc.so.6");
  const getpid = libc.func("int getpid(void)");
  return getpid() === process.pid;
}

describe("loading the embedded koffi addon", () => {
  it("writes it to a new private directory (mode 0700) and loads it from there", () => {
    const dir = tmp.file("run/imageio");
    expect(works(loadEmbeddedAddon(addon, { privateDirs: [dir] }))).toBe(true);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const [name] = copiesIn(dir);
    expect(name).toMatch(/^koffi-[0-9a-f]{16}\.node$/);
    const file = join(dir, name as string);
    expect(statSync(file).mode & 0o022).toBe(0);
    expect(readFileSync(file).equals(addon)).toBe(true);
    expect(readdirSync(dir)).toEqual([name]);
  });

  it("skips a directory that others can write to, and uses the next one", () => {
    const shared = tmp.file("shared");
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const own = tmp.file("own");
    expect(works(loadEmbeddedAddon(addon, { privateDirs: [shared, own] }))).toBe(true);
    expect(copiesIn(shared)).toEqual([]);
    expect(copiesIn(own)).toHaveLength(1);
  });

  it("replaces a copy whose bytes were changed instead of loading it", () => {
    const dir = tmp.file("own");
    mkdirSync(dir, { mode: 0o700 });
    // Where a previous start would have left it (changing a copy this process has loaded would
    // change the code it runs).
    const file = join(dir, `koffi-${createHash("sha256").update(addon).digest("hex").slice(0, 16)}.node`);
    writeFileSync(file, "not an ELF file", { mode: 0o500 });
    expect(works(loadEmbeddedAddon(addon, { privateDirs: [dir] }))).toBe(true);
    expect(readFileSync(file).equals(addon)).toBe(true);
  });

  it("loads a package's installed copy when it is identical, writing nothing", () => {
    const installed = tmp.file("usr/lib64/imageio/koffi.node");
    mkdirSync(dirname(installed), { recursive: true });
    writeFileSync(installed, addon, { mode: 0o755 });
    const dir = tmp.file("own");
    expect(works(loadEmbeddedAddon(addon, { installed, privateDirs: [dir] }))).toBe(true);
    expect(existsSync(dir)).toBe(false);
  });

  it("ignores an installed copy that differs or that others can write to", () => {
    const installed = tmp.file("usr/lib64/imageio/koffi.node");
    mkdirSync(dirname(installed), { recursive: true });
    writeFileSync(installed, addon.subarray(0, addon.length - 1), { mode: 0o755 });
    const dir = tmp.file("own");
    expect(works(loadEmbeddedAddon(addon, { installed, privateDirs: [dir] }))).toBe(true);
    expect(copiesIn(dir)).toHaveLength(1);

    writeFileSync(installed, addon);
    chmodSync(installed, 0o777);
    const other = tmp.file("other");
    expect(works(loadEmbeddedAddon(addon, { installed, privateDirs: [other] }))).toBe(true);
    expect(copiesIn(other)).toHaveLength(1);
  });

  it("names every place it tried when none works", () => {
    const notADir = tmp.file("file");
    writeFileSync(notADir, "");
    const shared = tmp.file("shared");
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    expect(() => loadEmbeddedAddon(addon, { privateDirs: [join(notADir, "imageio"), shared] })).toThrow(
      /Cannot load the native FFI module \(koffi\).*file\/imageio\/koffi-.*shared\/koffi-.*mode 0777; expected 0700/,
    );
  });
});
