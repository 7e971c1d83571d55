/**
 * Finds koffi for native.ts, the one module that uses its API.
 *
 * Run from source or dist/, koffi is the installed package, required through its CommonJS
 * entry (index.cjs), the entry that also works where this module is bundled into CommonJS.
 *
 * Inside the single executable (a Node SEA built by scripts/package/build-sea.mjs) there is no
 * node_modules and koffi's own loader cannot find its addon, so the build embeds the addon as
 * the SEA asset "koffi.node" and this module loads it itself with process.dlopen. dlopen needs
 * a file, so it uses, in this order:
 *  1. `../lib64/imageio/koffi.node` beside the executable (the RPM installs /usr/bin/imageio and
 *     /usr/lib64/imageio/koffi.node), when it is byte-identical to the embedded addon and
 *     neither it nor its directory can be changed by anyone but root or this user;
 *  2. a copy in a private directory of this user: `$XDG_RUNTIME_DIR/imageio`,
 *     `${XDG_CACHE_HOME:-$HOME/.cache}/imageio`, then `$TMPDIR/imageio-UID` (the first two
 *     may be missing, /tmp may be mounted noexec, which makes dlopen fail). The directory must
 *     be ours with mode 0700 or stricter, since whoever can write there can run code as us.
 * The raw addon exports koffi's whole API; koffi's JavaScript wrapper adds only deprecated
 * aliases, which native.ts does not use.
 */
