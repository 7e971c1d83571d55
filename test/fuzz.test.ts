/**
 * Issue 10, "a corpus that stays": the raw requests of test/fuzz/corpus.ts replayed against a
 * running daemon process, then mutated by fast-check. Whatever arrives, the daemon never
 * exits, answers only well-formed HTTP (refusals for the corpus as written) or closes, keeps
 * serving, and the sentinel image, readable but never writable, keeps its bytes.
 * Bounded in runs and time so CI pays a few tens of seconds.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CORPUS, type CorpusEntry, type CorpusService } from "./fuzz/corpus.js";
import { addTicket, type DaemonProcess, request, startDaemon } from "./helpers/daemon.js";
import { type Departure, exchange, type RawTarget, sendAndLeave, tlsTarget, unixTarget } from "./helpers/raw.js";

const MiB = 1024 * 1024;
/** Mutated requests per run of the property; with the time limit, CI's cost stays bounded. */
const RUNS = Number(process.env.IMAGEIO_FUZZ_RUNS ?? 500);
const TIME_LIMIT_MS = Number(process.env.IMAGEIO_FUZZ_MS ?? 25_000);

let daemon: DaemonProcess;
let sentinelPath: string;
let sentinelHash: string;
let sentinelTicket: string;
let scratchTicket: string;

beforeAll(async () => {
  daemon = await startDaemon({ config: { logging: { level: "INFO" } } });
  sentinelPath = daemon.tmp.file("sentinel.raw");
  const sentinel = randomBytes(MiB);
  sentinelHash = sha256(sentinel);
  await writeFile(sentinelPath, sentinel);
  await writeFile(daemon.tmp.file("scratch.raw"), Buffer.alloc(MiB));
  sentinelTicket = randomUUID();
  scratchTicket = randomUUID();
  await addTicket(daemon, {
    uuid: sentinelTicket,
    size: MiB,
    url: `file://${sentinelPath}`,
    timeout: 3600,
    ops: ["read"],
  });
  await addTicket(daemon, {
    uuid: scratchTicket,
    size: MiB,
    url: `file://${daemon.tmp.file("scratch.raw")}`,
    timeout: 3600,
    ops: ["read", "write"],
  });
});
afterAll(async () => {
  await daemon?.stop();
});

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function target(service: CorpusService): RawTarget {
  if (service === "remote") return tlsTarget("remote", daemon.remotePort, daemon.certs.caFile);
  return unixTarget(service, service === "local" ? (daemon.localSocket as string) : daemon.controlSocket);
}

function fill(raw: string, sentinelOnly = false): string {
  return raw
    .replaceAll("{T}", sentinelOnly ? sentinelTicket : scratchTicket)
    .replaceAll("{S}", sentinelTicket)
    .replaceAll("{N}", randomUUID());
}

/** The status codes of every response in `text` (pipelined answers included). */
function statuses(text: string): number[] {
  return [...text.matchAll(/(?:^|\r\n\r\n|\n)HTTP\/1\.1 (\d{3}) /g)].map((match) => Number(match[1]));
}

/**
 * What any answer must look like: it starts with a status line of a known class, and it
 * never tells the sentinel's reader that a write succeeded.
 */
function expectWellFormed(name: string, answer: { text: string }): void {
  if (answer.text === "") return;
  expect(answer.text.slice(0, 9), `${name}: ${JSON.stringify(answer.text.slice(0, 200))}`).toBe("HTTP/1.1 ");
  for (const status of statuses(answer.text)) {
    expect(status, name).toBeGreaterThanOrEqual(100);
    expect(status, name).toBeLessThan(600);
  }
}

/** The daemon is running and still serves the sentinel's bytes. */
async function expectServing(context: string): Promise<void> {
  expect(daemon.child.exitCode, `${context}\n${daemon.logs().slice(-2000)}`).toBeNull();
  expect(daemon.child.signalCode, context).toBeNull();
  const response = await request(daemon, {
    service: "local",
    path: `/images/${sentinelTicket}`,
    headers: { range: "bytes=0-65535" },
  });
  expect(response.status, context).toBe(206);
  expect(sha256(response.body), context).toBe(sha256(readFileSync(sentinelPath).subarray(0, 65536)));
}

/** Sends a request and reads the answer, half-closing so the daemon must answer or close. */
async function replay(entry: CorpusEntry, raw: string | Buffer, departure: Departure | "read" = "read") {
  const where = target(entry.service);
  if (departure !== "read") {
    await sendAndLeave(where, typeof raw === "string" ? raw : raw.toString("latin1"), departure);
    return { text: "", closed: true };
  }
  return exchange(where, raw, 3000, { halfClose: true });
}

