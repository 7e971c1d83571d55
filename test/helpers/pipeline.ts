/**
 * Pipelining for tests: sends several requests in one write on one connection (TLS to the
 * remote service, or a unix socket) and parses the responses that come back in order.
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import type { Endpoints } from "./daemon.js";

export interface PipelinedResponse {
  status: number;
  /** Lowercase header names to values. */
  headers: Record<string, string>;
  body: Buffer;
}

export interface PipelineResult {
  responses: PipelinedResponse[];
  /** True when the server closed the connection. */
  closed: boolean;
}

/** One request as bytes: method, target, headers and an optional body (Content-Length set). */
export function rawHttp(method: string, target: string, headers: Record<string, string> = {}, body?: Buffer | string) {
  const data = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body);
  const lines = [`${method} ${target} HTTP/1.1`, "Host: localhost"];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (data !== undefined) lines.push(`Content-Length: ${data.length}`);
  const head = Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
  return data === undefined ? head : Buffer.concat([head, data]);
}

/**
 * Writes all `requests` at once and collects responses until `expected` were parsed, the
 * server closed, or `timeoutMs` passed. Keeps the connection open while `hold` runs, when given.
 */
export function pipeline(
  daemon: Endpoints,
  requests: Buffer[],
  options: {
    expected?: number;
    service?: "remote" | "local";
    timeoutMs?: number;
    hold?: () => Promise<void>;
  } = {},
): Promise<PipelineResult> {
  const expected = options.expected ?? requests.length;
  const service = options.service ?? "remote";
  return new Promise((resolve, reject) => {
    const socket: net.Socket =
      service === "remote"
        ? tls.connect({
            host: "127.0.0.1",
            port: daemon.remotePort,
            ca: readFileSync(daemon.certs.caFile),
            servername: "localhost",
          })
        : net.connect({ path: daemon.localSocket as string });
    let received = Buffer.alloc(0);
    // Chunks not yet joined into `received`: joined only once a whole response may be there,
    // so large bodies are not copied again for every chunk.
    let chunks: Buffer[] = [];
    let chunkBytes = 0;
    let needed = 0;
    const responses: PipelinedResponse[] = [];
    let closed = false;
    let done = false;
    const finish = async () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        if (options.hold && !closed) await options.hold();
      } catch (error) {
        socket.destroy();
        reject(error);
        return;
      }
      socket.destroy();
      resolve({ responses, closed });
    };
    const timer = setTimeout(finish, options.timeoutMs ?? 10_000);
    const parse = () => {
      if (received.length + chunkBytes < needed) return;
      received = Buffer.concat([received, ...chunks]);
      chunks = [];
      chunkBytes = 0;
      needed = 0;
      for (;;) {
        const headEnd = received.indexOf("\r\n\r\n");
        if (headEnd === -1) return;
        const [statusLine = "", ...lines] = received.subarray(0, headEnd).toString("latin1").split("\r\n");
        const headers: Record<string, string> = {};
        for (const line of lines) {
          const at = line.indexOf(":");
          headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
        }
        const length = Number(headers["content-length"] ?? 0);
        if (received.length < headEnd + 4 + length) {
          needed = headEnd + 4 + length;
          return;
        }
        const status = Number(statusLine.split(" ")[1]);
        responses.push({ status, headers, body: received.subarray(headEnd + 4, headEnd + 4 + length) });
        received = received.subarray(headEnd + 4 + length);
        if (status === 100) responses.pop();
        if (responses.length >= expected) {
          void finish();
          return;
        }
      }
    };
    socket.on(service === "remote" ? "secureConnect" : "connect", () => socket.write(Buffer.concat(requests)));
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      chunkBytes += chunk.length;
      parse();
    });
    socket.on("close", () => {
      closed = true;
      void finish();
    });
    socket.on("error", (error) => {
      if ((error as NodeJS.ErrnoException).code === "ECONNRESET" || (error as NodeJS.ErrnoException).code === "EPIPE")
        return;
      reject(error);
    });
  });
}
