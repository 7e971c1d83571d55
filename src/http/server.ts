/**
 * The three listeners (remote HTTPS, local unix socket, control) over one dispatcher: exact
 * routes, one catch site that turns errors into responses, connection bookkeeping. The images
 * services run on imageio's own HTTP/1.1 framing (wire/); the control service on node:http,
 * whose parser errors are answered here before a request exists.
 */
import { chmodSync, lstatSync, readFileSync, unlinkSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import tls, { type SecureVersion } from "node:tls";
import type { Config } from "../config.js";
import { ImageioError, RemoteError } from "../errors.js";
import { bindUnixStream } from "../io/native.js";
import type { Logger } from "../log.js";
import type { App } from "./app.js";
import { ClientConnection } from "./connection.js";
import { HttpError, toHttpError } from "./errors.js";
import { type IncomingRequest, nodeRequest, nodeResponse, type OutgoingResponse } from "./exchange.js";
import { algorithms, checksum } from "./handlers/checksum.js";
import { applyCors } from "./handlers/common.js";
import { get, head } from "./handlers/download.js";
import { extents } from "./handlers/extents.js";
import { info } from "./handlers/info.js";
import { options, serverOptions } from "./handlers/options.js";
import { patch } from "./handlers/patch.js";
import { addTicket, controlOptions, extendTicket, getTicket, removeTicket } from "./handlers/tickets.js";
import { put } from "./handlers/upload.js";
import { type ConnectionSlots, REQUEST_DEADLINE_MS } from "./limits.js";
import { RequestContext, splitTarget } from "./request.js";
import { rawErrorResponse, sendError } from "./response.js";
import { matchRoute, type Route, redactPath } from "./router.js";
import { operationName } from "./stats.js";
import { serverCiphers } from "./tls-ciphers.js";
import { WireConnection } from "./wire/connection.js";
import { userBufferSupport } from "./wire/user-buffer.js";

export type ServiceKind = "remote" | "local" | "control";

/** The asterisk form of a request target (RFC 9112 §3.2.4): only `OPTIONS *`, about the server. */
const SERVER_WIDE = "*";

const IMAGE_ROUTES: Route[] = [
  { pattern: SERVER_WIDE, methods: { OPTIONS: serverOptions } },
  {
    pattern: "/images/{id}",
    methods: { OPTIONS: options, GET: get, HEAD: head, PUT: put, PATCH: patch },
    cors: ["GET", "HEAD", "PUT", "OPTIONS"],
  },
  { pattern: "/images/{id}/extents", methods: { GET: extents } },
  { pattern: "/images/{id}/checksum", methods: { GET: checksum } },
  { pattern: "/images/{id}/checksum/algorithms", methods: { GET: algorithms } },
];

export const ROUTES: Record<ServiceKind, Route[]> = {
  remote: [...IMAGE_ROUTES, { pattern: "/info/", methods: { GET: info }, cors: ["GET"] }],
  local: IMAGE_ROUTES,
  control: [
    { pattern: SERVER_WIDE, methods: { OPTIONS: controlOptions } },
    {
      pattern: "/tickets/{id}",
      methods: { PUT: addTicket, GET: getTicket, PATCH: extendTicket, DELETE: removeTicket },
    },
  ],
};

/** Longest request line accepted (spec §3.5). */
export const MAX_REQUEST_LINE = 4096;

/**
 * Most header lines a request may have. Node stops recording headers after its count limit
 * but keeps parsing, so a Content-Range past it would be dropped silently: Node records one
 * more than this, and a request that has it is refused (431) instead.
 */
export const MAX_HEADER_LINES = 1000;

export type ListenAddress = { host: string; port: number } | { path: string; mode?: number };

export interface Listener {
  readonly kind: ServiceKind;
  /** The real address: TCP host and port (port 0 resolved), or the socket path. */
  readonly address: AddressInfo | string;
  /** Stops accepting, lets running requests finish up to `graceMs`, then cuts the rest. */
  close(graceMs?: number): Promise<void>;
}

export interface TlsFiles {
  keyFile: string;
  certFile: string;
  caFile: string;
  enableTls11: boolean;
  /** Session ticket keys (48 bytes) shared by the threads serving the service. */
  ticketKeys?: Buffer;
  /**
   * The files' contents, read once by the main thread: a data-plane thread started after the
   * daemon dropped its privileges could no longer read a key only root may read.
   */
  contents?: TlsContents;
}

interface TlsContents {
  key: Buffer;
  cert: Buffer;
  ca: Buffer | undefined;
}

/** The TLS files with their contents read (for data-plane threads). @throws the read error. */
export function readTlsContents(files: TlsFiles): TlsFiles {
  return { ...files, contents: tlsFileContents(files) };
}

function tlsFileContents(files: TlsFiles): TlsContents {
  return {
    key: readFileSync(files.keyFile),
    cert: readFileSync(files.certFile),
    ca: files.caFile === "" ? undefined : readFileSync(files.caFile),
  };
}

/** What one client may hold of a service (see limits.ts). */
export interface ListenLimits {
  /** Absolute deadline for a TLS handshake and for each request head (default 60 s). */
  deadlineMs?: number;
  /** Slots shared by the images services; without them, connections are not counted. */
  slots?: ConnectionSlots;
}

const connections = new WeakMap<Socket, ClientConnection>();

/**
 * Starts one service on `address`.
 * @throws the listen error (EADDRINUSE, EACCES…).
 */
export async function listen(
  app: App,
  kind: ServiceKind,
  address: ListenAddress,
  tls?: TlsFiles,
  limits: ListenLimits = {},
): Promise<Listener> {
  const server = createService(app, kind, "path" in address, tls, limits);
  return startListener(server, kind, address, app.log, async (graceMs) => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const timer = setTimeout(() => server.closeAllConnections(), graceMs);
    await closed;
    clearTimeout(timer);
  });
}

