/**
 * `imageio version [--verbose]`, also reached as `imageio --version [--verbose]`: the product
 * version, and with --verbose what the executable runs on — Node.js (and whether it is an LTS
 * line, which is what gets security fixes), the OpenSSL every transfer's TLS goes through,
 * and the koffi addon — so an admin can tell what a host runs without unpacking anything.
 */
import type { Command } from "commander";
import { VERSION } from "../version.js";

/** The lines `imageio version` prints. */
export async function versionText(verbose: boolean): Promise<string> {
  if (!verbose) return `${VERSION}\n`;
  const lts = process.release.lts === undefined ? "not an LTS release" : `LTS ${process.release.lts}`;
  const { isSea } = await import("node:sea").catch(() => ({ isSea: () => false }));
  return [
    `imageio ${VERSION}`,
    `node ${process.versions.node} (${lts}${isSea() ? ", embedded" : `, ${process.execPath}`})`,
    `openssl ${process.versions.openssl}`,
    `koffi ${await loadedKoffiVersion()}`,
    "",
  ].join("\n");
}

/**
 * The koffi addon's version, or why it does not load: this is where an admin looks when
 * direct I/O fails, so it must not fail itself. Loaded only here: the plain version needs no FFI.
 */
async function loadedKoffiVersion(): Promise<string> {
  try {
    const { koffiVersion } = await import("../io/native.js");
    return koffiVersion();
  } catch (error) {
    return `(cannot load: ${(error as Error).message.split("\n")[0]})`;
  }
}

/** Registers `imageio version`. */
export function addVersionCommand(program: Command): void {
  program
    .command("version")
    .description("print the version; with --verbose also the Node.js, OpenSSL and koffi it runs on")
    .option("-v, --verbose", "also print the embedded Node.js, OpenSSL and koffi versions")
    .addHelpText("after", "\nExample:\n  imageio version --verbose")
    .action(async (options: { verbose?: boolean }) => {
      process.stdout.write(await versionText(options.verbose === true));
    });
}

/**
 * `imageio --version --verbose` (in any order, nothing else): commander's --version prints
 * and exits on its own, so this form is recognised before parsing.
 */
export function isVerboseVersionRequest(args: readonly string[]): boolean {
  return args.length === 2 && args.includes("--verbose") && (args.includes("--version") || args.includes("-V"));
}
