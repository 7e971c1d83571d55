/**
 * `imageio checksum IMAGE|URL`: the block-hash checksum (spec §5.8) of a local image, or of a
 * ticket's image computed by its daemon (GET …/checksum: no data crosses the network), printed
 * as the daemon's JSON answer, so an image and its uploaded copy compare with `diff`.
 * A qcow2 (or other non-raw) image is read through a private qemu-nbd: its guest data is hashed.
 * Exit status: 0, 1 failed, 2 usage error.
 */
import { type Command, Option } from "commander";
import { CancelledError, InvalidArgumentError, UnsupportedUrlError } from "../errors.js";
import type { Backend } from "../io/backend.js";
import {
  blkhash,
  checksumAlgorithms,
  DEFAULT_CHECKSUM_ALGORITHM,
  DEFAULT_CHECKSUM_BLOCK_SIZE,
  validateChecksumParams,
} from "../io/blkhash.js";
import { openBackend } from "../io/open.js";
import { type QemuNbdServer, startQemuNbd } from "../io/qemu-nbd.js";
import { pythonJson } from "../pyformat.js";
import { parseSize } from "../units.js";
import {
  checkSourceFormat,
  describeFailure,
  type Endpoint,
  FORMAT_CHOICES,
  type FormatChoice,
  parseEndpoint,
  statEndpoint,
  systemCaFile,
  UsageError,
} from "./copy-endpoints.js";

interface ChecksumCommandOptions {
  algorithm: string;
  blockSize: string;
  format: FormatChoice;
  caFile?: string;
  insecure?: boolean;
}

/** Adds `imageio checksum` to the program. */
export function addChecksumCommand(program: Command): void {
  program
    .command("checksum")
    .description("print the block checksum of a local image or of a ticket's image, as the daemon reports it")
    .argument("<image>", "file, block device, file: URL, nbd: URL or https://HOST:PORT/images/TICKET")
    .addOption(
      new Option("-a, --algorithm <name>", `hash algorithm: ${checksumAlgorithms.join(", ")}`).default(
        DEFAULT_CHECKSUM_ALGORITHM,
      ),
    )
    .addOption(
      new Option("-b, --block-size <size>", "bytes per block, a multiple of 4 KiB from 1M to 16M").default(
        String(DEFAULT_CHECKSUM_BLOCK_SIZE),
        "4M",
      ),
    )
    .addOption(
      new Option(
        "--format <format>",
        "auto: a local file's header decides (qcow2: the guest data, read through qemu-nbd); a device or URL is raw",
      )
        .choices(FORMAT_CHOICES)
        .default("auto"),
    )
    .addOption(new Option("--ca-file <file>", "CA bundle that signed the daemon's certificate (default: the system's)"))
    .addOption(new Option("--insecure", "do not verify the daemon's certificate (testing only)").conflicts("caFile"))
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  imageio checksum disk.raw",
        "  imageio checksum disk.qcow2      # the guest data: equal to the checksum of the disk uploaded raw",
        "  imageio checksum https://host:54322/images/TICKET --ca-file ca.pem",
        "",
        "Exit status: 0, 1 failed (qemu-nbd missing or failing included), 2 usage error.",
      ].join("\n"),
    )
    .action(runChecksum);
}

async function runChecksum(imageArg: string, options: ChecksumCommandOptions): Promise<void> {
  let endpoint: Endpoint | undefined;
  let backend: Backend | undefined;
  let server: QemuNbdServer | undefined;
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    let blockSize: number;
    try {
      blockSize = parseSize(options.blockSize);
    } catch (error) {
      throw new UsageError(`Invalid block size '${options.blockSize}': ${(error as Error).message}`);
    }
    try {
      validateChecksumParams(options.algorithm, blockSize);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
    endpoint = parseEndpoint(imageArg, "source");
    if (endpoint.kind === "stdio") throw new UsageError("checksum needs an image it can read twice: not -");
    const format = await checkSourceFormat(endpoint, await statEndpoint(endpoint), options.format, "--format");
    if (endpoint.kind === "local" && format !== "raw") {
      // The guest's data, as the daemon would hash it once uploaded raw.
      server = await startQemuNbd({ path: endpoint.path, format, readonly: true, connections: 1 });
      backend = await openBackend(server.url, { readonly: true });
    } else {
      const caFile =
        options.caFile ?? (endpoint.kind === "remote" && !options.insecure ? await systemCaFile() : undefined);
      backend = await openBackend(endpoint.url, {
        readonly: true,
        ...(caFile === undefined ? {} : { caFile }),
        ...(options.insecure ? { insecure: true } : {}),
      });
    }
    const result = backend.checksum
      ? await backend.checksum(options.algorithm, blockSize)
      : await blkhash(backend, { algorithm: options.algorithm, blockSize, signal: controller.signal });
    process.stdout.write(`${pythonJson(result)}\n`);
    process.exitCode = 0;
  } catch (error) {
    const usage = error instanceof UsageError || error instanceof UnsupportedUrlError;
    const interrupted = error instanceof CancelledError && controller.signal.aborted;
    process.exitCode = usage || error instanceof InvalidArgumentError ? 2 : interrupted ? 130 : 1;
    process.stderr.write(`imageio checksum: ${describeFailure(error, endpoint === undefined ? [] : [endpoint])}\n`);
    if (process.exitCode === 2) process.stderr.write("(run 'imageio checksum --help' for usage)\n");
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await backend?.close();
    await server?.stop();
  }
}
