/**
 * The data plane ([daemon] workers > 1): threads that serve the images services' connections,
 * so transfers use more than one core. The main thread keeps accepting, the control service,
 * and everything that must be one per process:
 *
 *  - Connections: each accepted socket is duplicated (F_DUPFD_CLOEXEC), the main thread's own
 *    descriptor is dropped unread, and the copy goes to the thread serving the fewest
 *    connections, which adopts it (adoptConnection). A connection never moves afterwards: its
 *    TLS state lives in that thread. A copy not adopted (post failed, thread gone) is closed here.
 *  - Tickets: the main thread's store is the one the control service changes; every change is
 *    posted to each thread before the control request answers, in the same channel as the
 *    connections, so a ticket added before a connection is known to the thread serving it.
 *    Live state (cancel, expiry, connections, running operations) is shared memory
 *    (tickets/shared-state.ts); ended operations' ranges come back by message.
 *  - Image locks, sticky write-back failures, connection slots and the log: held here, asked
 *    for by message.
 *
 * A thread that dies (an uncaught error) loses only its own connections: what it held is
 * released (slots, ticket counts, locks), and a new thread takes its place with every ticket.
 */
import { randomBytes } from "node:crypto";
import { closeSync } from "node:fs";
import type { Socket } from "node:net";
import type { Worker } from "node:worker_threads";
import type { Config } from "../config.js";
import { withBlockLocks, withSizeLock } from "../io/block-locks.js";
import { duplicateDescriptor } from "../io/native.js";
import { startWorker } from "../io/worker-pool.js";
import {
  receiveRewritten,
  receiveWriteBackFailure,
  useWriteBackPeers,
  writeBackCounter,
  writeBackState,
} from "../io/write-back.js";
import type { Logger, LogLevel } from "../log.js";
import type { TicketReplication } from "../tickets/authorizer.js";
import type { Ticket } from "../tickets/ticket.js";
import { connectionIdCounter } from "./connection.js";
import type { DataPlaneSetup, DataService, FromWorker, ToWorker } from "./data-plane-messages.js";
import { type ConnectionSlots, REFUSALS_PER_LOG_LINE } from "./limits.js";
import { readTlsContents, type TlsFiles } from "./server.js";
import { ThreadLogRelay } from "./thread-log.js";

export interface DataPlaneOptions {
  config: Readonly<Config>;
  log: Logger;
  tls: TlsFiles | undefined;
  deadlineMs: number | undefined;
  localSocket: string | undefined;
  /** Slots shared by the images services (limits.ts). */
  slots: ConnectionSlots;
}

/** One thread of the data plane, as the main thread sees it. */
interface Thread {
  readonly index: number;
  worker: Worker;
  /** Connections handed over and not yet closed. */
  live: number;
  /** Descriptors posted and not yet adopted: closed here if the thread dies first. */
  readonly unadopted: Set<number>;
  /** Locks held for it, by its request number: each releases its lock. */
  readonly locks: Map<number, () => void>;
  /** Cancellations waiting for its answer. */
  readonly cancels: Map<number, (stopped: boolean) => void>;
  /** Barriers (settled) waiting for its answer. */
  readonly syncs: Map<number, (answer: undefined) => void>;
  alive: boolean;
  /** Started and ready: connections may go to it. */
  serving: boolean;
  /** When it started serving (performance.now()), to tell a thread that dies young. */
  servingSince: number;
  /** Called when it says it serves. */
  ready: (() => void) | undefined;
  /** Called when it ends before it serves. */
  failedToStart: ((code: number) => void) | undefined;
  closed: (() => void) | undefined;
}

/** Wait before the first new try at starting a thread whose start failed, doubled at each failure. */
const RESTART_FIRST_DELAY_MS = 500;
/** The longest wait between tries: a thread that cannot start costs a log line per this. */
const RESTART_MAX_DELAY_MS = 30_000;
/** A thread that served this long before it died is replaced at once, however often it was before. */
const RESTART_STABLE_MS = 10_000;

export class DataPlane implements TicketReplication {
  readonly rows: number;
  private readonly threads: Thread[] = [];
  private readonly serials = new Map<Ticket, number>();
  private readonly tickets = new Map<number, Ticket>();
  private nextSerial = 1;
  /** Numbers the questions to threads (cancellations, barriers). */
  private nextRequest = 1;
  private closing = false;
  /** Per thread index: replacements in a row that failed to start or died young. */
  private readonly restartFailures: number[] = [];
  /** Replacements waiting for their try; cleared on close. */
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  /** Connections accepted but not handed over (no descriptor left, no thread serving). */
  private refusedHandOffs = 0;
  /** Tests only: how many thread starts still fail on purpose (failNextStartsForTest). */
  private failingStarts = 0;
  private readonly setup: Omit<DataPlaneSetup, "index">;
  private readonly logs: ThreadLogRelay;

