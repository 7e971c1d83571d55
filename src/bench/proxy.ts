/**
 * `npm run bench -- proxy`: HTTPS GET and PUT of a 2 GiB image through the proxy and directly
 * to the daemon, in interleaved rounds. Both run here, so the proxy reaches the daemon over
 * its unix socket. Reported: MiB/s, proxied/direct ratio, and each process' CPU-s per GiB.
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
  parseBenchOptions,
  prepareImages,
  startService,
} from "./services.js";

export const suite: Suite = {
  description: "HTTPS GET/PUT through the proxy vs directly to the daemon; CPU-s/GiB of each",
  usage: "npm run bench -- proxy [--size-gib 2] [--rounds 3] [--dir /var/tmp]",
  async run(args) {
    const options = parseBenchOptions(args);
    const { dir, size, image, target } = await prepareImages("proxy", options, ["curl", "openssl"]);
    const certificate = makeCertificate(dir);
    const daemonRun = mkdtempSync(join(dir, "daemon-"));
    const proxyRun = mkdtempSync(join(dir, "proxy-"));
    const daemon = await startService("daemon", daemonRun, certificate);
    const proxy = await startService("proxy", proxyRun, certificate);
    try {
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const [uuid, url, ops] of [
        [readId, image, ["read"]],
        [writeId, target, ["read", "write"]],
      ] as const) {
        await addTicket(daemon.control, { uuid, size, url: `file://${url}`, timeout: 3600, ops });
        await addTicket(proxy.control, {
          uuid,
          size,
          url: `https://localhost:${daemon.port}/images/${uuid}`,
          timeout: 3600,
          ops,
        });
      }
      const curl = ["--silent", "--show-error", "--fail", "--cacert", certificate.cert];
      const direct = `https://localhost:${daemon.port}/images`;
      const proxied = `https://localhost:${proxy.port}/images`;
      const contenders = [
        { name: "GET direct", cmd: [...curl, "-o", "/dev/null", `${direct}/${readId}`] },
        { name: "GET via proxy", cmd: [...curl, "-o", "/dev/null", `${proxied}/${readId}`] },
        { name: "PUT direct", cmd: [...curl, "-T", image, "-o", "/dev/null", `${direct}/${writeId}`] },
        { name: "PUT via proxy", cmd: [...curl, "-T", image, "-o", "/dev/null", `${proxied}/${writeId}`] },
      ];
      type Result = { mibps: number; daemonCpu: number; proxyCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          prepare: async () => dropCaches(),
          run: async () => {
            const daemonBefore = cpuSecondsOf(daemon.pid);
            const proxyBefore = cpuSecondsOf(proxy.pid);
            const m = await measure("curl", c.cmd);
            const gib = size / GiB;
            return {
              mibps: size / MiB / m.wall,
              daemonCpu: (cpuSecondsOf(daemon.pid) - daemonBefore) / gib,
              proxyCpu: (cpuSecondsOf(proxy.pid) - proxyBefore) / gib,
            };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const stat = (name: string, pick: (r: Result) => number) => median((results.get(name) ?? []).map(pick));
      const rows = contenders.map((c) => {
        const mibps = stat(c.name, (r) => r.mibps);
        const op = c.name.split(" ")[0] as string;
        const viaProxy = c.name.endsWith("via proxy");
        const ratio = viaProxy ? mibps / stat(`${op} direct`, (r) => r.mibps) : 1;
        const proxyCpu = stat(c.name, (r) => r.proxyCpu);
        const daemonDirectCpu = stat(`${op} direct`, (r) => r.daemonCpu);
        return [
          c.name,
          mibps.toFixed(0),
          viaProxy ? `${ratio.toFixed(2)}× ${ratio >= 0.75 ? "✓" : "✗"}` : "-",
          stat(c.name, (r) => r.daemonCpu).toFixed(2),
          viaProxy ? proxyCpu.toFixed(2) : "-",
          viaProxy
            ? `${(proxyCpu / daemonDirectCpu).toFixed(2)}× ${proxyCpu <= 1.5 * daemonDirectCpu ? "✓" : "✗"}`
            : "-",
        ];
      });
      process.stdout.write(
        `\n${markdownTable(
          [
            "transfer",
            "MiB/s (median)",
            "vs direct (≥ 0.75)",
            "daemon CPU-s/GiB",
            "proxy CPU-s/GiB",
            "proxy / daemon HTTPS (≤ 1.5)",
          ],
          rows,
        )}\n`,
      );
    } finally {
      daemon.stop();
      proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
