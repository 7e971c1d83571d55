/**
 * NBD URLs as oVirt writes them into tickets (spec §8): `nbd:unix:/path[:exportname=NAME]`,
 * `nbd:HOST:PORT[:exportname=NAME]` and `nbd://HOST[:PORT]/NAME`. TLS (`nbds`) is refused:
 * Vdsm serves its exports on local unix sockets only.
 */
import { isAbsolute } from "node:path";
import { UnsupportedUrlError } from "../errors.js";

/** Where the NBD server listens. */
export type NbdAddress = { readonly path: string } | { readonly host: string; readonly port: number };

export interface NbdTarget {
  readonly address: NbdAddress;
  /** Empty: the server's default export (qemu-nbd's `--export-name=` default). */
  readonly exportName: string;
}

/** The IANA port of NBD, used when an `nbd://` URL names none. */
export const NBD_DEFAULT_PORT = 10809;

const EXPORT_NAME_SUFFIX = ":exportname=";

/** Names the server for messages: `unix:/run/x.sock` or `host:port`. */
export function describeAddress(address: NbdAddress): string {
  if ("path" in address) return `unix:${address.path}`;
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * Parses an nbd URL.
 * @throws UnsupportedUrlError naming the URL and what is wrong with it.
 */
export function parseNbdUrl(url: string): NbdTarget {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  if (scheme?.startsWith("nbds")) {
    throw new UnsupportedUrlError(`NBD over TLS is not supported: '${url}' (use an nbd:unix: socket)`);
  }
  if (scheme !== "nbd") throw new UnsupportedUrlError(`Not an NBD URL: '${url}'`);
  const rest = url.slice("nbd:".length);
  if (rest.startsWith("//")) return parseAuthorityForm(url);
  const [location, exportName] = splitExportName(rest);
  if (location.startsWith("unix:")) {
    const path = location.slice("unix:".length);
    if (!isAbsolute(path) || path.endsWith("/"))
      throw new UnsupportedUrlError(`Invalid NBD URL '${url}': the socket must be an absolute path`);
    return { address: { path }, exportName };
  }
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:[\]/]+):(\d{1,5})$/.exec(location);
  if (match === null) {
    throw new UnsupportedUrlError(
      `Invalid NBD URL '${url}': expecting nbd:unix:/path[:exportname=NAME], nbd:HOST:PORT[:exportname=NAME] or nbd://HOST:PORT/NAME`,
    );
  }
  const host = (match[1] as string).replace(/^\[|\]$/g, "");
  return { address: { host, port: checkPort(url, Number(match[2])) }, exportName };
}

function splitExportName(rest: string): [string, string] {
  const at = rest.indexOf(EXPORT_NAME_SUFFIX);
  if (at === -1) return [rest, ""];
  return [rest.slice(0, at), rest.slice(at + EXPORT_NAME_SUFFIX.length)];
}

function parseAuthorityForm(url: string): NbdTarget {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new UnsupportedUrlError(`Invalid NBD URL '${url}'`, { cause: error });
  }
  if (parsed.hostname === "") throw new UnsupportedUrlError(`Invalid NBD URL '${url}': no host`);
  if (parsed.search !== "" || parsed.hash !== "" || parsed.username !== "")
    throw new UnsupportedUrlError(`Invalid NBD URL '${url}': no user, query or fragment allowed`);
  const port = parsed.port === "" ? NBD_DEFAULT_PORT : checkPort(url, Number(parsed.port));
  let exportName: string;
  try {
    exportName = decodeURIComponent(parsed.pathname.replace(/^\//, ""));
  } catch (error) {
    throw new UnsupportedUrlError(`Invalid NBD URL '${url}': bad percent-encoding in the export name`, {
      cause: error,
    });
  }
  return { address: { host: parsed.hostname.replace(/^\[|\]$/g, ""), port }, exportName };
}

function checkPort(url: string, port: number): number {
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new UnsupportedUrlError(`Invalid NBD URL '${url}': port must be 1-65535`);
  return port;
}
