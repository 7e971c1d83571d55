/**
 * The `imageio` command line: one executable, one subcommand per job.
 */
import { Command, CommanderError } from "commander";
import { isVerboseVersionRequest, versionText } from "./commands/version.js";
import { disableInspector } from "./no-inspector.js";
import { VERSION } from "./version.js";

type Registration = (program: Command) => void;

/**
 * The subcommands in help order, each loaded only when needed: `imageio copy` starts without
 * the ticket client's configuration parser or the server modules (start-up is most of the
 * time of a small copy).
 */
const COMMANDS: Record<string, () => Promise<Registration>> = {
  daemon: async () => (await import("./commands/server-cli.js")).addDaemonCommand,
  proxy: async () => (await import("./commands/server-cli.js")).addProxyCommand,
  copy: async () => (await import("./commands/copy.js")).addCopyCommand,
  checksum: async () => (await import("./commands/checksum.js")).addChecksumCommand,
  ticket: async () => (await import("./commands/ticket.js")).addTicketCommand,
  version: async () => (await import("./commands/version.js")).addVersionCommand,
};

/**
 * Builds the command tree: with `only` (a subcommand's name) that subcommand alone, else all
 * of them (for help, usage errors and suggestions). Exported so tests can inspect help
 * without spawning.
 */
export async function buildProgram(only?: string): Promise<Command> {
  const program = new Command("imageio")
    .description(
      "Move virtual-machine disk images fast and safely: an ovirt-imageio compatible daemon, proxy and copy tool",
    )
    .version(VERSION, "-V, --version", "print the version and exit (with --verbose: also Node.js, OpenSSL, koffi)")
    .showHelpAfterError("(run 'imageio --help' for usage)")
    .configureOutput({ outputError: (text, write) => write(text) })
    // Set before the subcommands are added so they inherit it: errors reach main() as exceptions.
    .exitOverride();

  const wanted = only !== undefined && Object.hasOwn(COMMANDS, only) ? [only] : Object.keys(COMMANDS);
  const registrations = await Promise.all(wanted.map((name) => (COMMANDS[name] as () => Promise<Registration>)()));
  for (const register of registrations) register(program);

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
  // No native thread is started here: booting one costs a second Node instance's start-up
  // (30-40 ms of CPU) and holds the exit until it has loaded, the whole time of an empty
  // image's copy. `imageio copy` starts one once it knows an image has data to map or zero.
  // The first word names the subcommand when it is one; anything else (an option, `help`, a
  // typo) gets the whole tree.
  const program = await buildProgram(argv[2]);
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