/**
 * A service that accepts on `address` and hands every connection, still unread, to
 * `handOff` ([daemon] workers: a data-plane thread serves it). Nothing is read or written on
 * the socket here: TLS and HTTP are the receiving thread's.
 * @throws the listen error (EADDRINUSE, EACCES…).
 */
export async function listenForHandOff(
  kind: ServiceKind,
  address: ListenAddress,
  log: Logger,
  handOff: (socket: Socket) => void,
): Promise<Listener> {
  const server = net.createServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
    socket.on("error", (error: NodeJS.ErrnoException) =>
      log.debug("socket error", { service: kind, client: peerAddress(socket), reason: error.code ?? error.message }),
    );
    handOff(socket);
  });
  // The connections are the threads' to close; here only accepting stops.
  return startListener(server, kind, address, log, () => new Promise<void>((resolve) => server.close(() => resolve())));
}

/**
 * Binds `server` to `address` and makes it a Listener: logged, its errors logged, and its
 * socket file removed once `stop` has closed it.
 */
async function startListener(
  server: net.Server,
  kind: ServiceKind,
  address: ListenAddress,
  log: Logger,
  stop: (graceMs: number) => Promise<void>,
): Promise<Listener> {
  const bound = await bindServer(server, address);
  log.info("LISTEN", { service: kind, address: describeAddress(bound) });
  server.on("error", (error) => log.error("server error", { service: kind }, error));
  return {
    kind,
    address: bound,
    close: async (graceMs = 10_000) => {
      await stop(graceMs);
      if (typeof bound === "string" && !bound.startsWith("\0")) unlinkSocket(bound);
    },
  };
}

/**
 * A service's server, configured but not listening: `listen` binds it, and a data-plane
 * worker hands it the sockets the main thread accepted (`adoptConnection`), so every thread
 * serves a connection by the same code.
 */
export type Service = net.Server & {
  /** Closes the connections waiting for a request; the others end after their running one. */
  closeIdleConnections(): void;
  closeAllConnections(): void;
};

/**
 * One service, configured but not listening. The images services (remote, local) are served
 * by imageio's own HTTP/1.1 framing (src/http/wire/): their bodies go straight into the
 * aligned buffers; the control service by node:http. `unix`: clients are named "local" in logs.
 * @throws Error when this Node cannot run the images services' framing (see userBufferSupport).
 */
