/**
 * Worker threads for work that must not take the event loop: the blocking system calls of
 * native.ts (native-worker.ts) and block hashing (hash-worker.ts).
 *
 * A worker script has to start in three settings, each with its own way to find the code:
 *  - dist/ (bin/imageio, benchmarks): the compiled module beside this one;
 *  - the single executable: there are no files, so scripts/package/build-sea.mjs bundles each
 *    worker with esbuild into the SEA asset "NAME.js", run with `eval: true`;
 *  - the sources (vitest runs src/*.ts, which a worker cannot load): bundled the same way on
 *    first use by esbuild, a development dependency that is installed wherever sources run.
 */

import { readFile } from "node:fs/promises";
import { getAsset, isSea } from "node:sea";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { TransferListItem, Worker, WorkerOptions } from "node:worker_threads";

/**
 * The worker scripts, by name, with their module path under src/ (dist/ alike); build-sea.mjs
 * embeds each as the asset "NAME.js". The data plane's threads (http/data-plane-worker.ts) load
 * the same way, though they live with the HTTP code they run.
 */
export const WORKER_SCRIPTS = {
  "native-worker": "io/native-worker",
  "hash-worker": "io/hash-worker",
  "data-plane-worker": "http/data-plane-worker",
} as const;
export type WorkerScript = keyof typeof WORKER_SCRIPTS;

/** A failure inside a worker, carried back as its message (the stack stays in the worker). */
export class WorkerTaskError extends Error {
  override name = "WorkerTaskError";
}

interface Reply {
  id: number;
  value?: unknown;
  error?: string;
}

/** What a worker posts once its script has loaded (koffi included) and it takes tasks. */
const READY = "ready";

interface Pending {
  id: number;
  message: unknown;
  transfer: readonly TransferListItem[];
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

interface Slot {
  worker: Worker;
  task: Pending | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  /**
   * The script has loaded. Until then the thread holds the process open even when idle: a
   * process that exits while a thread is still loading an addon (koffi) aborts in Node's
   * teardown (FATAL ERROR napi_throw, status 134), e.g. on a usage error right after a warm().
   */
  ready: boolean;
}

/**
 * At most `maxWorkers` threads running one script, started on demand and ended after
 * `idleMs` without work; tasks beyond that wait in order. Each thread runs one task at a time.
 * Idle threads do not keep the process alive.
 */
export class WorkerPool<Task, Result> {
  private readonly slots: Slot[] = [];
  private readonly queue: Pending[] = [];
  private starting = 0;
  private nextId = 1;

  constructor(
    private readonly script: WorkerScript,
    readonly maxWorkers: number,
    private readonly idleMs = 5_000,
  ) {}

  /** Threads alive now (for tests and diagnostics). */
  get threads(): number {
    return this.slots.length;
  }

  /** Threads that finished loading their script: a task posted to one starts at once. */
  get readyThreads(): number {
    return this.slots.filter((slot) => slot.ready).length;
  }

  /** Threads running a task now (for tests and diagnostics). */
  get busyThreads(): number {
    return this.slots.filter((slot) => slot.task !== undefined).length;
  }

  /**
   * Runs `task` on a thread; `transfer` lists buffers moved there without a copy (they are
   * unusable here until the result hands them back).
   * @throws WorkerTaskError when the worker reported a failure or died.
   */
  run(task: Task, transfer: readonly TransferListItem[] = []): Promise<Result> {
    return new Promise<Result>((resolve, reject) => {
      this.queue.push({
        id: this.nextId++,
        message: task,
        transfer,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      this.dispatch();
    });
  }

  /**
   * Runs `task` unless it would wait for a task that may block for long (a device's zeroing,
   * for as long as the device takes): for work worth doing only when it costs no wait, such as
   * faulting memory in ahead of use. `quick` tells the tasks that never block for long; `task`
   * may queue behind those only, and only while a thread is idle, can be started, or runs one.
   * @returns undefined where the task would wait behind a slow one (it is not run).
   */
  runUnlessBlocked(task: Task, quick: (other: Task) => boolean): Promise<Result> | undefined {
    const isQuick = (pending: Pending | undefined) => pending === undefined || quick(pending.message as Task);
    const room = this.slots.length + this.starting < this.maxWorkers;
    const turnSoon = room || this.slots.some((slot) => isQuick(slot.task));
    if (!turnSoon || !this.queue.every(isQuick)) return undefined;
    return this.run(task);
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.task === undefined) this.assign(slot, this.queue.shift() as Pending);
    }
    if (this.queue.length > this.starting && this.slots.length + this.starting < this.maxWorkers) this.spawn();
  }

  /**
   * Starts one thread now when none runs or is starting, so that the first task, coming a few
   * tens of milliseconds later, does not wait for a thread to boot (about 30 ms of Node's own
   * start-up, which then overlaps with the caller's). It ends after `idleMs` like any idle
   * thread and never keeps the process alive.
   */
  warm(): void {
    if (this.slots.length + this.starting === 0 && this.maxWorkers > 0) this.spawn();
  }

  private spawn(): void {
    this.starting++;
    startWorker(this.script).then(
      (worker) => {
        this.starting--;
        this.adopt(worker);
      },
      (error: unknown) => {
        this.starting--;
        // Nothing can run: fail what waits rather than leave it hanging.
        if (this.slots.length === 0 && this.starting === 0) {
          for (const pending of this.queue.splice(0)) pending.reject(error);
        }
      },
    );
  }

