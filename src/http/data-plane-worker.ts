/**
 * A data-plane thread ([daemon] workers): serves the connections the main thread accepted and
 * handed over, with the same services (createService) the main thread would listen with, over
 * copies of the main thread's tickets that share their live state. What must be one per
 * process stays on the main thread and is reached by message: the log, the images' block and
 * size locks, sticky write-back failures, connection slots and ticket changes.
 */
import type { Socket } from "node:net";
import { parentPort, workerData } from "node:worker_threads";
import { useLockBroker } from "../io/block-locks.js";
import { BufferPool } from "../io/buffers.js";
import {
  receiveRewritten,
  receiveWriteBackFailure,
  restoreWriteBackState,
  useWriteBackPeers,
} from "../io/write-back.js";
import { Authorizer } from "../tickets/authorizer.js";
import { SharedTicketState } from "../tickets/shared-state.js";
import type { Ticket } from "../tickets/ticket.js";
import type { App } from "./app.js";
import { ticketBackendOpener } from "./backends.js";
import { shareConnectionIds } from "./connection.js";
import type { DataPlaneSetup, DataService, FromWorker, ToWorker } from "./data-plane-messages.js";
import { adoptConnection, createService } from "./server.js";
import { forwardingLogger } from "./thread-log.js";

const port = parentPort;
if (port === null) throw new Error("data-plane-worker runs only in a worker thread");
const setup = workerData as DataPlaneSetup;
if (setup.failAtStartForTest === true) throw new Error(`data-plane worker ${setup.index} failed to start on request`);
const post = (message: FromWorker) => port.postMessage(message);

shareConnectionIds(setup.connectionIds);
const log = forwardingLogger(post, setup.logLevel);

// Locks: asked of the main thread, held there until this thread releases them.
let nextLock = 1;
const grants = new Map<number, () => void>();
useLockBroker({
  hold: async (key, blocks, work) => {
    const request = nextLock++;
    await new Promise<void>((resolve) => {
      grants.set(request, resolve);
      post({ type: "lock", request, key, blocks });
    });
    try {
      return await work();
    } finally {
      post({ type: "unlock", request });
    }
  },
});
useWriteBackPeers(
  {
    recorded: (key, reason, code, size) => post({ type: "write-back-failed", key, reason, code, size }),
    rewritten: (key, offset, length) => post({ type: "write-back-rewritten", key, offset, length }),
  },
  setup.writeBackChanges,
);

const authorizer = new Authorizer();
const tickets = new Map<number, Ticket>();
const app: App = {
  config: setup.config,
  authorizer,
  log,
  openBackend: ticketBackendOpener(setup.config, log),
  buffers: new BufferPool(setup.maxBuffers),
  localSocket: setup.localSocket,
  worker: setup.index,
};

const limits = setup.deadlineMs === undefined ? {} : { deadlineMs: setup.deadlineMs };
const servers = {
  remote: createService(app, "remote", false, setup.tls, limits),
  local: createService(app, "local", true, undefined, limits),
};
// Node starts a server's header and request timeouts when it starts listening.
for (const server of Object.values(servers)) server.emit("listening");

const live = new Set<Socket>();

function adopt(fd: number, service: DataService, tcp: boolean): void {
  const socket = adoptConnection(servers[service], fd, tcp);
  live.add(socket);
  post({ type: "adopted", fd });
  socket.once("close", () => {
    live.delete(socket);
    post({ type: "connection-closed" });
  });
}

/** Stops serving: idle connections close now, busy ones when done or after `graceMs`. */
async function close(graceMs: number): Promise<void> {
  const deadline = performance.now() + graceMs;
  for (const server of Object.values(servers)) server.closeIdleConnections();
  while (live.size > 0 && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const server of Object.values(servers)) server.closeIdleConnections();
  }
  for (const socket of live) socket.destroy();
  post({ type: "closed" });
}

port.on("message", (message: ToWorker) => {
  switch (message.type) {
    case "connection":
      adopt(message.fd, message.service, message.tcp);
      break;
    case "ticket-add": {
      const state = new SharedTicketState(setup.rows, message.state);
      const serial = message.serial;
      const ticket = authorizer.adopt(message.fields, {
        state,
        row: setup.index + 1,
        reportEnded: (slot, start, end) => post({ type: "ended", serial, slot, start, end }),
      });
      tickets.set(serial, ticket);
      break;
    }
    case "ticket-remove": {
      const ticket = tickets.get(message.serial);
      if (ticket !== undefined) authorizer.drop(ticket);
      tickets.delete(message.serial);
      break;
    }
    case "ticket-clear":
      authorizer.clear();
      tickets.clear();
      break;
    case "ticket-cancel": {
      const ticket = tickets.get(message.serial);
      const request = message.request;
      if (ticket === undefined) post({ type: "cancelled", request, stopped: true });
      else {
        ticket.cancel(message.timeoutSeconds).then(
          (stopped) => post({ type: "cancelled", request, stopped }),
          (error: unknown) => {
            log.error("CANCEL failed", { transfer: ticket.label }, error);
            post({ type: "cancelled", request, stopped: false });
          },
        );
      }
      break;
    }
    case "sync":
      // Every message before this one is applied: the main thread may answer its client.
      post({ type: "synced", request: message.request });
      break;
    case "lock-granted": {
      const grant = grants.get(message.request);
      grants.delete(message.request);
      grant?.();
      break;
    }
    case "write-back-failed":
      receiveWriteBackFailure(message.key, message.reason, message.code, message.size);
      break;
    case "write-back-rewritten":
      receiveRewritten(message.key, message.offset, message.length);
      break;
    case "write-back-state":
      restoreWriteBackState(message.state);
      break;
    case "close":
      void close(message.graceMs);
      break;
    case "crash":
      // Tests only (DataPlane.crashWorkerForTest): a genuine uncaught error, as a bug would throw.
      setImmediate(() => {
        throw new Error(`data-plane worker ${setup.index} crashed on request`);
      });
      break;
  }
});

post({ type: "ready" });
