/** Running the built `imageio` executable (bin/imageio on dist/) as a user would. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;

export interface CliOutcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `imageio ARGS` to its end; resolves with its exit status and output, also on failure. */
export async function imageio(...args: string[]): Promise<CliOutcome> {
  try {
    const { stdout, stderr } = await run("node", ["bin/imageio", ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}
