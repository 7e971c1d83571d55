/**
 * The http backend (spec §6.4): the images API of a remote daemon as a Backend, for the
 * proxy. It verifies the daemon's certificate and hostname, keeps one keep-alive connection
 * per handle, learns features and limits with OPTIONS, and moves to the daemon's unix socket
 * when the daemon runs on this host. Downloads and uploads stream: one client request becomes
 * one remote request of the same range. Requests go through our own HTTP/1.1 client
 * (http-client/), which reads bodies straight into large buffers, over one connection per handle.
 */

import { lookup } from "node:dns/promises";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import type { Readable, Writable } from "node:stream";
import { BackendOpenError, ClosedError, NotSupportedError, RemoteError } from "../errors.js";
import { shortId } from "../log.js";
import { MiB } from "../units.js";
import {
  type Backend,
  type ByteRange,
  type Capabilities,
  type ChecksumResult,
  checkRange,
  clipRange,
  type DirtyExtent,
  type ZeroExtent,
} from "./backend.js";
import { type ClientResponse, type ClientTimeouts, HttpClient } from "./http-client/client.js";
import type { Endpoint } from "./http-client/connect.js";
import { BufferReceiver, RelayReceiver } from "./http-client/relay.js";
import { type PumpOptions, pump, relayByFilling } from "./pump.js";
import { checkRemoteImageUrl } from "./remote-url.js";
import {
  type ByteSink,
  isFillingSource,
  type StreamOptions,
  type UploadOptions,
  type UploadResult,
  writeThroughBuffers,
} from "./streaming.js";

/** An upload in flight to the remote. */
interface RemoteUpload {
  /** Where the body goes; never ended (the connection stays open for the next request). */
  body: Writable;
  /** Settles before the body should be sent: rejects when the remote refused the upload. */
  ready: Promise<void>;
  done: Promise<void>;
  /** Aborts the remote request (the client went away). */
  abort(): void;
}

/** How long a failed relay waits for the remote's own answer before giving up on it. */
const REMOTE_VERDICT_WAIT_MS = 2000;

export interface HttpBackendOptions {
  readonly?: boolean;
  /** CA bundle to verify the remote's certificate; empty or unset: the system CAs. */
  caFile?: string;
  /** Do not verify the remote's certificate and host name (`imageio copy --insecure`). */
  insecure?: boolean;
  connectTimeoutMs?: number;
  readTimeoutMs?: number;
  /** Use the remote's unix socket when it runs on this host (default true). */
  preferUnixSocket?: boolean;
}

/**
 * Bytes a relay lets its sink hold before pausing its source: chunks arrive in up to 64 KiB
 * (unix socket) and leave through sockets whose own limit is 16 KiB, so without this the
 * source would pause and resume per chunk (measured: 3.5× the writes, 10–15 % proxy CPU).
 */
const RELAY_HIGH_WATER_MARK = MiB;

/** How long an upload waits for 100 Continue before sending its body anyway. */
const CONTINUE_WAIT_MS = 1000;

/** Bytes of a remote error body passed on to our client (spec §6.4). */
const REMOTE_MESSAGE_LIMIT = 512;
/** Bytes of a remote's error or empty-success body read at most (the message is cut to the limit above). */
const REMOTE_BODY_LIMIT = 64 * 1024;
/** Bytes of a JSON answer (OPTIONS, extents, checksums) read at most. */
const JSON_BODY_LIMIT = 16 * MiB;
/** PUTs of zeros for remotes without the `zero` feature go in pieces of this size. */
const ZERO_PUT_SIZE = 4 * MiB;

/** How requests reach the remote: TLS or plain TCP, or its local unix socket. */
interface Transport {
  client: HttpClient;
  /** The remote's unix socket, when requests go there. */
  socketPath: string | undefined;
  /** For messages: host:port or the socket path. */
  where: string;
}

interface RemoteInfo {
  features: Set<string>;
  maxReaders: number;
  maxWriters: number;
  size: number | undefined;
  unixSocket: string | undefined;
}

export class HttpBackend implements Backend {
  readonly name = "http";
  readonly blockSize = 1;
  readonly directIo = false;
  readonly growable = false;
  readonly readonly: boolean;
  readonly caps: Capabilities;
  private closed = false;
  private extentsCache = new Map<string, (ZeroExtent | DirtyExtent)[]>();

  private constructor(
    private readonly url: URL,
    private readonly options: HttpBackendOptions,
    private transport: Transport,
    private readonly info: RemoteInfo,
  ) {
    this.readonly = options.readonly ?? false;
    this.caps = {
      zero: info.features.has("zero"),
      flush: info.features.has("flush"),
      extents: info.features.has("extents"),
      dirty: info.features.has("extents"),
      maxReaders: info.maxReaders,
      maxWriters: info.maxWriters,
    };
  }

