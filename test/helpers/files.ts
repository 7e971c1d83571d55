/** Waiting for what a daemon writes to files (its log file), against a deadline. */
import { readFileSync } from "node:fs";

/** Polls `path` until `pattern` appears in it; returns the match. @throws after `timeoutMs`. */
export async function waitForFile(path: string, pattern: RegExp, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = "";
    try {
      text = readFileSync(path, "utf8");
    } catch {
      // Not created yet.
    }
    const match = pattern.exec(text)?.[0];
    if (match !== undefined) return match;
    if (Date.now() > deadline) throw new Error(`no line matching ${pattern} in ${path}:\n${text.slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
