/**
 * Issue 10 item 2: `bin/imageio` never exposes Node's inspector, neither on SIGUSR1 nor from
 * `--inspect` in NODE_OPTIONS. (test/package.test.ts checks the single executable.)
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { request, startDaemon, writeTestConfig } from "./helpers/daemon.js";
import { signalForInspector } from "./helpers/inspector.js";
import { makeTempDir } from "./helpers/tmp.js";

const execFileAsync = promisify(execFile);

describe("issue 10: no inspector", () => {
  it("10.2: SIGUSR1 does not open the inspector of the daemon or the proxy, which keep serving", async () => {
    for (const command of ["daemon", "proxy"] as const) {
      const daemon = await startDaemon({ command });
      try {
        for (let round = 0; round < 3; round++) {
          expect(await signalForInspector(daemon.child.pid as number, daemon.logs), command).toBeUndefined();
        }
        expect(daemon.child.exitCode).toBeNull();
        expect((await request(daemon, { service: "control", path: "/tickets/none" })).status).toBe(404);
      } finally {
        await daemon.stop();
      }
    }
  });

  it("review 19: the daemon and the proxy refuse to run with --inspect in NODE_OPTIONS or on node's command line", async () => {
    const tmp = await makeTempDir("imageio-inspect-");
    try {
      const confDir = await writeTestConfig(tmp);
      const bin = new URL("../bin/imageio", import.meta.url).pathname;
      const runs = [
        { args: [bin, "daemon", "--config", confDir], env: { NODE_OPTIONS: "--inspect=127.0.0.1:0" } },
        {
          args: [bin, "proxy", "--config", confDir],
          env: { NODE_OPTIONS: "--max-old-space-size=512 --inspect-port=0" },
        },
        { args: ["--inspect=127.0.0.1:0", bin, "daemon", "--config", confDir], env: {} },
      ];
      for (const { args, env } of runs) {
        const result = await execFileAsync(process.execPath, args, { env: { ...process.env, ...env }, timeout: 20_000 })
          .then(({ stderr }) => ({ code: 0, stderr }))
          .catch((error: { code: number; stderr: string }) => error);
        expect(result.code, args.join(" ")).toBe(1);
        expect(result.stderr).toMatch(/imageio (daemon|proxy): refusing to run with the Node\.js inspector requested/);
        expect(result.stderr).not.toContain("LISTEN");
      }
    } finally {
      await tmp.remove();
    }
  });

  it("10.2: other commands close an inspector opened by NODE_OPTIONS=--inspect at once", async () => {
    const bin = new URL("../bin/imageio", import.meta.url).pathname;
    const { stdout, stderr } = await execFileAsync(process.execPath, [bin, "--version"], {
      env: { ...process.env, NODE_OPTIONS: "--inspect=127.0.0.1:0" },
    });
    expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    expect(stderr).toContain("the Node.js inspector (--inspect, NODE_OPTIONS) is not allowed; closed it");
  });
});
