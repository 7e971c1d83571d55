/**
 * The three listeners (remote HTTPS, local unix socket, control) over one dispatcher: exact
 * routes, one catch site that turns errors into responses, connection bookkeeping, and the
 * parser errors Node reports before a request exists.
 */
import { chmodSync, lstatSync, readFileSync, unlinkSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import tls, { type SecureVersion } from "node:tls";
import type { Config } from "../config.js";
import type { App } from "./app.js";
import { ClientConnection } from "./connection.js";
import { HttpError, toHttpError } from "./errors.js";
import { algorithms, checksum } from "./handlers/checksum.js";
import { applyCors } from "./handlers/common.js";
import { get, head } from "./handlers/download.js";
import { extents } from "./handlers/extents.js";
import { info } from "./handlers/info.js";
import { options } from "./handlers/options.js";
import { patch } from "./handlers/patch.js";
import { addTicket, extendTicket, getTicket, removeTicket } from "./handlers/tickets.js";
import { put } from "./handlers/upload.js";
import { RequestContext, splitTarget } from "./request.js";
import { rawErrorResponse, sendError } from "./response.js";
import { matchRoute, type Route } from "./router.js";

export type ServiceKind = "remote" | "local" | "control";

const IMAGE_ROUTES: Route[] = [
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
    {
      pattern: "/tickets/{id}",
      methods: { PUT: addTicket, GET: getTicket, PATCH: extendTicket, DELETE: removeTicket },
    },
  ],
};

/** TLS 1.3 suites in our order of preference; TLS 1.2 keeps OpenSSL's default list after them. */
const PREFERRED_CIPHERS = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/** Longest request line accepted (spec §3.5). */
export const MAX_REQUEST_LINE = 4096;

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
}

const connections = new WeakMap<Socket, ClientConnection>();

/**
 * Starts one service on `address`.
 * @throws the listen error (EADDRINUSE, EACCES…).
 */
export async function listen(app: App, kind: ServiceKind, address: ListenAddress, tls?: TlsFiles): Promise<Listener> {
  const routes = ROUTES[kind];
  const log = app.log;
  const serverOptions: http.ServerOptions = {
    // Our own inactivity timeouts apply (spec §3.4); Node's defaults would close early.
    keepAliveTimeout: 0,
    requestTimeout: 0,
    headersTimeout: 0,
    requireHostHeader: false,
    noDelay: true,
    maxHeaderSize: 64 * 1024,
  };
  const onRequest = (req: IncomingMessage, res: ServerResponse) => serveInOrder(app, routes, req, res, false);
  const server = tls
    ? https.createServer({ ...serverOptions, ...tlsOptions(tls), handshakeTimeout: 60_000 }, onRequest)
    : http.createServer(serverOptions, onRequest);
  server.keepAliveTimeout = 0;

  const unix = "path" in address;
  server.on(tls ? "secureConnection" : "connection", (socket: Socket) => {
    const client = unix ? "local" : `${socket.remoteAddress}`;
    const connection = new ClientConnection(socket, client, log, app.buffers);
    connections.set(socket, connection);
    log.info("OPEN", { connection: connection.id, client });
    socket.once("close", () => log.info("CLOSE", { connection: connection.id, client }));
  });
  server.on("clientError", (error: Error & { code?: string; rawPacket?: Buffer }, socket) =>
    answerParserError(error, socket),
  );
  // Expect: 100-continue: the 100 goes out only once a handler starts reading the body, so a
  // request refused before that gets its final status alone (spec §3.5 allows it) and the
  // client sends no body for nothing.
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => serveInOrder(app, routes, req, res, true));
  // Expect values other than 100-continue are ignored, as upstream does, instead of Node's
  // own 417 (which would break our response format).
  server.on("checkExpectation", onRequest);
  // Node hands CONNECT requests over as raw sockets; they are just another unknown method.
  server.on("connect", (req: IncomingMessage, socket: Socket) => {
    socket.end(rawErrorResponse(405, "Method Not Allowed", `Invalid method '${req.method ?? "CONNECT"}'`));
  });
  if (tls) {
    server.on("tlsClientError", (error) => log.debug("TLS handshake failed", { reason: error.message }));
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if ("path" in address) {
      removeStaleSocket(address.path);
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
  server.on("error", (error) => log.error("server error", { service: kind }, error));

  let bound: AddressInfo | string;
  if ("path" in address) {
    bound = address.path;
    if (address.mode !== undefined && !address.path.startsWith("\0")) chmodSync(address.path, address.mode);
  } else {
    bound = server.address() as AddressInfo;
  }
  log.info("LISTEN", { service: kind, address: describeAddress(bound) });

  return {
    kind,
    address: bound,
    close: async (graceMs = 10_000) => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      await closed;
      clearTimeout(timer);
      if (typeof bound === "string" && !bound.startsWith("\0")) removeStaleSocket(bound);
    },
  };
}

