/**
 * Issue 9 item 6: extents racing a ticket removal end as a cancelled ticket does (403), never
 * with a 500 from a closed backend or descriptor.
 */
import { randomUUID } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";

let daemon: DaemonProcess;
let path: string;
const EXTENTS = 5000;
const SIZE = EXTENTS * 8192;

beforeAll(async () => {
  daemon = await startDaemon();
  // Data in every other 4 KiB block: thousands of extents to walk.
  path = daemon.tmp.file("fragmented.raw");
  await writeFile(path, "");
  await truncate(path, SIZE);
  const handle = await open(path, "r+");
  const block = Buffer.alloc(4096, 0x61);
  for (let k = 0; k < EXTENTS; k++) await handle.write(block, 0, block.length, k * 8192);
  await handle.close();
});
afterAll(async () => {
  await daemon?.stop();
});

describe("extents and ticket removal", () => {
  it("9.6: GET extents racing DELETE of its ticket answers 200 or 403 or is cut short, never 500", async () => {
    const statuses = new Map<number | string, number>();
    for (let round = 0; round < 40; round++) {
      const id = randomUUID();
      await addTicket(daemon, { uuid: id, size: SIZE, url: `file://${path}`, timeout: 300, ops: ["read"] });
      // A removal that lands while the answer streams cuts it short, as it cuts a download:
      // the client sees the connection close, never a 500.
      const extents = request(daemon, { path: `/images/${id}/extents` }).catch((error: unknown) => {
        expect(String(error)).toMatch(/aborted|ECONNRESET|socket hang up/);
        return { status: "cut" as const, text: "" };
      });
      // Removal lands at a different point of the request each round.
      await new Promise((resolve) => setTimeout(resolve, round % 8));
      const removed = request(daemon, { service: "control", method: "DELETE", path: `/tickets/${id}` });
      const [answer, removal] = await Promise.all([extents, removed]);
      expect(removal.status).toBe(204);
      expect([200, 403, "cut"], `round ${round}: ${answer.status} ${answer.text.slice(0, 200)}`).toContain(
        answer.status,
      );
      if (answer.status === 200) expect((JSON.parse(answer.text) as unknown[]).length).toBe(2 * EXTENTS);
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
    }
    console.log("extents answers during removal:", Object.fromEntries(statuses));
  });
});
