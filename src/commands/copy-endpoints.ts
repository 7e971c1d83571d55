/**
 * What `imageio copy` and `imageio checksum` are pointed at: a local file or block device (a
 * path or a file: URL), an image on a daemon or proxy (`https://HOST:PORT/images/TICKET`), or
 * standard input/output (`-`); and what format each holds, with the refusals that keep a
 * container from being read as a disk or overwritten with raw bytes.
 */
import type { Stats } from "node:fs";
import { stat } from "node:fs/promises";
import { STATUS_CODES } from "node:http";
import { resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  BackendOpenError,
  ImageioError,
  RemoteError,
  RemoteTimeoutError,
  RemoteUnavailableError,
  systemErrorCode,
} from "../errors.js";
import { describeFormat, detectImageFormat, type ImageFormat } from "../io/image-format.js";

/** A usage error found after commander parsed the line (bad URL, refused format): exit 2. */
export class UsageError extends Error {}

export type Endpoint =
  | { kind: "local"; label: string; path: string; url: URL }
  | { kind: "remote"; label: string; url: URL }
  | { kind: "stdio"; label: string };

/** What `--src-format` and `--dst-format` take. */
export type FormatChoice = "raw" | "qcow2" | "auto";
export const FORMAT_CHOICES: FormatChoice[] = ["raw", "qcow2", "auto"];

/** A ticket URL with the ticket id cut to 8 characters: ids are credentials, and messages end up in logs. */
export function redactUrl(url: URL): string {
  const match = /^(\/images\/)([^/]+)$/.exec(url.pathname);
  const id = match?.[2] ?? "";
  const shown = id.length > 8 ? `${match?.[1]}${id.slice(0, 8)}…` : url.pathname;
  return `${url.protocol}//${url.host}${shown}`;
}

/**
 * Parses one SRC or DST argument.
 * @throws UsageError for a malformed or unsupported URL, or a relative file: URL.
 */