  private constructor(
    readonly size: number,
    private readonly options: DataPlaneOptions,
  ) {
    this.rows = size + 1;
    this.logs = new ThreadLogRelay(options.log);
    const { config } = options;
    this.setup = {
      rows: this.rows,
      config,
      logLevel: config.logging.level as LogLevel,
      // Read once here; the threads share the session ticket keys, so a client resumes its
      // session on whichever thread serves its next connection.
      tls: options.tls === undefined ? undefined : { ...readTlsContents(options.tls), ticketKeys: randomBytes(48) },
      deadlineMs: options.deadlineMs,
      // Split, not shared: each thread's pool lends without asking the others. The sum stays
      // at most max_buffers: there are never more threads than buffers (startServices).
      maxBuffers: Math.max(1, Math.floor(config.daemon.max_buffers / size)),
      localSocket: options.localSocket,
      connectionIds: connectionIdCounter(),
      writeBackChanges: writeBackCounter(),
    };
    useWriteBackPeers(
      {
        recorded: (key, reason, code, size) => this.broadcast({ type: "write-back-failed", key, reason, code, size }),
        rewritten: (key, offset, length) => this.broadcast({ type: "write-back-rewritten", key, offset, length }),
      },
      this.setup.writeBackChanges,
    );
  }

  /**
   * Starts `workers` threads and waits until each serves.
   * @throws the first thread's start failure (a TLS key it cannot use).
   */
  static async start(workers: number, options: DataPlaneOptions): Promise<DataPlane> {
    const plane = new DataPlane(workers, options);
    try {
      for (let index = 0; index < workers; index++) await plane.spawn(index);
    } catch (error) {
      await plane.close(0);
      throw error;
    }
    return plane;
  }

  /** Connections each thread serves now (benchmarks, tests). */
  get connectionsPerThread(): number[] {
    return this.threads.map((thread) => thread.live);
  }

  /** Hands an accepted, unread socket of `service` to the least busy thread. */
  handOff(socket: Socket, service: DataService): void {
    const tcp = service === "remote";
    const client = socket.remoteAddress ?? "local";
    if (!this.options.slots.take(service, client)) {
      socket.destroy();
      return;
    }
    const thread = this.leastBusy();
    // Node's handle of the accepted socket; gone if the peer reset it already.
    const own = (socket as unknown as { _handle: { fd?: number } | null })._handle?.fd;
    if (own === undefined || own < 0) {
      this.options.slots.release();
      socket.destroy();
      return;
    }
    let fd: number;
    try {
      if (thread === undefined) throw new Error("no data-plane thread is serving");
      fd = duplicateDescriptor(own);
    } catch (error) {
      this.refuseHandOff(service, client, error);
      this.options.slots.release();
      socket.destroy();
      return;
    }
    // Never end(): that would send FIN on the connection the thread is about to serve.
    socket.destroy();
    thread.live++;
    thread.unadopted.add(fd);
    try {
      thread.worker.postMessage({ type: "connection", fd, service, tcp } satisfies ToWorker);
    } catch (error) {
      this.options.log.error("REFUSE cannot hand over connection", { service, client }, error);
      thread.unadopted.delete(fd);
      closeSync(fd);
      this.connectionClosed(thread);
    }
  }

  /**
   * Logs a connection that could not be handed over: the first, then one in
   * REFUSALS_PER_LOG_LINE while they go on, as "too many connections" is. The causes (the
   * descriptor limit reached, no thread serving while one is replaced) are states of the host
   * that an accept storm repeats for every connection, not bugs: a warning with the reason,
   * without a stack.
   */
  private refuseHandOff(service: DataService, client: string, error: unknown): void {
    if (this.refusedHandOffs++ % REFUSALS_PER_LOG_LINE !== 0) return;
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    this.options.log.warning("REFUSE cannot hand over connection", {
      service,
      client,
      reason,
      refused: this.refusedHandOffs,
    });
  }

  added(ticket: Ticket): void {
    const serial = this.nextSerial++;
    this.serials.set(ticket, serial);
    this.tickets.set(serial, ticket);
    this.broadcast(this.addMessage(ticket, serial));
  }

  removed(ticket: Ticket): void {
    const serial = this.serials.get(ticket);
    if (serial === undefined) return;
    this.serials.delete(ticket);
    this.tickets.delete(serial);
    this.broadcast({ type: "ticket-remove", serial });
  }

  cleared(): void {
    this.serials.clear();
    this.tickets.clear();
    this.broadcast({ type: "ticket-clear" });
  }

  async cancel(ticket: Ticket, timeoutSeconds: number): Promise<boolean> {
    const serial = this.serials.get(ticket);
    if (serial === undefined) return true;
    const stopped = await this.askEveryThread(
      (thread) => thread.cancels,
      (request) => ({ type: "ticket-cancel", serial, request, timeoutSeconds }),
    );
    return stopped.every(Boolean);
  }

