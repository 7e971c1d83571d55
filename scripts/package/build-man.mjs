#!/usr/bin/env node
/**
 * Man pages generated from the command line's own help, so they never drift from it:
 * imageio(1) and one page per subcommand, imageio-daemon(1), imageio-proxy(1), imageio-copy(1),
 * imageio-ticket(1) (with its add/show/extend/remove) and imageio-version(1). Each page holds
 * the command's description, usage, options with their defaults, subcommands, and the text the
 * command adds after its help (examples, exit statuses).
 *
 * Reads the compiled CLI (dist/cli.js, from `npm run build`). build-rpm.mjs runs it; by hand:
 *   node scripts/package/build-man.mjs [--out-dir DIR]   (default dist/man)
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** Escapes text for roff: backslashes, hyphens that are minus signs, and leading dots. */
function roff(text) {
  return text
    .replaceAll("\\", "\\e")
    .replaceAll("-", "\\-")
    .split("\n")
    .map((line) => (/^[.']/.test(line) ? `\\&${line}` : line))
    .join("\n");
}

/** What a command prints after its standard help (examples and notes from addHelpText). */
function helpAfter(command) {
  let full = "";
  command.configureOutput({ writeOut: (text) => (full += text), writeErr: () => undefined });
  command.outputHelp();
  const base = command.helpInformation();
  const start = full.indexOf(base);
  return (start === -1 ? "" : full.slice(start + base.length)).trim();
}

function optionsSection(command) {
  const lines = [];
  for (const option of command.options) {
    lines.push(".TP", `.B ${roff(option.flags)}`);
    let text = option.description;
    if (option.defaultValue !== undefined && option.defaultValue !== false) {
      text += ` (default: ${JSON.stringify(option.defaultValue)})`;
    }
    lines.push(roff(text));
  }
  lines.push(".TP", ".B \\-h, \\-\\-help", "print this help and exit");
  return lines;
}

function commandLine(command) {
  const names = [];
  for (let at = command; at !== null && at !== undefined; at = at.parent) names.unshift(at.name());
  return names.join(" ");
}

function page(command, { title, sections, version, date }) {
  const name = commandLine(command);
  const lines = [
    `.TH ${roff(title.toUpperCase())} 1 "${date}" "imageio ${version}" "User Commands"`,
    ".SH NAME",
    `${roff(name)} \\- ${roff(command.description())}`,
    ".SH SYNOPSIS",
    `.B ${roff(name)}`,
    roff(command.usage()),
    ".SH DESCRIPTION",
    roff(command.description()),
    ".SH OPTIONS",
    ...optionsSection(command),
  ];
  const visible = command.commands.filter((sub) => !sub._hidden);
  if (visible.length > 0) {
    lines.push(".SH COMMANDS");
    for (const sub of visible) {
      lines.push(".TP", `.B ${roff(`${sub.name()} ${sub.usage()}`)}`, roff(sub.description()));
      // A nested command (imageio ticket add) has no page of its own: its notes go here.
      const notes = command.parent ? helpAfter(sub) : "";
      if (notes !== "") lines.push(".RS", ".nf", roff(notes), ".fi", ".RE");
    }
  }
  const after = helpAfter(command);
  if (after !== "") lines.push(".SH NOTES", ".nf", roff(after), ".fi");
  lines.push(...sections);
  return `${lines.join("\n")}\n`;
}

/**
 * Writes imageio.1 and imageio-SUBCOMMAND.1 for every subcommand of `program` into `outDir`.
 * @returns the file names written.
 */
export function writeManPages(program, outDir, version, date = new Date().toISOString().slice(0, 10)) {
  mkdirSync(outDir, { recursive: true });
  const subcommands = program.commands.filter((command) => !command._hidden);
  const seeAlso = [
    ".SH SEE ALSO",
    ...[program, ...subcommands]
      .map((c) => `${manName(c)}(1)`)
      .join(", ")
      .split("\n"),
  ];
  const docs = [
    ".PP",
    "The HTTP API, the ticket format, every configuration key and the operations guide are in",
    ".IR /usr/share/doc/imageio/ .",
  ];
  const written = [];
  for (const command of [program, ...subcommands]) {
    const file = `${manName(command)}.1`;
    writeFileSync(
      join(outDir, file),
      page(command, { title: manName(command), sections: [...seeAlso, ...docs], version, date }),
    );
    written.push(file);
  }
  return written;
}

function manName(command) {
  return command.parent ? `imageio-${command.name()}` : "imageio";
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { "out-dir": { type: "string", default: join(root, "dist/man") } } });
  const { buildProgram } = await import(pathToFileURL(join(root, "dist/cli.js")).href);
  const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const written = writeManPages(await buildProgram(), resolve(values["out-dir"]), version);
  process.stdout.write(`wrote ${written.join(" ")} to ${resolve(values["out-dir"])}\n`);
}