export function createService(
  app: App,
  kind: ServiceKind,
  unix: boolean,
  tls?: TlsFiles,
  limits: ListenLimits = {},
): Service {
  if (kind !== "control") return createWireService(app, kind, unix, tls, limits);
  // Vdsm's way in listens on a unix socket or localhost, without TLS.
  if (tls !== undefined) throw new Error("the control service is served without TLS");
  return createNodeService(app, kind, unix, limits);
}

/** The images services: imageio's own framing over a plain or TLS server. */
function createWireService(
  app: App,
  kind: ServiceKind,
  unix: boolean,
  files: TlsFiles | undefined,
  limits: ListenLimits,
): Service {
  const unsupported = userBufferSupport();
  if (unsupported !== undefined) throw new Error(`cannot serve the ${kind} service: ${unsupported}`);
  const log = app.log;
  const deadlineMs = limits.deadlineMs ?? REQUEST_DEADLINE_MS;
  // Node's handshake timeout closes a silent peer; enforceHandshakeDeadline a trickling one.
  // Half-open: a client that sends its last request and then FIN still gets its answers.
  const server = files
    ? tls.createServer({ ...tlsOptions(files), handshakeTimeout: deadlineMs, allowHalfOpen: true, noDelay: true })
    : net.createServer({ allowHalfOpen: true, noDelay: true });
  const live = new Map<Socket, WireConnection>();
  let stopping = false;

  server.on("connection", (socket: Socket) => admitConnection(socket, kind, log, limits.slots));
  server.on(files ? "secureConnection" : "connection", (socket: Socket) => {
    if (socket.destroyed) return;
    // The TCP socket under a TLS one has its handler already; this one needs its own.
    if (files) socket.on("error", (error: NodeJS.ErrnoException) => logSocketError(log, kind, socket, error));
    const connection = openConnection(app, socket, unix, false);
    const wire = new WireConnection(
      socket,
      (request, response) =>
        connection.serve(response, () => dispatch(app, kind, request, response, expectsContinue(request), connection)),
      { deadlineMs, log, client: connection.client, stopping: () => stopping },
    );
    live.set(socket, wire);
    socket.once("close", () => live.delete(socket));
    try {
      wire.start();
    } catch (error) {
      log.error("ERROR cannot read the connection", { connection: connection.id }, error);
      socket.destroy();
    }
  });
  if (files) {
    closeOnEarlyFin(server as tls.Server);
    enforceHandshakeDeadline(server, deadlineMs, log);
    server.on("tlsClientError", (error: Error & { code?: string }, socket: Socket) =>
      logHandshakeFailure(log, error, socket),
    );
  }
  return Object.assign(server, {
    closeIdleConnections: () => {
      stopping = true;
      for (const [socket, wire] of live) if (wire.idle) socket.destroy();
    },
    closeAllConnections: () => {
      for (const socket of live.keys()) socket.destroy();
    },
  });
}

/** `Expect: 100-continue` on an HTTP/1.1 request: the client waits for a 100 before its body. */
function expectsContinue(request: IncomingRequest): boolean {
  if (request.versionMajor !== 1 || request.versionMinor !== 1) return false;
  return /(?:^|\W)100-continue(?:$|\W)/i.test(request.header("expect") ?? "");
}

/**
 * The connection's bookkeeping, once it is ready for HTTP (after TLS): its state, and its
 * OPEN and CLOSE log lines.
 */
function openConnection(app: App, socket: Socket, unix: boolean, endOnClientFin: boolean): ClientConnection {
  const log = app.log;
  const client = unix ? "local" : peerAddress(socket);
  const connection = new ClientConnection(socket, client, log, app.buffers, endOnClientFin);
  log.info("OPEN", { connection: connection.id, client, worker: app.worker });
  socket.once("close", () => log.info("CLOSE", { connection: connection.id, client, ...connection.stats.fields() }));
  return connection;
}

