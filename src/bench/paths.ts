/**
 * The data paths of issue 14's table in one interleaved run: the daemon's four (HTTPS and
 * unix socket, GET and PUT) and the proxy's two (HTTPS GET and PUT through `imageio proxy`,
 * which reaches the daemon over its unix socket as on a real host), with curl as the client,
 * for each runtime asked for (this checkout on the running Node, the single executable).
 * Every transfer starts with the page cache dropped. Reported per runtime: MiB/s, the
 * daemon's and the proxy's CPU-s/GiB from /proc, against the issue's targets.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { CPU_TARGETS } from "./daemon.js";
import { interleave, markdownTable, measure, median } from "./harness.js";
import {
  addTicket,
  type BenchImages,
  cpuSecondsOf,
  dropCaches,
  GiB,
  MiB,
  type RunningService,
  type ServiceOrigin,
  startService,
} from "./services.js";
import type { TargetRow } from "./summary.js";

/** Through the proxy, at least this share of the direct path's throughput (issue 14). */
const PROXY_RATIO_TARGETS = { GET: 0.75, PUT: 0.85 } as const;
/** The proxy may spend at most this many times the daemon's HTTPS CPU per GiB. */
const PROXY_CPU_FACTOR = 1.5;

export interface Runtime {
  /** For tables: "Node 20.19.0 (bin/imageio)", "embedded (dist/imageio)". */
  label: string;
  origin: ServiceOrigin;
}

type Op = "GET" | "PUT";
type Path = "HTTPS" | "unix" | "proxy";

interface Transfer {
  name: string;
  runtime: Runtime;
  path: Path;
  op: Op;
  args: string[];
  daemon: RunningService;
  proxy: RunningService;
}

interface Result {
  mibps: number;
  daemonCpu: number;
  proxyCpu: number;
}

/**
 * Starts a daemon and a proxy per runtime in `dir`, measures every transfer in `rounds`
 * interleaved rounds, prints the table and returns the summary rows.
 */
export async function measurePaths(
  images: BenchImages,
  certificate: { key: string; cert: string },
  runtimes: Runtime[],
  rounds: number,
): Promise<TargetRow[]> {
  const { dir, size, image, target } = images;
  const started: RunningService[] = [];
  try {
    const transfers: Transfer[] = [];
    for (const runtime of runtimes) {
      const daemon = await startService("daemon", mkdtempSync(join(dir, "daemon-")), certificate, {
        origin: runtime.origin,
      });
      started.push(daemon);
      const proxy = await startService("proxy", mkdtempSync(join(dir, "proxy-")), certificate, {
        origin: runtime.origin,
      });
      started.push(proxy);
      const readId = randomUUID();
      const writeId = randomUUID();
      for (const [uuid, path, ops] of [
        [readId, image, ["read"]],
        [writeId, target, ["read", "write"]],
      ] as const) {
        await addTicket(daemon.control, { uuid, size, url: `file://${path}`, timeout: 3600, ops });
        const remote = `https://localhost:${daemon.port}/images/${uuid}`;
        await addTicket(proxy.control, { uuid, size, url: remote, timeout: 3600, ops });
      }
      const tls = ["--cacert", certificate.cert];
      const urls: Record<Path, (id: string) => string[]> = {
        HTTPS: (id) => [...tls, `https://localhost:${daemon.port}/images/${id}`],
        unix: (id) => ["--unix-socket", daemon.local, `http://localhost/images/${id}`],
        proxy: (id) => [...tls, `https://localhost:${proxy.port}/images/${id}`],
      };
      for (const path of ["HTTPS", "unix", "proxy"] as const) {
        for (const op of ["GET", "PUT"] as const) {
          const body = op === "PUT" ? ["-T", image] : [];
          const args = ["--silent", "--show-error", "--fail", "-o", "/dev/null", ...body];
          const name = `${path} ${op} [${runtime.label}]`;
          transfers.push({
            name,
            runtime,
            path,
            op,
            args: [...args, ...urls[path](op === "GET" ? readId : writeId)],
            daemon,
            proxy,
          });
        }
      }
    }
    const gib = size / GiB;
    const results = await interleave<Result>(
      rounds,
      transfers.map((t) => ({
        name: t.name,
        prepare: async () => dropCaches(),
        run: async () => {
          const daemonBefore = cpuSecondsOf(t.daemon.pid);
          const proxyBefore = cpuSecondsOf(t.proxy.pid);
          const { wall } = await measure("curl", t.args);
          return {
            mibps: size / MiB / wall,
            daemonCpu: (cpuSecondsOf(t.daemon.pid) - daemonBefore) / gib,
            proxyCpu: (cpuSecondsOf(t.proxy.pid) - proxyBefore) / gib,
          };
        },
      })),
      (name, round, r) => process.stdout.write(`  round ${round + 1} ${name}: ${r.mibps.toFixed(0)} MiB/s\n`),
    );
    const stat = (runtime: Runtime, path: Path, op: Op, pick: (r: Result) => number) =>
      median((results.get(`${path} ${op} [${runtime.label}]`) ?? []).map(pick));
    process.stdout.write(
      `\n${markdownTable(
        ["transfer", "MiB/s (median)", "daemon CPU-s/GiB", "proxy CPU-s/GiB"],
        transfers.map((t) => [
          t.name,
          stat(t.runtime, t.path, t.op, (r) => r.mibps).toFixed(0),
          stat(t.runtime, t.path, t.op, (r) => r.daemonCpu).toFixed(2),
          t.path === "proxy" ? stat(t.runtime, t.path, t.op, (r) => r.proxyCpu).toFixed(2) : "-",
        ]),
      )}\n`,
    );
    return runtimes.flatMap((runtime) => summaryRows(runtime, (path, op, pick) => stat(runtime, path, op, pick)));
  } finally {
    for (const service of started) service.stop();
  }
}

