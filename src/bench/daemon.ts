/**
 * `npm run bench -- daemon`: throughput and cost of the daemon's data path. A 2 GiB fully
 * allocated image is downloaded and uploaded with curl over HTTPS and over the local unix
 * socket, in interleaved rounds next to `dd` with O_DIRECT on the same disk (the baseline).
 * Reported: MiB/s, the ratio to dd, and the daemon's own CPU seconds per GiB (from
 * /proc/<pid>/stat); then the daemon's peak RSS with 8 transfers at once, its worst control
 * latency while it zeroes, walks extents and hashes, and its RSS after connection churn.
 */
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { interleave, markdownTable, measure, median } from "./harness.js";
import type { Suite } from "./run.js";
import {
  addTicket,
  cpuSecondsOf,
  dropCaches,
  GiB,
  MiB,
  makeCertificate,
  parseBenchOptions,
  prepareImages,
  rssOf,
  startService,
} from "./services.js";
import { reportChurn, reportStalls } from "./stalls.js";

export const suite: Suite = {
  description: "daemon GET/PUT over HTTPS and the unix socket with curl, next to dd (O_DIRECT)",
  usage: "npm run bench -- daemon [--size-gib 2] [--rounds 3] [--dir /var/tmp]",
  async run(args) {
    const options = parseBenchOptions(args);
    const { dir, size, image, target } = await prepareImages("daemon", options, ["curl", "dd", "openssl"]);
    const daemon = await startService("daemon", dir, makeCertificate(dir));
    try {
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const [uuid, url, ops] of [
        [readId, image, ["read"]],
        [writeId, target, ["read", "write"]],
      ] as const) {
        await addTicket(daemon.control, { uuid, size, url: `file://${url}`, timeout: 3600, ops });
      }
      const https = `https://localhost:${daemon.port}/images`;
      const curl = ["--silent", "--show-error", "--fail"];
      const contenders = [
        {
          name: "dd read (O_DIRECT)",
          kind: "read",
          cmd: ["dd", `if=${image}`, "of=/dev/null", "bs=8M", "iflag=direct", "status=none"],
          daemon: false,
        },
        {
          // An upload reads its source from the same disk (curl -T), so the baseline does too.
          name: "dd copy (O_DIRECT)",
          kind: "write",
          cmd: [
            "dd",
            `if=${image}`,
            `of=${target}`,
            "bs=8M",
            "iflag=direct",
            "oflag=direct",
            "conv=fsync,notrunc",
            "status=none",
          ],
          daemon: false,
        },
        {
          name: "HTTPS GET",
          kind: "read",
          cmd: ["curl", ...curl, "-k", "-o", "/dev/null", `${https}/${readId}`],
          daemon: true,
        },
        {
          name: "HTTPS PUT",
          kind: "write",
          cmd: ["curl", ...curl, "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          daemon: true,
        },
        {
          name: "unix GET",
          kind: "read",
          cmd: ["curl", ...curl, "--unix-socket", daemon.local, "-o", "/dev/null", `http://localhost/images/${readId}`],
          daemon: true,
        },
        {
          name: "unix PUT",
          kind: "write",
          cmd: [
            "curl",
            ...curl,
            "--unix-socket",
            daemon.local,
            "-T",
            image,
            "-o",
            "/dev/null",
            `http://localhost/images/${writeId}`,
          ],
          daemon: true,
        },
      ];
      type Result = { mibps: number; daemonCpuPerGiB: number; clientCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          // Start every run with the source out of the page cache, as it is on a real host.
          prepare: async () => dropCaches(),
          run: async () => {
            const before = cpuSecondsOf(daemon.pid);
            const m = await measure(c.cmd[0] as string, c.cmd.slice(1));
            const daemonCpu = cpuSecondsOf(daemon.pid) - before;
            return {
              mibps: size / MiB / m.wall,
              daemonCpuPerGiB: c.daemon ? daemonCpu / (size / GiB) : 0,
              clientCpu: m.cpu,
            };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const ddRead = median((results.get("dd read (O_DIRECT)") ?? []).map((r) => r.mibps));
      const ddWrite = median((results.get("dd copy (O_DIRECT)") ?? []).map((r) => r.mibps));
      const targets: Record<string, number> = { "HTTPS GET": 1.2, "HTTPS PUT": 1.5, "unix GET": 0.4, "unix PUT": 0.6 };
      const rows = contenders.map((c) => {
        const list = results.get(c.name) ?? [];
        const mibps = median(list.map((r) => r.mibps));
        const baseline = c.kind === "read" ? ddRead : ddWrite;
        const cpu = median(list.map((r) => r.daemonCpuPerGiB));
        const target = targets[c.name];
        return [
          c.name,
          mibps.toFixed(0),
          c.daemon ? `${(mibps / baseline).toFixed(2)}×` : "1.00×",
          c.daemon ? cpu.toFixed(2) : "-",
          target === undefined ? "-" : `≤ ${target} ${cpu <= target ? "✓" : "✗"}`,
        ];
      });
      process.stdout.write(
        `\n${markdownTable(["contender", "MiB/s (median)", "vs dd", "daemon CPU-s/GiB", "target"], rows)}\n`,
      );

      // Memory: 8 transfers at once (4 downloads, 4 uploads), sampling the daemon's RSS.
      let peak = rssOf(daemon.pid);
      const sampler = setInterval(() => {
        peak = Math.max(peak, rssOf(daemon.pid));
      }, 20);
      await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          measure(
            "curl",
            i % 2 === 0
              ? [
                  "--silent",
                  "--fail",
                  "--unix-socket",
                  daemon.local,
                  "-o",
                  "/dev/null",
                  `http://localhost/images/${readId}`,
                ]
              : ["--silent", "--fail", "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          ),
        ),
      );
      clearInterval(sampler);
      process.stdout.write(
        `\nDaemon peak RSS with 8 transfers at once: ${(peak / MiB).toFixed(0)} MiB (target < 200 MiB)\n`,
      );
      await reportStalls(daemon, dir);
      await reportChurn(daemon, dir);
    } finally {
      daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