/** The control service: node:http. */
function createNodeService(app: App, kind: ServiceKind, unix: boolean, limits: ListenLimits): Service {
  const log = app.log;
  const deadlineMs = limits.deadlineMs ?? REQUEST_DEADLINE_MS;
  const serverOptions: http.ServerOptions = {
    // Our own inactivity timeouts apply between requests (spec §3.4); Node's defaults would
    // close early. A request head, though, must be complete within the deadline from its
    // first byte, however slowly it trickles in (Node checks it every interval).
    keepAliveTimeout: 0,
    requestTimeout: 0,
    headersTimeout: deadlineMs,
    connectionsCheckingInterval: Math.min(1000, Math.ceil(deadlineMs / 10)),
    requireHostHeader: false,
    noDelay: true,
    maxHeaderSize: 64 * 1024,
  };
  const onRequest = (req: IncomingMessage, res: ServerResponse) => serveInOrder(app, kind, req, res, false);
  const server = http.createServer(serverOptions, onRequest);
  server.keepAliveTimeout = 0;
  // A client that sends its last request and then half-closes (FIN) still gets its answers
  // (RFC 9112 §9.6): Node would drop the requests instead; ClientConnection ends our side
  // once they are answered.
  (server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.maxHeadersCount = MAX_HEADER_LINES + 1;

  // Every accepted socket, before TLS or HTTP sees it: an error handler, and a slot.
  server.on("connection", (socket: Socket) => admitConnection(socket, kind, log, limits.slots));
  server.on("connection", (socket: Socket) => {
    if (socket.destroyed) return;
    connections.set(socket, openConnection(app, socket, unix, true));
  });
  server.on("clientError", (error: Error & { code?: string; rawPacket?: Buffer }, socket: Socket) =>
    answerParserError(error, socket, log),
  );
  // Expect: 100-continue: the 100 goes out only once a handler starts reading the body, so a
  // request refused before that gets its final status alone (spec §3.5 allows it) and the
  // client sends no body for nothing.
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => serveInOrder(app, kind, req, res, true));
  // Expect values other than 100-continue are ignored, as upstream does, instead of Node's
  // own 417 (which would break our response format).
  server.on("checkExpectation", onRequest);
  // Node hands CONNECT requests over as raw sockets, without its error handler: they are just
  // another unknown method, on a socket that must survive the client going away mid-answer.
  server.on("connect", (req: IncomingMessage, socket: Socket) => {
    socket.on("error", () => socket.destroy());
    socket.end(rawErrorResponse(405, "Method Not Allowed", `Invalid method '${req.method ?? "CONNECT"}'`));
  });
  return server;
}

/**
 * Serves a connection another thread accepted: `fd` is this thread's to own from now on.
 * The socket takes the path a listening server's accepted socket takes.
 */
export function adoptConnection(server: Service, fd: number, tcp: boolean): Socket {
  const socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
  if (tcp) socket.setNoDelay(true);
  server.emit("connection", socket);
  return socket;
}

/** Binds `server` to `address`, replacing a dead socket file; the real address. */
async function bindServer(server: net.Server, address: ListenAddress): Promise<AddressInfo | string> {
  if ("path" in address) await removeDeadSocket(address.path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if ("path" in address && address.path.startsWith("\0")) {
      // Bound here with the name's exact length, which Node would pad to 108 bytes.
      server.listen({ fd: bindUnixStream(address.path), backlog: 128 }, resolve);
    } else if ("path" in address) {
      // Create the socket with its final mode, so it is never reachable by others (D11).
      const umask = process.umask(address.mode === undefined ? process.umask() : 0o777 & ~address.mode);
      try {
        server.listen({ path: address.path, backlog: 128 }, resolve);
      } finally {
        process.umask(umask);
      }
    } else {
      const host = address.host === "" ? "0.0.0.0" : address.host;
      server.listen({ host, port: address.port, backlog: 128, ipv6Only: false }, resolve);
    }
  });
  server.removeAllListeners("error");
  if (!("path" in address)) return server.address() as AddressInfo;
  if (address.mode !== undefined && !address.path.startsWith("\0")) chmodSync(address.path, address.mode);
  return address.path;
}

export function describeAddress(address: AddressInfo | string): string {
  if (typeof address === "string") return address.startsWith("\0") ? `@${address.slice(1)}` : address;
  return address.family === "IPv6" ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}

