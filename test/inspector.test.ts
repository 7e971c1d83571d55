/**
 * Issue 10 item 2: `bin/imageio` never exposes Node's inspector, neither on SIGUSR1 nor from
 * `--inspect` in NODE_OPTIONS. (test/package.test.ts checks the single executable.)
 */
import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { addTicket, request, startDaemon } from "./helpers/daemon.js";
import { accepts, debuggerPorts, signalForInspector } from "./helpers/inspector.js";

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

  it("10.2: an inspector opened by NODE_OPTIONS=--inspect is closed before the daemon serves", async () => {
    const daemon = await startDaemon({ env: { NODE_OPTIONS: "--inspect=127.0.0.1:0" } });
    try {
      const ports = debuggerPorts(daemon.logs());
      // Node opened it before any of our code ran; by READY it is closed again.
      expect(ports).toHaveLength(1);
      expect(await accepts(ports[0] as number)).toBe(false);
      expect(daemon.logs()).toContain("the Node.js inspector (--inspect, NODE_OPTIONS) is not allowed; closed it");
      expect(await signalForInspector(daemon.child.pid as number, daemon.logs)).toBeUndefined();
      const image = daemon.tmp.file("image.raw");
      await writeFile(image, "hello");
      const uuid = randomUUID();
      await addTicket(daemon, { uuid, size: 5, url: `file://${image}`, timeout: 60, ops: ["read"] });
      expect((await request(daemon, { service: "local", path: `/images/${uuid}` })).text).toBe("hello");
    } finally {
      await daemon.stop();
    }
  });
});