function summaryRows(runtime: Runtime, stat: (path: Path, op: Op, pick: (r: Result) => number) => number): TargetRow[] {
  const rows: TargetRow[] = [];
  for (const path of ["HTTPS", "unix"] as const) {
    for (const op of ["GET", "PUT"] as const) {
      const cpu = stat(path, op, (r) => r.daemonCpu);
      const wanted = CPU_TARGETS[`${path} ${op}`];
      rows.push({
        measure: `${path} ${op}: daemon CPU-s/GiB`,
        runtime: runtime.label,
        value: `${cpu.toFixed(2)} (${stat(path, op, (r) => r.mibps).toFixed(0)} MiB/s)`,
        target: wanted === undefined ? "-" : `≤ ${wanted.toFixed(2)}`,
        met: wanted === undefined ? undefined : cpu <= wanted,
      });
    }
  }
  for (const op of ["GET", "PUT"] as const) {
    const ratio = stat("proxy", op, (r) => r.mibps) / stat("HTTPS", op, (r) => r.mibps);
    rows.push({
      measure: `proxy ${op}: MiB/s ÷ direct HTTPS`,
      runtime: runtime.label,
      value: `${ratio.toFixed(2)}× (${stat("proxy", op, (r) => r.mibps).toFixed(0)} MiB/s)`,
      target: `≥ ${PROXY_RATIO_TARGETS[op]}×`,
      met: ratio >= PROXY_RATIO_TARGETS[op],
    });
  }
  for (const op of ["GET", "PUT"] as const) {
    const proxyCpu = stat("proxy", op, (r) => r.proxyCpu);
    const factor = proxyCpu / stat("HTTPS", op, (r) => r.daemonCpu);
    rows.push({
      measure: `proxy ${op}: proxy CPU-s/GiB ÷ daemon HTTPS ${op}'s`,
      runtime: runtime.label,
      value: `${factor.toFixed(2)}× (${proxyCpu.toFixed(2)} CPU-s/GiB)`,
      target: `≤ ${PROXY_CPU_FACTOR}×`,
      met: factor <= PROXY_CPU_FACTOR,
    });
  }
  return rows;
}