  /**
   * Connects to the remote ticket at `url` (`https://host:port/images/ID`) and learns what it
   * supports.
   * @throws RemoteUnavailableError (refused, TLS verification), RemoteTimeoutError,
   *   RemoteError with the remote's status (e.g. 403 for a missing remote ticket).
   */
  static async open(url: URL, options: HttpBackendOptions = {}): Promise<HttpBackend> {
    checkRemoteImageUrl(url);
    const transport = tcpTransport(url, options);
    const probe = new HttpBackend(url, options, transport, emptyInfo());
    const info = await probe.options_();
    const backend = new HttpBackend(url, options, transport, info);
    if ((options.preferUnixSocket ?? true) && info.unixSocket !== undefined && (await isThisHost(url.hostname))) {
      await backend.tryUnixSocket(info.unixSocket);
    }
    return backend;
  }

  /** The remote's ticket id, from the URL path (a credential: never logged whole). */
  private get remoteId(): string {
    return decodeURIComponent(this.url.pathname.slice("/images/".length));
  }

  /** Where requests go now, for logs and tests: host:port or the unix socket. */
  get endpoint(): string {
    return this.transport.where;
  }

  async size(): Promise<number> {
    this.checkOpen();
    if (this.info.size !== undefined) return this.info.size;
    if (this.caps.extents) {
      const extents = await this.fetchExtents("zero");
      const last = extents[extents.length - 1];
      return last === undefined ? 0 : last.start + last.length;
    }
    // Old remotes: a GET without Range says the size in content-length; this connection is closed after.
    const response = await this.request("GET", this.url.pathname, { connection: "close" });
    if (response.status !== 200) throw await this.remoteError(response);
    response.abort(new Error("only the size was wanted"));
    if (response.contentLength === undefined) {
      throw new RemoteError(`Remote ${this.transport.where} did not say the image size`, 502, undefined);
    }
    return response.contentLength;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    checkRange(offset, buf.length);
    const length = Math.min(buf.length, (await this.size()) - offset);
    if (length <= 0) return 0;
    const response = await this.readResponse(offset, length);
    return response.receive(new BufferReceiver(buf.subarray(0, length)));
  }

  /**
   * The remote's response for a range, once its status and length are checked; the caller
   * must receive its body.
   */
  private async readResponse(offset: number, length: number): Promise<ClientResponse> {
    this.checkOpen();
    checkRange(offset, length);
    const client = this.transport.client;
    const exchange = await client.request("GET", this.url.pathname, {
      headers: { range: `bytes=${offset}-${offset + length - 1}` },
    });
    const response = await exchange.response;
    if (response.status !== 206) throw await this.remoteError(response);
    if (response.contentLength !== length) {
      exchange.abort();
      throw new RemoteError(
        `Remote ${client.where} sent ${response.contentLength ?? "a body without content-length"} for a ${length}-byte range`,
        502,
        undefined,
      );
    }
    return response;
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.checkWritable();
    checkRange(offset, buf.length);
    const upload = await this.startUpload(offset, buf.length, false, false);
    upload.body.write(buf);
    await upload.done;
  }

  /** Relays a range: one remote GET of the same range, with backpressure both ways (spec [B6]). */
  async readTo(offset: number, length: number, sink: ByteSink, options: StreamOptions): Promise<void> {
    const response = await this.readResponse(offset, length);
    try {
      sink.start();
    } catch (error) {
      response.abort(error as Error);
      throw error;
    }
    const relay = new RelayReceiver(sink.stream, {
      highWaterMark: RELAY_HIGH_WATER_MARK,
      ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
      abort: (error) => response.abort(error),
      resume: () => response.resume(),
    });
    try {
      await response.receive(relay);
    } catch (error) {
      // What did arrive goes to the client before its response is cut; a failed sink takes nothing more.
      if (relay.stoppedBy === undefined) relay.finish();
      // Our side stopped it (the client went away, the transfer was cancelled): say that, not "cut".
      throw relay.stoppedBy ?? error;
    }
    relay.finish();
  }