  private adopt(worker: Worker): void {
    const slot: Slot = { worker, task: undefined, idleTimer: undefined, ready: false };
    this.slots.push(slot);
    worker.on("message", (reply: Reply | typeof READY) => {
      if (reply === READY) {
        slot.ready = true;
        if (slot.task === undefined) worker.unref();
        return;
      }
      const task = slot.task;
      if (task === undefined || reply.id !== task.id) return;
      slot.task = undefined;
      if (reply.error === undefined) task.resolve(reply.value);
      else task.reject(new WorkerTaskError(reply.error));
      this.idle(slot);
    });
    const lost = (why: string) => {
      this.drop(slot);
      slot.task?.reject(new WorkerTaskError(`${this.script} thread ${why}`));
      slot.task = undefined;
      this.dispatch();
    };
    worker.on("error", (error) => lost(`failed: ${error.message}`));
    worker.on("exit", (code) => lost(`exited with code ${code}`));
    this.idle(slot);
  }

  private assign(slot: Slot, task: Pending): void {
    clearTimeout(slot.idleTimer);
    slot.task = task;
    slot.worker.ref();
    slot.worker.postMessage({ id: task.id, task: task.message }, task.transfer);
  }

  private idle(slot: Slot): void {
    const next = this.queue.shift();
    if (next !== undefined) {
      this.assign(slot, next);
      return;
    }
    if (slot.ready) slot.worker.unref();
    slot.idleTimer = setTimeout(() => {
      this.drop(slot);
      void slot.worker.terminate();
    }, this.idleMs);
    slot.idleTimer.unref();
  }

  private drop(slot: Slot): void {
    clearTimeout(slot.idleTimer);
    const at = this.slots.indexOf(slot);
    if (at !== -1) this.slots.splice(at, 1);
  }
}

/** What a worker's handler returns: a value, and buffers to move back with it. */
export interface WorkerAnswer {
  value: unknown;
  transfer?: readonly TransferListItem[];
}

/**
 * The worker side: answers each task posted by a WorkerPool with `handle`'s value, or with
 * the message of what it threw.
 */
export function serveTasks(handle: (task: never) => WorkerAnswer | Promise<WorkerAnswer>): void {
  const port = workerThreads().parentPort;
  if (port === null) throw new Error("serveTasks() runs only in a worker thread");
  port.on("message", async ({ id, task }: { id: number; task: never }) => {
    try {
      const answer = await handle(task);
      port.postMessage({ id, value: answer.value } satisfies Reply, answer.transfer ?? []);
    } catch (error) {
      port.postMessage({ id, error: error instanceof Error ? error.message : String(error) } satisfies Reply);
    }
  });
  // Called at the end of the worker's script, so everything it loads has loaded.
  port.postMessage(READY);
}

/**
 * node:worker_threads, loaded when a thread is first started or served: every command that
 * touches a file loads this module, and most runs (an empty image's copy) never start a
 * thread (issue 14).
 */
function workerThreads(): typeof import("node:worker_threads") {
  return process.getBuiltinModule("node:worker_threads");
}

const bundles = new Map<WorkerScript, Promise<string>>();

/**
 * Starts a thread running `script`, from wherever this build keeps it (see above).
 * `options` go to the Worker (workerData, resource limits).
 */
export async function startWorker(script: WorkerScript, options: WorkerOptions = {}): Promise<Worker> {
  const { Worker } = workerThreads();
  if (isSea()) return new Worker(getAsset(`${script}.js`, "utf8"), { ...options, eval: true });
  const module = WORKER_SCRIPTS[script];
  const compiled = new URL(`../${module}.js`, import.meta.url);
  if (import.meta.url.endsWith(".js")) return new Worker(compiled, options);
  let bundle = bundles.get(script);
  if (bundle === undefined) {
    bundle = bundleFromSource(new URL(`../${module}.ts`, import.meta.url));
    bundles.set(script, bundle);
  }
  return new Worker(await bundle, { ...options, eval: true });
}

/** Bundles a worker's TypeScript source into one CommonJS script (sources only, see above). */
async function bundleFromSource(source: URL): Promise<string> {
  // A computed name: bundlers of the executable must not pull esbuild in.
  const bundler = "esbuild";
  const { build } = (await import(bundler)) as typeof import("esbuild");
  const result = await build({
    entryPoints: [fileURLToPath(source)],
    bundle: true,
    write: false,
    platform: "node",
    format: "cjs",
    target: "node20",
    logLevel: "warning",
    // Each module keeps its own URL, as when Node loads it: koffi-loader requires koffi
    // relative to it, version.ts finds package.json one level up from it.
    plugins: [
      {
        name: "module-url",
        setup(builder) {
          builder.onLoad({ filter: /\.ts$/ }, async (args) => ({
            contents: (await readFile(args.path, "utf8")).replace(
              /\bimport\.meta\.url\b/g,
              JSON.stringify(pathToFileURL(args.path).href),
            ),
            loader: "ts",
          }));
        },
      },
    ],
  });
  return (result.outputFiles[0] as { text: string }).text;
}
