/**
 * One response written on the connection: the status line and the header list the handlers
 * give (src/http/response.ts decides them), then the body, with backpressure through the
 * Writable it is. The head goes out with the first body bytes (one packet for small answers).
 */
import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import { Writable } from "node:stream";
import type { OutgoingResponse } from "../exchange.js";

export class WireResponse extends Writable implements OutgoingResponse {
  statusCode = 200;
  headersSent = false;
  /** The head said `connection: close`: the connection ends after this response. */
  closesConnection = false;
  private head: Buffer | undefined;

  constructor(
    private readonly socket: Socket,
    /** A HEAD request's response has no body, whatever is written. */
    private readonly bodyless: boolean,
  ) {
    super({ highWaterMark: 64 * 1024 });
    // A write failing because the client left: the handler learns it from the write's
    // callback or 'close'; the error itself must not become an uncaught exception.
    this.on("error", () => undefined);
    const onClose = () => this.destroy();
    socket.once("close", onClose);
    this.once("close", () => socket.off("close", onClose));
  }

  /**
   * Starts the response: `headers` is a flat name, value list, written as given.
   * @throws Error when a head was already written, or a name or value holds CR or LF.
   */
  writeHead(status: number, headers: string[]): this {
    if (this.headersSent) throw new Error("response head already written");
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Unknown"}\r\n`;
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = headers[i] as string;
      const value = headers[i + 1] as string;
      // node:http refused these too: a CR or LF would let a value (a remote's message, say)
      // start a header or a response of its own.
      if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new Error(`invalid character in header '${name}'`);
      head += `${name}: ${value}\r\n`;
      if (name.toLowerCase() === "connection" && value.toLowerCase() === "close") this.closesConnection = true;
    }
    this.head = Buffer.from(`${head}\r\n`, "latin1");
    this.statusCode = status;
    this.headersSent = true;
    return this;
  }

  /** Tells a client waiting with `Expect: 100-continue` to send its body. */
  writeContinue(): void {
    if (!this.socket.destroyed) this.socket.write("HTTP/1.1 100 Continue\r\n\r\n");
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.socket.destroyed || !this.socket.writable) {
      callback(new Error("client disconnected during the response"));
      return;
    }
    const head = this.takeHead();
    if (this.bodyless) {
      if (head === undefined) callback();
      else this.socket.write(head, (error) => callback(error));
      return;
    }
    if (head !== undefined) {
      this.socket.cork();
      this.socket.write(head);
      this.socket.write(chunk, (error) => callback(error));
      this.socket.uncork();
      return;
    }
    this.socket.write(chunk, (error) => callback(error));
  }

  override _final(callback: (error?: Error | null) => void): void {
    const head = this.takeHead();
    if (head === undefined) {
      callback();
      return;
    }
    if (this.socket.destroyed || !this.socket.writable) {
      callback(new Error("client disconnected before the response"));
      return;
    }
    this.socket.write(head, (error) => callback(error));
  }

  private takeHead(): Buffer | undefined {
    const head = this.head;
    this.head = undefined;
    return head;
  }
}
