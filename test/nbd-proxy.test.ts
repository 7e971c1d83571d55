/**
 * Issue 11: the proxy relays nbd tickets unchanged. A daemon serves a qemu-nbd qcow2 export,
 * a proxy ticket points at the daemon's ticket; bytes, extents (holes from allocation depth)
 * and dirty extents come through the proxy as the daemon serves them.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";
import { type NbdServer, run, skipUnless, startQemuNbd } from "./helpers/nbd.js";

const MiB = 1024 * 1024;
const skip = skipUnless("qemu-nbd", "qemu-img", "qemu-io");
let daemon: DaemonProcess;
let proxy: DaemonProcess;
const servers: NbdServer[] = [];
const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");

beforeAll(async () => {
  if (skip !== undefined) return;
  const certs = await testCerts();
  [daemon, proxy] = await Promise.all([
    startDaemon(),
    startDaemon({ command: "proxy", config: { backend_http: { ca_file: certs.caFile } } }),
  ]);
});
afterAll(async () => {
  for (const server of servers.splice(0)) await server.stop();
  await Promise.all([daemon?.stop(), proxy?.stop()]);
});

async function proxied(url: string, size: number, extra: Record<string, unknown> = {}): Promise<string> {
  const remoteId = randomUUID();
  await addTicket(daemon, { uuid: remoteId, size, url, timeout: 300, ops: ["read", "write"], ...extra });
  const id = randomUUID();
  await addTicket(proxy, {
    uuid: id,
    size,
    url: `https://localhost:${daemon.remotePort}/images/${remoteId}`,
    timeout: 300,
    ops: ["read", "write"],
    ...extra,
  });
  return id;
}

describe.skipIf(skip !== undefined)("proxy in front of nbd tickets", () => {
  it("11.10: upload, download, zero and extents of a qemu-nbd qcow2 export through the proxy", async () => {
    const image = daemon.tmp.file("proxied.qcow2");
    const size = 8 * MiB;
    await run("qemu-img", ["create", "-f", "qcow2", image, String(size)]);
    const server = await startQemuNbd(daemon.tmp.path, image, { allocationDepth: true });
    servers.push(server);
    const id = await proxied(server.url, size);
    const data = randomBytes(size);
    data.fill(0, 2 * MiB, 4 * MiB);
    const head = data.subarray(0, 2 * MiB);
    const tail = data.subarray(4 * MiB);
    expect((await request(proxy, { method: "PUT", path: `/images/${id}`, body: head })).status).toBe(200);
    const put = await request(proxy, {
      method: "PUT",
      path: `/images/${id}`,
      headers: { "content-range": `bytes ${4 * MiB}-${size - 1}/*` },
      body: tail,
    });
    expect(put.status).toBe(200);
    const zero = await request(proxy, {
      method: "PATCH",
      path: `/images/${id}`,
      body: JSON.stringify({ op: "zero", offset: 5 * MiB, size: MiB + 7 }),
    });
    expect(zero.status, zero.text).toBe(200);
    data.fill(0, 5 * MiB, 6 * MiB + 7);
    const get = await request(proxy, { path: `/images/${id}` });
    expect(get.status).toBe(200);
    expect(sha(get.body)).toBe(sha(data));
    const extents = JSON.parse((await request(proxy, { path: `/images/${id}/extents` })).text);
    expect(extents).toContainEqual({ start: 2 * MiB, length: 2 * MiB, zero: true, hole: true });
    const options = JSON.parse((await request(proxy, { method: "OPTIONS", path: `/images/${id}` })).text);
    expect(options).toMatchObject({ max_readers: 8, max_writers: 8, size });
  });

  it("11.10: dirty extents of a backup export come through the proxy as the daemon serves them", async () => {
    const image = daemon.tmp.file("backup.qcow2");
    await run("qemu-img", ["create", "-f", "qcow2", image, "4M"]);
    await run("qemu-img", ["bitmap", "--add", image, "b0"]);
    await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x42 1M 64k", "-c", "write -z 3M 64k", image]);
    const server = await startQemuNbd(daemon.tmp.path, image, { allocationDepth: true, readOnly: true, bitmap: "b0" });
    servers.push(server);
    const id = await proxied(server.url, 4 * MiB, { dirty: true, ops: ["read"] });
    const response = await request(proxy, { path: `/images/${id}/extents?context=dirty` });
    expect(response.status, response.text).toBe(200);
    expect(JSON.parse(response.text)).toEqual([
      { start: 0, length: MiB, dirty: false, zero: true },
      { start: MiB, length: 64 * 1024, dirty: true, zero: false },
      { start: MiB + 64 * 1024, length: 2 * MiB - 64 * 1024, dirty: false, zero: true },
      { start: 3 * MiB, length: 64 * 1024, dirty: true, zero: true },
      { start: 3 * MiB + 64 * 1024, length: MiB - 64 * 1024, dirty: false, zero: true },
    ]);
  });
});
