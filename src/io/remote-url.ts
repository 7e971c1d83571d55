/**
 * The shape of a remote image URL, checked apart from the http backend so that ticket
 * validation does not load the HTTP client (a local copy starts without it).
 */
import { UnsupportedUrlError } from "../errors.js";

/**
 * @throws UnsupportedUrlError unless `url` is `http(s)://host:port/images/ID` with nothing
 *   after the id (the message never shows the id, a credential).
 */
export function checkRemoteImageUrl(url: URL): void {
  if (!/^\/images\/[^/]+$/.test(url.pathname) || url.search !== "" || url.hash !== "") {
    throw new UnsupportedUrlError(
      `Remote image URL ${url.protocol}//${url.host}/… must look like https://host:port/images/ID`,
    );
  }
}