  async settled(): Promise<void> {
    await this.askEveryThread(
      (thread) => thread.syncs,
      (request) => ({ type: "sync", request }),
    );
  }

  /**
   * Posts a numbered request to every live thread and waits for all their answers. Each
   * waits in the thread's `waiting` map until its answer arrives, or until the thread dies
   * (lost() answers for it).
   */
  private askEveryThread<T>(
    waiting: (thread: Thread) => Map<number, (answer: T) => void>,
    message: (request: number) => ToWorker,
  ): Promise<T[]> {
    const live = this.threads.filter((thread) => thread.alive);
    return Promise.all(
      live.map(
        (thread) =>
          new Promise<T>((resolve) => {
            const request = this.nextRequest++;
            waiting(thread).set(request, resolve);
            thread.worker.postMessage(message(request));
          }),
      ),
    );
  }

  /** Stops every thread: running requests may finish within `graceMs`, then the rest are cut. */
  async close(graceMs: number): Promise<void> {
    this.closing = true;
    for (const timer of this.restartTimers) clearTimeout(timer);
    this.restartTimers.clear();
    useWriteBackPeers(undefined);
    await Promise.all(
      this.threads.map(async (thread) => {
        if (thread.alive) {
          await new Promise<void>((resolve) => {
            thread.closed = resolve;
            thread.worker.postMessage({ type: "close", graceMs } satisfies ToWorker);
          });
        }
        await thread.worker.terminate();
      }),
    );
  }

  /** Tests only: makes thread `index` throw an uncaught error, as a bug in it would. */
  crashWorkerForTest(index: number): void {
    this.threads[index]?.worker.postMessage({ type: "crash" } satisfies ToWorker);
  }

  /** Tests only: the next `count` thread starts fail, as a start on a host out of threads would. */
  failNextStartsForTest(count: number): void {
    this.failingStarts = count;
  }

  private leastBusy(): Thread | undefined {
    let best: Thread | undefined;
    for (const thread of this.threads) {
      if (thread.alive && thread.serving && (best === undefined || thread.live < best.live)) best = thread;
    }
    return best;
  }

  private addMessage(ticket: Ticket, serial: number): ToWorker {
    return { type: "ticket-add", serial, fields: ticket.fields, state: ticket.sharedState };
  }

  private broadcast(message: ToWorker): void {
    for (const thread of this.threads) if (thread.alive) thread.worker.postMessage(message);
  }

  /**
   * Starts thread `index` (in place of a dead one) with every ticket and write-back failure
   * there is; resolves once it serves. From the moment it exists it gets every change, so
   * nothing made while it starts is missed.
   */
  private async spawn(index: number): Promise<Thread> {
    const failAtStartForTest = this.failingStarts > 0;
    if (failAtStartForTest) this.failingStarts--;
    const worker = await startWorker("data-plane-worker", {
      workerData: { ...this.setup, index, ...(failAtStartForTest ? { failAtStartForTest } : {}) },
    });
    if (this.closing) {
      await worker.terminate();
      throw new Error("the daemon is stopping");
    }
    const thread: Thread = {
      index,
      worker,
      live: 0,
      unadopted: new Set(),
      locks: new Map(),
      cancels: new Map(),
      syncs: new Map(),
      alive: true,
      serving: false,
      servingSince: 0,
      ready: undefined,
      failedToStart: undefined,
      closed: undefined,
    };
    this.threads[index] = thread;
    worker.postMessage({ type: "write-back-state", state: writeBackState() } satisfies ToWorker);
    for (const [serial, ticket] of this.tickets) worker.postMessage(this.addMessage(ticket, serial));
    // Its log lines may come before it is ready: every message is handled from the start.
    worker.on("message", (message: FromWorker) => this.receive(thread, message));
    let failure: Error | undefined;
    const started = new Promise<void>((resolve, reject) => {
      thread.ready = resolve;
      thread.failedToStart = (code) =>
        reject(failure ?? new Error(`data-plane thread ${index} exited with code ${code} before serving`));
    });
    worker.on("error", (error) => {
      if (thread.serving) this.options.log.error("WORKER failed", { worker: index }, error);
      else failure = error;
    });
    worker.on("exit", (code) => this.lost(thread, code));
    await started;
    thread.serving = true;
    thread.servingSince = performance.now();
    return thread;
  }

