/**
 * `npm run bench -- nbd`: the nbd backend against the tools oVirt hosts already have, in
 * interleaved rounds of one run. A 2 GiB fully allocated raw image is exported by qemu-nbd
 * started the way Vdsm does it (read-only for reads, a second writable export for writes):
 *   - daemon GET and PUT over HTTPS and the unix socket (curl), and GET from a second daemon
 *     configured like the obvious design and the reference daemon: one 8 MiB request in flight
 *     ([backend_nbd] requests = 1, request_size = 8 MiB);
 *   - `imageio copy` from the export to a file and from a file to the export, next to
 *     `nbdcopy` and `qemu-img convert` doing the same.
 * Targets: imageio copy nbd → file ≥ 0.8× nbdcopy; unix GET ≥ 1.5× the one-request daemon.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { closeSync, constants, existsSync, openSync, readFileSync, rmSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { commandExists, interleave, markdownTable, measure, median } from "./harness.js";
import type { Suite } from "./run.js";
import {
  addTicket,
  cpuSecondsOf,
  dropCaches,
  MiB,
  makeCertificate,
  parseBenchOptions,
  prepareImages,
  startService,
} from "./services.js";

const root = new URL("../..", import.meta.url).pathname;

/** qemu-nbd with Vdsm's flags; writeback where the filesystem refuses O_DIRECT (tmpfs). */
function startQemuNbd(dir: string, name: string, image: string, readOnly: boolean): { socket: string; stop(): void } {
  const socket = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const direct = canUseDirectIo(dir);
  execFileSync("qemu-nbd", [
    `--socket=${socket}`,
    "--persistent",
    "--shared=8",
    "--export-name=",
    `--cache=${direct ? "none" : "writeback"}`,
    `--aio=${direct ? "native" : "threads"}`,
    "--format=raw",
    readOnly ? "--read-only" : "--discard=unmap",
    "--fork",
    `--pid-file=${pidFile}`,
    image,
  ]);
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  return { socket, stop: () => process.kill(pid, "SIGTERM") };
}

function canUseDirectIo(dir: string): boolean {
  const probe = join(dir, ".direct-probe");
  try {
    closeSync(openSync(probe, constants.O_CREAT | constants.O_WRONLY | constants.O_DIRECT, 0o600));
    return true;
  } catch {
    return false;
  } finally {
    if (existsSync(probe)) unlinkSync(probe);
  }
}

interface Contender {
  name: string;
  group: "GET" | "PUT" | "nbd → file" | "file → nbd";
  cmd: string[];
  /** The daemon whose CPU this contender costs, if any. */
  daemonPid?: number;
}

