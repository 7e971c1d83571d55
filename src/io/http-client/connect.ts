/**
 * Opens the connections of the relay's client: TLS (verifying the remote's certificate and
 * host name, resuming the remote's TLS session), plain TCP, or the remote's unix socket
 * (abstract names connected with their exact length through connectUnixStream: Node pads
 * them to 108 bytes, which reaches no daemon binding the exact name, ours or upstream's).
 */

import net, { Socket } from "node:net";
import tls from "node:tls";
import { RemoteTimeoutError, RemoteUnavailableError } from "../../errors.js";
import { connectUnixStream } from "../native.js";
import { ClientConnection } from "./connection.js";

/** Where and how to reach a remote. */
export type Endpoint =
  | { kind: "tcp"; host: string; port: number; where: string }
  | {
      kind: "tls";
      host: string;
      port: number;
      where: string;
      /** The name the certificate must carry; "" for an IP address (SNI not sent). */
      servername: string;
      ca: Buffer | undefined;
      rejectUnauthorized: boolean;
    }
  | { kind: "unix"; path: string; where: string };

/**
 * Node documents `onread` for tls.connect and new net.Socket too (the TLS socket and a socket
 * made from a descriptor read the same way), but @types/node has it only on net.connect.
 */
type WithOnRead<Options> = Options & { onread: net.OnReadOpts };

/**
 * The last TLS session of each remote, so that new connections resume it instead of a full
 * handshake. Keyed by everything that decides whether a certificate was accepted, so a
 * session from an unverified connection (`--insecure`) never stands in for a verified one.
 */
const tlsSessions = new Map<string, Buffer>();
const TLS_SESSIONS_KEPT = 64;

function sessionKey(endpoint: Extract<Endpoint, { kind: "tls" }>): string {
  const ca = endpoint.ca === undefined ? "system" : endpoint.ca.toString("base64");
  return `${endpoint.host}\0${endpoint.port}\0${endpoint.servername}\0${endpoint.rejectUnauthorized}\0${ca}`;
}

function keepSession(key: string, session: Buffer): void {
  tlsSessions.delete(key);
  tlsSessions.set(key, session);
  if (tlsSessions.size > TLS_SESSIONS_KEPT) tlsSessions.delete(tlsSessions.keys().next().value as string);
}

/** The first wait before connecting again to a unix socket whose backlog is full; it doubles up to the next. */
const FIRST_BACKLOG_RETRY_MS = 5;
const MAX_BACKLOG_RETRY_MS = 200;

/**
 * A connection that finished connecting (and its TLS handshake) within `timeoutMs`. A unix
 * socket whose listen backlog is full refuses a connect at once (EAGAIN) where a TCP one
 * would make it wait: it is tried again, backing off, until `timeoutMs` ran out.
 * @throws RemoteTimeoutError, RemoteUnavailableError (refused, unknown host, verification,
 *   a backlog that stayed full).
 */
export async function openConnection(endpoint: Endpoint, timeoutMs: number): Promise<ClientConnection> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = FIRST_BACKLOG_RETRY_MS; ; delay = Math.min(2 * delay, MAX_BACKLOG_RETRY_MS)) {
    try {
      return await connectOnce(endpoint, Math.max(1, deadline - Date.now()));
    } catch (error) {
      if (!backlogFull(error)) throw error;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new RemoteUnavailableError(
          `Cannot reach remote ${endpoint.where}: its listen backlog stayed full for ${timeoutMs} ms (the daemon accepts no more connections)`,
          { cause: error },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
    }
  }
}

/** The connect failed because the unix socket's listener has no room for another pending connection. */
function backlogFull(error: unknown): boolean {
  const cause = error instanceof RemoteUnavailableError ? error.cause : undefined;
  return (cause as NodeJS.ErrnoException | undefined)?.code === "EAGAIN";
}

/** One attempt of openConnection. */
function connectOnce(endpoint: Endpoint, timeoutMs: number): Promise<ClientConnection> {
  const connection = new ClientConnection(endpoint.where);
  const onread = connection.hooks;
  return new Promise((resolve, reject) => {
    let socket: Socket;
    try {
      if (endpoint.kind === "tls") {
        const key = sessionKey(endpoint);
        const options: WithOnRead<tls.ConnectionOptions> = {
          host: endpoint.host,
          port: endpoint.port,
          rejectUnauthorized: endpoint.rejectUnauthorized,
          session: tlsSessions.get(key),
          onread,
        };
        if (endpoint.servername !== "") options.servername = endpoint.servername;
        if (endpoint.ca !== undefined) options.ca = endpoint.ca;
        const secure = tls.connect(options);
        secure.on("session", (session: Buffer) => keepSession(key, session));
        socket = secure;
      } else if (endpoint.kind === "tcp") {
        socket = net.connect({ host: endpoint.host, port: endpoint.port, onread });
      } else if (endpoint.path.startsWith("\0")) {
        const options: WithOnRead<net.SocketConstructorOpts> = {
          fd: connectUnixStream(endpoint.path),
          readable: true,
          writable: true,
          onread,
        };
        socket = new Socket(options);
      } else {
        socket = net.connect({ path: endpoint.path, onread });
      }
    } catch (error) {
      reject(unavailable(endpoint.where, error as Error));
      return;
    }
    // A plain timer: a socket timeout would only start counting once TCP is connected.
    const timer = setTimeout(
      () => socket.destroy(new RemoteTimeoutError(`Cannot connect to remote ${endpoint.where} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const failed = (error: Error) => {
      clearTimeout(timer);
      const code = (error as NodeJS.ErrnoException).code;
      if (error instanceof RemoteTimeoutError) reject(error);
      else if (code === "ETIMEDOUT")
        reject(new RemoteTimeoutError(`Remote ${endpoint.where} timed out: ${error.message}`));
      else reject(unavailable(endpoint.where, error));
    };
    const ready = () => {
      clearTimeout(timer);
      socket.off("error", failed);
      // Small requests and a relayed body's last bytes go out at once, not after the next ACK.
      if (endpoint.kind !== "unix") socket.setNoDelay(true);
      connection.attach(socket);
      resolve(connection);
    };
    socket.once("error", failed);
    // A socket made from a connected descriptor emits no 'connect'.
    if (endpoint.kind === "unix" && !socket.connecting) ready();
    else socket.once(endpoint.kind === "tls" ? "secureConnect" : "connect", ready);
  });
}

function unavailable(where: string, error: Error): RemoteUnavailableError {
  return new RemoteUnavailableError(`Cannot reach remote ${where}: ${error.message}`, { cause: error });
}