function tlsOptions(files: TlsFiles): tls.TlsOptions {
  const { key, cert, ca } = files.contents ?? tlsFileContents(files);
  const options: tls.TlsOptions = {
    key,
    cert,
    // [D6]: TLS 1.2 minimum, 1.1 only on request; 1.3 is offered and preferred.
    minVersion: (files.enableTls11 ? "TLSv1.1" : "TLSv1.2") as SecureVersion,
    maxVersion: "TLSv1.3",
    // Forward secrecy and AEAD only; AES-128-GCM first: as safe for TLS and a third cheaper
    // than AES-256 per byte, which is most of what a download costs.
    ciphers: serverCiphers(files.enableTls11),
    honorCipherOrder: true,
  };
  if (ca !== undefined) options.ca = ca;
  // Threads serving one service share the keys of session tickets, so a client resumes its
  // TLS session whichever thread its next connection lands on.
  if (files.ticketKeys !== undefined) options.ticketKeys = files.ticketKeys;
  return options;
}

/**
 * Gives an accepted socket an error handler (a peer that resets must never become an
 * uncaught exception) and, on the images services, a connection slot.
 */
function admitConnection(socket: Socket, kind: ServiceKind, log: Logger, slots: ConnectionSlots | undefined): void {
  // Read now: Node caches the peer address, which a reset socket could no longer tell.
  socket.remoteAddress;
  socket.on("error", (error: NodeJS.ErrnoException) => logSocketError(log, kind, socket, error));
  slots?.admit(socket, kind);
}

function logSocketError(log: Logger, kind: ServiceKind, socket: Socket, error: NodeJS.ErrnoException): void {
  log.debug("socket error", { service: kind, client: peerAddress(socket), reason: error.code ?? error.message });
}

/** A peer that closes or resets before finishing its handshake: health checks and port scanners. */
const DEPARTED_CODES = new Set(["ECONNRESET", "EPIPE"]);

/**
 * A failed TLS handshake: at DEBUG when the peer just went away (a TCP health check connects
 * and closes, a scanner resets), at WARNING when the handshake itself failed (protocol
 * version, no shared cipher, a bad certificate): that is a client that wanted to talk.
 */
function logHandshakeFailure(log: Logger, error: Error & { code?: string }, socket: Socket): void {
  const fields = { client: peerAddress(socket), reason: error.code ?? error.message };
  if (error.code !== undefined && DEPARTED_CODES.has(error.code))
    log.debug("TLS peer left before the handshake", fields);
  else log.warning("TLS handshake failed", fields);
}

/**
 * A client that sends its FIN before its TLS handshake is done can never finish it (a TCP
 * health check that connects and closes): its socket closes at once instead of holding its
 * descriptor until the handshake deadline. The TLS socket Node wraps around each TCP socket
 * takes the TCP socket's allowHalfOpen when it is made, so it is made without; the images
 * services' half-close (a client's last request and FIN still answered) is given back once
 * the handshake is done.
 */
function closeOnEarlyFin(server: tls.Server): void {
  // Before Node's own listener, which wraps the TCP socket in the TLS one.
  server.prependListener("connection", (tcp: Socket) => {
    tcp.allowHalfOpen = false;
  });
  server.prependListener("secureConnection", (socket: Socket) => {
    socket.allowHalfOpen = true;
  });
}

/**
 * Node's handshake timeout restarts with every byte received, so a ClientHello trickled a
 * byte at a time would hold its descriptor for ever: the TCP socket under each handshake
 * gets an absolute deadline instead, cleared when the handshake completes.
 */
function enforceHandshakeDeadline(server: net.Server, deadlineMs: number, log: Logger): void {
  const pending = new WeakMap<Socket, NodeJS.Timeout>();
  server.on("connection", (tcp: Socket) => {
    const timer = setTimeout(() => {
      log.warning("TIMEOUT TLS handshake incomplete", { client: peerAddress(tcp), seconds: deadlineMs / 1000 });
      tcp.destroy();
    }, deadlineMs);
    // The socket, not this timer, is what keeps a stopping daemon waiting.
    timer.unref();
    pending.set(tcp, timer);
    tcp.once("close", () => clearTimeout(timer));
  });
  server.on("secureConnection", (socket: Socket) => {
    const tcp = tcpSocketOf(socket);
    if (tcp !== undefined) clearTimeout(pending.get(tcp));
  });
}

/** The TCP socket under a TLS socket (Node's `_parent`), or undefined for a plain one. */
function tcpSocketOf(socket: Socket): Socket | undefined {
  return (socket as Socket & { _parent?: Socket | null })._parent ?? undefined;
}

