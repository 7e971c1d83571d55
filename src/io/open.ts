/**
 * Opens a backend from an image URL: the scheme picks the implementation, like
 * ovirt-imageio's backends. Backends that need aligned I/O come wrapped in AlignedBackend,
 * so every caller may use any offset, length and buffer.
 */
import { isAbsolute } from "node:path";
import { fileURLToPath } from "node:url";
import { UnsupportedUrlError } from "../errors.js";
import { AlignedBackend } from "./aligned.js";
import type { Backend } from "./backend.js";
import { FileBackend, type FileBackendOptions } from "./file.js";
import type { HttpBackendOptions } from "./http.js";
import { MemoryBackend } from "./memory.js";
import type { NbdBackendOptions } from "./nbd.js";
import { parseNbdUrl } from "./nbd-url.js";
import { checkRemoteImageUrl } from "./remote-url.js";

export interface OpenOptions extends FileBackendOptions, HttpBackendOptions, NbdBackendOptions {}

type Opener = (url: URL, options: OpenOptions) => Promise<Backend>;

const openers: Record<string, Opener> = {
  "file:": openFile,
  "memory:": async (_url, options) => MemoryBackend.create({ readonly: options.readonly ?? false }),
  "http:": openHttp,
  "https:": openHttp,
  "nbd:": openNbd,
};

/** Loaded on first use: a local copy starts without the TLS and HTTP client modules. */
async function openHttp(url: URL, options: OpenOptions): Promise<Backend> {
  const { HttpBackend } = await import("./http.js");
  return HttpBackend.open(url, options);
}

/** URL schemes openBackend understands. */
export const supportedSchemes = (): string[] => Object.keys(openers).map((scheme) => scheme.slice(0, -1));

/**
 * Opens the image at `url` (`file:///path`, `nbd:unix:/path[:exportname=NAME]`,
 * `https://host:port/images/ID`, `memory:`).
 * @throws UnsupportedUrlError for a malformed URL or an unknown scheme; the backend's open
 *   errors (BackendOpenError) otherwise.
 */
export async function openBackend(url: string | URL, options: OpenOptions = {}): Promise<Backend> {
  const parsed = parseImageUrl(url);
  return (openers[parsed.protocol] as Opener)(parsed, options);
}

/**
 * Parses an image URL as openBackend reads it: a scheme some backend serves, and a file URL
 * with an absolute path (WHATWG parsing would read `file:etc/passwd` as `/etc/passwd`).
 * @throws UnsupportedUrlError naming the problem.
 */
export function parseImageUrl(url: string | URL): URL {
  let parsed: URL;
  if (url instanceof URL) parsed = url;
  else {
    if (/^file:(?!\/)/i.test(url)) {
      throw new UnsupportedUrlError(`File URL '${url}' is relative; expecting an absolute path (file:///path)`);
    }
    try {
      parsed = new URL(url);
    } catch (error) {
      throw new UnsupportedUrlError(`Invalid image URL: '${url}'`, { cause: error });
    }
  }
  if (openers[parsed.protocol] === undefined) {
    throw new UnsupportedUrlError(
      `Unsupported URL scheme '${parsed.protocol.slice(0, -1)}' in '${parsed.href}', expecting one of ${supportedSchemes().join(", ")}`,
    );
  }
  // The checks the backend's open makes on the URL itself, so a ticket naming a URL no open
  // could ever accept is refused when it is added, not at every request.
  if (parsed.protocol === "file:") filePathOf(parsed);
  else if (parsed.protocol === "nbd:") parseNbdUrl(parsed.href);
  else if (parsed.protocol === "http:" || parsed.protocol === "https:") checkRemoteImageUrl(parsed);
  return parsed;
}

async function openFile(url: URL, options: OpenOptions): Promise<Backend> {
  const file = await FileBackend.open(filePathOf(url), options);
  return file.blockSize > 1 ? new AlignedBackend(file) : file;
}

/**
 * The local path a file URL names.
 * @throws UnsupportedUrlError for a remote host, a query or fragment, a NUL byte, or a path
 *   that is not an absolute file name.
 */
function filePathOf(url: URL): string {
  if (url.host !== "" && url.host !== "localhost") {
    throw new UnsupportedUrlError(`File URL '${url.href}' names a remote host; only local paths are supported`);
  }
  if (url.search !== "" || url.hash !== "") {
    throw new UnsupportedUrlError(`File URL '${url.href}' must not have a query or fragment`);
  }
  let path: string;
  try {
    path = fileURLToPath(url);
  } catch (error) {
    throw new UnsupportedUrlError(`File URL '${url.href}' is not a valid path`, { cause: error });
  }
  if (path.includes("\0")) throw new UnsupportedUrlError(`File URL '${url.href}' has a NUL byte in its path`);
  if (!isAbsolute(path) || path.endsWith("/"))
    throw new UnsupportedUrlError(`File URL '${url.href}' does not name a file`);
  return path;
}

async function openNbd(url: URL, options: OpenOptions): Promise<Backend> {
  // Loaded on first use, as the http backend: a file's copy starts without node:net (issue 14).
  const { NbdBackend } = await import("./nbd.js");
  // The NBD forms are not hierarchical URLs (nbd:unix:/path:exportname=x): parse the text.
  const nbd = await NbdBackend.open(url.href, options);
  return nbd.blockSize > 1 ? new AlignedBackend(nbd) : nbd;
}
