/**
 * HTTP errors and the one table that maps domain errors to statuses. Handlers throw either;
 * the router's single catch site turns them into responses.
 */
import {
  BackendIoError,
  BackendOpenError,
  CancelledError,
  CancelTimeoutError,
  ClosedError,
  ForbiddenError,
  ImageioError,
  InvalidArgumentError,
  NotSupportedError,
  OutOfRangeError,
  RemoteError,
  RemoteTimeoutError,
  RemoteUnavailableError,
  TicketNotFoundError,
  UnsupportedUrlError,
} from "../errors.js";

export type HeaderList = [string, string][];

export interface HttpErrorOptions {
  headers?: HeaderList;
  /** Close the connection after the response (e.g. 403 on image routes). */
  close?: boolean;
  /** The message as logs may show it, when it differs (ticket ids shortened, [D11]). */
  logMessage?: string;
  cause?: unknown;
}

/** An error with an HTTP status and a message the client may see. */
export class HttpError extends Error {
  readonly headers: HeaderList;
  readonly close: boolean;
  readonly logMessage: string;

  constructor(
    readonly status: number,
    message: string,
    options: HttpErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "HttpError";
    this.headers = options.headers ?? [];
    this.close = options.close ?? false;
    this.logMessage = options.logMessage ?? message;
  }
}

/** The message clients get for internal failures; details go to the log (spec §3.1). */
export const INTERNAL_ERROR_MESSAGE = "Server failed to perform the request, check logs";

/** Domain error code → HTTP status. Codes not listed are internal failures (500). */
const STATUS_BY_CODE: Record<string, number> = {
  [InvalidArgumentError.code]: 400,
  [ForbiddenError.code]: 403,
  [CancelledError.code]: 403,
  [TicketNotFoundError.code]: 404,
  [NotSupportedError.code]: 404,
  [CancelTimeoutError.code]: 409,
  [OutOfRangeError.code]: 416,
  [BackendOpenError.code]: 500,
  [BackendIoError.code]: 500,
  [ClosedError.code]: 500,
  [UnsupportedUrlError.code]: 500,
  [RemoteUnavailableError.code]: 502,
  [RemoteTimeoutError.code]: 504,
};

/**
 * Turns anything thrown by a handler into an HttpError. A cancelled operation gets 403 and
 * the connection closed, like a ticket that disappeared under it.
 */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof RemoteError) {
    // The daemon behind a proxy answered: its status, message and content-range pass through.
    const headers: HeaderList = error.contentRange === undefined ? [] : [["content-range", error.contentRange]];
    return new HttpError(error.status, error.message, {
      headers,
      close: error.status === 403,
      cause: error,
      logMessage: error.logMessage,
    });
  }
  if (error instanceof ImageioError) {
    const status = STATUS_BY_CODE[error.code] ?? 500;
    // 502 and 504 name the remote and the reason; other 5xx hide internal details.
    if (status === 500) return new HttpError(500, INTERNAL_ERROR_MESSAGE, { cause: error });
    const message = error instanceof NotSupportedError ? `Operation not supported: ${error.message}` : error.message;
    const close = error instanceof CancelledError;
    const logMessage =
      error instanceof ForbiddenError || error instanceof TicketNotFoundError ? error.logMessage : message;
    return new HttpError(status, message, { cause: error, close, logMessage });
  }
  return new HttpError(500, INTERNAL_ERROR_MESSAGE, { cause: error });
}
