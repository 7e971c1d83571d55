/**
 * `npm run bench -- proxy`: HTTPS GET and PUT of a 2 GiB image through the proxy and directly
 * to the daemon, in interleaved rounds. Both run here, so the proxy reaches the daemon over
 * its unix socket. Reported: MiB/s, proxied/direct ratio (issue 14: GET ≥ 0.75, PUT ≥ 0.85), and
 * each process' CPU-s per GiB. With --baseline, another checkout's pair runs in the same rounds.
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
  type ServiceOrigin,
  startService,
} from "./services.js";

export const suite: Suite = {
  description: "HTTPS GET/PUT through the proxy vs directly to the daemon; CPU-s/GiB of each",
  usage:
    "npm run bench -- proxy [--size-gib 2] [--rounds 3] [--dir /var/tmp] [--baseline CHECKOUT] [--executable dist/imageio]",
  async run(args) {
    const options = parseBenchOptions(args);
    const { dir, size, image, target } = await prepareImages("proxy", options, ["curl", "openssl"]);
    const certificate = makeCertificate(dir);
    const start = async (origin: ServiceOrigin) => {
      const daemon = await startService("daemon", mkdtempSync(join(dir, "daemon-")), certificate, { origin });
      const proxy = await startService("proxy", mkdtempSync(join(dir, "proxy-")), certificate, { origin });
      return { daemon, proxy };
    };
    const origins = originsOf(options);
    const pairs = [{ suffix: "", ...(await start(origins.current)) }];
    if (origins.baseline !== undefined) pairs.push({ suffix: " (baseline)", ...(await start(origins.baseline)) });
    try {
      const readId = randomUUID();
      const writeId = randomUUID();
      const curl = ["--silent", "--show-error", "--fail", "--cacert", certificate.cert];
      const contenders: { name: string; op: string; suffix: string; viaProxy: boolean; cmd: string[] }[] = [];
      for (const { suffix, daemon, proxy } of pairs) {
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
        const direct = `https://localhost:${daemon.port}/images`;
        const proxied = `https://localhost:${proxy.port}/images`;
        const get = (base: string) => [...curl, "-o", "/dev/null", `${base}/${readId}`];
        const put = (base: string) => [...curl, "-T", image, "-o", "/dev/null", `${base}/${writeId}`];
        contenders.push(
          { name: `GET direct${suffix}`, op: "GET", suffix, viaProxy: false, cmd: get(direct) },
          { name: `GET via proxy${suffix}`, op: "GET", suffix, viaProxy: true, cmd: get(proxied) },
          { name: `PUT direct${suffix}`, op: "PUT", suffix, viaProxy: false, cmd: put(direct) },
          { name: `PUT via proxy${suffix}`, op: "PUT", suffix, viaProxy: true, cmd: put(proxied) },
        );
      }
      const servicesOf = (suffix: string) =>
        pairs.find((pair) => pair.suffix === suffix) ?? (pairs[0] as (typeof pairs)[0]);
      type Result = { mibps: number; daemonCpu: number; proxyCpu: number };
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          prepare: async () => dropCaches(),
          run: async () => {
            const { daemon, proxy } = servicesOf(c.suffix);
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
        const { op, viaProxy } = c;
        const directName = `${op} direct${c.suffix}`;
        const ratio = viaProxy ? mibps / stat(directName, (r) => r.mibps) : 1;
        const proxyCpu = stat(c.name, (r) => r.proxyCpu);
        const daemonDirectCpu = stat(directName, (r) => r.daemonCpu);
        const wanted = op === "GET" ? 0.75 : 0.85;
        return [
          c.name,
          mibps.toFixed(0),
          viaProxy ? `${ratio.toFixed(2)}× (≥ ${wanted}) ${ratio >= wanted ? "✓" : "✗"}` : "-",
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
            "vs direct",
            "daemon CPU-s/GiB",
            "proxy CPU-s/GiB",
            "proxy / daemon HTTPS (≤ 1.5)",
          ],
          rows,
        )}\n`,
      );
    } finally {
      for (const { daemon, proxy } of pairs) {
        daemon.stop();
        proxy.stop();
      }
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
