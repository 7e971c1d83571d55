/**
 * What `imageio copy` and `imageio checksum` are pointed at: a local file or block device (a
 * path or a file: URL), an image on a daemon or proxy (`https://HOST:PORT/images/TICKET`), an
 * NBD export (`nbd:unix:/path`, `nbd:HOST:PORT`, `nbd://HOST:PORT/NAME`), or standard
 * input/output (`-`); and what format each holds, with the refusals that keep a container from
 * being read as a disk or overwritten with raw bytes.
 */
import type { Stats } from "node:fs";
import { stat } from "node:fs/promises";
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
import { describeAddress, type NbdTarget, parseNbdUrl } from "../io/nbd-url.js";

/** A usage error found after commander parsed the line (bad URL, refused format): exit 2. */
export class UsageError extends Error {}

export type Endpoint =
  | { kind: "local"; label: string; path: string; url: URL }
  | { kind: "remote"; label: string; url: URL }
  /** An NBD export: raw guest data already (qemu-nbd serves the guest's view), never stat()ed. */
  | { kind: "nbd"; label: string; url: string; target: NbdTarget }
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
  if (/^nbds/i.test(arg)) throw new UsageError(`Unsupported URL ${label}: NBD over TLS (nbds) is not supported`);
  // NBD URLs are not hierarchical (nbd:unix:/path:exportname=x): the nbd backend's parser reads them.
  if (/^nbd:/i.test(arg)) {
    try {
      return { kind: "nbd", label, url: arg, target: parseNbdUrl(arg) };
    } catch (error) {
      throw new UsageError(error instanceof Error ? error.message : String(error));
    }
  }
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
      `Unsupported URL ${label}: copy takes paths, file: URLs, https://HOST:PORT/images/TICKET, nbd: URLs and - (standard input or output)`,
    );
  }
  try {
    return { kind: "local", label, path: fileURLToPath(url), url };
  } catch (error) {
    throw new UsageError(`Invalid file URL ${label}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** True when both endpoints are the same NBD export (same server address, same export name). */
export function sameNbdExport(a: Endpoint, b: Endpoint): boolean {
  if (a.kind !== "nbd" || b.kind !== "nbd") return false;
  // /run//x.sock and /run/x.sock are one socket.
  const where = ({ address }: NbdTarget) =>
    "path" in address ? resolve(address.path) : describeAddress(address).toLowerCase();
  return where(a.target) === where(b.target) && a.target.exportName === b.target.exportName;
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
 * Resolves `--src-format` (`--format` for checksum) for the source. auto: a local regular file
 * is what its header says; a device, URL, NBD export or stream is raw. A format other than raw
 * is read through a private qemu-nbd (src/io/qemu-nbd.ts), which gives the guest's data.
 * @throws UsageError (exit 2) for a format asked of what only holds raw data.
 */
export async function checkSourceFormat(
  src: Endpoint,
  srcStat: Stats | undefined,
  choice: FormatChoice,
  flag = "--src-format",
): Promise<ImageFormat> {
  if (choice === "raw") return "raw";
  if (src.kind !== "local") {
    if (choice === "qcow2") {
      throw new UsageError(
        src.kind === "nbd"
          ? `${flag} qcow2 needs a local file; the NBD export ${src.label} serves its guest data, read as raw`
          : `${flag} qcow2 needs a local file; ${src.label} is read as raw (download it raw, then convert it)`,
      );
    }
    return "raw";
  }
  if (choice === "qcow2") return "qcow2";
  return (srcStat?.isFile() ? await detectImageFormat(src.path) : undefined) ?? "raw";
}

/** How the destination is written. */
export interface DestinationFormat {
  /** raw: bytes as they are; anything else: through a private qemu-nbd, in that format. */
  format: ImageFormat;
  /** A missing qcow2 destination, to be created with the source's size before the copy. */
  create: boolean;
}

/**
 * Resolves `--dst-format` for the destination and refuses to destroy a container: raw bytes
 * never go over an existing non-raw image (file or device) unless `--dst-format raw` says so;
 * with auto, an existing image is written in its own format (its guest data is replaced).
 * auto for a missing file: qcow2 when its name ends in .qcow2, raw otherwise.
 * @throws UsageError (exit 2) saying what the destination is and how to override.
 */
export async function checkDestinationFormat(
  dst: Endpoint,
  dstStat: Stats | undefined,
  choice: FormatChoice,
): Promise<DestinationFormat> {
  const raw: DestinationFormat = { format: "raw", create: false };
  if (choice === "raw") return raw;
  if (dst.kind !== "local") {
    if (choice === "qcow2") {
      throw new UsageError(`--dst-format qcow2 needs a local file; ${dst.label} is written as raw`);
    }
    return raw;
  }
  if (dstStat === undefined) {
    return choice === "qcow2" || /\.qcow2$/i.test(dst.path) ? { format: "qcow2", create: true } : raw;
  }
  // Unreadable: then it cannot be opened for writing either, and that error says why.
  const detected = (await detectImageFormat(dst.path).catch(() => undefined)) ?? "raw";
  if (choice === "qcow2" && detected !== "qcow2") {
    throw new UsageError(
      `${dst.label} is ${describeFormat(detected)}, not qcow2: pass --dst-format ${detected === "raw" ? "raw (or auto) to write raw bytes into it" : "auto to write into it as it is, or --dst-format raw to overwrite it with raw bytes"}`,
    );
  }
  return { format: detected, create: false };
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
    // node:http only for this message: a local copy starts without it (issue 14).
    const reason = process.getBuiltinModule("node:http").STATUS_CODES[error.status];
    const status = `${error.status}${reason ? ` ${reason}` : ""}`;
    const expired = error.status === 403 ? " (the ticket expired, was removed, or does not allow this operation)" : "";
    return `${where}the daemon answered ${status}${expired}: ${error.logMessage}`;
  }
  if (error instanceof RemoteUnavailableError || error instanceof RemoteTimeoutError) return `${where}${error.message}`;
  if (error instanceof ImageioError || error instanceof UsageError) return error.message;
  // Anything else is a bug or a system error we did not wrap: keep the stack for the report.
  if (error instanceof Error) return error.stack ?? error.message;
  return String(error);
}
