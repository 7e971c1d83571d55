/**
 * Raw connections to every service of a daemon, for probes that must control the bytes and
 * the way the client goes away: TCP or TLS to the remote port, TCP to a control port, unix
 * sockets by path or by exact abstract name (as Python and curl connect).
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { connectUnixStream } from "../../src/io/native.js";

export interface RawTarget {
  /** What the test names it by: "remote (TLS)", "control (unix)"… */
  name: string;
  /** True for TCP (so an RST can be sent). */
  tcp: boolean;
  /** Opens a connection; resolves once it can carry request bytes (TLS handshake done). */
  open(): Promise<net.Socket>;
}

export function tcpTarget(name: string, port: number): RawTarget {
  return {
    name,
    tcp: true,
    open: () => connected(net.connect({ host: "127.0.0.1", port }), "connect"),
  };
}

export function tlsTarget(name: string, port: number, caFile: string): RawTarget {
  return {
    name,
    tcp: true,
    open: () =>
      connected(
        tls.connect({ host: "127.0.0.1", port, ca: readFileSync(caFile), servername: "localhost" }),
        "secureConnect",
      ),
  };
}

/** A unix socket by path, or by abstract name ("\0…") connected with its exact length. */
export function unixTarget(name: string, path: string): RawTarget {
  return {
    name,
    tcp: false,
    open: async () =>
      path.startsWith("\0")
        ? new net.Socket({ fd: connectUnixStream(path), readable: true, writable: true })
        : connected(net.connect({ path }), "connect"),
  };
}

/** The daemon's two images services: the remote one over TLS and the local unix socket. */
export function imagesServices(daemon: {
  remotePort: number;
  localSocket: string | undefined;
  certs: { caFile: string };
}): RawTarget[] {
  return [
    tlsTarget("remote (TLS)", daemon.remotePort, daemon.certs.caFile),
    unixTarget("local (unix)", daemon.localSocket as string),
  ];
}

/** The status code of the first response in `text`, 0 when there is none. */
export function statusOf(text: string): number {
  return Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0);
}

function connected(socket: net.Socket, event: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    socket.once(event, () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

export interface Exchange {
  /** Everything the server sent, as latin1 text. */
  text: string;
  /** True when the server closed the connection before `waitMs`. */
  closed: boolean;
}

/**
 * Sends `data` and collects the answer until the server closes or `waitMs` passes.
 * Resets from the server count as a close. With `halfClose`, our side ends its writing after
 * `data`, so the server must answer what it has, or close.
 */
export async function exchange(
  target: RawTarget,
  data: string | Buffer,
  waitMs = 1500,
  options: { halfClose?: boolean } = {},
): Promise<Exchange> {
  const socket = await target.open();
  return new Promise((resolve) => {
    let text = "";
    let closed = false;
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ text, closed });
    }, waitMs);
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      closed = true;
      clearTimeout(timer);
      resolve({ text, closed });
    });
    if (options.halfClose) socket.end(data);
    else socket.write(data);
  });
}

/** How a probing client leaves. */
export type Departure = "fin" | "rst" | "destroy" | "mid-request";

/** Sends `data` and leaves at once in the given way, without reading anything. */
export async function sendAndLeave(target: RawTarget, data: string, departure: Departure): Promise<void> {
  const socket = await target.open();
  socket.on("error", () => undefined);
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  switch (departure) {
    case "fin":
      socket.end(data);
      // The server answers into a half-closed socket, then our side goes away.
      setImmediate(() => socket.destroy());
      break;
    case "rst":
      socket.write(data);
      try {
        // TCP only (a TLS socket's handle may refuse it): unix sockets have no reset.
        if (target.tcp) socket.resetAndDestroy();
        else socket.destroy();
      } catch {
        socket.destroy();
      }
      break;
    case "destroy":
      socket.write(data);
      socket.destroy();
      break;
    case "mid-request":
      socket.write(data.slice(0, Math.max(1, data.length - 6)));
      socket.destroy();
      break;
  }
  await closed;
}