  /**
   * Relays an upload of known length as one remote PUT of the same range, asking the remote
   * to flush with it. A chunked body goes through the buffers instead, one PUT with
   * content-length per buffer (spec §6.4), since older daemons refuse chunked uploads.
   */
  async writeFrom(
    source: Readable,
    offset: number,
    length: number | undefined,
    options: UploadOptions,
  ): Promise<UploadResult> {
    if (length === undefined) return writeThroughBuffers(this, source, offset, options);
    const upload = await this.startUpload(offset, length, options.flush, true);
    try {
      await upload.ready;
    } catch (error) {
      upload.abort();
      throw error;
    }
    options.onReady?.();
    let bytes: number;
    let overflow: boolean;
    try {
      // The images services' request bodies fill our buffers directly (no Buffer per TLS record).
      ({ bytes, overflow } = isFillingSource(source)
        ? await relayByFilling(source, upload.body, length, {
            pieceSize: RELAY_HIGH_WATER_MARK,
            ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
            ...(options.signal === undefined ? {} : { signal: options.signal }),
          })
        : await pump(source, upload.body, { ...relayOptions(options), coalesce: true, limit: length }));
      if (!overflow && bytes !== length) throw new Error(`the sending side ended after ${bytes} of ${length} bytes`);
    } catch (error) {
      // The remote may have refused the upload early (416, 403) and closed, which is what
      // broke the relay: its answer, when it came, explains the failure better.
      const verdict = await Promise.race([
        upload.done.then(
          () => undefined,
          (remote: unknown) => remote,
        ),
        new Promise((resolve) => setTimeout(resolve, REMOTE_VERDICT_WAIT_MS)),
      ]);
      upload.abort();
      throw verdict instanceof RemoteError ? verdict : error;
    }
    await upload.done;
    return { bytes, overflow, flushed: options.flush && this.caps.flush };
  }

