/**
 * `npm run bench -- client`: `imageio copy` as the daemon's client against curl, the client
 * people use without it, in interleaved rounds of one run: upload and download of a 2 GiB
 * image with 10 % data in scattered 1 MiB runs and of a fully allocated one, over HTTPS (a
 * daemon without its unix socket) and over the unix socket (a daemon on this host announcing
 * it; curl is pointed at it with --unix-socket). Every contender makes its result durable:
 * imageio flushes, curl's downloads are followed by `sync FILE`, uploads end with the daemon's
 * flush. Reported: MiB/s of image size, the ratio to curl, and imageio's peak RSS.
 * Targets: sparse download ≥ 5× curl, dense upload ≥ 1.0× curl, RSS < 150 MiB.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { scatteredRuns, writeRandom } from "./copy.js";
import { commandExists, interleave, markdownTable, measure, median } from "./harness.js";
import type { Suite } from "./run.js";
import { addTicket, dropCaches, GiB, MiB, makeCertificate, parseBenchOptions, startService } from "./services.js";

const bin = new URL("../../bin/imageio", import.meta.url).pathname;

interface Result {
  mibps: number;
  peakRss: number;
}

export const suite: Suite = {
  description: "imageio copy upload/download (sparse and dense) vs curl, over HTTPS and the unix socket",
  usage: "npm run bench -- client [--size-gib 2] [--rounds 3] [--dir /var/tmp]",
  async run(args) {
    const options = parseBenchOptions(args);
    for (const tool of ["curl", "openssl", "sync"]) {
      if (!commandExists(tool)) throw new Error(`${tool} is required for this benchmark`);
    }
    const size = options.sizeGiB * GiB;
    const dir = mkdtempSync(join(options.dir, "imageio-bench-client-"));
    const images = { sparse: join(dir, "sparse.raw"), dense: join(dir, "dense.raw") };
    process.stdout.write(`Writing a ${options.sizeGiB} GiB sparse (10 % data) and a dense image in ${dir} ...\n`);
    await writeRandom(images.sparse, size, scatteredRuns(size, MiB, 0.1));
    await writeRandom(images.dense, size, [[0, size]]);
    const certificate = makeCertificate(dir);
    const httpsDaemon = await startService("daemon", dir, certificate, { localSocket: false, name: "https" });
    const unixDaemon = await startService("daemon", dir, certificate, { name: "unix" });
    try {
      const out = join(dir, "download.raw");
      const uploadTarget = join(dir, "upload.raw");
      const contenders: {
        name: string;
        pair: string;
        tool: "imageio" | "curl";
        cmd: string[];
        prepare(): Promise<void>;
      }[] = [];
      for (const [transport, daemon] of [
        ["HTTPS", httpsDaemon],
        ["unix", unixDaemon],
      ] as const) {
        const url = (id: string) => `https://localhost:${daemon.port}/images/${id}`;
        const curlUrl = (id: string) =>
          transport === "unix" ? ["--unix-socket", daemon.local, `http://localhost/images/${id}`] : ["-k", url(id)];
        const curl = ["curl", "--silent", "--show-error", "--fail"];
        const imageio = [process.execPath, bin, "copy", "--quiet", "--ca-file", certificate.cert];
        for (const kind of ["sparse", "dense"] as const) {
          const readId = randomUUID();
          await addTicket(daemon.control, {
            uuid: readId,
            size,
            url: `file://${images[kind]}`,
            timeout: 7200,
            ops: ["read"],
          });
          const writeId = randomUUID();
          await addTicket(daemon.control, {
            uuid: writeId,
            size,
            url: `file://${uploadTarget}`,
            timeout: 7200,
            ops: ["read", "write"],
            sparse: true,
          });
          const fresh = async () => {
            await rm(out, { force: true });
            dropCaches();
          };
          // Uploads go into a file of the image's size holding old data, as a disk would.
          const target = async () => {
            await rm(uploadTarget, { force: true });
            await writeFile(uploadTarget, "");
            await truncate(uploadTarget, size);
            dropCaches();
          };
          const pair = (op: string) => `${op} ${kind} ${transport}`;
          contenders.push(
            {
              name: `imageio ${pair("download")}`,
              pair: pair("download"),
              tool: "imageio",
              cmd: [...imageio, url(readId), out],
              prepare: fresh,
            },
            {
              name: `curl ${pair("download")}`,
              pair: pair("download"),
              tool: "curl",
              // curl leaves its download in the page cache: `sync FILE` makes it durable, as imageio's flush does.
              cmd: [
                "sh",
                "-c",
                'out="$1"; shift; "$@" && sync "$out"',
                "sh",
                out,
                ...curl,
                "-o",
                out,
                ...curlUrl(readId),
              ],
              prepare: fresh,
            },
            {
              name: `imageio ${pair("upload")}`,
              pair: pair("upload"),
              tool: "imageio",
              cmd: [...imageio, images[kind], url(writeId)],
              prepare: target,
            },
            {
              name: `curl ${pair("upload")}`,
              pair: pair("upload"),
              tool: "curl",
              cmd: [...curl, "-T", images[kind], "-o", "/dev/null", ...curlUrl(writeId)],
              prepare: target,
            },
          );
        }
      }
      const results = await interleave<Result>(
        options.rounds,
        contenders.map((c) => ({
          name: c.name,
          prepare: c.prepare,
          run: async () => {
            const m = await measure(c.cmd[0] as string, c.cmd.slice(1));
            return { mibps: size / MiB / m.wall, peakRss: m.peakRss };
          },
        })),
        (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
      );
      const targets: Record<string, number> = {
        "download sparse HTTPS": 5,
        "download sparse unix": 5,
        "upload dense HTTPS": 1,
        "upload dense unix": 1,
      };
      const rows: string[][] = [];
      let peak = 0;
      for (const c of contenders.filter((contender) => contender.tool === "imageio")) {
        const mine = results.get(c.name) ?? [];
        const theirs = results.get(`curl ${c.pair}`) ?? [];
        const mibps = median(mine.map((r) => r.mibps));
        const curlMibps = median(theirs.map((r) => r.mibps));
        const rss = Math.max(...mine.map((r) => r.peakRss));
        peak = Math.max(peak, rss);
        const ratio = mibps / curlMibps;
        const target = targets[c.pair];
        rows.push([
          c.pair,
          mibps.toFixed(0),
          curlMibps.toFixed(0),
          `${ratio.toFixed(2)}×`,
          target === undefined ? "-" : `≥ ${target}× ${ratio >= target ? "✓" : "✗"}`,
          (rss / MiB).toFixed(0),
        ]);
      }
      process.stdout.write(
        `\n${markdownTable(["case", "imageio MiB/s", "curl MiB/s", "vs curl", "target", "imageio peak RSS MiB"], rows)}\n`,
      );
      process.stdout.write(
        `\nimageio copy peak RSS: ${(peak / MiB).toFixed(0)} MiB (target < 150 MiB ${peak < 150 * MiB ? "✓" : "✗"})\n`,
      );
    } finally {
      httpsDaemon.stop();
      unixDaemon.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