describe("issue 10: fuzz corpus", () => {
  it("10.corpus: every request of the corpus, as written, is refused (4xx/5xx) or closed, and the daemon lives", async () => {
    for (const entry of CORPUS) {
      const answer = await replay(entry, fill(entry.raw));
      expectWellFormed(entry.name, answer);
      if (!entry.ok) {
        const codes = statuses(answer.text);
        expect(codes.length > 0 || answer.closed, `${entry.name}: no answer and not closed`).toBe(true);
        for (const code of codes)
          expect(code, `${entry.name}: ${answer.text.slice(0, 200)}`).toBeGreaterThanOrEqual(400);
      }
      await expectServing(entry.name);
    }
    expect(sha256(readFileSync(sentinelPath))).toBe(sentinelHash);
  });

  it(
    "10.corpus: mutated corpus requests never kill the daemon or touch the sentinel",
    async () => {
      const entryArb = fc.constantFrom(...CORPUS);
      const mutation = fc.oneof(
        // Bytes inserted, deleted, duplicated, replaced.
        fc.record({
          kind: fc.constant("insert" as const),
          at: fc.nat(),
          bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
        }),
        fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), length: fc.integer({ min: 1, max: 32 }) }),
        fc.record({
          kind: fc.constant("repeat" as const),
          at: fc.nat(),
          length: fc.integer({ min: 1, max: 64 }),
          times: fc.integer({ min: 2, max: 40 }),
        }),
        fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
        // Interesting tokens dropped in anywhere.
        fc.record({
          kind: fc.constant("token" as const),
          at: fc.nat(),
          token: fc.constantFrom(
            "\r\n",
            "\n",
            "\r\n\r\n",
            "\u0000",
            ":",
            " ",
            "-1",
            "1.0",
            "1e308",
            "99999999999999999999",
            "chunked",
            "Transfer-Encoding: gzip\r\n",
            "Content-Length: 0\r\n",
            "Content-Length: 5\r\n",
            "Connection: close\r\n",
            "Connection: Upgrade\r\nUpgrade: x\r\n",
            "Expect: 100-continue\r\n",
            "%00",
            "%2F",
            "..",
            '"',
            "{}",
            "[]",
          ),
        }),
      );
      const departure = fc.constantFrom<Departure | "read">(
        "read",
        "read",
        "read",
        "fin",
        "rst",
        "destroy",
        "mid-request",
      );
      await fc.assert(
        fc.asyncProperty(
          entryArb,
          fc.array(mutation, { minLength: 1, maxLength: 4 }),
          departure,
          fc.boolean(),
          async (entry, mutations, leave, onSentinel) => {
            // Writable tickets only on the scratch image; half the runs aim everything at the sentinel.
            let bytes: Buffer = Buffer.from(fill(entry.raw, onSentinel), "latin1");
            for (const step of mutations) bytes = mutate(bytes, step);
            const answer = await replay(entry, bytes, leave);
            expectWellFormed(entry.name, answer);
            await expectServing(`${entry.name} mutated ${JSON.stringify(bytes.toString("latin1").slice(0, 300))}`);
          },
        ),
        { numRuns: RUNS, interruptAfterTimeLimit: TIME_LIMIT_MS, markInterruptAsFailure: false },
      );
      expect(sha256(readFileSync(sentinelPath))).toBe(sentinelHash);
    },
    TIME_LIMIT_MS + 30_000,
  );
});

type Mutation =
  | { kind: "insert"; at: number; bytes: Uint8Array }
  | { kind: "delete"; at: number; length: number }
  | { kind: "repeat"; at: number; length: number; times: number }
  | { kind: "flip"; at: number; byte: number }
  | { kind: "token"; at: number; token: string };

function mutate(data: Buffer, step: Mutation): Buffer {
  const at = data.length === 0 ? 0 : step.at % data.length;
  switch (step.kind) {
    case "insert":
      return Buffer.concat([data.subarray(0, at), Buffer.from(step.bytes), data.subarray(at)]);
    case "delete":
      return Buffer.concat([data.subarray(0, at), data.subarray(at + step.length)]);
    case "repeat": {
      const piece = data.subarray(at, at + step.length);
      return Buffer.concat([
        data.subarray(0, at),
        ...Array.from({ length: step.times }, () => piece),
        data.subarray(at + step.length),
      ]);
    }
    case "flip": {
      const copy = Buffer.from(data);
      if (copy.length > 0) copy[at] = step.byte;
      return copy;
    }
    case "token":
      return Buffer.concat([data.subarray(0, at), Buffer.from(step.token, "latin1"), data.subarray(at)]);
  }
}
