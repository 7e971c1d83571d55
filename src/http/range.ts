/**
 * Strict parsers for `Range` (GET) and `Content-Range` (PUT), spec §4. Anything not
 * understood is rejected: a misread header would write data at the wrong offset.
 */
import { HttpError } from "./errors.js";

/** A requested byte range: `last` is inclusive, undefined for an open range `bytes=a-`. */
export interface ByteRangeRequest {
  first: number;
  last: number | undefined;
}

const MAX = Number.MAX_SAFE_INTEGER;

function toInt(digits: string): number | undefined {
  const value = Number(digits);
  return Number.isSafeInteger(value) && value <= MAX ? value : undefined;
}

/**
 * Parses a Range header value.
 * @throws HttpError 416 (without content-range) with upstream's messages.
 */
export function parseRange(value: string): ByteRangeRequest {
  const unsatisfiable = (reason: string) => new HttpError(416, `Cannot satisfy range '${value}', ${reason}`);
  if (/^bytes=-\d+$/.test(value)) throw new HttpError(416, "suffix-byte-range-spec not supported yet");
  if (value === "bytes=-") throw unsatisfiable("no first or last");
  const match = /^bytes=(\d+)-(\d*)$/.exec(value);
  if (!match) throw unsatisfiable("invalid range or multiple ranges");
  const first = toInt(match[1] as string);
  const last = match[2] === "" ? undefined : toInt(match[2] as string);
  if (first === undefined || (match[2] !== "" && last === undefined))
    throw unsatisfiable("invalid range or multiple ranges");
  if (last !== undefined && last < first) throw unsatisfiable("first > last");
  return { first, last };
}

/**
 * Parses a Content-Range header value; only `first` (the write offset) is used.
 * @throws HttpError 400 `Invalid Content-Range '<v>'[, reason]`.
 */
export function parseContentRange(value: string): number {
  const invalid = (reason?: string) =>
    new HttpError(400, `Invalid Content-Range '${value}'${reason ? `, ${reason}` : ""}`, { close: true });
  const match = /^bytes (\d+)-(\d+|\*)\/(\d+|\*)$/.exec(value);
  if (!match) throw invalid();
  const first = toInt(match[1] as string);
  const last = match[2] === "*" ? undefined : toInt(match[2] as string);
  const complete = match[3] === "*" ? undefined : toInt(match[3] as string);
  if (first === undefined || (match[2] !== "*" && last === undefined) || (match[3] !== "*" && complete === undefined)) {
    throw invalid();
  }
  if (last !== undefined && last < first) throw invalid("first > last");
  if (last !== undefined && complete !== undefined && last >= complete) throw invalid("last >= complete");
  return first;
}
