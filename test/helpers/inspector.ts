/**
 * Checks that a running imageio process has no Node inspector: none left open by `--inspect`
 * in NODE_OPTIONS, and none opened by SIGUSR1.
 */
import net from "node:net";

/** The port of every "Debugger listening on ws://host:port/…" line in `output`. */
export function debuggerPorts(output: string): number[] {
  return [...output.matchAll(/Debugger listening on ws:\/\/[^:]+:(\d+)\//g)].map((match) => Number(match[1]));
}

/** True when something accepts TCP connections on 127.0.0.1:`port`. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Sends SIGUSR1 to `pid` and watches `output()` for a debugger for up to `watchMs` (Node
 * prints its line within milliseconds of the signal when it opens one).
 * @returns the debugger line if one appeared, else undefined.
 */
export async function signalForInspector(
  pid: number,
  output: () => string,
  watchMs = 1000,
): Promise<string | undefined> {
  const before = output().length;
  process.kill(pid, "SIGUSR1");
  const deadline = Date.now() + watchMs;
  while (Date.now() < deadline) {
    const line = /Debugger listening on \S+/.exec(output().slice(before))?.[0];
    if (line !== undefined) return line;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return undefined;
}
