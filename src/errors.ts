/**
 * Domain errors. Each class carries a stable `code` that callers, logs and tests match on;
 * messages are for people and may change. Nothing here knows about HTTP: src/http maps these
 * codes to statuses in one table.
 */

export interface ImageioErrorOptions {
  cause?: unknown;
}

/** Base class of every error imageio raises on purpose. */
export class ImageioError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options: ImageioErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
  }
}

/** A caller passed a value that can never be valid (negative offset, bad URL, wrong type). */
export class InvalidArgumentError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_INVALID_ARGUMENT";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(InvalidArgumentError.code, message, options);
  }
}

/** A range reaches past what the image or device holds. */
export class OutOfRangeError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_OUT_OF_RANGE";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(OutOfRangeError.code, message, options);
  }
}

/** The backend cannot do this operation at all (dirty extents on a file, writes on a read-only backend). */
export class NotSupportedError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_NOT_SUPPORTED";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(NotSupportedError.code, message, options);
  }
}

/** No backend handles this URL scheme, or the URL is malformed. */
export class UnsupportedUrlError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_UNSUPPORTED_URL";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(UnsupportedUrlError.code, message, options);
  }
}

/** The image could not be opened (missing, a directory, no permission, direct I/O refused). */
export class BackendOpenError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_BACKEND_OPEN";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(BackendOpenError.code, message, options);
  }
}

/** A read, write, zero or flush failed in the system; `errno` names the system error (EIO, ENOSPC). */
export class BackendIoError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_BACKEND_IO";
  readonly errno: string | undefined;
  constructor(message: string, errno: string | undefined, options?: ImageioErrorOptions) {
    super(BackendIoError.code, message, options);
    this.errno = errno;
  }
}

/** The backend was used after close(). */
export class ClosedError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_CLOSED";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(ClosedError.code, message, options);
  }
}

/** The operation was stopped on request (Ctrl-C, a cancelled ticket). */
export class CancelledError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_CANCELLED";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(CancelledError.code, message, options);
  }
}

/** The `code` of a Node system error (ENOENT, EINVAL…), or undefined for anything else. */
export function systemErrorCode(error: unknown): string | undefined {
  if (error instanceof Error && "code" in error && typeof error.code === "string") return error.code;
  return undefined;
}

/** A ticket does not allow this request (unknown, cancelled, expired, or op not allowed). */
export class ForbiddenError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_FORBIDDEN";
  /** The message with ticket ids shortened, for logs ([D11]). */
  readonly logMessage: string;
  constructor(reason: string, logReason: string = reason, options?: ImageioErrorOptions) {
    super(ForbiddenError.code, `You are not allowed to access this resource: ${reason}`, options);
    this.logMessage = `You are not allowed to access this resource: ${logReason}`;
  }
}

/** The control API was asked about a ticket it does not hold. */
export class TicketNotFoundError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_TICKET_NOT_FOUND";
  /** The message with the ticket id shortened, for logs ([D11]). */
  readonly logMessage: string;
  constructor(message: string, logMessage: string = message, options?: ImageioErrorOptions) {
    super(TicketNotFoundError.code, message, options);
    this.logMessage = logMessage;
  }
}

/** Removing a ticket timed out waiting for its operations to stop; the caller retries. */
export class CancelTimeoutError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_CANCEL_TIMEOUT";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(CancelTimeoutError.code, message, options);
  }
}

/** Invalid configuration: names the file and key. */
export class ConfigError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_CONFIG";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(ConfigError.code, message, options);
  }
}

/** A copy finished but its destination does not hold the same bytes as its source (`--verify`). */
export class VerifyError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_VERIFY_FAILED";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(VerifyError.code, message, options);
  }
}

/**
 * A remote images service (the daemon behind a proxy) answered with an error. Its status and
 * message pass through to our client.
 */
export class RemoteError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_REMOTE";
  /** The message with the remote's ticket id shortened, for logs ([D11]). */
  readonly logMessage: string;
  constructor(
    message: string,
    /** The remote's HTTP status. */
    readonly status: number,
    /** The remote's content-range header (416 responses), passed on as it is. */
    readonly contentRange: string | undefined,
    options: ImageioErrorOptions & { logMessage?: string } = {},
  ) {
    super(RemoteError.code, message, options);
    this.logMessage = options.logMessage ?? message;
  }
}

/** A remote images service cannot be reached (refused, unknown host, TLS verification failed). */
export class RemoteUnavailableError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_REMOTE_UNAVAILABLE";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(RemoteUnavailableError.code, message, options);
  }
}

/** A remote images service did not answer in time. */
export class RemoteTimeoutError extends ImageioError {
  static readonly code = "IMAGEIO_ERR_REMOTE_TIMEOUT";
  constructor(message: string, options?: ImageioErrorOptions) {
    super(RemoteTimeoutError.code, message, options);
  }
}
