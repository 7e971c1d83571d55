#!/usr/bin/env node
/**
 * `npm run rpm`: builds dist/imageio-VERSION-1.x86_64.rpm from the single executable that
 * `npm run package` made, with packaging/imageio.spec and rpmbuild (Debian: apt-get install
 * rpm). The koffi addon goes in too, as /usr/lib64/imageio/koffi.node, so the installed
 * executable loads it from there instead of writing a copy at each start as root.
 *
 * Usage: node scripts/package/build-rpm.mjs [--exe FILE] [--out-dir DIR]
 *   --exe FILE     the executable (default dist/imageio; its FILE-sea/ holds the licences)
 *   --out-dir DIR  where to put the RPM (default dist)
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, symlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

const { values } = parseArgs({
  options: {
    exe: { type: "string", default: join(root, "dist/imageio") },
    "out-dir": { type: "string", default: join(root, "dist") },
  },
});
const exe = resolve(values.exe);
const outDir = resolve(values["out-dir"]);
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
// rpm forbids "-" in versions; "~" sorts a pre-release before its release, as semver does.
const rpmVersion = version.replaceAll("-", "~");

if (!existsSync(exe)) fail(`${exe} is missing: run 'npm run package' first`);
// What build-sea.mjs left beside the executable: the addon it embedded, so the installed copy
// is the very same file, and the licences of what the executable contains.
const addon = join(`${exe}-sea`, "koffi.node");
const licenses = join(`${exe}-sea`, "THIRD-PARTY-LICENSES");
for (const file of [addon, licenses]) if (!existsSync(file)) fail(`${file} is missing: run 'npm run package' again`);
if (spawnSync("rpmbuild", ["--version"]).error !== undefined) {
  fail("rpmbuild not found: install rpm (Debian: apt-get install rpm; Fedora/EL: dnf install rpm-build)");
}

mkdirSync(outDir, { recursive: true });
const top = mkdtempSync(join(outDir, ".rpmbuild-"));
try {
  const sources = join(top, "SOURCES");
  mkdirSync(sources);
  const inputs = {
    imageio: exe,
    "koffi.node": addon,
    "imageio.service": join(root, "packaging/imageio.service"),
    "imageio-proxy.service": join(root, "packaging/imageio-proxy.service"),
    "daemon.conf": join(root, "packaging/daemon.conf"),
    "proxy.conf": join(root, "packaging/proxy.conf"),
    "README.md": join(root, "README.md"),
    "THIRD-PARTY-LICENSES": licenses,
  };
  for (const [name, path] of Object.entries(inputs)) symlinkSync(path, join(sources, name));

  const args = [
    "-bb",
    "--target",
    "x86_64",
    "--define",
    `_topdir ${top}`,
    "--define",
    `_sourcedir ${sources}`,
    "--define",
    `imageio_version ${rpmVersion}`,
    join(root, "packaging/imageio.spec"),
  ];
  const result = spawnSync("rpmbuild", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.status !== 0) {
    fail(`rpmbuild failed (${result.status ?? result.signal}):\n${result.stdout}${result.stderr}`);
  }
  const name = `imageio-${rpmVersion}-1.x86_64.rpm`;
  const rpm = join(outDir, name);
  renameSync(join(top, "RPMS/x86_64", name), rpm);
  const size = statSync(rpm).size;
  process.stdout.write(`built ${rpm}: ${(size / 1024 / 1024).toFixed(1)} MiB\n`);
} finally {
  rmSync(top, { recursive: true, force: true });
}

function fail(message) {
  process.stderr.write(`build-rpm: ${message}\n`);
  process.exit(1);
}
