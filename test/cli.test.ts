/** The `imageio` executable as a user runs it: bin/imageio on the compiled dist/. */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;

async function imageio(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run("node", ["bin/imageio", ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

beforeAll(async () => {
  // `npm test` builds first; a single test run may not have.
  if (!existsSync(`${root}/dist/cli.js`)) await run("npx", ["tsc", "-p", "tsconfig.build.json"], { cwd: root });
});

describe("imageio command line", () => {
  it("--help describes the tool and lists daemon, proxy and copy with examples", async () => {
    const { code, stdout } = await imageio("--help");
    expect(code).toBe(0);
    expect(stdout).toMatch(/^Usage: imageio /);
    for (const name of ["daemon", "proxy", "copy"]) expect(stdout).toMatch(new RegExp(`^  ${name} `, "m"));
    expect(stdout).toContain("imageio copy disk.raw /dev/vg0/lv-disk");
  });

  it("--version prints the package version", async () => {
    const { version } = JSON.parse(readFileSync(`${root}/package.json`, "utf8")) as { version: string };
    expect(await imageio("--version")).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  it("13: version --verbose and --version --verbose name imageio, Node.js, OpenSSL and koffi", async () => {
    const { version } = JSON.parse(readFileSync(`${root}/package.json`, "utf8")) as { version: string };
    for (const args of [
      ["version", "--verbose"],
      ["--version", "--verbose"],
      ["--verbose", "-V"],
    ]) {
      const { code, stdout } = await imageio(...args);
      expect(code, args.join(" ")).toBe(0);
      expect(stdout.split("\n")).toEqual([
        `imageio ${version}`,
        expect.stringMatching(new RegExp(`^node ${process.versions.node.replaceAll(".", "\\.")} \\(`)),
        `openssl ${process.versions.openssl}`,
        expect.stringMatching(/^koffi \d+\.\d+\.\d+$/),
        "",
      ]);
    }
    expect(await imageio("version")).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  it("each subcommand's help has an example", async () => {
    for (const name of ["daemon", "proxy", "copy", "checksum"]) {
      const { code, stdout } = await imageio(name, "--help");
      expect(code).toBe(0);
      expect(stdout).toMatch(new RegExp(`Examples?:\n  imageio ${name} `));
    }
  });

  it("an unknown command or missing argument is a usage error with exit status 2", async () => {
    const unknown = await imageio("bogus");
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'bogus'");
    const missing = await imageio("copy");
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("missing required argument 'src'");
  });
});