  private receive(thread: Thread, message: FromWorker): void {
    // Node delivers a thread's last messages before its exit; none come after.
    if (!thread.alive) return;
    switch (message.type) {
      case "log":
        this.logs.write(message);
        break;
      case "adopted":
        thread.unadopted.delete(message.fd);
        break;
      case "connection-closed":
        this.connectionClosed(thread);
        break;
      case "ended":
        this.tickets.get(message.serial)?.recordEnded(message.slot, message.start, message.end);
        break;
      case "synced":
        answerRequest(thread.syncs, message.request, undefined);
        break;
      case "cancelled":
        answerRequest(thread.cancels, message.request, message.stopped);
        break;
      case "lock":
        this.lock(thread, message.request, message.key, message.blocks);
        break;
      case "unlock": {
        const release = thread.locks.get(message.request);
        thread.locks.delete(message.request);
        release?.();
        break;
      }
      case "write-back-failed":
        receiveWriteBackFailure(message.key, message.reason, message.code, message.size);
        this.broadcastExcept(thread, message);
        break;
      case "write-back-rewritten":
        receiveRewritten(message.key, message.offset, message.length);
        this.broadcastExcept(thread, message);
        break;
      case "closed":
        thread.closed?.();
        break;
      case "ready":
        thread.ready?.();
        break;
    }
  }

  private broadcastExcept(sender: Thread, message: ToWorker): void {
    for (const thread of this.threads) if (thread !== sender && thread.alive) thread.worker.postMessage(message);
  }

  /** Holds a lock for a thread until it says unlock (or dies). */
  private lock(thread: Thread, request: number, key: string, blocks: number[] | "size"): void {
    const hold = () =>
      new Promise<void>((release) => {
        if (!thread.alive) {
          release();
          return;
        }
        thread.locks.set(request, release);
        thread.worker.postMessage({ type: "lock-granted", request } satisfies ToWorker);
      });
    const held = blocks === "size" ? withSizeLock(key, hold) : withBlockLocks(key, blocks, hold);
    held.catch((error: unknown) => this.options.log.error("LOCK failed", { worker: thread.index }, error));
  }

  private connectionClosed(thread: Thread): void {
    thread.live--;
    this.options.slots.release();
  }

  /**
   * A thread ended: whatever it held is released, and unless the daemon is stopping a new
   * thread takes its place.
   */
  private lost(thread: Thread, code: number): void {
    if (!thread.alive) return;
    thread.alive = false;
    thread.closed?.();
    // Its adopted sockets died with it; descriptors it never adopted are still ours to close.
    for (const fd of thread.unadopted) {
      closeSync(fd);
      this.connectionClosed(thread);
    }
    thread.unadopted.clear();
    while (thread.live > 0) this.connectionClosed(thread);
    for (const release of thread.locks.values()) release();
    thread.locks.clear();
    for (const answer of thread.cancels.values()) answer(true);
    thread.cancels.clear();
    for (const answer of thread.syncs.values()) answer(undefined);
    thread.syncs.clear();
    for (const ticket of this.tickets.values()) ticket.forgetWorker(thread.index + 1);
    if (!thread.serving) {
      // It never served: its start fails, and whoever started it decides what next.
      thread.failedToStart?.(code);
      return;
    }
    if (this.closing) return;
    this.options.log.error("WORKER lost", { worker: thread.index, code, replacing: true });
    const young = performance.now() - thread.servingSince < RESTART_STABLE_MS;
    this.restartFailures[thread.index] = young ? (this.restartFailures[thread.index] ?? 0) + 1 : 0;
    this.replace(thread.index);
  }

  /**
   * Starts a thread in place of a dead one, trying again for as long as it takes: a start can
   * fail for a while (a host out of memory or threads) and without it the daemon would serve
   * with a thread less for ever, or with none. Each failure, and each thread that dies young,
   * doubles the wait before the next try (up to RESTART_MAX_DELAY_MS), so a thread that cannot
   * live is no busy loop.
   */
  private replace(index: number): void {
    const failures = this.restartFailures[index] ?? 0;
    const delay = failures === 0 ? 0 : Math.min(RESTART_MAX_DELAY_MS, RESTART_FIRST_DELAY_MS * 2 ** (failures - 1));
    const timer = setTimeout(() => {
      this.restartTimers.delete(timer);
      if (this.closing) return;
      this.spawn(index).then(
        () => this.options.log.info("WORKER started", { worker: index }),
        (error: unknown) => {
          if (this.closing) return;
          this.restartFailures[index] = failures + 1;
          const retry = Math.min(RESTART_MAX_DELAY_MS, RESTART_FIRST_DELAY_MS * 2 ** failures);
          this.options.log.error("WORKER cannot start", { worker: index, retry_seconds: retry / 1000 }, error);
          this.replace(index);
        },
      );
    }, delay);
    this.restartTimers.add(timer);
  }
}

/** Settles the request `request` waiting in `waiting` with `answer`, once. */
function answerRequest<T>(waiting: Map<number, (answer: T) => void>, request: number, answer: T): void {
  const settle = waiting.get(request);
  waiting.delete(request);
  settle?.(answer);
}