/**
 * The peer's address for logs. A TLS socket that failed before its handshake no longer
 * knows it, but the TCP socket under it (Node's `_parent`) read it when it was accepted.
 */
function peerAddress(socket: Socket): string {
  // Unix sockets have no peer address: their clients are "local", as in OPEN lines.
  return socket.remoteAddress ?? tcpSocketOf(socket)?.remoteAddress ?? "local";
}

/**
 * Removes a socket file left by a process that is gone, so that listening on it works.
 * @throws EADDRINUSE when a live process still accepts on it: its socket is never deleted.
 */
async function removeDeadSocket(path: string): Promise<void> {
  if (path.startsWith("\0")) return;
  try {
    if (!lstatSync(path).isSocket()) return;
  } catch {
    return; // Not there: nothing to remove.
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", (error: NodeJS.ErrnoException) => {
      probe.destroy();
      // Refused: nobody listens. Any other failure (EAGAIN, a full backlog) means somebody does.
      resolve(error.code !== "ECONNREFUSED");
    });
  });
  if (alive) {
    const error = new Error(`listen EADDRINUSE: another process accepts on ${path}`) as NodeJS.ErrnoException;
    error.code = "EADDRINUSE";
    throw error;
  }
  unlinkSocket(path);
}

function unlinkSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // Already gone.
  }
}

/** Queues a request behind the ones before it on its connection (spec §6.6). */
function serveInOrder(
  app: App,
  kind: ServiceKind,
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue: boolean,
): void {
  const connection = connections.get(req.socket);
  if (connection === undefined) {
    req.socket.destroy();
    return;
  }
  const request = nodeRequest(req, res);
  const response = nodeResponse(res);
  void connection.serve(res, () => dispatch(app, kind, request, response, expectsContinue, connection));
}

/** Handles one request; resolves true when the connection closes after its response. */
async function dispatch(
  app: App,
  kind: ServiceKind,
  req: IncomingRequest,
  res: OutgoingResponse,
  expectsContinue: boolean,
  connection: ClientConnection,
): Promise<boolean> {
  const target = req.target;
  const { path, query } = splitTarget(target);
  const ctx = new RequestContext(req, res, connection, path, query);
  ctx.expectsContinue = expectsContinue;
  // `Connection: close` (or HTTP/1.0 without keep-alive): the response says so too.
  if (!req.keepAlive) ctx.closeAfter = true;
  const method = req.method;
  const started = performance.now();
  let pattern: string | undefined;
  try {
    checkHttpVersion(req);
    if (`${method} ${target} HTTP/${req.versionMajor}.${req.versionMinor}`.length > MAX_REQUEST_LINE) {
      throw new HttpError(414, "Request line too long", { close: true });
    }
    checkHeaderCount(req);
    if (isUpgradeRequest(req)) ctx.closeAfter = true;
    const coding = ctx.header("transfer-encoding");
    if (coding !== undefined && coding.toLowerCase() !== "chunked") {
      // RFC 9112 §6.1: a coding we cannot decode makes the body unreadable.
      throw new HttpError(501, `Unsupported Transfer-Encoding: '${coding}'`, { close: true });
    }
    const match = matchRoute(ROUTES[kind], method, path);
    pattern = match.route.pattern;
    if (match.route.cors?.includes(method)) applyCors(ctx);
    await match.handler(ctx, app, match.id);
  } catch (error) {
    try {
      finishWithError(ctx, app, error);
    } catch (failure) {
      // Never let one broken request take the daemon down.
      app.log.error("ERROR cannot send error response", { connection: connection.id }, failure);
      connection.socket.destroy();
    }
  }
  const seconds = (performance.now() - started) / 1000;
  // 0: no response went out (the client left, or the connection was cut).
  const status = res.headersSent ? res.statusCode : 0;
  const failed = status === 0 || status >= 400;
  connection.stats.record(ctx.operation ?? operationName(method, pattern), seconds, ctx.bytesMoved, failed);
  if (kind === "control") {
    // The control API has no per-request lines of its own; ticket ids are credentials.
    app.log.info("REQUEST", { method, path: redactPath(path), status, seconds: seconds.toFixed(3) });
  }
  return ctx.closeAfter;
}

