import { mkdir, writeFile } from "node:fs/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../test/helpers/tmp.js";
import { DAEMON_DEFAULTS, loadConfig } from "./config.js";

let tmp: TempDir;
beforeEach(async () => {
  tmp = await makeTempDir("imageio-config-");
  await mkdir(tmp.file("conf.d"));
  await mkdir(tmp.file("system"));
});
afterEach(async () => {
  await tmp.remove();
});

const tlsKeys = "[tls]\nkey_file = /k\ncert_file = /c\n";
const conf = (name: string, text: string, dir = "conf.d") => writeFile(tmp.file(`${dir}/${name}`), text);

describe("configuration", () => {
  it("67: files from the conf dir and the system dir merge in basename order, later wins", async () => {
    await conf("50-vdsm.conf", `${tlsKeys}[remote]\nport = 1000\n[daemon]\nmax_connections = 4\n`);
    await conf("99-user.conf", "[remote]\nport = 2000\n");
    await conf("10-system.conf", "[remote]\nport = 3000\nhost = 10.0.0.1\n", "system");
    await conf("60-system.conf", "[daemon]\nmax_connections = 16\n", "system");
    const config = loadConfig(tmp.path, { systemDirs: [tmp.file("system")] });
    expect(config.remote).toEqual({ host: "10.0.0.1", port: 2000 });
    expect(config.daemon.max_connections).toBe(16);
    expect(config.tls).toMatchObject({ key_file: "/k", cert_file: "/c", enable: true });
    expect(Object.isFrozen(config.remote)).toBe(true);
  });

  it("67: without any file startup fails with Could not find <pattern>", () => {
    expect(() => loadConfig(tmp.path)).toThrow(`Could not find ${tmp.path}/conf.d/*.conf`);
  });

  it("67: TLS enabled without key or certificate is a startup error", async () => {
    await conf("a.conf", "[tls]\nkey_file = /k\n");
    expect(() => loadConfig(tmp.path)).toThrow(/TLS enabled .* but not configured/);
  });

  it("reads one .conf file, keeps defaults for what it does not set, and ignores unknown sections and keys", async () => {
    await conf("only.conf", `${tlsKeys}[logger_root]\nlevel = DEBUG\n[unknown]\nx = 1\n[daemon]\nfuture_key = 1\n`);
    const config = loadConfig(tmp.file("conf.d/only.conf"));
    expect(config.daemon).toEqual(DAEMON_DEFAULTS.daemon);
    expect(config.local.socket).toBe("\0/org/ovirt/imageio");
    // Upstream's [logger_root] level is honoured when [logging] level is not set.
    expect(config.logging.level).toBe("DEBUG");
  });

  it("accepts ':' separators, any-case option names, comments and booleans in upstream's spellings", async () => {
    await conf(
      "a.conf",
      `${tlsKeys}# comment\n; comment\n[daemon]\nDrop_Privileges: no\nsystemd_enable = Off\n` +
        "[backend_file]\ndirect = never\n[local]\nsocket = /run/x#not-a-comment\n",
    );
    const config = loadConfig(tmp.path);
    expect(config.daemon.drop_privileges).toBe(false);
    expect(config.daemon.systemd_enable).toBe(false);
    expect(config.backend_file.direct).toBe("never");
    expect(config.local.socket).toBe("/run/x#not-a-comment");
  });

  it("names the file, section and key of an invalid value", async () => {
    const cases: [string, RegExp][] = [
      [
        "[remote]\nport = 70000\n",
        /a\.conf: \[remote\] port: invalid value '70000': expecting an integer from 0 to 65535/,
      ],
      ["[remote]\nport = x\n", /\[remote\] port: invalid value 'x': expecting an integer/],
      [
        "[control]\nremove_timeout = 3000000\n",
        /\[control\] remove_timeout: invalid value '3000000': expecting an integer from 0 to 2147483/,
      ],
      ["[daemon]\ndrop_privileges = maybe\n", /\[daemon\] drop_privileges: invalid value 'maybe': expecting a boolean/],
      [
        "[backend_file]\ndirect = sometimes\n",
        /\[backend_file\] direct: invalid value 'sometimes': expecting one of auto, always, never/,
      ],
      ["[remote]\nport = 1\nport = 2\n", /a\.conf:6: option 'port' already exists/],
      ["[remote]\nport = 1\n[remote]\n", /a\.conf:6: section 'remote' already exists/],
      ["[remote]\njunk\n", /a\.conf:5: expected 'key = value'/],
    ];
    for (const [text, message] of cases) {
      await conf("a.conf", tlsKeys + text);
      expect(() => loadConfig(tmp.path), text).toThrow(message);
    }
  });

  it("requires a port for control over TCP", async () => {
    await conf("a.conf", `${tlsKeys}[control]\ntransport = tcp\n`);
    expect(() => loadConfig(tmp.path)).toThrow("[control] transport = tcp requires [control] port");
  });
});
