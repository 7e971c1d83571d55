/**
 * The nbd backend against real servers: the shared backend suite on a qemu-nbd qcow2 export
 * (started the way Vdsm does) and on nbdkit's memory plugin.
 */
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, it } from "vitest";
import { type NbdServer, skipUnless, startNbdkit, startQemuNbd } from "../../test/helpers/nbd.js";
import { makeTempDir, type TempDir } from "../../test/helpers/tmp.js";
import { runBackendSuite } from "./backend.case.js";
import { NbdBackend } from "./nbd.js";
import { openBackend } from "./open.js";

const run = promisify(execFile);
const skip = skipUnless("qemu-nbd", "qemu-img", "nbdkit");
let tmp: TempDir;
let counter = 0;
const servers: NbdServer[] = [];

beforeAll(async () => {
  tmp = await makeTempDir();
});
afterAll(async () => {
  await tmp.remove();
});

async function stopServers(): Promise<void> {
  for (const server of servers.splice(0)) await server.stop();
}

if (skip !== undefined) {
  describe.skip(`nbd backend suite (${skip})`, () => {
    it("needs qemu-nbd and nbdkit", () => {});
  });
} else {
  runBackendSuite("nbd, qemu-nbd qcow2 (Vdsm flags)", {
    open: async (initial, options) => {
      const raw = tmp.file(`image-${counter}.raw`);
      const qcow2 = tmp.file(`image-${counter++}.qcow2`);
      await writeFile(raw, initial);
      await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
      const server = await startQemuNbd(tmp.path, qcow2, {
        allocationDepth: true,
        readOnly: options?.readonly ?? false,
      });
      servers.push(server);
      return openBackend(server.url, { readonly: options?.readonly ?? false });
    },
    cleanup: stopServers,
  });

  runBackendSuite("nbd, nbdkit memory", {
    open: async (initial, options) => {
      const server = await startNbdkit(tmp.path, "memory", [`size=${initial.length}`]);
      servers.push(server);
      const writer = await NbdBackend.open(server.url);
      await writer.write(initial, 0);
      await writer.close();
      return openBackend(server.url, { readonly: options?.readonly ?? false });
    },
    cleanup: stopServers,
  });
}