export const suite: Suite = {
  description: "nbd backend: daemon GET/PUT from qemu-nbd, imageio copy to/from qemu-nbd, vs nbdcopy and qemu-img",
  usage: "npm run bench -- nbd [--size-gib 2] [--rounds 3] [--dir /var/tmp]",
  async run(args) {
    const options = parseBenchOptions(args);
    for (const tool of ["qemu-nbd", "qemu-img", "nbdcopy"]) {
      if (!commandExists(tool)) throw new Error(`${tool} is required for this benchmark`);
    }
    const { dir, size, image, target } = await prepareImages("nbd", options, ["curl"]);
    const source = startQemuNbd(dir, "source", image, true);
    const sink = startQemuNbd(dir, "sink", target, false);
    const certificate = makeCertificate(dir);
    const daemon = await startService("daemon", dir, certificate);
    const single = await startService("daemon", dir, certificate, {
      extraConfig: ["[backend_nbd]", "requests = 1", "request_size = 8388608"],
      name: "single",
    });
    const output = join(dir, "output.raw");
    try {
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const service of [daemon, single]) {
        await addTicket(service.control, {
          uuid: readId,
          size,
          url: `nbd:unix:${source.socket}`,
          timeout: 3600,
          ops: ["read"],
        });
        await addTicket(service.control, {
          uuid: writeId,
          size,
          url: `nbd:unix:${sink.socket}`,
          timeout: 3600,
          ops: ["read", "write"],
        });
      }
      const curl = ["curl", "--silent", "--show-error", "--fail"];
      const https = `https://localhost:${daemon.port}/images`;
      const unix = (service: typeof daemon, id: string) => [
        "--unix-socket",
        service.local,
        `http://localhost/images/${id}`,
      ];
      const sourceUri = `nbd+unix:///?socket=${source.socket}`;
      const sinkUri = `nbd+unix:///?socket=${sink.socket}`;
      const imageio = [process.execPath, join(root, "bin/imageio"), "copy", "--progress", "none"];
      const contenders: Contender[] = [
        {
          name: "HTTPS GET",
          group: "GET",
          cmd: [...curl, "-k", "-o", "/dev/null", `${https}/${readId}`],
          daemonPid: daemon.pid,
        },
        {
          name: "unix GET",
          group: "GET",
          cmd: [...curl, "-o", "/dev/null", ...unix(daemon, readId)],
          daemonPid: daemon.pid,
        },
        {
          name: "unix GET, 1 × 8 MiB in flight",
          group: "GET",
          cmd: [...curl, "-o", "/dev/null", ...unix(single, readId)],
          daemonPid: single.pid,
        },
        {
          name: "HTTPS PUT",
          group: "PUT",
          cmd: [...curl, "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          daemonPid: daemon.pid,
        },
        {
          name: "unix PUT",
          group: "PUT",
          cmd: [...curl, "-T", image, "-o", "/dev/null", ...unix(daemon, writeId)],
          daemonPid: daemon.pid,
        },
        { name: "imageio copy", group: "nbd → file", cmd: [...imageio, `nbd:unix:${source.socket}`, output] },
        { name: "nbdcopy", group: "nbd → file", cmd: ["nbdcopy", "--flush", sourceUri, output] },
        {
          name: "qemu-img convert",
          group: "nbd → file",
          cmd: ["qemu-img", "convert", "-f", "raw", "-O", "raw", "-t", "none", sourceUri, output],
        },
        { name: "imageio copy", group: "file → nbd", cmd: [...imageio, image, `nbd:unix:${sink.socket}`] },
        { name: "nbdcopy", group: "file → nbd", cmd: ["nbdcopy", "--flush", image, sinkUri] },
        {
          name: "qemu-img convert",
          group: "file → nbd",
          cmd: ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-T", "none", image, sinkUri],
        },
      ];
      const key = (c: Contender) => `${c.group}: ${c.name}`;
      type Result = { mibps: number; daemonCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: key(c),
          prepare: async () => {
            rmSync(output, { force: true });
            dropCaches();
          },
          run: async () => {
            const before = c.daemonPid === undefined ? 0 : cpuSecondsOf(c.daemonPid);
            const m = await measure(c.cmd[0] as string, c.cmd.slice(1));
            const daemonCpu = c.daemonPid === undefined ? 0 : cpuSecondsOf(c.daemonPid) - before;
            return { mibps: size / MiB / m.wall, daemonCpu: daemonCpu + m.cpu };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const mibps = (name: string) => median((results.get(name) ?? []).map((r) => r.mibps));
      const copyRatio = mibps("nbd → file: imageio copy") / mibps("nbd → file: nbdcopy");
      const getRatio = mibps("GET: unix GET") / mibps("GET: unix GET, 1 × 8 MiB in flight");
      const rows = contenders.map((c) => {
        const list = results.get(key(c)) ?? [];
        const cpu = median(list.map((r) => r.daemonCpu));
        let target = "-";
        if (key(c) === "nbd → file: imageio copy")
          target = `${copyRatio.toFixed(2)}× nbdcopy (≥ 0.8 ${copyRatio >= 0.8 ? "✓" : "✗"})`;
        if (key(c) === "GET: unix GET")
          target = `${getRatio.toFixed(2)}× 1 × 8 MiB (≥ 1.5 ${getRatio >= 1.5 ? "✓" : "✗"})`;
        return [c.group, c.name, mibps(key(c)).toFixed(0), cpu.toFixed(2), target];
      });
      process.stdout.write(
        `\n${markdownTable(["what", "contender", "MiB/s (median)", "CPU-s (client + daemon)", "target"], rows)}\n`,
      );
    } finally {
      daemon.stop();
      single.stop();
      source.stop();
      sink.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
