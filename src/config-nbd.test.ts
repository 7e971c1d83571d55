import { mkdir, writeFile } from "node:fs/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../test/helpers/tmp.js";
import { loadConfig } from "./config.js";

let tmp: TempDir;
beforeEach(async () => {
  tmp = await makeTempDir("imageio-config-");
  await mkdir(tmp.file("conf.d"));
});
afterEach(async () => {
  await tmp.remove();
});

const tlsKeys = "[tls]\nkey_file = /k\ncert_file = /c\n";

describe("[backend_nbd] configuration", () => {
  it("11.6: defaults are 16 requests of 256 KiB, 16 MiB in flight, a 10 s handshake; files override them", async () => {
    await writeFile(tmp.file("conf.d/50.conf"), tlsKeys);
    expect(loadConfig(tmp.path).backend_nbd).toEqual({
      buffer_size: 8388608,
      requests: 16,
      request_size: 262144,
      queue_size: 16777216,
      handshake_timeout: 10,
    });
    await writeFile(tmp.file("conf.d/60.conf"), "[backend_nbd]\nrequests = 1\nrequest_size = 8388608\n");
    expect(loadConfig(tmp.path).backend_nbd).toMatchObject({ requests: 1, request_size: 8388608 });
  });

  it("11.6: out-of-range values stop the start naming the key (qemu-nbd refuses requests above 32 MiB)", async () => {
    for (const line of ["request_size = 33554433", "requests = 0", "queue_size = 1", "handshake_timeout = 0"]) {
      await writeFile(tmp.file("conf.d/50.conf"), `${tlsKeys}[backend_nbd]\n${line}\n`);
      expect(() => loadConfig(tmp.path)).toThrow(new RegExp(`backend_nbd.*${line.split(" ")[0]}`));
    }
  });
});
