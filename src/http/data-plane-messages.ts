/**
 * What the main thread and the data-plane threads ([daemon] workers) tell each other. One
 * channel per thread (the Worker's own port), so messages arrive in the order they were sent:
 * a ticket added before a connection was handed over is known when that connection's first
 * request arrives.
 */
import type { Config } from "../config.js";
import type { WriteBackState } from "../io/write-back.js";
import type { LogLevel } from "../log.js";
import type { TicketFields } from "../tickets/ticket.js";
import type { TlsFiles } from "./server.js";
import type { LogEvent } from "./thread-log.js";

/** The images services a data-plane thread serves. */
export type DataService = "remote" | "local";

/** What a data-plane thread starts with (its workerData). */
export interface DataPlaneSetup {
  /** 0-based; its row in tickets' shared state is index + 1 (row 0 is the main thread's). */
  index: number;
  /** Rows in tickets' shared state: threads + 1. */
  rows: number;
  config: Readonly<Config>;
  /** [logging] level: lines below it are not even posted. */
  logLevel: LogLevel;
  tls: TlsFiles | undefined;
  deadlineMs: number | undefined;
  /** This thread's share of [daemon] max_buffers. */
  maxBuffers: number;
  localSocket: string | undefined;
  connectionIds: SharedArrayBuffer;
  /** Counts changes to sticky write-back failures made by any thread (io/write-back.ts). */
  writeBackChanges: SharedArrayBuffer;
  /** Tests only (DataPlane.failNextStartsForTest): the thread fails before it serves. */
  failAtStartForTest?: boolean;
}

export type ToWorker =
  | { type: "connection"; fd: number; service: DataService; tcp: boolean }
  | { type: "ticket-add"; serial: number; fields: TicketFields; state: SharedArrayBuffer }
  | { type: "ticket-remove"; serial: number }
  | { type: "ticket-clear" }
  | { type: "ticket-cancel"; serial: number; request: number; timeoutSeconds: number }
  | { type: "lock-granted"; request: number }
  | { type: "sync"; request: number }
  | { type: "write-back-failed"; key: string; reason: string; code: string | undefined; size: number }
  | { type: "write-back-rewritten"; key: string; offset: number; length: number }
  | { type: "write-back-state"; state: WriteBackState }
  | { type: "close"; graceMs: number }
  | { type: "crash" };

export type FromWorker =
  | { type: "ready" }
  | { type: "adopted"; fd: number }
  | { type: "connection-closed" }
  | LogEvent
  | { type: "ended"; serial: number; slot: number; start: number; end: number }
  | { type: "cancelled"; request: number; stopped: boolean }
  | { type: "synced"; request: number }
  | { type: "lock"; request: number; key: string; blocks: number[] | "size" }
  | { type: "unlock"; request: number }
  | { type: "write-back-failed"; key: string; reason: string; code: string | undefined; size: number }
  | { type: "write-back-rewritten"; key: string; offset: number; length: number }
  | { type: "closed" };
