import { mkdir, writeFile } from "node:fs/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeTempDir, type TempDir } from "../test/helpers/tmp.js";
import { configSourcesToText, DAEMON_DEFAULTS, loadConfig, loadConfigWithSources } from "./config.js";
import { UPSTREAM_LOG_FILE } from "./config-pylogging.js";

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

  it("reads one .conf file and keeps defaults for what it does not set", async () => {
    await conf("only.conf", `${tlsKeys}[logger_root]\nlevel = DEBUG\n`);
    const config = loadConfig(tmp.file("conf.d/only.conf"));
    expect(config.daemon).toEqual(DAEMON_DEFAULTS.daemon);
    expect(config.local.socket).toBe("\0/org/ovirt/imageio");
    // Upstream's [logger_root] level is honoured when [logging] level is not set.
    expect(config.logging.level).toBe("DEBUG");
  });

  it("13: an unknown key or section is reported with file, section and key, and ignored", async () => {
    await conf("99-local.conf", `${tlsKeys}[remote]\nprot = 54323\n`);
    let loaded = loadConfigWithSources(tmp.path);
    expect(loaded.warnings).toEqual([
      `${tmp.file("conf.d/99-local.conf")}: [remote] prot: unknown option, ignored (did you mean 'port'?); [remote] takes host, port`,
    ]);
    expect(loaded.config.remote.port).toBe(DAEMON_DEFAULTS.remote.port);
    await conf("99-local.conf", `${tlsKeys}[remtoe]\nport = 54323\n`);
    loaded = loadConfigWithSources(tmp.path);
    expect(loaded.warnings).toHaveLength(1);
    expect(loaded.warnings[0]).toMatch(
      /99-local\.conf: \[remtoe\]: unknown section, ignored \(did you mean '\[remote\]'\?\)/,
    );
    await conf("99-local.conf", `${tlsKeys}[logger_root]\nlevle = DEBUG\n`);
    expect(loadConfigWithSources(tmp.path).warnings[0]).toMatch(
      /\[logger_root\] levle: unknown option, ignored \(did you mean 'level'\?\)/,
    );
  });

  it("13: files as Vdsm and engine-setup write them load, their logging sections honoured", async () => {
    // Upstream's own defaults, engine-setup's 50-engine.conf and Vdsm's file, in their shapes.
    await conf(
      "50-engine.conf",
      `${tlsKeys}[backend_http]\nca_file = /etc/pki/ovirt-engine/ca.pem\n[remote]\nport = 54323\n` +
        "[local]\nenable = false\n[control]\ntransport = tcp\nport = 54324\n" +
        "[handlers]\nkeys = logfile\n[logger_root]\nhandlers = logfile\nlevel = WARNING\n",
    );
    await conf(
      "00-upstream.conf",
      "[loggers]\nkeys = root\n[formatters]\nkeys = long\n[profile]\nfilename = /run/ovirt-imageio/profile\n" +
        '[handler_logfile]\nclass = logging.handlers.RotatingFileHandler\nargs = ("/var/log/imageio-test.log",)\n' +
        'kwargs = {"maxBytes": 20971520, "backupCount": 10}\nlevel = DEBUG\nformatter = long\n' +
        "[handler_stderr]\nclass = logging.StreamHandler\nargs = ()\n" +
        "[formatter_long]\nformat = %(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] %(message)s\n",
    );
    const { config, sources } = loadConfigWithSources(tmp.path);
    expect(config.remote.port).toBe(54323);
    expect(config.logging).toEqual({ level: "WARNING", file: "/var/log/imageio-test.log" });
    expect(sources.logging?.level).toBe(`${tmp.file("conf.d/50-engine.conf")} [logger_root] level`);
    expect(sources.logging?.file).toBe(`${tmp.file("conf.d/50-engine.conf")} [logger_root] handlers = logfile`);
    // A stream handler means stderr; [logging] set in a file wins over the logging sections.
    await conf("60-vdsm.conf", "[logger_root]\nhandlers = stderr\nlevel = CRITICAL\n");
    expect(loadConfig(tmp.path).logging).toEqual({ level: "ERROR", file: "" });
    await conf("99-local.conf", "[logging]\nlevel = DEBUG\nfile = /tmp/x.log\n");
    expect(loadConfig(tmp.path).logging).toEqual({ level: "DEBUG", file: "/tmp/x.log" });
  });

  it("13: upstream's logfile handler without args writes upstream's log file; bad values are named", async () => {
    await conf("a.conf", `${tlsKeys}[logger_root]\nhandlers = logfile\n`);
    expect(loadConfig(tmp.path).logging.file).toBe(UPSTREAM_LOG_FILE);
    await conf("a.conf", `${tlsKeys}[logger_root]\nlevel = LOUD\n`);
    expect(() => loadConfig(tmp.path)).toThrow(/a\.conf: \[logger_root\] level: invalid value 'LOUD'/);
    await conf("a.conf", `${tlsKeys}[logger_root]\nhandlers = f\n[handler_f]\nclass = FileHandler\nargs = (x,)\n`);
    expect(() => loadConfig(tmp.path)).toThrow(/a\.conf: \[handler_f\] args: cannot find the log file in '\(x,\)'/);
  });

  it("review 18: continuation lines extend the value before them, as configparser reads them", async () => {
    await conf(
      "a.conf",
      `${tlsKeys}[logger_root]\nhandlers =\n  logfile\n\nlevel = DEBUG\n[handler_logfile]\n` +
        'class = logging.handlers.RotatingFileHandler\nargs = (\n    "/var/log/continued.log",)\n' +
        'kwargs = {"maxBytes": 20971520,\n\n  # a comment inside\n  "backupCount": 10}\n[remote]\nport =\n  54330\n',
    );
    const { config } = loadConfigWithSources(tmp.path);
    expect(config.logging.file).toBe("/var/log/continued.log");
    expect(config.logging.level).toBe("DEBUG");
    expect(config.remote.port).toBe(54330);
    // A continued value keeps its line breaks: not an integer any more.
    await conf("a.conf", `${tlsKeys}[remote]\nport = 1\n  2\n`);
    expect(() => loadConfig(tmp.path)).toThrow(/a\.conf: \[remote\] port: invalid value '1\n2'/);
  });

  it("13: --show-config=sources tells default from file for every value", async () => {
    await conf("50-vdsm.conf", `${tlsKeys}[remote]\nport = 1000\n`);
    await conf("99-local.conf", "[remote]\nport = 2000\n");
    const { config, sources } = loadConfigWithSources(tmp.path);
    const text = configSourcesToText(config, sources);
    expect(text).toContain(`[remote]\nhost = ::    ; default\nport = 2000    ; ${tmp.file("conf.d/99-local.conf")}\n`);
    expect(text).toContain(`key_file = /k    ; ${tmp.file("conf.d/50-vdsm.conf")}`);
    expect(text).toContain('socket = "\\u0000/org/ovirt/imageio"    ; default');
    expect(text).toContain('file = ""    ; default');
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
