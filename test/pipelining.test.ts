/**
 * Issue 9 item 2 and issue 10 item 9: pipelined requests on one connection are handled one
 * after another (spec §6.6), and nothing pipelined after `Connection: close` runs.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addTicket, type DaemonProcess, startDaemon, ticketStatus } from "./helpers/daemon.js";
import { pipeline, rawHttp } from "./helpers/pipeline.js";

let daemon: DaemonProcess;
let counter = 0;

async function imageWithTicket(contents: Buffer) {
  const path = daemon.tmp.file(`pipe-${counter++}.raw`);
  await writeFile(path, contents);
  const id = randomUUID();
  await addTicket(daemon, {
    uuid: id,
    size: contents.length,
    url: `file://${path}`,
    timeout: 300,
    ops: ["read", "write"],
  });
  return { path, id, url: `/images/${id}` };
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// Served by one thread and by two ([daemon] workers, issue 14): the same guarantees.
describe.each([1, 2])("[daemon] workers = %i", (workers) => {
  beforeAll(async () => {
    daemon = await startDaemon({ config: { daemon: { workers } } });
  });
  afterAll(async () => {
    if (process.env.SHOW_LOGS) console.log(daemon.logs().slice(-4000));
    await daemon?.stop();
  });

  describe("pipelining", () => {
    it("9.2: a pipelined PUT then GET of the same range returns the new bytes", async () => {
      const { url } = await imageWithTicket(Buffer.alloc(MiB(10), 0x2e));
      for (let round = 0; round < 10; round++) {
        // Larger than one of the connection's two buffers, so the PUT takes several writes.
        const data = randomBytes(MiB(9) + round);
        const offset = 1000 + round * 17;
        const range = `${offset}-${offset + data.length - 1}`;
        const { responses } = await pipeline(daemon, [
          rawHttp("PUT", `${url}?flush=n`, { "Content-Range": `bytes ${range}/*` }, data),
          rawHttp("GET", url, { Range: `bytes=${range}` }),
        ]);
        expect(responses.map((r) => r.status)).toEqual([200, 206]);
        expect(responses[1]?.body.equals(data), `round ${round}`).toBe(true);
      }
    });

    it("9.2: two to six pipelined PUTs at distinct offsets all keep their bytes", async () => {
      const span = 300_000;
      const { url, path } = await imageWithTicket(Buffer.alloc(6 * span + 4096, 0x2e));
      for (let round = 0; round < 10; round++) {
        const writers = 2 + (round % 5);
        const requests = Array.from({ length: writers }, (_, k) =>
          rawHttp(
            "PUT",
            `${url}?flush=n`,
            { "Content-Range": `bytes ${10 + k * span}-${10 + k * span + span - 101}/*` },
            Buffer.alloc(span - 100, 65 + ((k + round) % 26)),
          ),
        );
        const { responses } = await pipeline(daemon, requests);
        expect(responses.map((r) => r.status)).toEqual(requests.map(() => 200));
        const contents = await readFile(path);
        for (let k = 0; k < writers; k++) {
          const expected = 65 + ((k + round) % 26);
          const slice = contents.subarray(10 + k * span, 10 + k * span + span - 100);
          expect(
            slice.every((b) => b === expected),
            `round ${round} writer ${k}`,
          ).toBe(true);
        }
      }
    });

    it("9.2: a pipelined PUT ?flush=n then PATCH flush answer in order, with the bytes written", async () => {
      const { url, path } = await imageWithTicket(Buffer.alloc(MiB(2), 0x2e));
      for (let round = 0; round < 10; round++) {
        const data = randomBytes(MiB(1) + 333);
        const { responses } = await pipeline(daemon, [
          rawHttp("PUT", `${url}?flush=n`, { "Content-Range": `bytes 7-${7 + data.length - 1}/*` }, data),
          rawHttp("PATCH", url, { "Content-Type": "application/json" }, JSON.stringify({ op: "flush" })),
        ]);
        expect(responses.map((r) => r.status)).toEqual([200, 200]);
        expect((await readFile(path)).subarray(7, 7 + data.length).equals(data)).toBe(true);
      }
    });

    it("9.2: six pipelined GETs open one backend: the ticket counts one connection, and none after it closes", async () => {
      const { url, id } = await imageWithTicket(randomBytes(64 * 1024));
      const requests = Array.from({ length: 6 }, (_, k) =>
        rawHttp("GET", url, { Range: `bytes=${k * 100}-${k * 100 + 99}` }),
      );
      let during = -1;
      const { responses } = await pipeline(daemon, requests, {
        hold: async () => {
          during = (await ticketStatus(daemon, id)).connections as number;
        },
      });
      expect(responses.map((r) => r.status)).toEqual(requests.map(() => 206));
      expect(during).toBe(1);
      await waitFor(async () => (await ticketStatus(daemon, id)).connections === 0, "connections: 0");
    });

    it("10.9: after a request with Connection: close, the response says close and nothing pipelined after it runs", async () => {
      const { url, path } = await imageWithTicket(Buffer.alloc(4096, 0x2e));
      const { responses, closed } = await pipeline(
        daemon,
        [
          rawHttp("GET", url, { Range: "bytes=0-9", Connection: "close" }),
          rawHttp("PUT", url, { "Content-Range": "bytes 0-3/*" }, "XXXX"),
        ],
        { expected: 2, timeoutMs: 3000 },
      );
      expect(responses.map((r) => r.status)).toEqual([206]);
      expect(responses[0]?.headers.connection).toBe("close");
      expect(closed).toBe(true);
      expect((await readFile(path)).subarray(0, 4).toString()).toBe("....");
    });
  });

  function MiB(n: number): number {
    return n * 1024 * 1024;
  }

  describe("daemon-wide buffers", () => {
    it("9.10: with max_buffers = 1, concurrent uploads and downloads on many connections all complete byte-exact", async () => {
      const limited = await startDaemon({ config: { daemon: { max_buffers: 1, workers } } });
      try {
        const path = limited.tmp.file("limited.raw");
        const size = 4 * 1024 * 1024;
        await writeFile(path, Buffer.alloc(size));
        const id = randomUUID();
        await addTicket(limited, { uuid: id, size, url: `file://${path}`, timeout: 300, ops: ["read", "write"] });
        const parts = Array.from({ length: 6 }, () => randomBytes(size / 8));
        const uploads = await Promise.all(
          parts.map((data, k) =>
            pipeline(limited, [
              rawHttp("PUT", `/images/${id}?flush=n`, { "Content-Range": `bytes ${k * data.length}-*/*` }, data),
              rawHttp("GET", `/images/${id}`, { Range: `bytes=${k * data.length}-${(k + 1) * data.length - 1}` }),
            ]),
          ),
        );
        for (const [k, { responses }] of uploads.entries()) {
          expect(responses.map((r) => r.status)).toEqual([200, 206]);
          expect(responses[1]?.body.equals(parts[k] as Buffer), `connection ${k}`).toBe(true);
        }
      } finally {
        await limited.stop();
      }
    });
  });
});