/**
 * True for a request asking to switch protocols (`Connection: upgrade` with `Upgrade`). We
 * answer it as plain HTTP (RFC 9110 §7.8 lets a server ignore the header), but Node's parser
 * stops reading the connection after it, so the answer must close the connection.
 */
function isUpgradeRequest(req: IncomingRequest): boolean {
  return req.header("upgrade") !== undefined && /(^|,)\s*upgrade\s*(,|$)/i.test(req.header("connection") ?? "");
}

/**
 * Node's parser takes a request line without a version as HTTP/0.9, and accepts HTTP/2.0 in
 * one: neither is an HTTP/1.x request we can answer (an HTTP/0.9 client would read our
 * answer's head as image bytes).
 * @throws HttpError 505 (closing) for any version but 1.0 and 1.1.
 */
function checkHttpVersion(req: IncomingRequest): void {
  if (req.versionMajor === 1 && (req.versionMinor === 0 || req.versionMinor === 1)) return;
  const version =
    req.versionMajor === 0 ? "none (HTTP/0.9 request line)" : `HTTP/${req.versionMajor}.${req.versionMinor}`;
  throw new HttpError(505, `HTTP version not supported: ${version}`, { close: true });
}

/** @throws HttpError 431 (closing) when the request has more header lines than MAX_HEADER_LINES. */
function checkHeaderCount(req: IncomingRequest): void {
  if (req.headerLines > MAX_HEADER_LINES) {
    throw new HttpError(431, `Too many header lines: more than ${MAX_HEADER_LINES}`, { close: true });
  }
}

/**
 * Sockets that got a response with `connection: close`: nothing more may be written to them,
 * not even an answer to a parser error Node reports later on the same bytes (an unsupported
 * Transfer-Encoding is both a request and a framing error to Node).
 */
const answeredWithClose = new WeakSet<Socket>();

function finishWithError(ctx: RequestContext, app: App, error: unknown): void {
  const { res } = ctx;
  const socket = ctx.connection.socket;
  const fields = { connection: ctx.connection.id, method: ctx.method };
  if (res.headersSent || socket.destroyed) {
    // Mid-stream failure or a vanished client: the client sees a truncated body.
    if (socket.destroyed) app.log.info("ABORT client disconnected", fields);
    else app.log.warning("ABORT response cut off", { ...fields, reason: toHttpError(error).logMessage });
    socket.destroy();
    return;
  }
  const httpError = toHttpError(error);
  logRequestError(app.log, fields, httpError, error);
  sendError(ctx, httpError);
  if (ctx.closeAfter) answeredWithClose.add(socket);
}

/**
 * One line per failed request. Refusals (4xx) are warnings with the reason; a domain failure
 * (a missing image, a closed backend, an unreachable remote) is an error with its reason, and
 * only an error nobody expected (a bug) brings its stack trace.
 */
function logRequestError(
  log: Logger,
  fields: Record<string, string | number>,
  httpError: HttpError,
  thrown: unknown,
): void {
  const status = httpError.status;
  if (status < 500) {
    log.warning("ERROR", { ...fields, status, reason: httpError.logMessage });
    return;
  }
  const cause = httpError.cause ?? thrown;
  if (cause instanceof ImageioError || cause instanceof HttpError) {
    const reason = cause instanceof RemoteError ? cause.logMessage : describeError(cause);
    log.error("ERROR request failed", { ...fields, status, reason });
  } else {
    log.error("ERROR request failed", { ...fields, status }, cause);
  }
}

/** An error's message followed by its causes' when they add something (`…: ENOENT: no such file…`). */
function describeError(error: Error): string {
  let text = error.message;
  for (let cause = error.cause, depth = 0; cause instanceof Error && depth < 3; cause = cause.cause, depth++) {
    if (!text.includes(cause.message)) text += `: ${cause.message}`;
  }
  return text;
}

