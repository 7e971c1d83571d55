/**
 * `npm run bench -- daemon`: throughput and cost of the daemon's data path. A 2 GiB fully
 * allocated image is downloaded and uploaded with curl over HTTPS and over the local unix
 * socket, in interleaved rounds next to `dd` with O_DIRECT on the same disk (the baseline).
 * Reported: MiB/s, the ratio to dd, and the daemon's own CPU seconds per GiB (from
 * /proc/<pid>/stat); then the daemon's peak RSS with 8 transfers at once, its worst control
 * latency while it zeroes, walks extents and hashes, and its RSS after connection churn.
 * With --baseline, a daemon from another checkout runs the same transfers in the same rounds.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { interleave, markdownTable, measure, median } from "./harness.js";
import type { Suite } from "./run.js";
import {
  addTicket,
  cpuSecondsOf,
  dropCaches,
  GiB,
  MiB,
  makeCertificate,
  originsOf,
  parseBenchOptions,
  prepareImages,
  type RunningService,
  rssOf,
  startService,
} from "./services.js";
import { reportChurn, reportStalls } from "./stalls.js";

/** Server CPU-s/GiB the daemon must stay within (issue 14), with curl as the client. */
export const CPU_TARGETS: Record<string, number> = {
  "HTTPS GET": 0.75,
  "HTTPS PUT": 1.0,
  "unix GET": 0.22,
  "unix PUT": 0.55,
};

/** Names the baseline checkout's rows (--baseline). */
const BASELINE_SUFFIX = " (baseline)";

export const suite: Suite = {
  description: "daemon GET/PUT over HTTPS and the unix socket with curl, next to dd (O_DIRECT)",
  usage:
    "npm run bench -- daemon [--size-gib 2] [--rounds 3] [--dir /var/tmp] [--baseline CHECKOUT] [--executable dist/imageio] [--data-only]",
  async run(args) {
    const options = parseBenchOptions(args);
    const { dir, size, image, target } = await prepareImages("daemon", options, ["curl", "dd", "openssl"]);
    const certificate = makeCertificate(dir);
    const origins = originsOf(options);
    const daemon = await startService("daemon", mkdtempSync(join(dir, "daemon-")), certificate, {
      origin: origins.current,
    });
    const baseline =
      origins.baseline === undefined
        ? undefined
        : await startService("daemon", mkdtempSync(join(dir, "baseline-")), certificate, { origin: origins.baseline });
    try {
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const service of baseline === undefined ? [daemon] : [daemon, baseline]) {
        for (const [uuid, url, ops] of [
          [readId, image, ["read"]],
          [writeId, target, ["read", "write"]],
        ] as const) {
          await addTicket(service.control, { uuid, size, url: `file://${url}`, timeout: 3600, ops });
        }
      }
      const curl = ["--silent", "--show-error", "--fail"];
      const transfers = (service: RunningService, suffix: string) => {
        const https = `https://localhost:${service.port}/images`;
        const unix = ["--unix-socket", service.local];
        return [
          { name: `HTTPS GET${suffix}`, kind: "read", cmd: [...curl, "-k", "-o", "/dev/null", `${https}/${readId}`] },
          {
            name: `HTTPS PUT${suffix}`,
            kind: "write",
            cmd: [...curl, "-k", "-T", image, "-o", "/dev/null", `${https}/${writeId}`],
          },
          {
            name: `unix GET${suffix}`,
            kind: "read",
            cmd: [...curl, ...unix, "-o", "/dev/null", `http://localhost/images/${readId}`],
          },
          {
            name: `unix PUT${suffix}`,
            kind: "write",
            cmd: [...curl, ...unix, "-T", image, "-o", "/dev/null", `http://localhost/images/${writeId}`],
          },
        ].map((transfer) => ({ ...transfer, cmd: ["curl", ...transfer.cmd], service }));
      };
      const contenders: { name: string; kind: string; cmd: string[]; service: RunningService | undefined }[] = [
        {
          name: "dd read (O_DIRECT)",
          kind: "read",
          cmd: ["dd", `if=${image}`, "of=/dev/null", "bs=8M", "iflag=direct", "status=none"],
          service: undefined,
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
          service: undefined,
        },
        ...transfers(daemon, ""),
        ...(baseline === undefined ? [] : transfers(baseline, BASELINE_SUFFIX)),
      ];
      type Result = { mibps: number; daemonCpuPerGiB: number; clientCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          // Start every run with the source out of the page cache, as it is on a real host.
          prepare: async () => dropCaches(),
          run: async () => {
            const before = c.service === undefined ? 0 : cpuSecondsOf(c.service.pid);
            const m = await measure(c.cmd[0] as string, c.cmd.slice(1));
            const daemonCpu = c.service === undefined ? 0 : cpuSecondsOf(c.service.pid) - before;
            return { mibps: size / MiB / m.wall, daemonCpuPerGiB: daemonCpu / (size / GiB), clientCpu: m.cpu };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const ddRead = median((results.get("dd read (O_DIRECT)") ?? []).map((r) => r.mibps));
      const ddWrite = median((results.get("dd copy (O_DIRECT)") ?? []).map((r) => r.mibps));
      const rows = contenders.map((c) => {
        const list = results.get(c.name) ?? [];
        const mibps = median(list.map((r) => r.mibps));
        const baselineMibps = c.kind === "read" ? ddRead : ddWrite;
        const cpu = median(list.map((r) => r.daemonCpuPerGiB));
        const target = CPU_TARGETS[c.name];
        return [
          c.name,
          mibps.toFixed(0),
          c.service !== undefined ? `${(mibps / baselineMibps).toFixed(2)}×` : "1.00×",
          // dd's own CPU: what the kernel's part of the same transfer costs, the floor under ours.
          c.service !== undefined
            ? cpu.toFixed(2)
            : `(dd ${median(list.map((r) => r.clientCpu / (size / GiB))).toFixed(2)})`,
          target === undefined ? "-" : `≤ ${target} ${cpu <= target ? "✓" : "✗"}`,
        ];
      });
      process.stdout.write(
        `\n${markdownTable(["contender", "MiB/s (median)", "vs dd", "daemon CPU-s/GiB", "target"], rows)}\n`,
      );
      if (options.dataOnly) return;

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
              : [
                  "--silent",
                  "--fail",
                  "-k",
                  "-T",
                  image,
                  "-o",
                  "/dev/null",
                  `https://localhost:${daemon.port}/images/${writeId}`,
                ],
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
      baseline?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