export function parseEndpoint(arg: string, role: "source" | "destination"): Endpoint {
  if (arg === "-") return { kind: "stdio", label: role === "source" ? "standard input" : "standard output" };
  const label = `'${arg}'`;
  // Only "file:" and "scheme://" are URLs, so a relative path such as "disk:1.raw" stays a path.
  if (!/^file:/i.test(arg) && !/^[a-z][a-z0-9+.-]*:\/\//i.test(arg)) {
    const url = pathToFileURL(resolve(arg));
    return { kind: "local", label, path: fileURLToPath(url), url };
  }
  if (/^file:/i.test(arg) && !/^file:\//i.test(arg)) {
    // new URL("file:src.raw") is file:///src.raw: a relative path silently made absolute.
    throw new UsageError(
      `Relative file: URL ${label}: write an absolute URL (file:///path/to/image) or the plain path ('${arg.slice(5)}')`,
    );
  }
  let url: URL;
  try {
    url = new URL(arg);
  } catch {
    throw new UsageError(`Invalid URL ${label}`);
  }
  if (url.protocol === "https:" || url.protocol === "http:") {
    if (!/^\/images\/[^/]+$/.test(url.pathname) || url.search !== "" || url.hash !== "") {
      throw new UsageError(`Invalid image URL '${redactUrl(url)}': expected https://HOST:PORT/images/TICKET`);
    }
    return { kind: "remote", label: `'${redactUrl(url)}'`, url };
  }
  if (url.protocol !== "file:") {
    throw new UsageError(
      `Unsupported URL ${label}: copy takes paths, file: URLs, https://HOST:PORT/images/TICKET and - (standard input or output)`,
    );
  }
  try {
    return { kind: "local", label, path: fileURLToPath(url), url };
  } catch (error) {
    throw new UsageError(`Invalid file URL ${label}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** stat() of a local endpoint; undefined when it does not exist. */
export async function statEndpoint(endpoint: Endpoint): Promise<Stats | undefined> {
  if (endpoint.kind !== "local") return undefined;
  try {
    return await stat(endpoint.path);
  } catch (error) {
    if (systemErrorCode(error) === "ENOENT") return undefined;
    const reason = error instanceof Error ? error.message : String(error);
    throw new BackendOpenError(`Cannot access ${endpoint.label}: ${reason}`, { cause: error });
  }
}

/**
 * Formats other than raw are read and written through a private qemu-nbd (src/io/qemu-nbd.ts)
 * and the nbd backend; until that backend is part of imageio they are refused, never copied
 * as container bytes.
 */
const NOT_YET = "needs imageio's nbd backend, which this version does not have yet";

/** How the refusal of a non-raw source reads for each command. */
export interface SourceFormatWording {
  /** The option that forces raw. */
  flag: string;
  /** What forcing raw does. */
  rawAction: string;
}

/**
 * Resolves `--src-format` for the source and refuses what cannot be read as asked.
 * auto: a local regular file is what its header says; a device, URL or stream is raw.
 * @throws UsageError (exit 2) saying what the image is and what to do instead.
 */
export async function checkSourceFormat(
  src: Endpoint,
  srcStat: Stats | undefined,
  choice: FormatChoice,
  wording: SourceFormatWording = { flag: "--src-format", rawAction: "copy the file's bytes as they are" },
) {
  if (choice === "raw") return;
  if (src.kind !== "local") {
    if (choice === "qcow2") {
      throw new UsageError(
        `--src-format qcow2 needs a local file; ${src.label} is read as raw (download it raw, then convert it)`,
      );
    }
    return;
  }
  let format: ImageFormat | undefined = choice === "qcow2" ? "qcow2" : undefined;
  if (format === undefined && srcStat?.isFile()) format = await detectImageFormat(src.path);
  if (format === undefined || format === "raw") return;
  throw new UsageError(
    `${src.label} is ${describeFormat(format)}: reading its guest data ${NOT_YET}. ` +
      `Convert it first (qemu-img convert -O raw ${src.label} disk.raw), or pass ${wording.flag} raw ` +
      `to ${wording.rawAction}`,
  );
}

/**
 * Resolves `--dst-format` for the destination and refuses to destroy a container: raw bytes
 * never go over an existing non-raw image (file or device) unless `--dst-format raw` says so.
 * auto for a missing file: qcow2 when its name ends in .qcow2, raw otherwise.
 * @throws UsageError (exit 2) saying what the destination is and how to override.
 */
export async function checkDestinationFormat(dst: Endpoint, dstStat: Stats | undefined, choice: FormatChoice) {
  if (choice === "raw") return;
  if (dst.kind !== "local") {
    if (choice === "qcow2") {
      throw new UsageError(`--dst-format qcow2 needs a local file; ${dst.label} is written as raw`);
    }
    return;
  }
  if (dstStat === undefined) {
    if (choice === "qcow2" || /\.qcow2?$/i.test(dst.path)) {
      throw new UsageError(
        `Creating ${dst.label} as a qcow2 image ${NOT_YET}. Copy to a raw file and convert it ` +
          "(qemu-img convert -O qcow2), or pass --dst-format raw to write raw bytes to this name",
      );
    }
    return;
  }
  // Unreadable: then it cannot be opened for writing either, and that error says why.
  const detected = await detectImageFormat(dst.path).catch(() => undefined);
  const format = choice === "qcow2" ? "qcow2" : (detected ?? "raw");
  if (detected !== undefined && detected !== "raw") {
    throw new UsageError(
      `${dst.label} is ${describeFormat(detected)}: writing into it as ${detected} ${NOT_YET}, and writing raw ` +
        `bytes over it would destroy the image. Pass --dst-format raw to overwrite it with raw bytes`,
    );
  }
  if (format === "qcow2") {
    throw new UsageError(
      `${dst.label} is ${describeFormat("raw")}, not qcow2; pass --dst-format raw (or auto) to write raw bytes into it`,
    );
  }
}

/**
 * The system's CA bundle for verifying daemons (Node otherwise trusts only its own copy of
 * Mozilla's list): SSL_CERT_FILE, then the distributions' standard paths.
 */
export async function systemCaFile(): Promise<string | undefined> {
  const candidates = [
    process.env.SSL_CERT_FILE,
    "/etc/pki/tls/certs/ca-bundle.crt", // Fedora, RHEL, CentOS
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
    "/etc/ssl/ca-bundle.pem", // SUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
  ];
  for (const candidate of candidates) {
    if (candidate === undefined || candidate === "") continue;
    try {
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // Not on this system: try the next.
    }
  }
  return undefined;
}

/**
 * The message for a failure. A daemon's answer is named by its URL (the ticket id cut short),
 * its status and its message (its own ticket ids cut short too).
 */
export function describeFailure(error: unknown, endpoints: Endpoint[]): string {
  const remotes = endpoints.filter((endpoint) => endpoint.kind === "remote").map((endpoint) => endpoint.label);
  const where = remotes.length === 1 ? `${remotes[0]}: ` : "";
  if (error instanceof RemoteError) {
    const status = `${error.status}${STATUS_CODES[error.status] ? ` ${STATUS_CODES[error.status]}` : ""}`;
    const expired = error.status === 403 ? " (the ticket expired, was removed, or does not allow this operation)" : "";
    return `${where}the daemon answered ${status}${expired}: ${error.logMessage}`;
  }
  if (error instanceof RemoteUnavailableError || error instanceof RemoteTimeoutError) return `${where}${error.message}`;
  if (error instanceof ImageioError || error instanceof UsageError) return error.message;
  // Anything else is a bug or a system error we did not wrap: keep the stack for the report.
  if (error instanceof Error) return error.stack ?? error.message;
  return String(error);
}
