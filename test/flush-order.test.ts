/**
 * Issue 9 item 7: "flushed before 200" proved with a spy backend. The daemon runs in this
 * process with an injected opener, so the test sees every backend call and decides when a
 * flush completes, and how.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackendIoError } from "../src/errors.js";
import type { Backend } from "../src/io/backend.js";
import { MemoryBackend } from "../src/io/memory.js";
import { addTicket, type InProcessDaemon, request, startInProcess } from "./helpers/daemon.js";
import { pipeline, rawHttp } from "./helpers/pipeline.js";

const SIZE = 1024 * 1024;
let daemon: InProcessDaemon;
/** Backend calls and responses, in the order they happened. */
let events: string[] = [];
/** How the next flush ends: the test settles it. */
let flushGate: { release: () => void; fail: (error: Error) => void } | undefined;
let image = MemoryBackend.create({ data: Buffer.alloc(SIZE) });

/** Records writes and flushes; a flush waits for the test to release or fail it. */
function spy(inner: Backend): Backend {
  return new Proxy(inner, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (property === "write") {
        return async (buf: Buffer, offset: number) => {
          events.push("write-start");
          // A turn of the event loop, as a real write to a disk takes.
          await new Promise((resolve) => setImmediate(resolve));
          await value.call(target, buf, offset);
          events.push("write-end");
        };
      }
      if (property === "flush") {
        return async () => {
          events.push("flush-start");
          await new Promise<void>((resolve, reject) => {
            flushGate = { release: resolve, fail: reject };
          }).then(
            () => events.push("flush-end"),
            (error: unknown) => {
              events.push("flush-failed");
              throw error;
            },
          );
          await value.call(target);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

beforeAll(async () => {
  daemon = await startInProcess({
    openBackend: async () => ({ backend: spy(await image.clone()), bufferSize: 256 * 1024 }),
  });
});
afterAll(async () => {
  await daemon?.stop();
});

async function ticket(): Promise<string> {
  events = [];
  flushGate = undefined;
  image = MemoryBackend.create({ data: Buffer.alloc(SIZE) });
  const id = randomUUID();
  await addTicket(daemon, { uuid: id, size: SIZE, url: "file:///spy.raw", timeout: 300, ops: ["read", "write"] });
  return id;
}

/** Waits until the backend was asked to flush, then lets one more full request run before settling it. */
async function settleFlush(id: string, how: "release" | "fail"): Promise<void> {
  const deadline = Date.now() + 5000;
  while (flushGate === undefined) {
    if (Date.now() > deadline) throw new Error(`no flush started; events: ${events.join(", ")}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
  // A whole request on another connection: had the 200 been sent early, it would be here by now.
  await request(daemon, { path: `/images/${id}`, headers: { range: "bytes=0-0" } });
  events.push(how === "release" ? "releasing" : "failing");
  if (how === "release") flushGate.release();
  else flushGate.fail(new BackendIoError("Cannot flush 'spy': EIO: i/o error, fsync", "EIO"));
}

describe("flush ordering", () => {
  it("9.7: PUT with flush answers 200 only after flush() resolved", async () => {
    const id = await ticket();
    const put = request(daemon, { method: "PUT", path: `/images/${id}`, body: Buffer.alloc(4096, 1) }).then((r) => {
      events.push(`response ${r.status}`);
      return r;
    });
    await settleFlush(id, "release");
    expect((await put).status).toBe(200);
    expect(events.slice(events.indexOf("flush-start"))).toEqual([
      "flush-start",
      "releasing",
      "flush-end",
      "response 200",
    ]);
  });

  it("9.7: PATCH flush answers 200 only after flush() resolved", async () => {
    const id = await ticket();
    const patch = request(daemon, {
      method: "PATCH",
      path: `/images/${id}`,
      body: JSON.stringify({ op: "flush" }),
    }).then((r) => {
      events.push(`response ${r.status}`);
      return r;
    });
    await settleFlush(id, "release");
    expect((await patch).status).toBe(200);
    expect(events).toEqual(["flush-start", "releasing", "flush-end", "response 200"]);
  });

  it("9.7: a flush that fails gives 500, never 200, for PUT and PATCH", async () => {
    const id = await ticket();
    const put = request(daemon, { method: "PUT", path: `/images/${id}`, body: Buffer.alloc(4096, 1) });
    await settleFlush(id, "fail");
    expect((await put).status).toBe(500);
    flushGate = undefined;
    const patch = request(daemon, { method: "PATCH", path: `/images/${id}`, body: JSON.stringify({ op: "flush" }) });
    await settleFlush(id, "fail");
    expect((await patch).status).toBe(500);
  });

  it("9.7: a pipelined PUT ?flush=n then PATCH flush starts the flush only after the write ended", async () => {
    for (let round = 0; round < 10; round++) {
      const id = await ticket();
      const answered = pipeline(daemon, [
        rawHttp("PUT", `/images/${id}?flush=n`, { "Content-Range": `bytes 0-${SIZE - 1}/*` }, Buffer.alloc(SIZE, 7)),
        rawHttp("PATCH", `/images/${id}`, {}, JSON.stringify({ op: "flush" })),
      ]);
      await settleFlush(id, "release");
      const { responses } = await answered;
      expect(responses.map((r) => r.status)).toEqual([200, 200]);
      const flushStart = events.indexOf("flush-start");
      expect(events.lastIndexOf("write-end"), `round ${round}: ${events.join(", ")}`).toBeLessThan(flushStart);
      expect(events.filter((e) => e === "write-start").length).toBe(events.filter((e) => e === "write-end").length);
    }
  });
});