export function describeAddress(address: AddressInfo | string): string {
  if (typeof address === "string") return address.startsWith("\0") ? `@${address.slice(1)}` : address;
  return address.family === "IPv6" ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}

function tlsOptions(files: TlsFiles): https.ServerOptions {
  const options: https.ServerOptions = {
    key: readFileSync(files.keyFile),
    cert: readFileSync(files.certFile),
    // [D6]: TLS 1.2 minimum, 1.1 only on request; 1.3 is offered and preferred.
    minVersion: (files.enableTls11 ? "TLSv1.1" : "TLSv1.2") as SecureVersion,
    maxVersion: "TLSv1.3",
    // AES-128-GCM first (as BoringSSL and Go do): as safe for TLS and a third cheaper than
    // AES-256 per byte, which is most of what a download costs.
    ciphers: [PREFERRED_CIPHERS, ...tls.DEFAULT_CIPHERS.split(":").filter((name) => !name.startsWith("TLS_"))].join(
      ":",
    ),
    honorCipherOrder: true,
  };
  if (files.caFile !== "") options.ca = readFileSync(files.caFile);
  // OpenSSL 3 refuses TLS 1.1 at its default security level.
  if (files.enableTls11) options.ciphers = `${options.ciphers}:@SECLEVEL=0`;
  return options;
}

function removeStaleSocket(path: string): void {
  if (path.startsWith("\0")) return;
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // Not there: nothing to remove.
  }
}

/** Queues a request behind the ones before it on its connection (spec §6.6). */
function serveInOrder(
  app: App,
  routes: Route[],
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue: boolean,
): void {
  const connection = connections.get(req.socket);
  if (connection === undefined) {
    req.socket.destroy();
    return;
  }
  connection.serve(res, () => dispatch(app, routes, req, res, expectsContinue, connection));
}

/** Handles one request; resolves true when the connection closes after its response. */
async function dispatch(
  app: App,
  routes: Route[],
  req: IncomingMessage,
  res: ServerResponse,
  expectsContinue: boolean,
  connection: ClientConnection,
): Promise<boolean> {
  const target = req.url ?? "/";
  const { path, query } = splitTarget(target);
  const ctx = new RequestContext(req, res, connection, path, query);
  ctx.expectsContinue = expectsContinue;
  // `Connection: close` (or HTTP/1.0 without keep-alive): the response says so too.
  if (!res.shouldKeepAlive) ctx.closeAfter = true;
  const method = req.method ?? "";
  try {
    if (`${method} ${target} HTTP/${req.httpVersion}`.length > MAX_REQUEST_LINE) {
      throw new HttpError(414, "Request line too long", { close: true });
    }
    const coding = ctx.header("transfer-encoding");
    if (coding !== undefined && coding.toLowerCase() !== "chunked") {
      // RFC 9112 §6.1: a coding we cannot decode makes the body unreadable.
      throw new HttpError(501, `Unsupported Transfer-Encoding: '${coding}'`, { close: true });
    }
    const match = matchRoute(routes, method, path);
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
  return ctx.closeAfter;
}

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
  if (httpError.status >= 500)
    app.log.error("ERROR request failed", { ...fields, status: httpError.status }, httpError.cause ?? error);
  else app.log.info("ERROR", { ...fields, status: httpError.status, reason: httpError.logMessage });
  sendError(ctx, httpError);
}

/** Answers requests Node's parser rejected (bad framing, methods, headers) and closes. */
function answerParserError(
  error: Error & { code?: string; rawPacket?: Buffer },
  socket: { writable: boolean; end(data: string): void; destroy(): void },
): void {
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
      response =
        header("content-length") !== undefined
          ? rawErrorResponse(400, "Bad Request", "Content-Length and Transfer-Encoding must not be used together")
          : rawErrorResponse(
              501,
              "Not Implemented",
              `Unsupported Transfer-Encoding: '${header("transfer-encoding") ?? ""}'`,
            );
      break;
    case "HPE_HEADER_OVERFLOW":
      response =
        requestLine.length > MAX_REQUEST_LINE || !raw.includes("\r\n")
          ? rawErrorResponse(414, "URI Too Long", "Request line too long")
          : rawErrorResponse(431, "Request Header Fields Too Large", "Request header fields too large");
      break;
    case "ECONNRESET":
    case "ERR_HTTP_REQUEST_TIMEOUT":
      break;
    default:
      response = rawErrorResponse(400, "Bad Request", `Invalid request: ${error.message}`);
  }
  if (response !== undefined && socket.writable) socket.end(response);
  else socket.destroy();
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
