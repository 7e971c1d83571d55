/**
 * Issue 9 item 11: a PUT relayed by the proxy asks its client for the body with 100 Continue,
 * as the daemon does, so clients that send `Expect: 100-continue` (curl does for large bodies)
 * do not wait for their expect timeout or the inactivity timeout.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, curl, type DaemonProcess, startDaemon } from "./helpers/daemon.js";

let daemon: DaemonProcess;
let proxy: DaemonProcess;

beforeAll(async () => {
  const certs = await testCerts();
  [daemon, proxy] = await Promise.all([
    startDaemon(),
    startDaemon({ command: "proxy", config: { backend_http: { ca_file: certs.caFile } } }),
  ]);
});
afterAll(async () => {
  await Promise.all([daemon?.stop(), proxy?.stop()]);
});

async function proxiedImage(size: number) {
  const path = daemon.tmp.file(`image-${randomUUID()}.raw`);
  await writeFile(path, Buffer.alloc(size, 0x2e));
  const remoteId = randomUUID();
  await addTicket(daemon, { uuid: remoteId, size, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
  const id = randomUUID();
  await addTicket(proxy, {
    uuid: id,
    size,
    url: `https://localhost:${daemon.remotePort}/images/${remoteId}`,
    timeout: 300,
    ops: ["read", "write"],
  });
  return { path, id };
}

/** Sends a PUT head with Expect: 100-continue and resolves with what came back before the body was sent. */
function expectContinue(id: string, body: Buffer): Promise<{ interim: string; final: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port: proxy.remotePort,
      ca: readFileSync(proxy.certs.caFile),
      servername: "localhost",
    });
    let text = "";
    let interim: string | undefined;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within 5 s; got: ${JSON.stringify(text)}`));
    }, 5000);
    socket.on("secureConnect", () =>
      socket.write(
        `PUT /images/${id} HTTP/1.1\r\nHost: localhost\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`,
      ),
    );
    socket.on("data", (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (interim === undefined && text.includes("\r\n\r\n")) {
        interim = text;
        text = "";
        // Only a 100 asks for the body; a final answer ends the request without it.
        if (interim.startsWith("HTTP/1.1 100 ")) socket.write(body);
      }
      if (interim !== undefined && /^HTTP\/1\.1 [2-5]\d\d /.test(text) && text.includes("\r\n\r\n")) {
        clearTimeout(timer);
        socket.destroy();
        resolve({ interim, final: text });
      }
    });
    socket.on("error", reject);
  });
}

describe("proxy relay", () => {
  it("9.11: a relayed PUT with Expect: 100-continue gets 100 Continue, then 200, and the bytes arrive", async () => {
    const { path, id } = await proxiedImage(1024 * 1024);
    const body = randomBytes(300_000);
    const { interim, final } = await expectContinue(id, body);
    expect(interim).toMatch(/^HTTP\/1\.1 100 Continue\r\n/);
    expect(final).toMatch(/^HTTP\/1\.1 200 /);
    expect((await readFile(path)).subarray(0, body.length).equals(body)).toBe(true);
  });

  it("9.11: curl uploads through the proxy without waiting for its expect timeout", async () => {
    const { path, id } = await proxiedImage(4 * 1024 * 1024);
    const file = proxy.tmp.file("upload.bin");
    const body = randomBytes(2 * 1024 * 1024);
    await writeFile(file, body);
    // curl waits this long for a 100 that never comes before sending the body anyway.
    const result = await curl([
      "--cacert",
      proxy.certs.caFile,
      "--expect100-timeout",
      "30",
      "--max-time",
      "20",
      "--upload-file",
      file,
      "--write-out",
      "%{http_code}",
      `https://localhost:${proxy.remotePort}/images/${id}`,
    ]);
    expect(result.stdout).toBe("200");
    expect((await readFile(path)).subarray(0, body.length).equals(body)).toBe(true);
  });
});
