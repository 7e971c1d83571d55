#!/usr/bin/env node
/**
 * `npm run rpm`: builds dist/imageio-VERSION-1.x86_64.rpm from the single executable that
 * `npm run package` made, with packaging/imageio.spec and rpmbuild (Debian: apt-get install
 * rpm). The koffi addon goes in too, as /usr/lib64/imageio/koffi.node, so the installed
 * executable loads it from there instead of writing a copy at each start as root. So do the
 * documentation (README.md, docs/), LICENSE, a logrotate rule, and man pages generated from
 * the command line's help (build-man.mjs), for which it compiles the CLI first (tsc).
 *
 * Usage: node scripts/package/build-rpm.mjs [--exe FILE] [--out-dir DIR]
 *   --exe FILE     the executable (default dist/imageio; its FILE-sea/ holds the licences)
 *   --out-dir DIR  where to put the RPM (default dist)
 */
import { spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
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
const { version, homepage } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
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
  // Man pages from the help of the CLI as compiled now, so they match the executable.
  run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.build.json")]);
  const { writeManPages } = await import("./build-man.mjs");
  const { buildProgram } = await import(pathToFileURL(join(root, "dist/cli.js")).href);
  const man = join(top, "man");
  writeManPages(await buildProgram(), man, version);
  run("tar", ["-cf", join(sources, "man.tar"), "-C", man, ...readdirSync(man).sort()]);
  run("tar", ["-cf", join(sources, "docs.tar"), "-C", join(root, "docs"), ...readdirSync(join(root, "docs")).sort()]);
  const inputs = {
    imageio: exe,
    "koffi.node": addon,
    "imageio.service": join(root, "packaging/imageio.service"),
    "imageio-proxy.service": join(root, "packaging/imageio-proxy.service"),
    "daemon.conf": join(root, "packaging/daemon.conf"),
    "proxy.conf": join(root, "packaging/proxy.conf"),
    "README.md": join(root, "README.md"),
    "THIRD-PARTY-LICENSES": licenses,
    LICENSE: join(root, "LICENSE"),
    "imageio.logrotate": join(root, "packaging/imageio.logrotate"),
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
    ...(homepage ? ["--define", `imageio_url ${homepage}`] : []),
    join(root, "packaging/imageio.spec"),
  ];
  const result = spawnSync("rpmbuild", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.status !== 0) {
    fail(`rpmbuild failed (${result.status ?? result.signal}):\n${result.stdout}${result.stderr}`);
  }
  // imageio-VERSION-1.x86_64.rpm, or -1.el9.x86_64.rpm where rpm defines %{dist}.
  const built = join(top, "RPMS/x86_64");
  const name = readdirSync(built).find((file) => file.startsWith(`imageio-${rpmVersion}-1`) && file.endsWith(".rpm"));
  if (name === undefined) fail(`rpmbuild made no imageio RPM in ${built}`);
  const rpm = join(outDir, name);
  renameSync(join(built, name), rpm);
  const size = statSync(rpm).size;
  process.stdout.write(`built ${rpm}: ${(size / 1024 / 1024).toFixed(1)} MiB\n`);
} finally {
  rmSync(top, { recursive: true, force: true });
}

/** Runs a build step; its output is shown only when it fails. */
function run(file, args) {
  const result = spawnSync(file, args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.status !== 0)
    fail(`${file} ${args.join(" ")} failed (${result.status ?? result.error}):\n${result.stdout}${result.stderr}`);
}

function fail(message) {
  process.stderr.write(`build-rpm: ${message}\n`);
  process.exit(1);
}