import {
  closeSync,
  constants as fsConstants,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  type Stats,
  unlinkSync,
  writeSync,
} from "node:fs";
import { createRequire } from "node:module";
import { homedir, constants as osConstants, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { getAsset, getRawAsset, isSea } from "node:sea";
import type koffiModule from "koffi";

export type Koffi = typeof koffiModule;

/** The SEA asset key the build stores the addon under (scripts/package/build-sea.mjs). */
export const KOFFI_ASSET = "koffi.node";
/**
 * The SEA asset holding the addon's SHA-256 (hex), computed by the build: the start of every
 * command that touches a file then neither loads node:crypto nor hashes 1 MiB (issue 14). It
 * only names the private copy; the copy's bytes are still compared with the addon's.
 */
export const KOFFI_DIGEST_ASSET = "koffi.node.sha256";

/** Where the RPM installs the addon, relative to the executable's directory. */
const INSTALLED_ADDON = "../lib64/imageio/koffi.node";

/**
 * Loads koffi: the installed package, or inside the single executable the embedded addon.
 * @throws Error naming every place tried and why each failed, when the embedded addon cannot
 *   be loaded from any of them.
 */
export function loadKoffi(): Koffi {
  if (!isSea()) {
    const required = createRequire(import.meta.url)("koffi") as Koffi & { default?: Koffi };
    return required.default ?? required;
  }
  const addon = Buffer.from(getRawAsset(KOFFI_ASSET) as ArrayBuffer);
  return loadEmbeddedAddon(addon, defaultPlaces(), embeddedDigest() ?? sha256Hex(addon));
}

/** The digest the build embedded, undefined for an executable built without it. */
function embeddedDigest(): string | undefined {
  try {
    const digest = getAsset(KOFFI_DIGEST_ASSET, "utf8").trim();
    return /^[0-9a-f]{64}$/.test(digest) ? digest : undefined;
  } catch {
    return undefined;
  }
}

function sha256Hex(data: Buffer): string {
  // Loaded only when no digest was embedded: node:crypto costs milliseconds of start-up.
  const { createHash } = process.getBuiltinModule("node:crypto");
  return createHash("sha256").update(data).digest("hex");
}

/**
 * Loads `addon` (the bytes of koffi.node) with process.dlopen from the first usable place.
 * `digest` (its SHA-256, hex) names the private copy, one per addon build.
 */
export function loadEmbeddedAddon(
  addon: Buffer,
  places: AddonPlaces = defaultPlaces(),
  digest: string = sha256Hex(addon),
): Koffi {
  const name = `koffi-${digest.slice(0, 16)}.node`;
  const failures: string[] = [];
  if (places.installed !== undefined) {
    const reason = installedCopyProblem(places.installed, addon);
    if (reason === undefined) {
      try {
        return dlopen(places.installed);
      } catch (error) {
        failures.push(`${places.installed}: ${(error as Error).message}`);
      }
    } else if (reason !== "missing") {
      failures.push(`${places.installed}: ${reason}`);
    }
  }
  for (const dir of places.privateDirs) {
    const file = join(dir, name);
    try {
      ensurePrivateDir(dir);
      if (!isTrustedCopy(file, addon)) writeAtomically(file, addon);
      return dlopen(file);
    } catch (error) {
      failures.push(`${file}: ${(error as Error).message}`);
    }
  }
  throw new Error(`Cannot load the native FFI module (koffi) embedded in ${process.execPath}: ${failures.join("; ")}`);
}

/** Candidate locations for the addon file. */
export interface AddonPlaces {
  /** The copy a package installed; used only when identical and safe. */
  installed?: string;
  /** Private directories to write a copy to, in order of preference. */
  privateDirs: string[];
}

function defaultPlaces(): AddonPlaces {
  const uid = process.getuid?.() ?? 0;
  const dirs: string[] = [];
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (runtime) dirs.push(join(runtime, "imageio"));
  const cache = process.env.XDG_CACHE_HOME || (process.env.HOME ? join(homedir(), ".cache") : "");
  if (cache) dirs.push(join(cache, "imageio"));
  dirs.push(join(tmpdir(), `imageio-${uid}`));
  return { installed: join(dirname(process.execPath), INSTALLED_ADDON), privateDirs: dirs };
}

function dlopen(file: string): Koffi {
  const module = { exports: {} as Koffi };
  process.dlopen(module, file, osConstants.dlopen.RTLD_NOW);
  return module.exports;
}

/** Owned by root or by us, and writable by nobody else. */
function safeOwnership(info: Stats): boolean {
  return (info.uid === 0 || info.uid === process.getuid?.()) && (info.mode & 0o022) === 0;
}

/** Why the installed copy is not usable, "missing" when there is none, undefined when it is. */
function installedCopyProblem(file: string, addon: Buffer): string | undefined {
  let info: Stats;
  try {
    info = lstatSync(file);
  } catch {
    return "missing";
  }
  if (!info.isFile()) return "not a regular file";
  if (!safeOwnership(info)) return "writable by users other than root, or owned by one";
  if (!safeOwnership(lstatSync(dirname(file)))) return "its directory is writable by users other than root";
  // A different build's addon (an older RPM beside a newer executable) must not be mixed in.
  if (!readFileSync(file).equals(addon)) return "differs from the embedded addon";
  return undefined;
}

/** Creates `dir` (mode 0700) or checks that it is a directory of ours that only we can use. */
function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const info = lstatSync(dir);
  if (!info.isDirectory()) throw new Error("not a directory");
  if (info.uid !== process.getuid?.()) throw new Error(`directory owned by uid ${info.uid}`);
  if ((info.mode & 0o077) !== 0) {
    throw new Error(`directory has mode 0${(info.mode & 0o777).toString(8)}; expected 0700`);
  }
}

/** True when `file` is a regular file of ours, not writable by others, holding exactly `addon`. */
function isTrustedCopy(file: string, addon: Buffer): boolean {
  let info: Stats;
  try {
    info = lstatSync(file);
  } catch {
    return false;
  }
  return (
    info.isFile() &&
    info.uid === process.getuid?.() &&
    (info.mode & 0o022) === 0 &&
    info.size === addon.length &&
    readFileSync(file).equals(addon)
  );
}

/**
 * Writes a temporary file and renames it over `file`, so that a process that has the old copy
 * mapped keeps it, and a concurrent start never sees a half-written addon.
 */
function writeAtomically(file: string, data: Buffer): void {
  const temporary = `${file}.${process.pid}.tmp`;
  // Left over when a process with this pid died while writing.
  rmSync(temporary, { force: true });
  const fd = openSync(temporary, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o500);
  try {
    let written = 0;
    while (written < data.length) written += writeSync(fd, data, written);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(temporary, file);
  } catch (error) {
    unlinkSync(temporary);
    throw error;
  }
}
