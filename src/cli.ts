/**
 * The `imageio` command line: one executable, one subcommand per job.
 */
import { Command, CommanderError } from "commander";
import { addChecksumCommand } from "./commands/checksum.js";
import { addCopyCommand } from "./commands/copy.js";
import { addDaemonCommand, addProxyCommand } from "./commands/server-cli.js";
import { addTicketCommand } from "./commands/ticket.js";
import { addVersionCommand, isVerboseVersionRequest, versionText } from "./commands/version.js";
import { disableInspector } from "./no-inspector.js";
import { VERSION } from "./version.js";

/** Builds the command tree; exported so tests can inspect help without spawning. */
export function buildProgram(): Command {
  const program = new Command("imageio")
    .description(
      "Move virtual-machine disk images fast and safely: an ovirt-imageio compatible daemon, proxy and copy tool",
    )
    .version(VERSION, "-V, --version", "print the version and exit (with --verbose: also Node.js, OpenSSL, koffi)")
    .showHelpAfterError("(run 'imageio --help' for usage)")
    .configureOutput({ outputError: (text, write) => write(text) })
    // Set before the subcommands are added so they inherit it: errors reach main() as exceptions.
    .exitOverride();

  addDaemonCommand(program);
  addProxyCommand(program);
  addCopyCommand(program);
  addChecksumCommand(program);
  addTicketCommand(program);
  addVersionCommand(program);

  program.addHelpText(
    "after",
    [
      "",
      "Examples:",
      "  imageio daemon --config /etc/ovirt-imageio",
      "  imageio proxy --config /etc/ovirt-imageio-proxy",
      "  imageio copy disk.raw /dev/vg0/lv-disk",
      "  imageio copy disk.raw https://host:54322/images/TICKET --ca-file ca.pem",
      "  imageio checksum disk.raw",
    ].join("\n"),
  );
  return program;
}

/** Runs the command line; exits 2 on usage errors. */
export async function main(argv: string[]): Promise<void> {
  if (disableInspector()) {
    process.stderr.write("imageio: the Node.js inspector (--inspect, NODE_OPTIONS) is not allowed; closed it\n");
  }
  // `imageio --help | head` closes the pipe early: that is the reader's choice, not an error.
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0);
    throw error;
  });
  if (isVerboseVersionRequest(argv.slice(2))) {
    process.stdout.write(await versionText(true));
    return;
  }
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end with exit code 0; usage errors with 2.
      process.exitCode = error.exitCode === 0 ? 0 : 2;
      return;
    }
    throw error;
  }
}