/** Answers requests Node's parser rejected (bad framing, methods, headers) and closes. */
function answerParserError(error: Error & { code?: string; rawPacket?: Buffer }, socket: Socket, log: Logger): void {
  // Node ends the connection once that response is out; a second answer would follow it.
  if (answeredWithClose.has(socket)) return;
  const raw = error.rawPacket?.toString("latin1") ?? "";
  const [requestLine = "", ...headerLines] = raw.split("\r\n");
  const header = (name: string) =>
    headerLines
      .find((line) => line.toLowerCase().startsWith(`${name}:`))
      ?.slice(name.length + 1)
      .trim();
  let response: string | undefined;
  switch (error.code) {
    case "HPE_CLOSED_CONNECTION":
      // Bytes after a request with `Connection: close`: that request is answered and the
      // connection closes after it; what follows is never run (spec §6.6).
      return;
    case "HPE_INVALID_EOF_STATE":
      // The client half-closed in the middle of a request (a body shorter than announced):
      // a disconnect, which the request's handler reports; nothing to answer.
      socket.destroy();
      return;
    case "HPE_INVALID_METHOD":
      response = rawErrorResponse(405, "Method Not Allowed", `Invalid method '${requestLine.split(" ")[0] ?? ""}'`);
      break;
    case "HPE_INVALID_CONTENT_LENGTH": {
      const value = header("content-length") ?? "";
      const message = /^-\d+$/.test(value) ? `Negative Content-Length: ${value}` : `Invalid Content-Length: '${value}'`;
      response = rawErrorResponse(400, "Bad Request", message);
      break;
    }
    case "HPE_INVALID_TRANSFER_ENCODING":
    case "HPE_UNEXPECTED_CONTENT_LENGTH":
      response = framingErrorResponse(headerLines);
      break;
    case "HPE_HEADER_OVERFLOW":
      response = overflowsRequestLine(raw)
        ? rawErrorResponse(414, "URI Too Long", "Request line too long")
        : rawErrorResponse(431, "Request Header Fields Too Large", "Request header fields too large");
      break;
    case "ECONNRESET":
      break;
    case "ERR_HTTP_REQUEST_TIMEOUT":
      // A head still incomplete at the deadline: closed without a response, like any timeout.
      log.warning("TIMEOUT request head incomplete", { client: peerAddress(socket) });
      break;
    default:
      response = rawErrorResponse(400, "Bad Request", `Invalid request: ${error.message}`);
  }
  if (response !== undefined && socket.writable) socket.end(response);
  else socket.destroy();
}

/**
 * The answer to a head whose framing headers contradict each other, or name a coding we
 * cannot decode (RFC 9112 §6.1, §6.3).
 */
function framingErrorResponse(headerLines: string[]): string {
  const count = (name: string) => headerLines.filter((line) => line.toLowerCase().startsWith(`${name}:`)).length;
  const lengths = count("content-length");
  const codings = count("transfer-encoding");
  // Several Content-Length fields leave the body's length in doubt.
  if (lengths > 1 && codings === 0) return rawErrorResponse(400, "Bad Request", "Multiple Content-Length headers");
  if (lengths > 0) {
    return rawErrorResponse(400, "Bad Request", "Content-Length and Transfer-Encoding must not be used together");
  }
  const coding = headerLines
    .find((line) => line.toLowerCase().startsWith("transfer-encoding:"))
    ?.slice(18)
    .trim();
  return rawErrorResponse(501, "Not Implemented", `Unsupported Transfer-Encoding: '${coding ?? ""}'`);
}

/**
 * True when a head that overflowed Node's limit did so in its request line. `raw` is the
 * packet the parser was reading: a head's first packet starts with the method, a later one
 * is in the middle of the head and holds the end of the request line only if its first line
 * ends with the HTTP version.
 */
function overflowsRequestLine(raw: string): boolean {
  const end = raw.indexOf("\r\n");
  const firstLine = end === -1 ? raw : raw.slice(0, end);
  if (/^[A-Z]+ /.test(raw)) return end === -1 || firstLine.length > MAX_REQUEST_LINE;
  return end !== -1 && / HTTP\/\d\.\d$/.test(firstLine);
}

/** Builds the TLS file set from the configuration, or undefined when TLS is off. */
export function tlsFromConfig(config: Readonly<Config>): TlsFiles | undefined {
  if (!config.tls.enable) return undefined;
  return {
    keyFile: config.tls.key_file,
    certFile: config.tls.cert_file,
    caFile: config.tls.ca_file,
    enableTls11: config.tls.enable_tls1_1,
  };
}
