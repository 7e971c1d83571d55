import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { closeSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { connectUnixStream } from "../native.js";
import { openConnection } from "./connect.js";

const python = spawnSync("python3", ["--version"]).status === 0;
if (!python)
  console.log("skipping the full-backlog tests: python3 is missing (it holds a listener that accepts on cue)");

/**
 * A listener on an abstract unix socket with the smallest backlog that accepts nothing until
 * told to (a line on its stdin), as a daemon busy with other work: Node's own listeners
 * accept as soon as they can, so Python holds it.
 */
const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0" + sys.argv[1])
s.listen(0)
print("ready", flush=True)
sys.stdin.readline()
kept = []
while True:
    kept.append(s.accept()[0])
`;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** The listener, with its backlog filled by connections it has not accepted. */
async function fullListener(): Promise<{ name: string; listener: ChildProcess }> {
  const tail = `imageio-test-${randomUUID()}`;
  const name = `\0${tail}`;
  const listener = spawn("python3", ["-c", LISTENER, tail], { stdio: ["pipe", "pipe", "inherit"] });
  cleanups.push(() => listener.kill());
  await new Promise<void>((resolve, reject) => {
    listener.stdout?.once("data", () => resolve());
    listener.once("exit", (code) => reject(new Error(`listener exited with ${code}`)));
  });
  const waiting: number[] = [];
  cleanups.push(() => {
    for (const fd of waiting) closeSync(fd);
  });
  for (;;) {
    try {
      waiting.push(connectUnixStream(name));
    } catch (error) {
      expect((error as NodeJS.ErrnoException).code).toBe("EAGAIN");
      break;
    }
    if (waiting.length > 100) throw new Error("the listener's backlog never filled");
  }
  return { name, listener };
}

describe("14.left: connecting to a unix socket whose backlog is full", () => {
  it.skipIf(!python)("14.left: (9) a connect to a full backlog is tried again until the daemon accepts", async () => {
    const { name, listener } = await fullListener();
    const connecting = openConnection({ kind: "unix", path: name, where: "local" }, 5000);
    // The first attempt met the full backlog; the daemon now gets round to accepting.
    setImmediate(() => listener.stdin?.write("accept\n"));
    const connection = await connecting;
    connection.destroy();
  });

  it.skipIf(!python)("14.left: (9) a backlog that stays full fails at the connect timeout, saying so", async () => {
    const { name } = await fullListener();
    const started = Date.now();
    const failure = await openConnection({ kind: "unix", path: name, where: "local" }, 400).catch(
      (error: unknown) => error,
    );
    expect(failure).toMatchObject({ code: "IMAGEIO_ERR_REMOTE_UNAVAILABLE" });
    expect((failure as Error).message).toBe(
      "Cannot reach remote local: its listen backlog stayed full for 400 ms (the daemon accepts no more connections)",
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
  });
});