  /**
   * Starts a PUT of `length` bytes. With `expectContinue`, the remote is asked (`Expect:
   * 100-continue`) to refuse before the body is sent: a refusal that arrives while a large
   * body is still on its way can be lost when the remote closes the connection, leaving only
   * a broken pipe.
   */
  private async startUpload(
    offset: number,
    length: number,
    flush: boolean,
    expectContinue: boolean,
  ): Promise<RemoteUpload> {
    this.checkWritable();
    const query = this.caps.flush ? `?flush=${flush ? "y" : "n"}` : "";
    const exchange = await this.transport.client.request("PUT", `${this.url.pathname}${query}`, {
      headers: {
        "content-type": "application/octet-stream",
        "content-range": `bytes ${offset}-${length === 0 ? "*" : offset + length - 1}/*`,
        "content-length": length,
      },
      expectContinue,
    });
    const done = exchange.response.then(async (response) => {
      if (response.status !== 200) throw await this.remoteError(response);
      await response.text(REMOTE_BODY_LIMIT);
    });
    done.catch(() => undefined); // the caller awaits it; do not report it unhandled meanwhile
    // Go ahead on 100 Continue; on an early final answer, go by it (a refusal fails the upload
    // before our client is told to send its body). A remote that ignores Expect gets the body
    // after a short wait anyway (RFC 9110 §10.1.1).
    const ready = expectContinue
      ? new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, CONTINUE_WAIT_MS);
          exchange.continued.then(
            (continue_) => {
              clearTimeout(timer);
              if (continue_) resolve();
              else done.then(resolve, reject);
            },
            (error: unknown) => {
              clearTimeout(timer);
              reject(error);
            },
          );
          done.catch((error: unknown) => {
            clearTimeout(timer);
            reject(error);
          });
        })
      : Promise.resolve();
    ready.catch(() => undefined);
    return { body: exchange.body, ready, done, abort: () => exchange.abort() };
  }

  async zero(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRange(offset, length);
    if (length === 0) return;
    if (!this.caps.zero) {
      const zeros = Buffer.alloc(Math.min(ZERO_PUT_SIZE, length));
      for (let done = 0; done < length; done += zeros.length) {
        await this.write(zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
      }
      return;
    }
    await this.patch({ op: "zero", offset, size: length, flush: !this.caps.flush });
  }

  async flush(): Promise<void> {
    this.checkOpen();
    if (this.caps.flush && !this.readonly) await this.patch({ op: "flush" });
  }

  async resize(size: number): Promise<void> {
    if (size !== (await this.size())) {
      throw new NotSupportedError(`Cannot resize remote image ${this.transport.where} to ${size} bytes`);
    }
  }

  extents(context?: "zero", range?: ByteRange): AsyncIterable<ZeroExtent>;
  extents(context: "dirty", range?: ByteRange): AsyncIterable<DirtyExtent>;
  extents(
    context: "zero" | "dirty" = "zero",
    range?: ByteRange,
  ): AsyncIterable<ZeroExtent> | AsyncIterable<DirtyExtent> {
    this.checkOpen();
    if (!this.caps.extents) {
      if (context === "dirty") throw new NotSupportedError("Backend http does not support dirty extents");
      return this.oneDataExtent(range);
    }
    return this.clippedExtents(context, range);
  }

  private async *oneDataExtent(range: ByteRange | undefined): AsyncGenerator<ZeroExtent> {
    const [start, end] = clipRange(range, await this.size());
    if (end > start) yield { start, length: end - start, zero: false, hole: false };
  }

  /** Remote extents, cached per handle; partial requests are clipped here ([D8] may be missing remotely). */
  private async *clippedExtents(
    context: string,
    range: ByteRange | undefined,
  ): AsyncGenerator<ZeroExtent & DirtyExtent> {
    const all = (await this.fetchExtents(context)) as (ZeroExtent & DirtyExtent)[];
    const last = all[all.length - 1];
    const [start, end] = clipRange(range, last === undefined ? 0 : last.start + last.length);
    for (const extent of all) {
      const from = Math.max(extent.start, start);
      const to = Math.min(extent.start + extent.length, end);
      if (to > from) yield { ...extent, start: from, length: to - from };
    }
  }

  private async fetchExtents(context: string): Promise<(ZeroExtent | DirtyExtent)[]> {
    const cached = this.extentsCache.get(context);
    if (cached !== undefined) return cached;
    const response = await this.request("GET", `${this.url.pathname}/extents?context=${context}`);
    if (response.status === 404) {
      const message = (await response.text(REMOTE_BODY_LIMIT)).trim();
      throw new NotSupportedError(`Remote ${this.transport.where} has no ${context} extents: ${message}`);
    }
    if (response.status !== 200) throw await this.remoteError(response);
    const extents = JSON.parse(await response.text(JSON_BODY_LIMIT)) as (ZeroExtent | DirtyExtent)[];
    if (!Array.isArray(extents))
      throw new RemoteError(`Remote ${this.transport.where} sent invalid extents`, 502, undefined);
    this.extentsCache.set(context, extents);
    return extents;
  }

  async checksum(algorithm: string, blockSize: number): Promise<ChecksumResult> {
    this.checkOpen();
    const query = `algorithm=${encodeURIComponent(algorithm)}&block_size=${blockSize}`;
    const response = await this.request("GET", `${this.url.pathname}/checksum?${query}`, {}, { busy: true });
    if (response.status !== 200) throw await this.remoteError(response);
    return JSON.parse(await response.text(JSON_BODY_LIMIT)) as ChecksumResult;
  }

  async clone(): Promise<HttpBackend> {
    this.checkOpen();
    const transport = this.transport.socketPath
      ? unixTransport(this.transport.socketPath, this.options)
      : tcpTransport(this.url, this.options);
    return new HttpBackend(this.url, this.options, transport, this.info);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.transport.client.close();
  }

  // Protocol helpers.

  private async options_(): Promise<RemoteInfo> {
    const response = await this.request("OPTIONS", this.url.pathname);
    // 405 or 204: an old daemon or proxy without OPTIONS support, hence without features.
    if (response.status === 405 || response.status === 204) {
      await response.text(REMOTE_BODY_LIMIT);
      return emptyInfo();
    }
    if (response.status !== 200) throw await this.remoteError(response);
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(await response.text(JSON_BODY_LIMIT)) as Record<string, unknown>;
    } catch (error) {
      throw new RemoteError(`Remote ${this.transport.where} sent invalid OPTIONS JSON`, 502, undefined, {
        cause: error,
      });
    }
    const count = (value: unknown) => (Number.isSafeInteger(value) && (value as number) > 0 ? (value as number) : 1);
    return {
      features: new Set(Array.isArray(body.features) ? body.features.filter((f) => typeof f === "string") : []),
      maxReaders: count(body.max_readers),
      maxWriters: count(body.max_writers),
      size: Number.isSafeInteger(body.size) ? (body.size as number) : undefined,
      unixSocket: typeof body.unix_socket === "string" && body.unix_socket !== "" ? body.unix_socket : undefined,
    };
  }

  private async patch(message: Record<string, unknown>): Promise<void> {
    const response = await this.request(
      "PATCH",
      this.url.pathname,
      { "content-type": "application/json" },
      { body: JSON.stringify(message), busy: true },
    );
    if (response.status !== 200) throw await this.remoteError(response);
    await response.text(REMOTE_BODY_LIMIT);
  }

  /** Switches to the remote's unix socket if an OPTIONS over it works; else keeps TCP. */
  private async tryUnixSocket(socketPath: string): Promise<void> {
    const tcp = this.transport;
    this.transport = unixTransport(socketPath, this.options);
    try {
      const response = await this.request("OPTIONS", this.url.pathname);
      await response.text(JSON_BODY_LIMIT);
      if (response.status !== 200) throw new Error(`status ${response.status}`);
      tcp.client.close();
    } catch {
      this.transport.client.close();
      this.transport = tcp;
    }
  }

  /**
   * A request without a streamed body; the caller must read the response's body (or abort it).
   * The read timeout covers waiting for the answer (unless `busy`: the remote is computing, as
   * for checksums and zeroing) and stalls in the body after it.
   */
  private async request(
    method: string,
    path: string,
    headers: Record<string, string> = {},
    options: { body?: string; busy?: boolean } = {},
  ): Promise<ClientResponse> {
    const exchange = await this.transport.client.request(method, path, { headers, ...options });
    return exchange.response;
  }

  /** The remote's error answer on the data client, with its message. */
  private async remoteError(response: ClientResponse): Promise<RemoteError> {
    let message: string;
    try {
      message = await response.text(REMOTE_BODY_LIMIT);
    } catch {
      message = "";
    }
    return remoteErrorOf(
      response.status,
      response.headers.get("content-range"),
      message,
      this.transport.where,
      this.remoteId,
    );
  }

  private checkOpen(): void {
    if (this.closed) throw new ClosedError(`Backend http ${this.url.host} is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readonly) throw new NotSupportedError("Backend http is opened read-only");
  }
}

function emptyInfo(): RemoteInfo {
  return { features: new Set(), maxReaders: 1, maxWriters: 1, size: undefined, unixSocket: undefined };
}

function tcpTransport(url: URL, options: HttpBackendOptions): Transport {
  const secure = url.protocol === "https:";
  const port = Number(url.port || (secure ? 443 : 80));
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const where = `${url.hostname}:${port}`;
  let endpoint: Endpoint = { kind: "tcp", host, port, where };
  if (secure) {
    let ca: Buffer | undefined;
    if (options.caFile) {
      try {
        ca = readFileSync(options.caFile);
      } catch (error) {
        throw new BackendOpenError(`Cannot read CA file ${options.caFile}: ${(error as Error).message}`, {
          cause: error,
        });
      }
    }
    // Verify the certificate against the host name in the ticket URL (not a resolved address).
    const servername = isIP(host) ? "" : host;
    endpoint = { kind: "tls", host, port, where, servername, ca, rejectUnauthorized: !options.insecure };
  }
  return { client: new HttpClient(endpoint, url.host, clientTimeouts(options)), socketPath: undefined, where };
}

function clientTimeouts(options: HttpBackendOptions): ClientTimeouts {
  return { connectMs: options.connectTimeoutMs ?? 10_000, readMs: options.readTimeoutMs ?? 60_000 };
}

function unixTransport(socketPath: string, options: HttpBackendOptions): Transport {
  const abstract = socketPath.startsWith("\0");
  const where = abstract ? `unix:@${socketPath.slice(1)}` : `unix:${socketPath}`;
  const client = new HttpClient({ kind: "unix", path: socketPath, where }, "localhost", clientTimeouts(options));
  return { client, socketPath, where };
}

/** True when `host` names an address of this machine (loopback included). */
async function isThisHost(host: string): Promise<boolean> {
  const local = new Set<string>(["127.0.0.1", "::1"]);
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) local.add(address.address);
  }
  try {
    const resolved = await lookup(host.replace(/^\[(.*)\]$/, "$1"), { all: true });
    return resolved.some((entry) => local.has(entry.address) || entry.address.startsWith("127."));
  } catch {
    return false;
  }
}

/** The remote's error with its status, content-range and the start of its message. */
function remoteErrorOf(
  status: number,
  contentRange: string | undefined,
  body: string,
  where: string,
  remoteId?: string,
): RemoteError {
  const message = body.slice(0, REMOTE_MESSAGE_LIMIT).trimEnd();
  const text = message || `Remote ${where} answered ${status}`;
  // The remote's messages name its ticket ("No such ticket <id>"): logs get it shortened (D11).
  const logText = remoteId === undefined ? text : text.replaceAll(remoteId, shortId(remoteId));
  return new RemoteError(text, status, contentRange, { logMessage: logText });
}

/** How a relay pumps: with the caller's progress and room for a few chunks in the sink. */
function relayOptions(options: StreamOptions): PumpOptions {
  const relay: PumpOptions = { highWaterMark: RELAY_HIGH_WATER_MARK };
  if (options.onProgress !== undefined) relay.onProgress = options.onProgress;
  return relay;
}
